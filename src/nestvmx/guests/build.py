"""Building guest programs (C and GNU assembler) with the machine's gcc: freestanding, no libc,
linked at 1 MiB with the support library, cached by the hash of everything that goes in."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from nestvmx.guests.footprints import DEFAULT_FOOTPRINT, FOOTPRINTS, c_header
from nestvmx.hw.native import BuildError, cache_dir, require_gcc

LIB = Path(__file__).parent / "lib"
SOURCE_SUFFIXES = (".c", ".S", ".s")
CFLAGS = [
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-no-pie",
    "-nostdlib",
    "-static",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-mgeneral-regs-only",
    "-O2",
    "-Wall",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,--no-warn-rwx-segments",
]


def is_source(path: Path) -> bool:
    return path.suffix in SOURCE_SUFFIXES


_LIB_FILES = ("start.S", "vmx_entry.S", "link.ld", "nestvmx.h", "vmx.h")
MINIVISOR = Path(__file__).parent / "minivisor"
L2_WORKLOADS = {"cpuid": 1, "vmcall": 2, "io": 3, "msr": 4, "pagetouch": 5, "mix": 6}


def build_minivisor(workload: str, iterations: int, footprint: str = DEFAULT_FOOTPRINT, vcpus: int = 1) -> Path:
    """The built-in L1 hypervisor with one of its L2 workloads and the VMCS footprint of a real L1,
    running one L2 per vCPU on a VM of `vcpus` vCPUs."""
    header = cache_dir() / "footprints" / footprint / "footprint.h"
    text = c_header(FOOTPRINTS[footprint])
    if not header.exists() or header.read_text() != text:
        header.parent.mkdir(parents=True, exist_ok=True)
        tmp = header.with_suffix(f".{os.getpid()}.tmp")  # other processes may be reading it
        tmp.write_text(text)
        tmp.replace(header)
    return build_guest(
        [MINIVISOR / "minivisor.c"],
        {"WORKLOAD": L2_WORKLOADS[workload], "ITERATIONS": iterations, "VCPUS": vcpus},
        headers=[header],
    )


def build_workload(workload: str, iterations: int, vcpus: int = 1) -> Path:
    """An L2 workload as a program of its own, to run single-level (on every vCPU)."""
    return build_guest(
        [MINIVISOR / "workload.c"], {"WORKLOAD": L2_WORKLOADS[workload], "ITERATIONS": iterations, "VCPUS": vcpus}
    )


def build_guest(sources: list[Path], defines: dict[str, int] | None = None, headers: list[Path] = ()) -> Path:
    """An ELF executable built from `sources` plus the support library (cached); `headers` are
    generated headers the sources include by name."""
    flags = [f"-D{name}={value}" for name, value in sorted((defines or {}).items())]
    flags += [arg for header in headers for arg in ("-I", str(header.parent))]
    # Headers a source may include by a relative path: those beside it and one level up.
    local = sorted({h for src in sources for folder in (src.parent, src.parent.parent) for h in folder.glob("*.h")})
    inputs = [*headers, *sources, *(LIB / name for name in _LIB_FILES), *sorted(MINIVISOR.glob("*.h")), *local]
    digest = hashlib.sha256()
    for path in inputs:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        except OSError as err:
            raise BuildError(f"cannot read {path}: {err.strerror}") from None
    digest.update(" ".join(CFLAGS + flags).encode())
    out = cache_dir() / "guests" / f"{sources[0].stem}-{digest.hexdigest()[:16]}.elf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        require_gcc(),
        *CFLAGS,
        *flags,
        "-I",
        str(LIB),
        "-I",
        str(MINIVISOR),
        "-T",
        str(LIB / "link.ld"),
        "-o",
        str(tmp),
        str(LIB / "start.S"),
        str(LIB / "vmx_entry.S"),
        *map(str, sources),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
        raise BuildError(f"building {sources[0].name} failed: {first}")
    tmp.replace(out)
    return out
