"""EPT translation (SDM Vol. 3C §29.3): walks of the EPT paging structures in host memory.

4-level walks with 4 KiB, 2 MiB and 1 GiB pages; permissions are the AND of every level's
R/W/X bits.  An entry with R=W=X=0 is not present (EPT violation); a misconfigured entry
(write without read, execute-only where not supported, reserved bits, bad memory type) is an
EPT misconfiguration (§29.3.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from nestvmx.arch.msr import Msr
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.memory import PhysicalMemory

EPT_READ, EPT_WRITE, EPT_EXEC = 1, 2, 4
_LARGE = 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000
_EXEC_ONLY_CAP = 1 << 0
_PAGE_1G_CAP = 1 << 17
_PAGE_2M_CAP = 1 << 16
_SHIFTS = (39, 30, 21, 12)


@dataclass(frozen=True)
class EptMapping:
    gpa: int  # first guest-physical address of the page
    hpa: int
    size: int
    perms: int  # EPT_READ | EPT_WRITE | EPT_EXEC, combined over all levels


class EptFault(Exception):
    """A walk that ends in an EPT violation (`misconfig` False) or an EPT misconfiguration."""

    def __init__(self, gpa: int, misconfig: bool, perms: int = 0) -> None:
        super().__init__(f"EPT {'misconfiguration' if misconfig else 'violation'} at {gpa:#x}")
        self.gpa = gpa
        self.misconfig = misconfig
        self.perms = perms  # permissions of the translation so far (0 if not present)


def _misconfigured(model: CpuModel, entry: int, level: int, leaf: bool) -> bool:
    r, w, x = entry & 1, entry & 2, entry & 4
    if w and not r:
        return True
    cap = model.msrs.get(Msr.IA32_VMX_EPT_VPID_CAP, 0)
    if x and not r and not cap & _EXEC_ONLY_CAP:
        return True
    if entry & ~((1 << model.phys_addr_bits) - 1) & 0x000F_FFFF_FFFF_F000:
        return True  # address bits beyond the physical-address width
    if leaf:
        if (entry >> 3) & 7 in (2, 3, 7):
            return True  # reserved EPT memory types
        if level == 1 and not cap & _PAGE_1G_CAP or level == 2 and entry & _LARGE and not cap & _PAGE_2M_CAP:
            return True
        size_mask = (1 << _SHIFTS[level]) - 1
        return bool(entry & _ADDR & size_mask)  # reserved low address bits of a large page
    return bool(entry & 0x78) or (level == 0 and bool(entry & _LARGE))  # bits 6:3 (and PML4E bit 7) reserved


def ept_translate(model: CpuModel, memory: PhysicalMemory, eptp: int, gpa: int) -> EptMapping:
    """Translate one guest-physical address; raises EptFault."""
    table = eptp & _ADDR
    perms = EPT_READ | EPT_WRITE | EPT_EXEC
    for level, shift in enumerate(_SHIFTS):
        entry = memory.read_bus(table + ((gpa >> shift) & 0x1FF) * 8, 8)
        if not entry & 7:
            raise EptFault(gpa, misconfig=False, perms=0)
        leaf = shift == 12 or (level in (1, 2) and bool(entry & _LARGE))
        if _misconfigured(model, entry, level, leaf):
            raise EptFault(gpa, misconfig=True)
        perms &= entry & 7
        if leaf:
            size = 1 << shift
            return EptMapping(gpa & ~(size - 1), entry & _ADDR & ~(size - 1), size, perms)
        table = entry & _ADDR
    raise AssertionError("unreachable")


def ept_mappings(model: CpuModel, memory: PhysicalMemory, eptp: int) -> list[EptMapping]:
    """Every leaf translation of an EPT hierarchy (misconfigured subtrees are left out)."""
    found: list[EptMapping] = []

    def walk(table: int, level: int, gpa_base: int, perms: int) -> None:
        shift = _SHIFTS[level]
        raw = memory.read(table, 4096) if memory.contains(table, 4096) else b""
        for i in range(len(raw) // 8):
            entry = int.from_bytes(raw[8 * i : 8 * i + 8], "little")
            if not entry & 7:
                continue
            leaf = shift == 12 or (level in (1, 2) and bool(entry & _LARGE))
            if _misconfigured(model, entry, level, leaf):
                continue
            gpa = gpa_base | i << shift
            if leaf:
                size = 1 << shift
                found.append(EptMapping(gpa, entry & _ADDR & ~(size - 1), size, perms & entry & 7))
            else:
                walk(entry & _ADDR, level + 1, gpa, perms & entry & 7)

    walk(eptp & _ADDR, 0, 0, EPT_READ | EPT_WRITE | EPT_EXEC)
    return found


def merge_runs(mappings: list[EptMapping]) -> list[EptMapping]:
    """Join mappings contiguous in both address spaces with the same permissions."""
    runs: list[EptMapping] = []
    for m in sorted(mappings, key=lambda m: m.gpa):
        last = runs[-1] if runs else None
        if last and last.gpa + last.size == m.gpa and last.hpa + last.size == m.hpa and last.perms == m.perms:
            runs[-1] = EptMapping(last.gpa, last.hpa, last.size + m.size, last.perms)
        else:
            runs.append(m)
    return runs
