"""Simulator speed: simulated L2 exits per wall-clock second for each configuration, and how time
and peak memory grow with the iteration count (memory must stay flat).

Usage: .venv/bin/python benchmarks/nested_speed.py [--sizes 1000,10000] [--workload cpuid] [--cpu haswell]
                                                  [--vcpus 1,2,4,8] [--configs nested-shadow]
Each measurement runs in a fresh process so that its peak RSS is its own.  With N vCPUs every
vCPU runs the iterations (one L2 each): the exit counts are totals over the vCPUs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = ("single", "nested", "nested-shadow")


def measure_one(workload: str, config: str, iterations: int, cpu: str, vcpus: int) -> dict:
    from nestvmx.api import Host
    from nestvmx.guests.build import DEFAULT_FOOTPRINT, build_minivisor, build_workload

    nested = config.startswith("nested")
    elf = (
        build_minivisor(workload, iterations, DEFAULT_FOOTPRINT, vcpus)
        if nested
        else build_workload(workload, iterations, vcpus)
    )
    vm = Host(cpu, shadow_vmcs=config == "nested-shadow").create_vm(vcpus=vcpus)
    vm.load(elf)
    start = time.perf_counter()
    result = vm.run()
    wall = time.perf_counter() - start
    assert result.outcome == "exit" and result.status == 0, result.message
    l2_exits = result.stats["nested"]["vmexits"] if nested else result.stats["l0_exits"]["total"]
    return {
        "config": config,
        "iterations": iterations,
        "wall": wall,
        "l2_exits": l2_exits,
        "l0_exits": result.stats["l0_exits"]["total"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--workload", default="cpuid")
    parser.add_argument("--cpu", default="haswell")
    parser.add_argument("--vcpus", default="1")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: config,iterations,vcpus in a child process
    args = parser.parse_args()
    if args.one:
        config, iterations, vcpus = args.one.split(",")
        print(json.dumps(measure_one(args.workload, config, int(iterations), args.cpu, int(vcpus))))
        return
    print(
        f"{'config':14} {'vCPUs':>5} {'iterations':>10} {'wall s':>8} {'L2 exits/s':>11} {'L0 exits/s':>11} "
        f"{'peak RSS MiB':>13}"
    )
    for config in args.configs.split(","):
        for vcpus in map(int, args.vcpus.split(",")):
            for size in map(int, args.sizes.split(",")):
                one = f"{config},{size},{vcpus}"
                out = subprocess.run(
                    [sys.executable, __file__, "--one", one, "--workload", args.workload, "--cpu", args.cpu],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout)
                print(
                    f"{config:14} {vcpus:>5} {size:>10} {r['wall']:>8.2f} {r['l2_exits'] / r['wall']:>11,.0f} "
                    f"{r['l0_exits'] / r['wall']:>11,.0f} {r['peak_rss_mib']:>13.0f}"
                )


if __name__ == "__main__":
    main()
