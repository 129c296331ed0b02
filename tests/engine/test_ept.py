"""EPT walks (SDM Vol. 3C §29.3.2): 4 KiB, 2 MiB and 1 GiB pages, permissions combined over the
levels, not-present entries (EPT violation) and misconfigurations (§29.3.3.1)."""

from __future__ import annotations

import pytest

from nestvmx.engine.ept import EPT_EXEC, EPT_READ, EPT_WRITE, EptFault, ept_mappings, ept_translate, merge_runs
from nestvmx.engine.guest_memory import GuestMemory
from nestvmx.hw.cpu_models import get_cpu_model
from nestvmx.hw.exceptions import X86Exception
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.state import CpuState

PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
WB = 6 << 3
RWX = 7


@pytest.fixture
def mem() -> PhysicalMemory:
    m = PhysicalMemory(8 << 20)
    m.write_u(PML4, 8, PDPT | RWX)
    m.write_u(PDPT, 8, PD | RWX)  # GPA 0-1 GiB through a page directory
    m.write_u(PD, 8, PT | RWX)  # GPA 0-2 MiB through a page table
    m.write_u(PT + 8 * 5, 8, 0x600000 | WB | EPT_READ)  # GPA 0x5000 -> 0x600000, read-only 4 KiB
    m.write_u(PD + 8 * 1, 8, 0x400000 | 1 << 7 | WB | RWX)  # GPA 2 MiB -> 4 MiB, 2 MiB page
    m.write_u(PDPT + 8 * 1, 8, 0x4000_0000 | 1 << 7 | WB | EPT_READ | EPT_EXEC)  # GPA 1 GiB, 1 GiB page
    return m


haswell = get_cpu_model("haswell")


def test_4k_page(mem: PhysicalMemory) -> None:
    m = ept_translate(haswell, mem, PML4 | 0x1E, 0x5123)
    assert (m.gpa, m.hpa, m.size, m.perms) == (0x5000, 0x600000, 0x1000, EPT_READ)


def test_2m_page(mem: PhysicalMemory) -> None:
    m = ept_translate(haswell, mem, PML4 | 0x1E, 0x2F_1234)
    assert (m.gpa, m.hpa, m.size, m.perms) == (0x200000, 0x400000, 0x200000, RWX)


def test_1g_page(mem: PhysicalMemory) -> None:
    m = ept_translate(haswell, mem, PML4 | 0x1E, 0x4123_4567)
    assert (m.gpa, m.hpa, m.size, m.perms) == (0x4000_0000, 0x4000_0000, 1 << 30, EPT_READ | EPT_EXEC)


def test_permissions_are_the_and_of_all_levels(mem: PhysicalMemory) -> None:
    mem.write_u(PD, 8, PT | EPT_READ | EPT_EXEC)  # the PDE forbids writes for everything below
    mem.write_u(PT + 8 * 6, 8, 0x601000 | WB | RWX)
    assert ept_translate(haswell, mem, PML4 | 0x1E, 0x6000).perms == EPT_READ | EPT_EXEC


def test_not_present_is_a_violation(mem: PhysicalMemory) -> None:
    with pytest.raises(EptFault) as e:
        ept_translate(haswell, mem, PML4 | 0x1E, 0x7000)
    assert not e.value.misconfig and e.value.gpa == 0x7000


@pytest.mark.parametrize(
    "entry",
    [
        0x601000 | WB | EPT_WRITE,  # write without read
        0x601000 | (2 << 3) | RWX,  # reserved memory type 2
        0x601000 | (7 << 3) | RWX,  # reserved memory type 7
        (1 << 45) | WB | RWX,  # address beyond haswell's 39-bit physical width
    ],
    ids=["write-only", "memtype-2", "memtype-7", "beyond-maxphyaddr"],
)
def test_misconfigurations(mem: PhysicalMemory, entry: int) -> None:
    mem.write_u(PT + 8 * 6, 8, entry)
    with pytest.raises(EptFault) as e:
        ept_translate(haswell, mem, PML4 | 0x1E, 0x6000)
    assert e.value.misconfig


def test_execute_only_is_allowed_where_supported(mem: PhysicalMemory) -> None:
    mem.write_u(PT + 8 * 6, 8, 0x601000 | WB | EPT_EXEC)
    assert ept_translate(haswell, mem, PML4 | 0x1E, 0x6000).perms == EPT_EXEC  # EPT_VPID_CAP bit 0 = 1


def test_enumerate_and_merge(mem: PhysicalMemory) -> None:
    mem.write_u(PT + 8 * 6, 8, 0x601000 | WB | EPT_READ)
    runs = merge_runs(ept_mappings(haswell, mem, PML4 | 0x1E))
    assert [(r.gpa, r.hpa, r.size, r.perms) for r in runs] == [
        (0x5000, 0x600000, 0x2000, EPT_READ),
        (0x200000, 0x400000, 0x200000, RWX),
        (0x4000_0000, 0x4000_0000, 1 << 30, EPT_READ | EPT_EXEC),
    ]


def test_guest_access_checks_ept_permissions(mem: PhysicalMemory) -> None:
    """A write through a read-only EPT page is a violation reporting the entry's permissions."""
    state = CpuState()
    state.cr0 &= ~(1 << 31)  # no guest paging: linear = guest-physical
    g = GuestMemory(haswell, mem, state, PML4 | 0x1E)
    mem.write_u(0x600010, 8, 0x1122)
    assert g.read(0x5010, 8) == (0x1122).to_bytes(8, "little")
    with pytest.raises(EptFault) as e:
        g.write(0x5010, b"x")
    assert not e.value.misconfig and e.value.perms == EPT_READ and e.value.gpa == 0x5010


@pytest.mark.parametrize("efer_nxe, cr4_smep, id_flag", [(0, 0, 0), (1, 0, 1 << 4), (0, 1, 1 << 4)])
def test_page_fault_error_code_reports_fetches_only_with_nx_or_smep(efer_nxe: int, cr4_smep: int, id_flag: int) -> None:
    """SDM Vol. 3A §4.7: the I/D flag is set for an instruction fetch only with EFER.NXE or CR4.SMEP."""
    m = PhysicalMemory(1 << 20)
    m.write_u(0x1000, 8, 0x2000 | 3)  # PML4[0] -> PDPT; nothing below it is present
    state = CpuState()
    state.cr3, state.efer = 0x1000, state.efer | efer_nxe << 11
    state.cr4 |= cr4_smep << 20
    g = GuestMemory(haswell, m, state, None)
    for write, fetch, error_code in ((False, True, id_flag), (True, False, 2)):
        with pytest.raises(X86Exception) as e:
            g.linear_to_gpa(0x5000, write=write, fetch=fetch)
        assert e.value.error_code == error_code
