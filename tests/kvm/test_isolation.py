"""L1 cannot reach beyond its own memory through the pointers it gives L0 (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestvmx.api import Host
from nestvmx.engine.ept import EptFault, ept_translate
from nestvmx.guests.build import build_guest

GUESTS = Path(__file__).resolve().parents[2] / "tests" / "guests"


@pytest.mark.parametrize("shadow", [True, False])
def test_l1_ept_mapping_l2_past_l1_ram_ends_the_run_cleanly(shadow: bool) -> None:
    vm = Host("haswell", shadow).create_vm()
    vm.load(build_guest([GUESTS / "ept12_outside.c"]))
    result = vm.run()
    assert result.outcome == "crash"
    assert result.message.startswith("L1's EPT maps L2 guest-physical 0x2000000 outside L1's memory")
    assert vm.kvm.vcpus[0].stats.ept02_fills == 0  # nothing was mapped for L2


def test_l1_memory_window_ends_at_l1_ram() -> None:
    vm = Host().create_vm(memory_mib=16)
    vm.load(build_guest([GUESTS / "shadow_counts.c"]))
    vcpu = vm.kvm.vcpus[0]
    l1 = vcpu.nested.l1_memory
    before = vcpu.memory.read(vcpu.vmcs01, 4096)
    assert l1.read_bus(vcpu.vmcs01, 4) == 0xFFFF_FFFF  # L0's vmcs01 lies past L1's RAM: reads as all ones
    l1.write_bus(vcpu.vmcs01, 4, 0)  # and writes there are dropped
    assert vcpu.memory.read(vcpu.vmcs01, 4096) == before


def test_eptp12_past_l1_ram_is_an_ept_misconfiguration() -> None:
    vm = Host().create_vm(memory_mib=16)
    vm.load(build_guest([GUESTS / "shadow_counts.c"]))
    nested = vm.kvm.vcpus[0].nested
    with pytest.raises(EptFault) as fault:
        ept_translate(nested.model, nested.l1_memory, (1 << 35) | 3 << 3 | 6, 0x1000)
    assert fault.value.misconfig  # the paging entries read as all ones: reserved bits set


def test_huge_msr_load_count_fails_at_the_recommended_maximum() -> None:
    """A count of 2^32 - 1 must not make L0 loop: the load fails at entry 513 (KVM's rule)."""
    vm = Host().create_vm(memory_mib=16)
    vm.load(build_guest([GUESTS / "shadow_counts.c"]))
    area = 0x400000
    entry = (0x174).to_bytes(4, "little") + bytes(4) + (0x10).to_bytes(8, "little")  # IA32_SYSENTER_CS
    vm.kvm.vcpus[0].memory.write(area, entry * 600)
    assert vm.kvm.vcpus[0].nested._load_msrs(area, 2**32 - 1) == 513
    assert vm.kvm.vcpus[0].nested._load_msrs(area, 512) is None
