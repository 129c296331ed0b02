"""Guest programs run with `nestvmx run` on both CPU models: the examples, the platform
contract, exceptions through the guest's IDT, EPT violations, crashes and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nestvmx.api import Host
from nestvmx.cli.main import main
from nestvmx.cli.run import STATUS_CANNOT_RUN, STATUS_CRASH, STATUS_LIMIT
from nestvmx.guests.build import build_guest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GUESTS = ROOT / "tests" / "guests"
MODELS = ["haswell", "sandybridge"]


def run_cli(*args: str):
    return CliRunner().invoke(main, ["run", *args])


def run_guest(sources: list[Path], cpu: str, **kwargs):
    vm = Host(cpu).create_vm(**kwargs)
    vm.load(build_guest(sources))
    return vm.run(max_exits=100_000)


def tap_failures(console: str) -> list[str]:
    return [line for line in console.splitlines() if line.startswith("not ok")]


@pytest.mark.parametrize("cpu", MODELS)
def test_hello(cpu: str) -> None:
    result = run_cli(str(EXAMPLES / "hello.c"), "--cpu", cpu)
    assert result.exit_code == 0 and result.output == "Hello from L1!\n"


@pytest.mark.parametrize("cpu", MODELS)
def test_cpuid_loop_exits_once_per_cpuid(cpu: str, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    result = run_cli(str(EXAMPLES / "cpuid_loop.c"), "--cpu", cpu, "--stats-json", str(stats))
    assert result.exit_code == 0
    assert "vendor: GenuineIntel\nVMX: yes\n" in result.output and "x1000: 13000" in result.output
    s = json.loads(stats.read_text())
    assert s["l0_exits"]["by_reason"]["CPUID"] == 1002
    assert s["l0_exits"]["total"] == s["l0_exits"]["from_l1"] == sum(s["l0_exits"]["by_reason"].values())
    assert s["outcome"] == "exit" and s["status"] == 0 and s["instructions"]["l1"] > 5000


def test_statistics_object_has_the_contract_keys(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    assert run_cli(str(EXAMPLES / "hello.c"), "--stats-json", str(stats)).exit_code == 0
    s = json.loads(stats.read_text())
    assert set(s) >= {
        "outcome",
        "status",
        "l0_exits",
        "nested",
        "shadow",
        "instructions",
        "modeled_cycles",
        "cost_model",
        "wall_seconds",
    }
    assert set(s["l0_exits"]) == {"total", "from_l1", "from_l2", "by_reason"}
    assert s["nested"] == {"vmentries": 0, "vmexits": 0, "ept02_fills": 0}
    assert set(s["shadow"]) == {
        "enabled",
        "vmread",
        "vmwrite",
        "copies_to_shadow",
        "copies_from_shadow",
        "fields_copied",
        "vmcs_allocated",
        "vmcs_live",
    }
    assert set(s["instructions"]) == {"l1", "l2"}


def test_port_io_status_and_all_ones_read() -> None:
    result = run_cli(str(EXAMPLES / "port_io.c"))
    assert result.exit_code == 7 and "inb(0x80) = 0x00000000000000ff" in result.output


@pytest.mark.parametrize("cpu", MODELS)
def test_rdmsr_of_vmx_basic(cpu: str) -> None:
    result = run_cli(str(EXAMPLES / "rdmsr_vmx_basic.c"), "--cpu", cpu)
    assert result.exit_code == 0
    assert "IA32_FEATURE_CONTROL = 0x0000000000000005" in result.output
    assert "VMCS revision id     = 0x0000000011e57ed0" in result.output


def test_deliberate_gp_is_a_one_line_crash_report() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nestvmx.cli", "run", str(EXAMPLES / "gp_fault.c")], capture_output=True, text=True
    )
    assert proc.returncode == STATUS_CRASH
    assert proc.stdout == "about to fault\n"
    assert re.fullmatch(r"guest crashed: #GP \(vector 13\) at RIP 0x[0-9a-f]+\n", proc.stderr)


def test_two_faults_without_idt_report_the_first_gp() -> None:
    result = run_guest([GUESTS / "twice_gp.c"], "haswell")
    assert result.outcome == "crash" and "#GP (vector 13)" in result.message


@pytest.mark.parametrize("cpu", MODELS)
def test_platform_contract(cpu: str) -> None:
    result = run_guest([GUESTS / "platform.c"], cpu)
    assert not tap_failures(result.console), result.console
    assert "PASS" in result.console
    assert result.outcome == "crash" and "#GP (vector 13)" in result.message  # the locked-MSR write
    assert result.stats["l0_exits"]["by_reason"]["CR_ACCESS"] == 2
    assert result.stats["l0_exits"]["by_reason"]["WRMSR"] == 2


@pytest.mark.parametrize("cpu", MODELS)
def test_exceptions_through_the_guest_idt(cpu: str) -> None:
    """After LGDT/LTR/LIDT, exceptions go through the IDT: vectors, error codes, CR2, IST, traps."""
    result = run_guest([GUESTS / "exceptions.c", GUESTS / "idt.S"], cpu)
    assert result.outcome == "exit" and result.status == 0, result.console + result.message
    assert len(re.findall(r"^ok ", result.console, re.M)) == 10 and not tap_failures(result.console)


def test_ept_violation_outside_guest_memory_is_reported(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    result = run_cli(str(GUESTS / "ept_outside.c"), "--trace", str(trace))
    assert result.exit_code == STATUS_CRASH
    assert "guest-physical 0x3fe00010 outside its 64 MiB" in result.output
    last = trace.read_text().splitlines()[-1]
    # Qualification: data read (bit 0), guest-linear address valid (7), translation of it (8).
    assert "reason EPT_VIOLATION" in last and "info1 0x181" in last


def test_max_exits_ends_with_limit(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    result = run_cli(str(EXAMPLES / "cpuid_loop.c"), "--max-exits", "20", "--stats-json", str(stats))
    assert result.exit_code == STATUS_LIMIT and "stopped after 20 exits" in result.output
    s = json.loads(stats.read_text())
    assert s["outcome"] == "limit" and s["l0_exits"]["total"] == 20


def test_timeout_ends_a_runaway_guest_with_limit_and_statistics(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    result = run_cli("--l1", "minivisor", "--iterations", "10000000", "--timeout", "0.5", "--stats-json", str(stats))
    assert result.exit_code == STATUS_LIMIT and "stopped at the time limit" in result.output
    s = json.loads(stats.read_text())
    assert s["outcome"] == "limit" and s["l0_exits"]["total"] > 0


def test_timeout_ends_a_guest_that_never_exits(tmp_path: Path) -> None:
    """The host's timer tick (an external-interrupt exit every 3,000,000 instructions) gives L0 the
    chance to check the limit."""
    source, stats = tmp_path / "spin.c", tmp_path / "s.json"
    source.write_text("#include <nestvmx.h>\nint main(void) { for (;;) {} }\n")
    result = run_cli(str(source), "--timeout", "0.5", "--stats-json", str(stats))
    assert result.exit_code == STATUS_LIMIT and "stopped at the time limit" in result.output
    s = json.loads(stats.read_text())
    assert s["l0_exits"]["by_reason"]["EXTERNAL_INTERRUPT"] >= 1
    assert s["instructions"]["l1"] >= 3_000_000 * s["l0_exits"]["by_reason"]["EXTERNAL_INTERRUPT"]


def test_trace_has_one_kvm_exit_line_per_exit(tmp_path: Path) -> None:
    trace, stats = tmp_path / "t.txt", tmp_path / "s.json"
    assert run_cli(str(EXAMPLES / "hello.c"), "--trace", str(trace), "--stats-json", str(stats)).exit_code == 0
    lines = trace.read_text().splitlines()
    assert len(lines) == json.loads(stats.read_text())["l0_exits"]["total"]
    assert all(re.match(r"kvm_exit: L1 vcpu 0 reason \w+ rip 0x[0-9a-f]+ info1 0x[0-9a-f]+", line) for line in lines)


def test_flat_binary_at_a_load_address(tmp_path: Path) -> None:
    # mov al,'A'; out 0xe9,al; mov al,3; out 0xf4,al
    program = tmp_path / "flat.bin"
    program.write_bytes(bytes.fromhex("b041e6e9b003e6f4"))
    result = run_cli(str(program), "--load-address", "0x200000")
    assert result.exit_code == 3 and result.output == "A"


@pytest.mark.parametrize(
    "content, args, message",
    [
        (b"", [], "the program is empty"),
        (b"\x7fELF\x02\x01\x01" + bytes(9), [], "malformed ELF file"),
        (b"\x90" * 16, ["--load-address", "0x1000"], "overlaps the platform area"),
        (b"\x90" * (2 << 20), ["--memory", "2"], "does not fit in 2 MiB"),
        (b"\x90", ["--load-address", "zz"], "is not an address"),
    ],
    ids=["empty", "bad-elf", "overlap", "too-large", "bad-address"],
)
def test_bad_programs_are_one_line_errors(tmp_path: Path, content: bytes, args: list[str], message: str) -> None:
    program = tmp_path / "p.bin"
    program.write_bytes(content)
    result = run_cli(str(program), *args)
    assert result.exit_code in (STATUS_CANNOT_RUN, 2)
    assert message in result.output and "Traceback" not in result.output


def test_truncated_elf_is_rejected(tmp_path: Path) -> None:
    elf = build_guest([EXAMPLES / "hello.c"]).read_bytes()
    program = tmp_path / "cut.elf"
    program.write_bytes(elf[: len(elf) // 2])
    result = run_cli(str(program))
    assert result.exit_code == STATUS_CANNOT_RUN and "nestvmx:" in result.output


def test_missing_program_and_compile_error(tmp_path: Path) -> None:
    assert run_cli(str(tmp_path / "nope.elf")).exit_code == STATUS_CANNOT_RUN
    bad = tmp_path / "bad.c"
    bad.write_text("int main(void) { return undefined_thing; }\n")
    result = run_cli(str(bad))
    assert result.exit_code == STATUS_CANNOT_RUN and "building bad.c failed" in result.output


def test_ia32_debugctl_as_kvm_offers_it(tmp_path: Path) -> None:
    """L0 keeps IA32_DEBUGCTL in the VMCS (GUEST_IA32_DEBUGCTL), drops LBR and BTF on a write and
    refuses other bits with #GP, as KVM's vmx_set_msr does when it offers no debug features."""
    source = tmp_path / "debugctl.c"
    source.write_text(
        "#include <nestvmx.h>\n"
        "int main(void) {\n"
        "    if (rdmsr(0x1d9) != 0) return 1;\n"
        "    wrmsr(0x1d9, 3);\n"
        "    if (rdmsr(0x1d9) != 0) return 2;\n"
        '    puts("ok\\n");\n'
        "    wrmsr(0x1d9, 4);\n"
        "    return 3;\n"
        "}\n"
    )
    result = run_guest([source], "haswell")
    assert result.outcome == "crash" and "#GP" in result.message, result
    assert result.console == "ok\n"
