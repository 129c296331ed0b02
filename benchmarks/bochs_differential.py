"""Differential against Bochs' VMX: the fuzz campaign's random programs (VMX instruction scripts
interpreted by tests/guests/vmx_script.c, or random L2 code run by tests/guests/random_l2.c),
compiled with their input and run as L1 on nestvmx and on bare Bochs; their outputs are compared
line by line.  Differences are written to --out for reading: each is a nestvmx bug, a Bochs
departure from the SDM, a documented choice (KVM's, e.g. the AR-byte mask of VMWRITE) or a platform
difference (nestvmx's L1 starts with EFER.NXE set, Bochs' boot code without).

For random L2 code the exit information is compared without the instruction length of hardware
exceptions (undefined, SDM §28.2.4) and without the final hash (registers after
implementation-defined instructions, e.g. RDPMC, differ).

Usage: .venv/bin/python benchmarks/bochs_differential.py [--kind script|l2] [--programs N] [--seed S]
                                                          [--cpu haswell|sandybridge] [--out DIR]
Needs Bochs and ../shared/bochs/run-bochs.sh (apt-get install bochs bochsbios vgabios bochs-sdl).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzz_campaign import MAX_EXITS, RANDOM_L2, RUN_SECONDS, SCRIPT, random_l2_code, random_ops, script_blob

from nestvmx.api import Host
from nestvmx.guests.build import build_guest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT.parent / "shared" / "bochs" / "run-bochs.sh"
BOCHS_MODEL = {"haswell": "corei7_haswell_4770", "sandybridge": "corei7_sandy_bridge_2600k"}


def embedded_source(kind: str, blob: bytes) -> str:
    """The program's source with its input compiled in (Bochs loads one flat image, nothing at 8 MiB)."""
    blob += bytes(-len(blob) % 8)
    words = ",".join(str(int.from_bytes(blob[i : i + 8], "little")) for i in range(0, len(blob), 8))
    array = f"static const u64 input_data[] = {{{words}}};\nint main(void) {{"
    if kind == "script":
        return SCRIPT.read_text().replace("(const u64 *)0x800000", "input_data").replace("int main(void) {", array)
    source = RANDOM_L2.read_text().replace('#include "l1.h"', f'#include "{RANDOM_L2.parent / "l1.h"}"')
    source = source.replace("#define BLOB 0x800000ull", "#define BLOB ((u64)input_data)")
    # Print each exit's information instead of only folding it into the hash.
    source = source.replace(
        "put_dec(reason & 0xffff); putc(reason >> 31 ? '!' : ' ');",
        "for (int k = 0; k < 8; k++) { put_hex(exit_info[k]); putc(' '); } putc('\\n');",
    )
    return source.replace("int main(void) {", array)


def comparable(kind: str, console: str) -> list[str]:
    lines = [line.strip() for line in console.splitlines() if line.strip() and line.strip() != "END"]
    if kind == "script":
        return [line for line in lines if ": op " in line]
    out = []
    for line in lines:
        words = line.split()
        if len(words) != 8:
            continue  # the hash
        if int(words[0], 16) == 0 and (int(words[4], 16) >> 8) & 7 == 3:
            words[2] = "-"  # instruction length of a hardware exception: undefined
        out.append(" ".join(words))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("script", "l2"), default="script")
    parser.add_argument("--programs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", choices=sorted(BOCHS_MODEL), default="haswell")
    parser.add_argument("--out", type=Path, default=Path("bochs-differences"))
    args = parser.parse_args()
    if shutil.which("bochs") is None or not RUNNER.exists():
        sys.exit(f"bochs_differential: needs Bochs and {RUNNER}")
    rng = random.Random(args.seed)
    same = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.programs):
            if args.kind == "script":
                blob = script_blob(random_ops(rng))
            else:
                code = random_l2_code(rng)
                blob = len(code).to_bytes(8, "little") + code
            source = Path(tmp, f"p{k}.c")
            source.write_text(embedded_source(args.kind, blob))
            elf = build_guest([source])
            flat = Path(tmp, "p.bin")
            subprocess.run(["objcopy", "-O", "binary", str(elf), str(flat)], check=True)
            bochs = subprocess.run(
                ["bash", str(RUNNER), "-t", "60", "-m", BOCHS_MODEL[args.cpu], str(flat)],
                capture_output=True,
                text=True,
            ).stdout
            vm = Host(args.cpu).create_vm(memory_mib=32)
            vm.load(elf)
            result = vm.run(max_exits=MAX_EXITS, timeout=RUN_SECONDS)
            theirs, ours = comparable(args.kind, bochs), comparable(args.kind, result.console)
            if theirs == ours:
                same += 1
                continue
            args.out.mkdir(parents=True, exist_ok=True)
            report = args.out / f"{args.kind}-{args.seed}-{k}.txt"
            report.write_text(
                f"input {blob.hex()}\n=== Bochs\n{bochs}\n=== nestvmx ({result.outcome})\n{result.console}"
            )
            print(f"program {k}: outputs differ, see {report}", flush=True)
    print(f"{same} of {args.programs} programs gave the same output on nestvmx ({args.cpu}) and Bochs")


if __name__ == "__main__":
    main()
