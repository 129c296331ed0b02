"""Building nestvmx's C code with the machine's gcc, cached by content hash: the processor
model's VMCS accesses (native.c beside this file, with vmcs_access.h) and, for the layers above,
their own C."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path
from types import ModuleType

_HEADERS = Path(__file__).parent  # C headers shared by the layers' C code


class BuildError(Exception):
    """A native or guest build failed (gcc missing or a compile error)."""


def cache_dir() -> Path:
    base = os.environ.get("NESTVMX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nestvmx"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_gcc() -> str:
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        raise BuildError("gcc is needed to build nestvmx's native helper and guests; install gcc (apt-get install gcc)")
    return gcc


@cache
def build_shared(source: Path) -> Path:
    """`source` compiled against this Python's headers and hw's (vmcs_access.h) into a shared object
    in the cache, named by the hash of everything that goes in."""
    text = source.read_bytes() + b"".join(h.read_bytes() for h in sorted(_HEADERS.glob("*.h")))
    include = sysconfig.get_paths()["include"]
    digest = hashlib.sha256(text + f"{sys.version}|{include}".encode()).hexdigest()[:16]
    lib = cache_dir() / f"{source.stem}-{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(
            [require_gcc(), "-O2", "-shared", "-fPIC", f"-I{include}", f"-I{_HEADERS}", "-o", str(tmp), str(source)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise BuildError(f"building {source.name} failed: {result.stderr.strip()}")
        tmp.replace(lib)
    return lib


@cache
def import_extension(source: Path, name: str) -> ModuleType:
    """The extension module `name` (its PyInit_<name>) that `source` defines."""
    spec = importlib.util.spec_from_file_location(name, build_shared(source))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vmcs_access() -> ModuleType:
    """native.c's vmcs_read and vmcs_write."""
    return import_extension(Path(__file__).with_name("native.c"), "nestvmx_hw_native")
