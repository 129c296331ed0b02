"""Moving a guest's processor state between the processor model (hw.state) and Unicorn; the
transfer itself is native.c's (load_registers, save_registers).

Unicorn loads the hidden part of CS/SS/DS/ES/FS/GS from the GDT when a selector is written,
so on the way back the descriptor is read from the GDT too; TR and LDTR go with their hidden
parts.  General-purpose registers stay in the register file across transitions (SDM §27.3).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from unicorn import Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ERR_OK
from unicorn.unicorn_py3 import unicorn as _ucmod
from unicorn.unicorn_py3.arch.intel import UcRegMMR, UcRegMSR

from nestvmx.arch.msr import Msr
from nestvmx.engine.native import native_module
from nestvmx.hw.state import AR_UNUSABLE, CpuState, Seg, Segment

GPR_IDS = (
    X.UC_X86_REG_RAX,
    X.UC_X86_REG_RCX,
    X.UC_X86_REG_RDX,
    X.UC_X86_REG_RBX,
    X.UC_X86_REG_RSP,
    X.UC_X86_REG_RBP,
    X.UC_X86_REG_RSI,
    X.UC_X86_REG_RDI,
    X.UC_X86_REG_R8,
    X.UC_X86_REG_R9,
    X.UC_X86_REG_R10,
    X.UC_X86_REG_R11,
    X.UC_X86_REG_R12,
    X.UC_X86_REG_R13,
    X.UC_X86_REG_R14,
    X.UC_X86_REG_R15,
)
SEGMENT_IDS = {
    Seg.ES: X.UC_X86_REG_ES,
    Seg.CS: X.UC_X86_REG_CS,
    Seg.SS: X.UC_X86_REG_SS,
    Seg.DS: X.UC_X86_REG_DS,
    Seg.FS: X.UC_X86_REG_FS,
    Seg.GS: X.UC_X86_REG_GS,
}
# MSRs of CpuState.msrs (those without a CpuState attribute) that Unicorn models too.
_PASSTHROUGH_MSRS = (
    Msr.IA32_KERNEL_GS_BASE,
    0xC0000081,
    0xC0000082,
    0xC0000084,
)  # STAR, LSTAR, FMASK


def descriptor_segment(selector: int, raw: int) -> Segment:
    """A segment register as loaded from an 8-byte GDT descriptor, in the VMCS format."""
    if selector & ~3 == 0:
        return Segment(selector, 0, 0, AR_UNUSABLE)
    limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF0000)
    base = ((raw >> 16) & 0xFFFFFF) | ((raw >> 32) & 0xFF000000)
    ar = (raw >> 40) & 0xF0FF
    if ar & (1 << 15):
        limit = (limit << 12) | 0xFFF
    return Segment(selector, base, limit, ar)


# The register file's slots, in native.c's order: integer registers (selectors fill 2 bytes),
# descriptor-table registers, MSRs.  An exit reads them all with one uc_reg_read_batch call.
_INT_IDS = (
    *GPR_IDS,
    X.UC_X86_REG_RIP,
    X.UC_X86_REG_RFLAGS,
    X.UC_X86_REG_CR0,
    X.UC_X86_REG_CR3,
    X.UC_X86_REG_CR4,
    X.UC_X86_REG_DR7,
    *SEGMENT_IDS.values(),
    X.UC_X86_REG_FS_BASE,
    X.UC_X86_REG_GS_BASE,
)
_MMR_IDS = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR)
_MSR_INDEXES = (Msr.IA32_EFER, Msr.IA32_SYSENTER_CS, Msr.IA32_SYSENTER_ESP, Msr.IA32_SYSENTER_EIP)
_SELECTOR_SLOT = len(GPR_IDS) + 6
_CR3_SLOT = len(GPR_IDS) + 3


class _RegisterFile(ctypes.Structure):
    """native.c's struct register_file: Unicorn's entry points and register ids, and the values
    Unicorn holds as last read or written (`known`: a bit per slot)."""

    _fields_ = (
        ("uc", ctypes.c_void_p),
        ("read_batch", ctypes.c_void_p),
        ("write_batch", ctypes.c_void_p),
        ("int_ids", ctypes.c_int * len(_INT_IDS)),
        ("mmr_ids", ctypes.c_int * len(_MMR_IDS)),
        ("msr_id", ctypes.c_int),
        ("cr2_id", ctypes.c_int),
        ("msr_indexes", ctypes.c_uint32 * len(_MSR_INDEXES)),
        ("passthrough", ctypes.c_uint32 * len(_PASSTHROUGH_MSRS)),
        ("segment_type", ctypes.py_object),
        ("ints", ctypes.c_uint64 * len(_INT_IDS)),
        ("mmrs", UcRegMMR * len(_MMR_IDS)),
        ("msrs", UcRegMSR * len(_MSR_INDEXES)),
        ("known", ctypes.c_uint64),
    )


class UnicornRegisters:
    """The registers of one Unicorn instance, moved to and from a CpuState by native.c.

    Every cached register an entry writes is read back at each exit (CR2 and the pass-through MSRs
    are written every time, uncached), so the cache of Unicorn's values is exact; an entry then
    writes only what the VMM or the processor model changed."""

    def __init__(self, uc: Uc) -> None:
        self._file = _RegisterFile(
            uc=uc._uch,
            read_batch=ctypes.cast(_ucmod.uclib.uc_reg_read_batch, ctypes.c_void_p),
            write_batch=ctypes.cast(_ucmod.uclib.uc_reg_write_batch, ctypes.c_void_p),
            int_ids=(ctypes.c_int * len(_INT_IDS))(*_INT_IDS),
            mmr_ids=(ctypes.c_int * len(_MMR_IDS))(*_MMR_IDS),
            msr_id=X.UC_X86_REG_MSR,
            cr2_id=X.UC_X86_REG_CR2,
            msr_indexes=(ctypes.c_uint32 * len(_MSR_INDEXES))(*_MSR_INDEXES),
            passthrough=(ctypes.c_uint32 * len(_PASSTHROUGH_MSRS))(*_PASSTHROUGH_MSRS),
            segment_type=Segment,
        )
        self._address = ctypes.addressof(self._file)
        self._native = native_module()

    def selectors(self) -> list[int | None]:
        """The selectors Unicorn holds for ES..GS; all None while one is unknown (before the first transfer)."""
        if ~self._file.known >> _SELECTOR_SLOT & 0x3F:
            return [None] * 6
        return self._file.ints[_SELECTOR_SLOT : _SELECTOR_SLOT + 6]

    def cr3(self) -> int | None:
        return self._file.ints[_CR3_SLOT] if self._file.known >> _CR3_SLOT & 1 else None

    def load(self, s: CpuState) -> None:
        """Make Unicorn's CPU the processor state `s` (VM entry)."""
        status = self._native.load_registers(self._address, s)
        if status != UC_ERR_OK:
            raise UcError(status)

    def save(self, s: CpuState, gdt_segment: Callable[[int], Segment]) -> None:
        """Copy Unicorn's CPU back into `s` (VM exit).  `gdt_segment(selector)` gives the segment of a
        selector the guest reloaded, from the GDT as `s` then has it (Unicorn loaded it from there).

        CR2 is not read: Unicorn 2.1.4 reports a wrong value once emu_start has returned, so the
        engine records it where it changes (page faults, MOV to CR2)."""
        status = self._native.save_registers(self._address, s, gdt_segment)
        if status != UC_ERR_OK:
            raise UcError(status)
