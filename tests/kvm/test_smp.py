"""Several vCPUs: per-vCPU VMX operation and shadow VMCS, the cross-vCPU VMPTRLD outcome,
deterministic scheduling, halted vCPUs, the host timer, statistics and migration."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from nestvmx.api import Host, RunResult
from nestvmx.cli.main import main
from nestvmx.engine.engine import Engine
from nestvmx.guests.build import build_guest, build_minivisor
from nestvmx.kvm.cpuid import cpuid
from nestvmx.kvm.vm import DEFAULT_SLICE, Schedule

SMP = Path(__file__).parents[1] / "guests" / "smp"
CONFIGS = [("haswell", True), ("haswell", False), ("sandybridge", None)]


def _run(program: Path, vcpus: int, cpu: str = "haswell", shadow: bool | None = True, **kw) -> RunResult:
    vm = Host(cpu, shadow).create_vm(vcpus=vcpus, **kw)
    vm.load(program)
    return vm.run(max_exits=200_000)


def _without_wall(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "wall_seconds"}


@pytest.mark.parametrize("vcpus", [2, 5, 16])
def test_every_vcpu_has_its_own_vmcs_and_shadow_vmcs(vcpus: int) -> None:
    program = build_guest([SMP / "vmcs_per_vcpu.c"])
    results = {config: _run(program, vcpus, *config) for config in CONFIGS}
    for config, result in results.items():
        assert (result.outcome, result.status) == ("exit", 0), (config, result.console, result.message)
        assert result.console.count("\nok ") + result.console.startswith("ok ") == vcpus
    assert len({r.console for r in results.values()}) == 1  # shadowing is invisible to L1
    shadow = results[("haswell", True)].stats
    assert shadow["shadow"]["vmcs_allocated"] == shadow["shadow"]["vmcs_live"] == vcpus
    assert [v["shadow"]["vmcs_live"] for v in shadow["vcpus"]] == [1] * vcpus
    assert shadow["shadow"]["vmread"] > 0 and shadow["shadow"]["vmwrite"] > 0
    plain = results[("haswell", False)].stats
    assert plain["shadow"]["vmcs_allocated"] == 0
    assert plain["l0_exits"]["by_reason"]["VMREAD"] > shadow["l0_exits"]["by_reason"]["VMREAD"]


def test_same_vmcs_current_on_two_vcpus_gives_kvms_outcome() -> None:
    """No corrupted vmcs12, no traceback: per-vCPU copies, the last VMCLEAR's copy in memory."""
    program = build_guest([SMP / "same_vmcs.c"])
    consoles = set()
    for config in CONFIGS:
        result = _run(program, 2, *config)
        assert (result.outcome, result.status) == ("exit", 0), (config, result.console, result.message)
        assert "not ok" not in result.console and result.console.count("ok - ") == 4
        consoles.add(result.console)
    assert len(consoles) == 1


def test_stats_totals_are_the_sums_of_the_vcpus() -> None:
    stats = _run(build_minivisor("cpuid", 30, "kvm", vcpus=3), 3).stats
    assert [v["vcpu"] for v in stats["vcpus"]] == [0, 1, 2]
    for group, key in [("l0_exits", "total"), ("nested", "vmexits"), ("shadow", "vmread"), ("instructions", "l2")]:
        assert stats[group][key] == sum(v[group][key] for v in stats["vcpus"])
    assert stats["modeled_cycles"] == sum(v["modeled_cycles"] for v in stats["vcpus"])
    assert stats["nested"]["vmexits"] == 3 * 31  # 30 CPUID + the final VMCALL on each vCPU


@pytest.mark.parametrize("schedule", ["rr", "rr:500", "exit", "exit:3"])
def test_runs_are_deterministic(schedule: str) -> None:
    program = build_minivisor("mix", 6, "kvm", vcpus=4)
    first, second = (_run(program, 4, schedule=schedule) for _ in range(2))
    assert (first.outcome, first.status) == ("exit", 0), first.message
    assert "4 vCPUs x 6 iterations, 28 L2 exits" in first.console
    assert first.console == second.console
    assert _without_wall(first.stats) == _without_wall(second.stats)


def test_a_lone_vcpu_that_exits_often_never_sees_the_tick() -> None:
    stats = _run(build_minivisor("cpuid", 20, "kvm"), 1).stats
    assert "EXTERNAL_INTERRUPT" not in stats["l0_exits"]["by_reason"]


def _program(tmp_path: Path, body: str) -> Path:
    source = tmp_path / "p.c"
    source.write_text("#include <nestvmx.h>\nint main(void) {\n" + body + "\n}\n")
    return build_guest([source])


def test_a_spinning_vcpu_is_preempted_by_the_host_timer(tmp_path: Path) -> None:
    program = _program(
        tmp_path,
        "u32 a, b, c, d; cpuid(1, 0, &a, &b, &c, &d);\n"
        "if (b >> 24) for (;;) {}\n"  # vCPU 1 never exits by itself
        'for (volatile int i = 0; i < 50000; i++) {}\nputs("done\\n"); return 7;',
    )
    result = _run(program, 2, schedule="rr:1000")
    assert (result.outcome, result.status, result.console, result.message) == ("exit", 7, "done\n", "")
    timer = [v["l0_exits"]["by_reason"].get("EXTERNAL_INTERRUPT", 0) for v in result.stats["vcpus"]]
    assert all(t > 10 for t in timer)


@pytest.mark.parametrize("schedule", ["rr:1", "rr:2", "rr:3", "rr:7"])
def test_the_host_timer_can_fall_on_an_instruction_run_again_after_its_stop(schedule: str) -> None:
    # sti; nop; jmp back: the engine stops in front of STI and runs it again; the timer's count can
    # end on that second run (it crashed with "stopped for no known reason"), and STI counts once.
    vm = Host().create_vm(vcpus=2, schedule=schedule)
    vm.load(bytes.fromhex("fb90ebfc"), 0x200000)
    result = vm.run(max_exits=300)
    assert (result.outcome, result.message) == ("limit", "stopped after 300 exits (--max-exits)")
    slice_ = int(schedule[3:])
    assert result.stats["instructions"]["l1"] == 300 * 2 * slice_


def test_an_exception_in_the_engines_native_callback_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, address: int) -> bool:
        raise RuntimeError(f"boom at {address:#x}")

    monkeypatch.setattr(Engine, "_on_special", broken)
    vm = Host().create_vm()
    vm.load(bytes.fromhex("fb90ebfc"), 0x200000)
    with pytest.raises(RuntimeError, match="boom at 0x200000"):
        vm.run(max_exits=10)


def test_halted_vcpus_stop_only_when_all_have(tmp_path: Path) -> None:
    program = _program(
        tmp_path,
        'u32 a, b, c, d; cpuid(1, 0, &a, &b, &c, &d);\nputc("ab"[b >> 24]);\nfor (;;) __asm__ volatile("hlt");',
    )
    result = _run(program, 2)
    assert result.outcome == "crash" and sorted(result.console) == ["a", "b"]
    assert result.message.startswith("vCPU ") and "halted (HLT)" in result.message


def test_a_crash_names_the_vcpu(tmp_path: Path) -> None:
    program = _program(
        tmp_path,
        'u32 a, b, c, d; cpuid(1, 0, &a, &b, &c, &d);\nif (b >> 24 == 2) __asm__ volatile("ud2");\n'
        'for (;;) __asm__ volatile("pause");',
    )
    result = _run(program, 3)
    assert result.outcome == "crash" and result.message.startswith("vCPU 2: guest crashed: #UD")


def test_cpuid_topology() -> None:
    from nestvmx.hw.cpu_models import get_cpu_model

    model = get_cpu_model("haswell")
    eax, ebx, ecx, edx = cpuid(model, 1, 0, apic_id=5, vcpus=8)
    assert ebx >> 24 == 5 and (ebx >> 16) & 0xFF == 8 and edx >> 28 & 1
    assert cpuid(model, 0xB, 0, 5, 8) == (0, 1, 1 << 8, 5)
    assert cpuid(model, 0xB, 1, 5, 8) == (3, 8, 1 | 2 << 8, 5)
    assert cpuid(model, 0xB, 2, 5, 8) == (0, 0, 2, 5)  # level type 0: no more levels


def test_schedule_parsing() -> None:
    assert Schedule.parse("rr") == Schedule(DEFAULT_SLICE, None)
    assert Schedule.parse("rr:250") == Schedule(250, None)
    assert Schedule.parse("exit") == Schedule(DEFAULT_SLICE, 1)
    assert str(Schedule.parse("exit:4")) == "exit:4"
    for bad in ("fifo", "rr:0", "rr:x", "exit:-1", ""):
        with pytest.raises(ValueError):
            Schedule.parse(bad)


@pytest.mark.parametrize(
    "args", [["--vcpus", "0"], ["--vcpus", "33"], ["--schedule", "lottery"], ["--schedule", "rr:0"]]
)
def test_bad_smp_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["run", "--l1", "minivisor", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_create_vm_rejects_bad_vcpu_counts() -> None:
    for bad in (0, 33):
        with pytest.raises(ValueError):
            Host().create_vm(vcpus=bad)


def test_cli_runs_the_minivisor_on_several_vcpus(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    args = ["run", "--l1", "minivisor", "--l2", "vmcall", "--iterations", "10", "--vcpus", "3", "--stats-json"]
    trace = tmp_path / "trace.txt"
    result = CliRunner().invoke(main, [*args, str(stats), "--schedule", "exit:2", "--trace", str(trace)])
    assert result.exit_code == 0 and "3 vCPUs x 10 iterations, 33 L2 exits" in result.output
    assert len(json.loads(stats.read_text())["vcpus"]) == 3
    lines = trace.read_text().splitlines()
    for i in range(3):
        assert sum(line.startswith(f"kvm_nested_vmexit: vcpu {i} reason VMCALL") for line in lines) == 11


@pytest.mark.parametrize("workload", ["cpuid", "pagetouch"])
def test_every_vcpu_migrates(workload: str, tmp_path: Path) -> None:
    """Saved at several exit boundaries, resumed on the other configurations: the same console,
    status and L1 memory as the uninterrupted run, each vCPU's nested state restored."""
    program = build_minivisor(workload, 8, "kvm", vcpus=3)
    reference = Host("haswell", True).create_vm(vcpus=3)
    reference.load(program)
    ref = reference.run()
    assert (ref.outcome, ref.status) == ("exit", 0), ref.message
    total = ref.stats["l0_exits"]["total"]
    mp_states = set()
    # (the exit counts are those of the reference, haswell with shadowing; the others exit more)
    for point, source in ((total // 5, CONFIGS[2]), (total // 2, CONFIGS[1]), (total - 5, CONFIGS[0])):
        vm = Host(*source).create_vm(vcpus=3)
        vm.load(program)
        first = vm.run(max_exits=point)
        path = tmp_path / f"{point}.snapshot"
        vm.save(path)
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read("snapshot.json"))
        assert len(header["vcpus"]) == 3 and header["schedule"] == "rr:10000"
        mp_states.update(v["mp_state"] for v in header["vcpus"])
        for target in (c for c in CONFIGS if c != source):
            resumed = Host(*target).restore(path)
            second = resumed.run()
            where = f"saved after {point} exits on {source}, resumed on {target}"
            assert (second.outcome, second.status) == ("exit", 0), where
            assert first.console + second.console == ref.console, where
            assert resumed.l1_memory() == reference.l1_memory(), where
    assert mp_states == {"runnable", "halted"}  # the last save: vCPUs 1 and 2 are done and halted
