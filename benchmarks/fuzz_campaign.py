"""Fuzz campaign over the whole nested path: random L1 programs of VMX instructions (operands,
pointers good/bad/unaligned/outside, fields valid/invalid/HIGH/read-only, random values;
tests/guests/vmx_script.c interprets them), each run on haswell with shadowing, haswell without
and sandybridge, and once more saved half-way and resumed on another configuration.

Invariants checked per program: no Python exception escapes the run, the outcome is one of
the documented ones, all configurations give the same console, status and L1 memory, and at
most one shadow VMCS is live. Prints executions, distinct outcomes and every failure found.

Usage: .venv/bin/python benchmarks/fuzz_campaign.py [--seconds S] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from nestvmx.api import Host
from nestvmx.guests.build import build_guest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "guests" / "vmx_script.c"
SCRIPT_ADDRESS = 0x800000
CONFIGS = [("haswell", True), ("haswell", False), ("sandybridge", None)]
OUTCOMES = {"exit", "crash", "limit"}
MAX_EXITS = 20_000


def random_ops(rng: random.Random) -> list[tuple[int, int, int]]:
    # Bias towards the sequences that reach VM entry: VMXON, VMCLEAR, VMPTRLD first.
    prefix = [(0, 5, 0), (2, 0, 0), (3, 0, 0)] if rng.random() < 0.7 else []  # VMXON region 3, VMCS 0
    values = [0, 1, 2**64 - 1, 2**63, 0xFFFF_FFFF, rng.getrandbits(64), rng.getrandbits(16)]
    # Op weights (vmxon, vmxoff, vmclear, vmptrld, vmptrst, vmread, vmwrite, vmlaunch, vmresume): a VMX
    # instruction outside VMX operation is #UD, which ends the run, so VMXOFF is rare.
    kinds = rng.choices(range(9), weights=[3, 1, 6, 8, 3, 25, 35, 10, 9], k=rng.randint(1, 60))
    ops = [(kind, rng.getrandbits(16), rng.choice(values)) for kind in kinds]
    return prefix + ops


def run(program: Path, ops: list[tuple[int, int, int]], cpu: str, shadow: bool | None, save_at: int | None = None):
    vm = Host(cpu, shadow).create_vm(memory_mib=16)
    vm.load(program)
    blob = len(ops).to_bytes(8, "little") + b"".join(x.to_bytes(8, "little") for op in ops for x in op)
    vm.kvm.vcpus[0].memory.write(SCRIPT_ADDRESS, blob)
    console = ""  # what the program printed before a migration
    if save_at is not None:
        first = vm.run(max_exits=save_at)
        if first.outcome != "limit":  # ended before the save point: nothing to migrate
            return first, vm.l1_memory(), vm.kvm.vcpus[0].stats.shadow_vmcs_live, ""
        console = first.console
        with tempfile.TemporaryDirectory() as tmp:
            vm.save(Path(tmp, "s"))
            vm = Host(*CONFIGS[(save_at % 2) + 1]).restore(Path(tmp, "s"))
    result = vm.run(max_exits=MAX_EXITS)
    return result, vm.l1_memory(), vm.kvm.vcpus[0].stats.shadow_vmcs_live, console


def results_seen(console: str) -> set[tuple[str, ...]]:
    """(instruction, flags, VM-instruction error) of every line the script printed."""
    seen = set()
    for line in console.splitlines():
        words = line.split()
        if len(words) == 9 and words[1] == "op":
            seen.add((words[2], words[4], words[8] if words[4] != "0x0000000000000000" else "-"))
    return seen


def check(program: Path, ops: list[tuple[int, int, int]], rng: random.Random) -> tuple[str, list[str], set]:
    failures = []
    results = []
    for cpu, shadow in CONFIGS:
        result, memory, live, _ = run(program, ops, cpu, shadow)
        if result.outcome not in OUTCOMES:
            failures.append(f"undocumented outcome {result.outcome!r}")
        if live > 1:
            failures.append(f"{live} shadow VMCSs live")
        results.append(((result.outcome, result.status, result.console, result.message), memory))
    if any(r != results[0] for r in results[1:]):
        failures.append("configurations disagree")
    reference = results[0]
    total = len(reference[0][2].splitlines())
    result, memory, _, console = run(program, ops, "haswell", True, save_at=rng.randint(1, 40 + 3 * total))
    if ((result.outcome, result.status, console + result.console, result.message), memory) != reference:
        failures.append("save/restore changed the result")
    kind, status, _, message = reference[0]
    outcome = f"{kind} {status}" if kind == "exit" else f"{kind}: {message.split(' at RIP')[0]}"
    return outcome, failures, results_seen(reference[0][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    program = build_guest([SCRIPT])
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    executions, seen = 0, set()
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        ops = random_ops(rng)
        try:
            outcome, found, results = check(program, ops, rng)
            seen |= results
        except Exception:  # an escaped exception is a finding, with the program that caused it
            outcome, found = "python exception", [traceback.format_exc(limit=3)]
        executions += 1
        outcomes[outcome] += 1
        failures += [f"program {ops!r}: {f}" for f in found]
    elapsed = time.monotonic() - start
    print(f"{executions} programs ({5 * executions} runs) in {elapsed:.0f} s, seed {args.seed}")
    print(f"{len(outcomes)} distinct outcomes:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:6} {outcome}")
    print(f"{len(seen)} distinct (instruction, flags, VM-instruction error) results")
    print(f"{len(failures)} failures")
    for failure in failures[:20]:
        print("  " + failure)


if __name__ == "__main__":
    main()
