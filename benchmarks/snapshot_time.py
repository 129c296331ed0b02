"""Save and restore times of a VM: the minivisor saved inside L2 (guest mode) on haswell with
shadowing, restored on sandybridge; a touched workload (pagetouch) so that memory is not all zeros.

Usage: .venv/bin/python benchmarks/snapshot_time.py [--memory MIB] [--repeat R]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nestvmx.api import Host
from nestvmx.guests.build import build_minivisor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, default=64, help="VM memory in MiB (at least 64 for pagetouch)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    program = build_minivisor("pagetouch", 2000, "kvm")
    print(f"{'memory MiB':>10} {'save s':>8} {'restore s':>10} {'file KiB':>9} {'guest mode':>10}")
    for _ in range(args.repeat):
        vm = Host("haswell", True).create_vm(memory_mib=args.memory)
        vm.load(program)
        vm.run(max_exits=3000)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "vm.snapshot")
            start = time.perf_counter()
            vm.save(path)
            saved = time.perf_counter()
            restored = Host("sandybridge").restore(path)
            done = time.perf_counter()
            size = path.stat().st_size >> 10
        assert restored.run().status == 0
        print(
            f"{args.memory:>10} {saved - start:>8.3f} {done - saved:>10.3f} {size:>9} "
            f"{str(vm.kvm.vcpus[0].nested.guest_mode):>10}"
        )


if __name__ == "__main__":
    main()
