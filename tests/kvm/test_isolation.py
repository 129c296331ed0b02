"""L1 cannot reach beyond its own memory through the pointers it gives L0 (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestvmx.api import Host
from nestvmx.engine.ept import EptFault, ept_mappings, ept_translate
from nestvmx.guests.build import build_guest, build_minivisor
from nestvmx.kvm import nested

GUESTS = Path(__file__).resolve().parents[2] / "tests" / "guests"


@pytest.mark.parametrize("shadow", [True, False])
def test_l1_ept_mapping_l2_past_l1_ram_ends_the_run_cleanly(shadow: bool) -> None:
    vm = Host("haswell", shadow).create_vm()
    vm.load(build_guest([GUESTS / "ept12_outside.c"]))
    result = vm.run()
    assert result.outcome == "crash"
    assert result.message.startswith("L1's EPT maps L2 guest-physical 0x2000000 outside L1's memory")
    vcpu = vm.kvm.vcpus[0]
    mapped = ept_mappings(vcpu.model, vcpu.memory, vcpu.nested.ept02.eptp)
    assert vcpu.stats.ept02_fills == len(mapped) == 1  # L2's code page, and nothing past L1's RAM
    assert all(m.hpa + m.size <= vcpu.guest_size for m in mapped)


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


@pytest.mark.parametrize("cpu, shadow", [("haswell", True), ("haswell", False), ("sandybridge", None)])
def test_aliased_ept12_is_never_walked_whole(cpu: str, shadow: bool | None) -> None:
    """An EPT12 of ~10^10 aliased leaves: EPT02 is filled on demand (KVM's shadow EPT), so VM entry
    is immediate and L2's 1,024 distinct aliases of one page work."""
    vm = Host(cpu, shadow).create_vm()
    vm.load(build_guest([GUESTS / "ept12_alias.c"]))
    result = vm.run(max_exits=5000)
    assert (result.outcome, result.status, result.console) == ("exit", 0, "ok\n"), result.message
    assert result.stats["nested"]["ept02_fills"] == 1 + 1024  # L2's code page, then each alias
    assert result.stats["wall_seconds"] < 30


def test_ept02_stays_within_its_page_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past EPT02_MAX_PAGES L0 zaps EPT02 (as KVM zaps shadow pages) and L2 refills it."""
    monkeypatch.setattr(nested, "EPT02_MAX_PAGES", 6)
    vm = Host().create_vm()
    vm.load(build_minivisor("pagetouch", 40, "kvm"))
    vcpu = vm.kvm.vcpus[0]
    peak = 0
    fill = nested.NestedVmx.handle_ept_violation_l2

    def watched(self: nested.NestedVmx):
        nonlocal peak
        end = fill(self)
        peak = max(peak, len(self.ept02.pages))
        return end

    monkeypatch.setattr(nested.NestedVmx, "handle_ept_violation_l2", watched)
    result = vm.run()
    assert (result.outcome, result.status) == ("exit", 0), result.message
    assert "40 iterations, 41 L2 exits" in result.console
    assert peak <= 6 and vcpu.stats.ept02_fills > 1 + 40  # refills after the zaps


def test_l2_gdt_outside_ept12_does_not_crash_the_model() -> None:
    """The engine loads L2's segment registers from its GDT (a real VM entry does not read it): where
    EPT12 does not map the GDT, L1 sees an EPT violation for it (Bochs: L2 runs on and exits with
    VMCALL; a known divergence, docs/security.md) -- never a crash of nestvmx."""
    vm = Host().create_vm()
    vm.load(build_guest([GUESTS / "ept12_no_gdt.c"]))
    result = vm.run(max_exits=5000)
    assert (result.outcome, result.status) == ("exit", 0), result.message
    assert result.console == "L2 exit reason 48 guest-physical 0x0000000001000008\n"


@pytest.mark.parametrize("cpu, shadow", [("haswell", True), ("haswell", False), ("sandybridge", None)])
def test_vm_exit_msr_load_failure_is_a_vmx_abort(cpu: str, shadow: bool | None) -> None:
    vm = Host(cpu, shadow).create_vm()
    program = build_guest([GUESTS / "vmx_abort.c"])
    vm.load(program)
    result = vm.run(max_exits=5000)
    assert result.outcome == "crash" and result.console == ""
    assert result.message.startswith("guest crashed: VMX abort 4 (loading VM-exit MSR-load entry 1 failed)")
    vmptr = vm.kvm.vcpus[0].nested.current_vmptr
    assert int.from_bytes(vm.l1_memory()[vmptr + 4 : vmptr + 8], "little") == 4  # the VMX-abort indicator
