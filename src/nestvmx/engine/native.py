"""The engine's C code (native.c): Unicorn callbacks (an instruction counter and the shadowed
VMREAD/VMWRITE of non-root operation) and the register transfer of VM entries and exits.  Built
once with the machine's gcc against this Python's headers and cached by content hash."""

from __future__ import annotations

import ctypes
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

_SOURCE = Path(__file__).with_name("native.c")


class InstructionCounter(ctypes.Structure):
    """nestvmx_count_insn's data (struct counter); `stop` and `reg_read` are Unicorn's uc_emu_stop and
    uc_reg_read."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last", ctypes.c_uint64),
        ("previous", ctypes.c_uint64),
        ("rflags", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("rflags_id", ctypes.c_int),
    ]


class ShadowPath(ctypes.Structure):
    """nestvmx_shadow_vmx's data (struct shadow_path): Unicorn's entry points and register ids, and
    what the engine arms before each run (ctypes keeps the Python objects alive)."""

    _fields_ = [
        ("reg_read_batch", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("vmem_read", ctypes.c_void_p),
        ("state_ids", ctypes.c_int * 4),
        ("gpr_ids", ctypes.c_int * 16),
        ("fields", ctypes.py_object),
        ("access", ctypes.py_object),
        ("events", ctypes.py_object),
        ("vmread_event", ctypes.py_object),
        ("vmwrite_event", ctypes.py_object),
        ("stop", ctypes.py_object),
        ("vmread_bitmap", ctypes.c_void_p),
        ("vmwrite_bitmap", ctypes.c_void_p),
        ("cs", ctypes.c_uint64),
        ("ss", ctypes.c_uint64),
        ("op64", ctypes.c_int),
        ("vmwrite_any_field", ctypes.c_int),
    ]


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
def _built() -> Path:
    source = _SOURCE.read_bytes()
    include = sysconfig.get_paths()["include"]
    digest = hashlib.sha256(source + f"{sys.version}|{include}".encode()).hexdigest()[:16]
    lib = cache_dir() / f"native-{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(
            [require_gcc(), "-O2", "-shared", "-fPIC", f"-I{include}", "-o", str(tmp), str(_SOURCE)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise BuildError(f"building the engine's native callbacks failed: {result.stderr.strip()}")
        tmp.replace(lib)
    return lib


@cache
def native_library() -> ctypes.CDLL:
    """native.c's Unicorn callbacks, for ctypes."""
    return ctypes.CDLL(str(_built()))


@cache
def native_module() -> ModuleType:
    """native.c's Python functions (the same shared object, imported as extension module)."""
    spec = importlib.util.spec_from_file_location("nestvmx_native", _built())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
