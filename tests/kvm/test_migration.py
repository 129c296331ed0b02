"""Save at VM-exit boundaries and resume on every other CPU model and shadowing setting: the
console, the status and the final L1 memory image must be those of the uninterrupted run."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from nestvmx.api import VM, Host, RunResult
from nestvmx.guests.build import L2_WORKLOADS, build_guest, build_minivisor
from nestvmx.snapshot import SnapshotError

ROOT = Path(__file__).parents[2]
GUESTS = ROOT / "tests" / "guests"
CONFIGS = [("haswell", True), ("haswell", False), ("sandybridge", None)]
MEMORY_MIB = 64  # the minivisor's L2 touches memory up to 48 MiB


def _vm(program: Path, cpu: str, shadow: bool | None, trace: list[str] | None = None) -> VM:
    vm = Host(cpu, shadow).create_vm(memory_mib=MEMORY_MIB)
    vm.load(program)
    if trace is not None:
        vm.trace_sink = trace.append
    return vm


def _reference(program: Path, cpu: str = "haswell", shadow: bool | None = True) -> tuple[RunResult, bytes, list[str]]:
    trace: list[str] = []
    vm = _vm(program, cpu, shadow, trace)
    result = vm.run()
    return result, vm.l1_memory(), [line for line in trace if line.startswith("kvm_exit")]


def _save_points(exits: list[str]) -> list[int]:
    """Exit counts to stop after: before any exit, before VMXON, between VMPTRLD and VMLAUNCH,
    right after VMLAUNCH (L2 not yet run), after the first L2 exits (in L1's handler or, when L0
    handles them, inside L2), half-way and just before the end."""

    def after(reason: str, level: str = "L1") -> int | None:
        for i, line in enumerate(exits):
            if line.startswith(f"kvm_exit: {level} ") and f" reason {reason} " in line:
                return i + 1
        return None

    points = {0, after("VMXON"), after("VMPTRLD"), after("VMLAUNCH"), len(exits) // 2, len(exits) - 1}
    if (vmxon := after("VMXON")) is not None:
        points.add(vmxon - 1)
    l2 = [i + 1 for i, line in enumerate(exits) if line.startswith("kvm_exit: L2 ")]
    points.update(l2[:2])
    handled_by_l0 = [i for i in l2 if i + 1 in l2]  # the next exit is L2's again
    points.update(handled_by_l0[:1])
    return sorted(p for p in points if p is not None and 0 <= p < len(exits))


def check_migrations(program: Path, tmp_path: Path, sources: list = CONFIGS, every_target: bool = False) -> list[dict]:
    ref, ref_memory, _ = _reference(program)
    assert (ref.outcome, ref.status) == ("exit", 0), ref.message
    saves = [(point, source) for source in sources for point in _save_points(_reference(program, *source)[2])]
    states = []
    for i, (point, source) in enumerate(saves):
        vm = _vm(program, *source)
        first = vm.run(max_exits=point)
        assert first.outcome == "limit", (point, first.message)
        path = tmp_path / f"{point}.snapshot"
        vm.save(path)
        with zipfile.ZipFile(path) as archive:
            states.append(json.loads(archive.read("snapshot.json"))["vcpus"][0]["nested"])
        # Resumed on both other configurations, or (time) on one of them in turn.
        others = [c for c in CONFIGS if c != source]
        for target in others if every_target else [others[i % 2]]:
            resumed = Host(*target).restore(path)
            second = resumed.run()
            where = f"saved after {point} exits on {source}, resumed on {target}"
            assert (second.outcome, second.status) == (ref.outcome, ref.status), where
            assert first.console + second.console == ref.console, where
            assert resumed.l1_memory() == ref_memory, where
    return states


@pytest.mark.parametrize("workload", sorted(L2_WORKLOADS))
def test_minivisor_migrates_anywhere(workload: str, tmp_path: Path) -> None:
    # cpuid: saved on every configuration, resumed on every other one; the rest (time): saved on
    # one configuration, in turn, and resumed on the two others alternately.
    k = sorted(L2_WORKLOADS).index(workload)
    full = workload == "cpuid"
    sources = CONFIGS if full else [CONFIGS[k % len(CONFIGS)]]
    states = check_migrations(build_minivisor(workload, 5, "kvm"), tmp_path, sources, every_target=full)
    assert any(s["guest_mode"] and s["nested_run_pending"] for s in states)  # between VMLAUNCH and L2
    assert any(not s["guest_mode"] and s["current_vmptr"] != 2**64 - 1 for s in states)  # in L1's handler
    assert any(not s["vmxon"] for s in states)
    if workload == "pagetouch":  # EPT02 fills are L0's: saved inside L2 after it ran
        assert any(s["guest_mode"] and not s["nested_run_pending"] for s in states)


CONFORMANCE = sorted((GUESTS / "conformance").glob("*.c")) + [GUESTS / "shadow_counts.c"]


@pytest.mark.parametrize("program", CONFORMANCE, ids=lambda p: p.stem)
def test_conformance_programs_migrate_anywhere(program: Path, tmp_path: Path) -> None:
    check_migrations(build_guest([program]), tmp_path, sources=CONFIGS[:1])  # the minivisor covers all sources


def test_shadowed_vmwrite_survives_migration_to_a_processor_without_shadowing(tmp_path: Path) -> None:
    """The lost-VMWRITE bug: the value is only in the shadow VMCS when the snapshot is taken."""
    program = build_guest([GUESTS / "migrate_vmwrite.c"])
    _, _, exits = _reference(program)
    cpuid = next(i for i, line in enumerate(exits) if " reason CPUID " in line)
    assert not any(" reason VMWRITE " in line for line in exits[:cpuid])  # the VMWRITE did not exit
    vm = _vm(program, "haswell", True)
    assert vm.run(max_exits=cpuid + 1).outcome == "limit"
    vm.save(tmp_path / "s")
    resumed = Host("sandybridge").restore(tmp_path / "s").run()
    assert (resumed.outcome, resumed.status, resumed.console) == ("exit", 0, "GUEST_RIP 0x000000005a5a1000\n")


def _saved(tmp_path: Path) -> Path:
    vm = _vm(build_minivisor("cpuid", 5, "kvm"), "haswell", True)
    vm.run(max_exits=40)
    vm.save(tmp_path / "good")
    return tmp_path / "good"


def _rewrite(path: Path, edit) -> Path:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(members["snapshot.json"])
    edit(header, members)
    members["snapshot.json"] = json.dumps(header).encode()
    bad = path.with_name("bad")
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return bad


def _nested(header: dict) -> dict:
    return header["vcpus"][0]["nested"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h, m: h.update(version=2), "version 2 is not supported"),
        (lambda h, m: h.update(format="other"), "not a nestvmx snapshot"),
        (lambda h, m: h.update(memory_size=123), "memory image size differs"),
        (lambda h, m: _nested(h).update(vmxon_ptr=0x123), "bad VMXON pointer"),
        (lambda h, m: _nested(h).update(current_vmptr=1 << 40), "bad current VMCS pointer"),
        (lambda h, m: _nested(h).update(vmxon_ptr=h["memory_size"]), "bad VMXON pointer"),  # beyond L1's RAM
        (lambda h, m: m.pop("vcpu0-vmcs12.bin"), "vmcs12 is missing"),
        (lambda h, m: m.update({"vcpu0-vmcs12.bin": b"\0" * 4096}), "wrong revision"),
        (lambda h, m: h["vcpus"][0]["vmcs01"].pop("GUEST_RIP"), "expected fields"),
        (lambda h, m: h["vcpus"][0]["vmcs01"].update(GUEST_ES_SELECTOR=1 << 20), "does not fit"),
        (lambda h, m: h["vcpus"][0].update(regs=[0] * 3), "3 registers"),
        (lambda h, m: h["vcpus"][0].update(cr2=-1), "CR2 -1 is not a 64-bit value"),
        (lambda h, m: h["vcpus"][0].pop("nested"), "malformed vCPU state"),
        (lambda h, m: _nested(h).update(vmxon=False), "bad current VMCS pointer"),
    ],
)
def test_corrupted_snapshots_are_refused(tmp_path: Path, edit, message: str) -> None:
    bad = _rewrite(_saved(tmp_path), edit)
    with pytest.raises(SnapshotError, match=message):
        Host("sandybridge").restore(bad)


def test_guest_mode_with_a_vmcs12_failing_entry_checks_is_refused(tmp_path: Path) -> None:
    program = build_minivisor("cpuid", 5, "kvm")
    _, _, exits = _reference(program)
    launch = next(i for i, line in enumerate(exits) if " reason VMLAUNCH " in line)
    vm = _vm(program, "haswell", True)
    vm.run(max_exits=launch + 1)
    vm.save(tmp_path / "s")

    def break_host_rip(header: dict, members: dict) -> None:
        assert _nested(header)["guest_mode"]
        blob = bytearray(members["vcpu0-vmcs12.bin"])
        from nestvmx.arch.fields import Field as F
        from nestvmx.kvm.vmcs12 import VMCS12_OFFSETS

        offset, size = VMCS12_OFFSETS[F.HOST_RIP]
        blob[offset : offset + size] = (1 << 63).to_bytes(size, "little")  # not canonical
        members["vcpu0-vmcs12.bin"] = bytes(blob)

    with pytest.raises(SnapshotError, match="VM-entry checks"):
        Host("haswell", False).restore(_rewrite(tmp_path / "s", break_host_rip))


def test_not_a_snapshot(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="not a readable snapshot"):
        Host().restore(tmp_path / "x")
    with pytest.raises(SnapshotError, match="no such file"):
        Host().restore(tmp_path / "missing")


def _cli(*args: str):
    from click.testing import CliRunner

    from nestvmx.cli.main import main

    return CliRunner(mix_stderr=False).invoke(main, [*args])


def test_run_save_and_resume_on_the_command_line(tmp_path: Path) -> None:
    workload = ["--l1", "minivisor", "--l2", "io", "--iterations", "20"]
    full = _cli("run", *workload)
    snapshot, stats = tmp_path / "vm.snapshot", tmp_path / "stats.json"
    first = _cli("run", *workload, "--save", str(snapshot), "--save-after-exits", "120")
    assert first.exit_code == 0 and f"stopped after 120 L0 exits; snapshot saved to {snapshot}" in first.stderr
    second = _cli("resume", str(snapshot), "--cpu", "sandybridge", "--stats-json", str(stats))
    assert (full.exit_code, second.exit_code) == (0, 0)
    assert first.stdout + second.stdout == full.stdout
    assert json.loads(stats.read_text())["shadow"]["enabled"] is False


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["run", "--l1", "minivisor", "--save", "x"], 2, "--save and --save-after-exits go together"),
        (
            ["run", "--l1", "minivisor", "--save", "x", "--save-after-exits", "5", "--max-exits", "9"],
            2,
            "drop --max-exits",
        ),
        (["resume", "missing.snapshot"], 126, "missing.snapshot: no such file"),
    ],
)
def test_save_and_resume_usage_errors(args: list[str], status: int, message: str) -> None:
    result = _cli(*args)
    assert result.exit_code == status and message in result.stderr and "Traceback" not in result.stderr


def test_invalid_l1_state_in_a_snapshot_ends_the_run_as_failed_entry(tmp_path: Path) -> None:
    """Like KVM_EXIT_FAIL_ENTRY: state that passes the format checks but not the VM-entry checks."""
    bad = _rewrite(_saved(tmp_path), lambda h, m: h["vcpus"][0]["vmcs01"].update(GUEST_CR0=0))
    result = Host("sandybridge").restore(bad).run()
    assert result.outcome == "crash" and result.message == "VM entry failed: guest CR0 fixed bits"
