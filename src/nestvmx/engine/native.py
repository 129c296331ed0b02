"""The engine's C code (native.c): Unicorn callbacks (an instruction counter and the shadowed
VMREAD/VMWRITE of non-root operation) and the register transfer of VM entries and exits, built
by hw.native."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from types import ModuleType

from nestvmx.hw.native import build_shared, import_extension

_SOURCE = Path(__file__).with_name("native.c")


class InstructionCounter(ctypes.Structure):
    """nestvmx_count_insn's data (struct counter); `stop` and `reg_read` are Unicorn's uc_emu_stop and
    uc_reg_read; `special` points to `n_special` sorted addresses, where it calls `on_special`."""

    _fields_ = [
        ("count", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("last", ctypes.c_uint64),
        ("previous", ctypes.c_uint64),
        ("rflags", ctypes.c_uint64),
        ("stop", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("rflags_id", ctypes.c_int),
        ("special", ctypes.c_void_p),
        ("n_special", ctypes.c_size_t),
        ("on_special", ctypes.py_object),
    ]


class ShadowPath(ctypes.Structure):
    """nestvmx_shadow_vmx's data (struct shadow_path): Unicorn's entry points and register ids, and
    what the engine arms before each run (ctypes keeps the Python objects alive)."""

    _fields_ = [
        ("reg_read_batch", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("vmem_read", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
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


@cache
def native_library() -> ctypes.CDLL:
    """native.c's Unicorn callbacks, for ctypes."""
    return ctypes.CDLL(str(build_shared(_SOURCE)))


def native_module() -> ModuleType:
    """native.c's Python functions (the same shared object, imported as extension module)."""
    return import_extension(_SOURCE, "nestvmx_native")
