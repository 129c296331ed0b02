"""VMCS shadowing in L0: exit-less VMREAD/VMWRITE for L1, invisible to L1 (differential tests
shadow on vs. off), its counters, and one shadow VMCS per vCPU with no leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestvmx.api import Host
from nestvmx.engine.engine import Engine
from nestvmx.guests.build import build_guest, build_minivisor
from nestvmx.guests.footprints import FOOTPRINTS
from nestvmx.kvm.vmcs_shadow_fields import SHADOW_FIELD_LISTS, SHADOW_READ_ONLY_FIELDS, SHADOW_READ_WRITE_FIELDS

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "tests" / "guests"
PROGRAMS = sorted((GUESTS / "conformance").glob("*.c")) + [GUESTS / "shadow_counts.c", ROOT / "examples" / "hello.c"]


def run(elf: Path, shadow: bool, cpu: str = "haswell", shadow_fields: str = "current"):
    vm = Host(cpu, shadow_vmcs=shadow, shadow_fields=shadow_fields).create_vm()
    vm.load(elf)
    result = vm.run(max_exits=200_000)
    return result, bytes(vm.kvm.vcpus[0].memory.buffer[: vm.memory_size])


def assert_invisible(elf: Path, shadow_fields: str = "current") -> tuple[dict, dict]:
    """Everything L1 can observe is identical with and without shadowing: console, status, memory."""
    (on, mem_on), (off, mem_off) = run(elf, True, shadow_fields=shadow_fields), run(elf, False)
    assert (on.outcome, on.status, on.console) == (off.outcome, off.status, off.console)
    assert mem_on == mem_off, "L1's memory (incl. its vmcs12 regions) differs"
    assert on.stats["instructions"] == off.stats["instructions"]
    assert on.stats["shadow"]["enabled"] and not off.stats["shadow"]["enabled"]
    return on.stats, off.stats


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_programs_are_unaware_of_shadowing(program: Path) -> None:
    assert_invisible(build_guest([program]))


@pytest.mark.parametrize("workload", ["cpuid", "vmcall", "io", "msr", "pagetouch"])
def test_minivisor_is_unaware_of_shadowing_and_exits_less(workload: str) -> None:
    on, off = assert_invisible(build_minivisor(workload, 20))
    assert on["l0_exits"]["total"] < off["l0_exits"]["total"]
    assert on["nested"] == off["nested"]
    assert on["l0_exits"]["from_l2"] == off["l0_exits"]["from_l2"]


@pytest.mark.parametrize("footprint", sorted(FOOTPRINTS))
@pytest.mark.parametrize("shadow_fields", sorted(SHADOW_FIELD_LISTS))
def test_every_footprint_and_field_list_is_invisible(footprint: str, shadow_fields: str) -> None:
    """Each L1 footprint under L0's shadow field lists of each KVM version: invisible to L1."""
    on, off = assert_invisible(build_minivisor("mix", 8, footprint), shadow_fields)
    assert on["l0_exits"]["from_l2"] == off["l0_exits"]["from_l2"]


@pytest.mark.parametrize("program", [p for p in PROGRAMS if p.stem in ("vmx_instructions", "shadow_counts")])
def test_programs_are_unaware_of_linux_4_10_shadowing(program: Path) -> None:
    assert_invisible(build_guest([program]), "linux-4.10")


def test_exact_counts_for_known_accesses() -> None:
    (on, _), (off, _) = run(build_guest([GUESTS / "shadow_counts.c"]), True), run(
        build_guest([GUESTS / "shadow_counts.c"]), False
    )
    assert on.status == off.status == 0 and "0x0000000000005000" in on.console
    s, e = on.stats["shadow"], on.stats["l0_exits"]["by_reason"]
    assert (s["vmwrite"], s["vmread"]) == (5, 4)  # 5 GUEST_RIP writes; 3 EXIT_QUALIFICATION + 1 GUEST_RIP reads
    assert e.get("VMREAD") == 2 and e.get("VMWRITE") == 1  # VM_INSTRUCTION_ERROR twice, EPT_POINTER once
    assert off.stats["l0_exits"]["by_reason"]["VMREAD"] == 6 and off.stats["l0_exits"]["by_reason"]["VMWRITE"] == 6
    # VMPTRLD syncs vmcs12 into the shadow once before L1 runs; VMCLEAR copies the RW fields back.
    assert (s["copies_to_shadow"], s["copies_from_shadow"]) == (1, 1)
    shadowed = (
        len(SHADOW_READ_ONLY_FIELDS) + len(SHADOW_READ_WRITE_FIELDS) - 4
    )  # no INTR_STATUS, PML_INDEX, TPR_THRESHOLD, timer
    assert s["fields_copied"] == shadowed + (len(SHADOW_READ_WRITE_FIELDS) - 4)
    assert (s["vmcs_allocated"], s["vmcs_live"]) == (1, 0)


def test_sandybridge_cannot_shadow() -> None:
    result, _ = run(build_guest([GUESTS / "shadow_counts.c"]), True, cpu="sandybridge")
    assert result.status == 0 and not result.stats["shadow"]["enabled"] and result.stats["shadow"]["vmread"] == 0


def test_repeated_vmxon_leaks_no_shadow_vmcs() -> None:
    result, _ = run(build_guest([GUESTS / "vmxon_loop.c"]), True)
    assert result.status == 0 and result.console == "done\n"
    s = result.stats["shadow"]
    assert s["vmcs_live"] == 1  # in VMX operation at the end: exactly one per vCPU
    assert s["vmcs_allocated"] == 1 + 10000  # the first VMXON, then one per VMXOFF/VMXON pair
    assert result.stats["l0_exits"]["by_reason"]["VMXON"] == 20001


def test_cpuid_costs_two_l0_exits_per_l2_exit_with_shadowing() -> None:
    """The L2 exit and VMRESUME (Turtles' "2"): with the kvm footprint, its 6 VMREADs (exit reason, IDT
    vectoring, RFLAGS, length, RIP, interruptibility) and the VMWRITE of GUEST_RIP are all shadowed."""
    small, large = (Host(shadow_vmcs=True).create_vm() for _ in range(2))
    small.load(build_minivisor("cpuid", 10, "kvm"))
    large.load(build_minivisor("cpuid", 60, "kvm"))
    a, b = small.run().stats, large.run().stats
    assert (b["l0_exits"]["total"] - a["l0_exits"]["total"]) / 50 == 2
    assert (b["shadow"]["vmread"] - a["shadow"]["vmread"]) / 50 == 6
    assert (b["shadow"]["vmwrite"] - a["shadow"]["vmwrite"]) / 50 == 1
    assert (b["shadow"]["copies_to_shadow"] - a["shadow"]["copies_to_shadow"]) / 50 == 1


# Property-based: random VMX instruction sequences behave identically with and without shadowing.
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**16), st.integers(0, 2**64 - 1)), min_size=1, max_size=40)
_SCRIPT_ADDRESS = 0x800000


def run_script(ops: list[tuple[int, int, int]], shadow: bool, shadow_fields: str = "current"):
    vm = Host("haswell", shadow_vmcs=shadow, shadow_fields=shadow_fields).create_vm()
    vm.load(build_guest([GUESTS / "vmx_script.c"]))
    blob = len(ops).to_bytes(8, "little") + b"".join(x.to_bytes(8, "little") for op in ops for x in op)
    vm.kvm.vcpus[0].memory.write(_SCRIPT_ADDRESS, blob)
    result = vm.run(max_exits=20_000)
    return result, bytes(vm.kvm.vcpus[0].memory.buffer[: vm.memory_size])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_random_vmx_sequences_are_unaware_of_shadowing(ops: list[tuple[int, int, int]]) -> None:
    (on, mem_on), (off, mem_off) = run_script(ops, True), run_script(ops, False)
    assert on.outcome in ("exit", "crash", "limit")
    assert (on.outcome, on.status, on.console, on.message) == (off.outcome, off.status, off.console, off.message)
    assert mem_on == mem_off


def test_emulated_vmwrite_of_a_shadowed_read_only_field_updates_the_shadow() -> None:
    """Found by benchmarks/fuzz_campaign.py: VMWRITE of GUEST_PHYSICAL_ADDRESS_HIGH (read-only, so
    it exits) must reach the shadow VMCS, from which L1's next VMREAD is served (KVM's handle_vmwrite)."""
    ops = [(0, 5, 0), (2, 0, 0), (3, 0, 0), (6, 11, 0xFFFF_FFFF), (5, 11, 0)]
    (on, mem_on), (off, mem_off) = run_script(ops, True), run_script(ops, False)
    assert "4: op 5 flags 0x0000000000000000 value 0x00000000ffffffff" in off.console
    assert (on.console, mem_on) == (off.console, mem_off)


def _without_native_shadow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the C hook unarmed: every VMREAD/VMWRITE of L1 stops and goes through execute()."""
    monkeypatch.setattr(Engine, "_arm_shadow_path", lambda self, ctx: None)


def _observed(result, memory: bytes) -> tuple:
    stats = {key: value for key, value in result.stats.items() if key != "wall_seconds"}
    return result.outcome, result.status, result.console, result.message, memory, stats


def _count_stops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the VMX instructions that stop the guest (those the C hook does not serve)."""
    stops, original = [], Engine._on_invalid

    def counting(self) -> None:
        stops.append(1)
        original(self)

    monkeypatch.setattr(Engine, "_on_invalid", counting)
    return stops


@pytest.mark.parametrize("elf", [*PROGRAMS, "mix"], ids=lambda p: getattr(p, "stem", p))
def test_native_shadow_path_matches_the_processor_model(elf, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C hook serving shadowed VMREAD/VMWRITE (engine/native.c) gives what the processor
    model's execute() gives: same outcome, memory and statistics, events and instruction counts;
    and it serves accesses (fewer stops) where the program makes shadowed ones."""
    shadowed = elf == "mix" or getattr(elf, "stem", "") == "shadow_counts"
    elf = build_minivisor("mix", 8) if elf == "mix" else build_guest([elf])
    stops = _count_stops(monkeypatch)
    native = _observed(*run(elf, True))
    native_stops = len(stops)
    stops.clear()
    _without_native_shadow_path(monkeypatch)
    assert _observed(*run(elf, True)) == native
    assert native_stops < len(stops) if shadowed else native_stops <= len(stops)
    events = native[-1]["events"]  # the hook serves only shadowed accesses, each sparing one stop
    assert len(stops) - native_stops <= events.get("shadow_vmread", 0) + events.get("shadow_vmwrite", 0)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
# VMXON, VMPTRLD, then GUEST_CS_AR_BYTES (read-write in 4.10's lists: reserved bits dropped),
# GUEST_PHYSICAL_ADDRESS (read-only) in HIGH and FULL access, and GUEST_RIP, written and read back.
@example([(0, 5, 0), (3, 0, 0), (6, 21, 2**32 - 1), (5, 21, 0), (6, 11, 0x1234), (5, 11, 0), (5, 10, 0)])
@example([(0, 5, 0), (3, 0, 0), (6, 0, 0xDEAD_BEEF_0000_F00D), (5, 0, 0)])
def test_native_shadow_path_matches_on_random_vmx_sequences(ops: list[tuple[int, int, int]]) -> None:
    """Random encodings and values under both shadow field lists: unsupported components,
    read-only fields, HIGH accesses, access-rights bytes."""
    for shadow_fields in SHADOW_FIELD_LISTS:
        native = _observed(*run_script(ops, True, shadow_fields))
        with pytest.MonkeyPatch.context() as monkeypatch:
            _without_native_shadow_path(monkeypatch)
            assert _observed(*run_script(ops, True, shadow_fields)) == native
