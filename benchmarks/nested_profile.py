"""Where the wall time of one nested L2 exit goes: microseconds and calls per L2 exit of the main
steps of the path (engine, processor, L0), measured by wrapping them with timers (inclusive times;
the wrappers add ~1 us per call).  For finding the next thing to speed up; the totals of
benchmarks/nested_speed.py are the figures to report.

Usage: .venv/bin/python benchmarks/nested_profile.py [--workload cpuid] [--iterations 2000]
                                                     [--footprint kvm] [--no-shadow-vmcs]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter

from nestvmx.api import Host
from nestvmx.engine import uc_state
from nestvmx.engine.engine import Engine
from nestvmx.guests.build import build_minivisor
from nestvmx.hw import vmentry
from nestvmx.hw.processor import LogicalProcessor
from nestvmx.kvm.nested import NestedVmx
from nestvmx.kvm.vmx import VmxVcpu

STEPS = {
    VmxVcpu: ["run_once", "handle_exit"],
    Engine: ["run", "_on_invalid", "_after_stop", "_save_state", "_special", "_invalid_instruction"],
    uc_state.UnicornRegisters: ["save", "load"],
    LogicalProcessor: ["vmresume", "vmlaunch", "vm_exit", "vmptrld", "vmread_many", "vmwrite_many"],
    vmentry.EntryChecks: ["first_failure"],
    NestedVmx: [
        "nested_vmx_run",
        "nested_vmx_vmexit",
        "prepare_vmcs02",
        "sync_vmcs02_to_vmcs12",
        "load_vmcs12_host_state",
        "copy_shadow_to_vmcs12",
        "copy_vmcs12_to_shadow",
    ],
}


def _timed(owner: type, name: str, seconds: Counter, calls: Counter) -> None:
    original = getattr(owner, name)
    label = f"{owner.__name__}.{name}"

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[label] += time.perf_counter() - start
            calls[label] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="cpuid")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--footprint", default="kvm")
    parser.add_argument("--no-shadow-vmcs", action="store_true")
    args = parser.parse_args()
    seconds, calls = Counter(), Counter()
    for owner, names in STEPS.items():
        for name in names:
            _timed(owner, name, seconds, calls)
    vm = Host(shadow_vmcs=not args.no_shadow_vmcs).create_vm()
    vm.load(build_minivisor(args.workload, args.iterations, args.footprint))
    start = time.perf_counter()
    result = vm.run()
    wall = time.perf_counter() - start
    exits = result.stats["nested"]["vmexits"]
    print(f"{exits} L2 exits, {wall / exits * 1e6:.0f} us each ({exits / wall:,.0f} per second, with the timers)")
    print(f"{'us / L2 exit':>13} {'calls':>6}  step")
    for label, total in seconds.most_common():
        print(f"{total / exits * 1e6:13.1f} {calls[label] / exits:6.2f}  {label}")


if __name__ == "__main__":
    main()
