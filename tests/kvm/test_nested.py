"""Nested VMX: L1 programs that use VMX under L0 (conformance, TAP), the built-in minivisor with
each L2 workload, the statistics of nested runs and the vmcs12 format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from nestvmx.api import Host
from nestvmx.arch.fields import VMCS_FIELDS
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import Msr
from nestvmx.cli.main import main
from nestvmx.guests.build import build_guest, build_minivisor
from nestvmx.hw.cpu_models import get_cpu_model
from nestvmx.kvm.cpuid import CR4_GUEST_VALID
from nestvmx.kvm.nested_caps import nested_model
from nestvmx.kvm.vmcs12 import VMCS12_OFFSETS, VMCS12_REVISION, VMCS12_SIZE, Vmcs12

CONFORMANCE = Path(__file__).resolve().parents[1] / "guests" / "conformance"
MODELS = ["haswell", "sandybridge"]


def run_program(source: Path, cpu: str, shadow: bool | None = None):
    vm = Host(cpu, shadow).create_vm()
    vm.load(build_guest([source]))
    return vm.run(max_exits=200_000)


@pytest.mark.parametrize("cpu", MODELS)
@pytest.mark.parametrize("program", sorted(p.name for p in CONFORMANCE.glob("*.c")))
def test_conformance_program(program: str, cpu: str) -> None:
    result = run_program(CONFORMANCE / program, cpu)
    failed = [line for line in result.console.splitlines() if line.startswith("not ok")]
    assert not failed, result.console
    assert result.outcome == "exit" and result.status == 0, result.message
    assert re.search(r"^ok \d+ - ", result.console, re.M) and "END" in result.console


@pytest.mark.parametrize("cpu", MODELS)
def test_invalidation_types_as_the_sdm_says(cpu: str) -> None:
    """INVEPT/INVVPID cases where Bochs departs from the SDM (not a conformance program)."""
    result = run_program(CONFORMANCE.parent / "invalidation_types.c", cpu)
    assert result.outcome == "exit" and result.status == 0, result.console + result.message
    assert len(re.findall(r"^ok ", result.console, re.M)) == 4


# Per iteration of each workload: the L2 exits L1 handles, and the L0 exits of each reason.
WORKLOADS = {
    "cpuid": (1, {"CPUID": 1}),
    "vmcall": (1, {"VMCALL": 1}),
    "io": (1, {"IO_INSTRUCTION": 1}),
    "msr": (2, {"RDMSR": 1, "WRMSR": 1}),
    "pagetouch": (1, {"EPT_VIOLATION": 2}),  # L1's EPT misses (reflected), then L0 fills EPT02
}


def run_minivisor(workload: str, n: int, cpu: str, shadow: bool = False) -> dict:
    vm = Host(cpu, shadow_vmcs=shadow).create_vm()
    vm.load(build_minivisor(workload, n))
    result = vm.run(max_exits=100_000)
    assert result.outcome == "exit" and result.status == 0, result.console + result.message
    per_iteration, _ = WORKLOADS[workload]
    assert f"workload done, {n} iterations, {per_iteration * n + 1} L2 exits" in result.console
    return result.stats


@pytest.mark.parametrize("cpu", MODELS)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_minivisor_workloads(workload: str, cpu: str) -> None:
    per_iteration, reasons = WORKLOADS[workload]
    small, large = run_minivisor(workload, 10, cpu), run_minivisor(workload, 30, cpu)
    for s, n in ((small, 10), (large, 30)):
        assert s["nested"]["vmexits"] == s["nested"]["vmentries"] == per_iteration * n + 1  # + the final VMCALL
        assert s["l0_exits"]["from_l2"] >= s["nested"]["vmexits"]
        assert s["l0_exits"]["by_reason"]["VMRESUME"] == per_iteration * n
    for reason, count in reasons.items():
        assert large["l0_exits"]["by_reason"][reason] - small["l0_exits"]["by_reason"][reason] == 20 * count
    # EPT02 is filled on demand: the 2 MiB page L2's code and stack are in, then (pagetouch) each
    # page once L1 has mapped it in EPT12.
    assert small["nested"]["ept02_fills"] == 1 + (10 if workload == "pagetouch" else 0)
    assert large["nested"]["ept02_fills"] == 1 + (30 if workload == "pagetouch" else 0)


@pytest.mark.parametrize("footprint, exits", [("kvm2010", 13), ("kvm", 9), ("kvm2017", 11), ("minimal", 6)])
def test_l0_exits_per_nested_cpuid_without_shadowing(footprint: str, exits: int) -> None:
    """The L2 exit + L1's VMREADs + VMWRITEs (+ RDMSRs) + VMRESUME: kvm2010 1 + 7 + 4 + 1 (Turtles'
    13), kvm 1 + 6 + 1 + 1, kvm2017 1 + 7 + 1 + 1 + 1, minimal 1 + 3 + 1 + 1 (footprints.py)."""
    small, large = (Host(shadow_vmcs=False).create_vm() for _ in range(2))
    small.load(build_minivisor("cpuid", 10, footprint))
    large.load(build_minivisor("cpuid", 60, footprint))
    a, b = small.run().stats["l0_exits"]["total"], large.run().stats["l0_exits"]["total"]
    assert (b - a) / 50 == exits


def test_cli_minivisor_and_nested_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    result = CliRunner().invoke(
        main, ["run", "--l1", "minivisor", "--l2", "vmcall", "--iterations", "5", "--trace", str(trace)]
    )
    assert result.exit_code == 0 and "VMCALL: 6" in result.output
    lines = trace.read_text().splitlines()
    assert sum(line.startswith("kvm_nested_vmexit:") for line in lines) == 6
    assert any(line.startswith("kvm_exit: L2 vcpu 0 reason VMCALL") for line in lines)


def test_cli_needs_a_program_or_l1() -> None:
    assert CliRunner().invoke(main, ["run"]).exit_code == 2


def test_vmcs12_layout_is_fixed_and_fits() -> None:
    spans = sorted(VMCS12_OFFSETS.values())
    assert spans[0][0] >= 0x10 and spans[-1][0] + spans[-1][1] <= VMCS12_SIZE
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
    assert set(VMCS12_OFFSETS) == {f.encoding for f in VMCS_FIELDS}
    assert VMCS12_OFFSETS[F.GUEST_ES_SELECTOR] == (0x10 + 2 * 5, 2)  # 16-bit fields come first, in order


def test_vmcs12_roundtrip_through_memory_bytes() -> None:
    v = Vmcs12(0x5000, launched=True, abort=3, fields={F.GUEST_RIP: 0x1234, F.VMCS_LINK_POINTER: 2**64 - 1})
    blob = v.to_bytes()
    assert int.from_bytes(blob[:4], "little") == VMCS12_REVISION and blob[8] == 1
    back = Vmcs12.from_bytes(0x5000, blob)
    assert back.launched and back.abort == 3 and back[F.GUEST_RIP] == 0x1234 and back[F.VMCS_LINK_POINTER] == 2**64 - 1


def test_nested_capabilities_offer_only_what_l0_emulates() -> None:
    n = nested_model(get_cpu_model("haswell"))
    assert n.revision_id == VMCS12_REVISION and n.vmcs_size == VMCS12_SIZE
    assert not n.has_vmcs_shadowing and n.vmwrite_any_field  # MISC bit 29 as KVM offers it
    assert "VMREAD_BITMAP" not in {f.name for f in n.fields.values()}
    assert "EPT_POINTER" in {f.name for f in n.fields.values()}
    host, m = get_cpu_model("haswell").msrs, n.msrs
    assert not m[Msr.IA32_VMX_BASIC] >> 49 & 1  # no dual-monitor SMM: IA32_SMM_MONITOR_CTL is not emulated
    assert m[Msr.IA32_VMX_MISC] >> 5 & 1 == host[Msr.IA32_VMX_MISC] >> 5 & 1 == 1  # exits store EFER.LMA
    assert m[Msr.IA32_VMX_CR4_FIXED1] == host[Msr.IA32_VMX_CR4_FIXED1] & CR4_GUEST_VALID  # L1's CPUID features
    assert m[Msr.IA32_VMX_CR4_FIXED1] == 0x27FF  # VME..OSXMMEXCPT, VMXE; not SMXE, FSGSBASE, PCIDE, OSXSAVE, SMEP
    for plain, true in (
        (Msr.IA32_VMX_PINBASED_CTLS, Msr.IA32_VMX_TRUE_PINBASED_CTLS),
        (Msr.IA32_VMX_PROCBASED_CTLS, Msr.IA32_VMX_TRUE_PROCBASED_CTLS),
        (Msr.IA32_VMX_EXIT_CTLS, Msr.IA32_VMX_TRUE_EXIT_CTLS),
        (Msr.IA32_VMX_ENTRY_CTLS, Msr.IA32_VMX_TRUE_ENTRY_CTLS),
    ):
        assert m[plain] >> 32 == m[true] >> 32  # the same allowed 1-settings (SDM A.3.1)


@pytest.mark.parametrize("shadow_fields, exits", [("linux-4.10", 4), ("current", 3)])
def test_l0_exits_per_nested_hypercall_of_linux_4_10(shadow_fields: str, exits: int) -> None:
    """NEVE's setting: L1 Linux 4.10 (kvm2017) on an L0 with VMCS shadowing.  With 4.10's shadow
    field lists in L0: the VMCALL, L1's VMREAD of GUEST_SS_AR_BYTES (vmx_get_cpl; not in 4.10's
    lists), its RDMSR of IA32_DEBUGCTL (get_debugctlmsr) and VMRESUME; today's lists shadow SS AR."""
    counts = []
    for iterations in (10, 60):
        vm = Host(shadow_fields=shadow_fields).create_vm()
        vm.load(build_minivisor("vmcall", iterations, "kvm2017"))
        stats = vm.run().stats
        counts.append((stats["l0_exits"]["total"], stats["l0_exits"]["by_reason"].get("RDMSR", 0)))
    assert (counts[1][0] - counts[0][0]) / 50 == exits
    assert counts[1][1] - counts[0][1] == 50  # one RDMSR of IA32_DEBUGCTL per round


def test_unknown_shadow_field_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown shadow field lists"):
        Host(shadow_fields="linux-2.6")
