"""Fuzz campaign over the whole nested path, alternating two kinds of programs: random L1
programs of VMX instructions (operands, pointers good/bad/unaligned/outside, fields
valid/invalid/HIGH/read-only, random values; tests/guests/vmx_script.c interprets them), and
random L2 code (random bytes mixed with instructions that exit; tests/guests/random_l2.c runs it
as L2 and handles its exits).  Each runs on haswell with shadowing, haswell without and
sandybridge, and once more saved part-way and resumed on another configuration.

Invariants checked per program: no Python exception escapes the run, the outcome is one of
the documented ones, all configurations give the same console, status and L1 memory, at most
one shadow VMCS is live and EPT02 stays within its page budget. Prints executions, distinct
outcomes and every failure found.

Usage: .venv/bin/python benchmarks/fuzz_campaign.py [--seconds S] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from nestvmx.api import Host
from nestvmx.guests.build import build_guest
from nestvmx.kvm.nested import EPT02_MAX_PAGES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "guests" / "vmx_script.c"
RANDOM_L2 = ROOT / "tests" / "guests" / "random_l2.c"
SCRIPT_ADDRESS = 0x800000  # where both programs find their input
CONFIGS = [("haswell", True), ("haswell", False), ("sandybridge", None)]
OUTCOMES = {"exit", "crash", "limit"}
MAX_EXITS = 20_000
RUN_SECONDS = 20  # a run that takes longer (L2 code spinning without exits) makes its program inconclusive
TIME_LIMIT = "stopped at the time limit"


def random_ops(rng: random.Random) -> list[tuple[int, int, int]]:
    # Bias towards the sequences that reach VM entry: VMXON, VMCLEAR, VMPTRLD first.
    prefix = [(0, 5, 0), (2, 0, 0), (3, 0, 0)] if rng.random() < 0.7 else []  # VMXON region 3, VMCS 0
    values = [0, 1, 2**64 - 1, 2**63, 0xFFFF_FFFF, rng.getrandbits(64), rng.getrandbits(16)]
    # Op weights (vmxon, vmxoff, vmclear, vmptrld, vmptrst, vmread, vmwrite, vmlaunch, vmresume): a VMX
    # instruction outside VMX operation is #UD, which ends the run, so VMXOFF is rare.
    kinds = rng.choices(range(9), weights=[3, 1, 6, 8, 3, 25, 35, 10, 9], k=rng.randint(1, 60))
    ops = [(kind, rng.getrandbits(16), rng.choice(values)) for kind in kinds]
    return prefix + ops


def script_blob(ops: list[tuple[int, int, int]]) -> bytes:
    return len(ops).to_bytes(8, "little") + b"".join(x.to_bytes(8, "little") for op in ops for x in op)


# Instructions that exit from L2 (or fault), to mix into random bytes.
L2_SNIPPETS = [
    bytes.fromhex(h)
    for h in (
        "0fa2",  # cpuid
        "f4",  # hlt
        "e680",  # out 0x80, al
        "ec",  # in al, dx
        "0f32",  # rdmsr
        "0f30",  # wrmsr
        "0f31",  # rdtsc
        "0f33",  # rdpmc
        "0f01c1",  # vmcall
        "0f78c8",  # vmread rax, rcx
        "0f79c1",  # vmwrite rax, rcx
        "0fc730",  # vmptrld [rax]
        "0f01c4",  # vmxoff
        "0f01c2",  # vmlaunch
        "0f20d8",  # mov rax, cr3
        "0f22d8",  # mov cr3, rax
        "0f22e0",  # mov cr4, rax
        "0f06",  # clts
        "0f0138",  # invlpg [rax]
        "f390",  # pause
        "cc",  # int3
        "0f0b",  # ud2
        "cd80",  # int 0x80
        "48b80000100000000000",  # mov rax, 0x100000
        "48c7c100001000",  # mov rcx, 0x100000
        "8900",  # mov [rax], eax
        "0f0110",  # lgdt [rax]
        "0f00d8",  # ltr ax
        "8ed8",  # mov ds, ax
        "9c",  # pushf
        "fa",  # cli
    )
]


def random_l2_code(rng: random.Random) -> bytes:
    """Up to 16 pieces, each an exiting instruction or 1 to 8 random bytes."""
    pieces = []
    for _ in range(rng.randint(1, 16)):
        if rng.random() < 0.6:
            pieces.append(rng.choice(L2_SNIPPETS))
        else:
            pieces.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8))))
    return b"".join(pieces)


def run(program: Path, blob: bytes, cpu: str, shadow: bool | None, save_at: int | None = None):
    """(result, L1 memory, most shadow VMCSs live, largest EPT02, console before a migration)."""
    vm = Host(cpu, shadow).create_vm(memory_mib=32)
    vm.load(program)
    vm.kvm.memory.write(SCRIPT_ADDRESS, blob)
    console = ""  # what the program printed before a migration
    if save_at is not None:
        first = vm.run(max_exits=save_at, timeout=RUN_SECONDS)
        if first.outcome != "limit":  # ended before the save point: nothing to migrate
            return first, vm.l1_memory(), *_bounds(vm), ""
        console = first.console
        with tempfile.TemporaryDirectory() as tmp:
            vm.save(Path(tmp, "s"))
            vm = Host(*CONFIGS[(save_at % 2) + 1]).restore(Path(tmp, "s"))
    result = vm.run(max_exits=MAX_EXITS, timeout=RUN_SECONDS)
    return result, vm.l1_memory(), *_bounds(vm), console


def _bounds(vm) -> tuple[int, int]:
    vcpu = vm.kvm.vcpus[0]
    ept02 = vcpu.nested.ept02
    return vcpu.stats.shadow_vmcs_live, len(ept02.pages) if ept02 else 0


def results_seen(console: str) -> set[tuple[str, ...]]:
    """(instruction, flags, VM-instruction error) of every line the script printed."""
    seen = set()
    for line in console.splitlines():
        words = line.split()
        if len(words) == 9 and words[1] == "op":
            seen.add((words[2], words[4], words[8] if words[4] != "0x0000000000000000" else "-"))
    return seen


def check(program: Path, blob: bytes, rng: random.Random) -> tuple[str, list[str], set]:
    failures = []
    results = []
    for cpu, shadow in CONFIGS:
        result, memory, live, ept02_pages, _ = run(program, blob, cpu, shadow)
        if result.outcome not in OUTCOMES:
            failures.append(f"undocumented outcome {result.outcome!r}")
        if live > 1:
            failures.append(f"{live} shadow VMCSs live")
        if ept02_pages > EPT02_MAX_PAGES:
            failures.append(f"EPT02 has {ept02_pages} table pages")
        if result.message == TIME_LIMIT:
            return "limit: time (inconclusive, not compared)", failures, set()
        results.append(((result.outcome, result.status, result.console, result.message), memory))
    if any(r != results[0] for r in results[1:]):
        failures.append("configurations disagree")
    reference = results[0]
    total = len(reference[0][2].splitlines())
    result, memory, _, _, console = run(program, blob, "haswell", True, save_at=rng.randint(1, 40 + 3 * total))
    if (
        result.message != TIME_LIMIT
        and (
            (result.outcome, result.status, console + result.console, result.message),
            memory,
        )
        != reference
    ):
        failures.append("save/restore changed the result")
    kind, status, _, message = reference[0]
    outcome = f"{kind} {status}" if kind == "exit" else f"{kind}: {message.split(' at RIP')[0]}"
    return outcome, failures, results_seen(reference[0][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    programs = build_guest([SCRIPT]), build_guest([RANDOM_L2])
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    executions, seen = 0, set()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))  # end early, still reporting
    start = time.monotonic()
    while time.monotonic() - start < args.seconds and not stop:
        l2 = executions % 2 == 1
        inputs = random_l2_code(rng) if l2 else random_ops(rng)
        blob = len(inputs).to_bytes(8, "little") + inputs if l2 else script_blob(inputs)
        try:
            outcome, found, results = check(programs[l2], blob, rng)
            seen |= results
        except Exception:  # an escaped exception is a finding, with the program that caused it
            outcome, found = "python exception", [traceback.format_exc(limit=3)]
        executions += 1
        outcomes[("random L2: " if l2 else "VMX program: ") + outcome] += 1
        failures += [f"{'L2 code' if l2 else 'program'} {inputs.hex() if l2 else inputs!r}: {f}" for f in found]
        if executions % 100 == 0:
            print(f"... {executions} programs, {len(failures)} failures", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - start
    print(f"{executions} programs ({4 * executions} runs at least) in {elapsed:.0f} s, seed {args.seed}")
    print(f"{len(outcomes)} distinct outcomes:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:6} {outcome}")
    print(f"{len(seen)} distinct (instruction, flags, VM-instruction error) results")
    print(f"{len(failures)} failures")
    for failure in failures[:20]:
        print("  " + failure)


if __name__ == "__main__":
    main()
