"""Simulated guest exits per wall-clock second: a CPUID loop run single-level (L1 under L0).

Usage: .venv/bin/python benchmarks/exits_per_second.py [--iterations N] [--cpu MODEL] [--repeat R]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nestvmx.api import Host
from nestvmx.guests.build import build_guest

SOURCE = """#include <nestvmx.h>
int main(void) {
    u32 a, b, c, d;
    for (int i = 0; i < %d; i++) cpuid(0, 0, &a, &b, &c, &d);
    return 0;
}
"""


def measure(iterations: int, cpu: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, f"cpuid_loop_{iterations}.c")
        src.write_text(SOURCE % iterations)
        elf = build_guest([src])
    vm = Host(cpu).create_vm()
    vm.load(elf)
    start = time.perf_counter()
    result = vm.run()
    wall = time.perf_counter() - start
    assert result.outcome == "exit" and result.status == 0, result.message
    return result.stats["l0_exits"]["total"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--cpu", default="haswell")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = 0.0
    for _ in range(args.repeat):
        exits, wall = measure(args.iterations, args.cpu)
        rate = exits / wall
        best = max(best, rate)
        print(f"{exits} exits in {wall:.3f} s: {rate:,.0f} exits/s")
    print(f"best: {best:,.0f} single-level exits/s (CPUID loop, {args.cpu})")


if __name__ == "__main__":
    main()
