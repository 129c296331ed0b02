"""Moving a guest's processor state between the processor model (hw.state) and Unicorn.

Unicorn loads the hidden part of CS/SS/DS/ES/FS/GS from the GDT when a selector is written,
so on the way back the descriptor is read from the GDT too; TR and LDTR go with their hidden
parts.  General-purpose registers stay in the register file across transitions (SDM §27.3).
"""

from __future__ import annotations

import ctypes

from unicorn import Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as _ucmod

from nestvmx.arch.msr import Msr
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
_PLAIN_REGS = frozenset(
    {
        *GPR_IDS,
        X.UC_X86_REG_RIP,
        X.UC_X86_REG_RFLAGS,
        X.UC_X86_REG_CR0,
        X.UC_X86_REG_CR3,
        X.UC_X86_REG_CR4,
        X.UC_X86_REG_DR7,
        X.UC_X86_REG_FS_BASE,
        X.UC_X86_REG_GS_BASE,
        *(X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS),
    }
)
# MSRs that Unicorn models and that guest software reads back (beyond those in CpuState fields).
_PASSTHROUGH_MSRS = (
    Msr.IA32_SYSENTER_CS,
    Msr.IA32_SYSENTER_ESP,
    Msr.IA32_SYSENTER_EIP,
    Msr.IA32_PAT,
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


class UnicornRegisters:
    """Register access to one Unicorn instance that skips writes of values it already holds.

    Every register this module writes is read back at each exit, so the cache is exact; a VM
    entry then writes only what the VMM or the processor model changed (reg_write costs ~2 us)."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.known: dict[object, object] = {}
        self._buffer = ctypes.c_uint64()
        self._buffer_ref = ctypes.byref(self._buffer)

    def write(self, reg: int, value, key: object = None) -> None:
        key = reg if key is None else key
        if self.known.get(key) != value:
            self.uc.reg_write(reg, value)
            self.known[key] = value

    def read(self, reg: int, key: object = None):
        if reg in _PLAIN_REGS:  # an integer register: the raw C call is ~3x faster than the binding
            self._buffer.value = 0  # segment selectors fill only 2 bytes
            _ucmod.uclib.uc_reg_read(self.uc._uch, reg, self._buffer_ref)
            value = self._buffer.value
        else:
            value = self.uc.reg_read(reg)
        self.known[reg if key is None else key] = value
        return value

    def put(self, reg: int, value: int) -> None:
        """Write an integer register while the guest runs (the cache may be stale, so always write)."""
        self._buffer.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _ucmod.uclib.uc_reg_write(self.uc._uch, reg, self._buffer_ref)
        self.known[reg] = value

    def read_msr(self, index: int) -> int:
        value = self.uc.reg_read(X.UC_X86_REG_MSR, index)
        self.known[("msr", index)] = (index, value)
        return value

    def write_msr(self, index: int, value: int) -> None:
        self.write(X.UC_X86_REG_MSR, (index, value), ("msr", index))


def load_into_unicorn(r: UnicornRegisters, s: CpuState) -> None:
    """Make Unicorn's CPU the processor state `s` (VM entry)."""
    r.write(X.UC_X86_REG_GDTR, (0, s.gdtr_base, s.gdtr_limit, 0))
    r.write(X.UC_X86_REG_IDTR, (0, s.idtr_base, s.idtr_limit, 0))
    r.write(X.UC_X86_REG_CR4, s.cr4)
    r.write_msr(Msr.IA32_EFER, s.efer)
    r.write(X.UC_X86_REG_CR3, s.cr3)
    r.write(X.UC_X86_REG_CR0, s.cr0)
    r.uc.reg_write(X.UC_X86_REG_CR2, s.cr2)  # not cached: Unicorn's CR2 is not readable (see below)
    for seg, reg in SEGMENT_IDS.items():
        r.write(reg, s.segs[seg].selector)
    for reg, seg in ((X.UC_X86_REG_LDTR, s.segs[Seg.LDTR]), (X.UC_X86_REG_TR, s.segs[Seg.TR])):
        r.write(reg, (seg.selector, seg.base, seg.limit, (seg.ar & 0xF0FF) << 8))
    r.write(X.UC_X86_REG_FS_BASE, s.segs[Seg.FS].base)
    r.write(X.UC_X86_REG_GS_BASE, s.segs[Seg.GS].base)
    r.write_msr(Msr.IA32_SYSENTER_CS, s.sysenter_cs)
    r.write_msr(Msr.IA32_SYSENTER_ESP, s.sysenter_esp)
    r.write_msr(Msr.IA32_SYSENTER_EIP, s.sysenter_eip)
    r.write(X.UC_X86_REG_DR7, s.dr7)
    for index, value in s.msrs.items():
        if index in _PASSTHROUGH_MSRS:
            r.uc.reg_write(X.UC_X86_REG_MSR, (index, value))
    for reg, value in zip(GPR_IDS, s.gpr, strict=True):
        r.write(reg, value)
    r.write(X.UC_X86_REG_RFLAGS, s.rflags)
    r.write(X.UC_X86_REG_RIP, s.rip)


def save_from_unicorn(r: UnicornRegisters, s: CpuState, read_linear) -> None:
    """Copy Unicorn's CPU back into `s` (VM exit).  `read_linear(address, size)` reads the GDT.

    CR2 is not read: Unicorn 2.1.4 reports a wrong value once emu_start has returned, so the
    engine records it where it changes (page faults, MOV to CR2)."""
    s.gpr[:] = [r.read(reg) for reg in GPR_IDS]
    s.rip = r.read(X.UC_X86_REG_RIP)
    s.rflags = r.read(X.UC_X86_REG_RFLAGS)
    s.cr0 = r.read(X.UC_X86_REG_CR0)
    s.cr3 = r.read(X.UC_X86_REG_CR3)
    s.cr4 = r.read(X.UC_X86_REG_CR4)
    s.dr7 = r.read(X.UC_X86_REG_DR7)
    s.efer = r.read_msr(Msr.IA32_EFER)
    _, s.gdtr_base, s.gdtr_limit, _ = r.read(X.UC_X86_REG_GDTR)
    _, s.idtr_base, s.idtr_limit, _ = r.read(X.UC_X86_REG_IDTR)
    for seg, reg in SEGMENT_IDS.items():
        selector = r.read(reg)
        if selector == s.segs[seg].selector:
            continue  # not reloaded: keep the hidden part the processor already has
        raw = 0
        if selector & ~7 and selector | 7 <= s.gdtr_limit and not selector & 4:
            raw = int.from_bytes(read_linear(s.gdtr_base + (selector & ~7), 8), "little")
        s.segs[seg] = descriptor_segment(selector, raw)
    s.segs[Seg.FS].base = r.read(X.UC_X86_REG_FS_BASE)
    s.segs[Seg.GS].base = r.read(X.UC_X86_REG_GS_BASE)
    for reg, seg in ((X.UC_X86_REG_LDTR, Seg.LDTR), (X.UC_X86_REG_TR, Seg.TR)):
        selector, base, limit, flags = r.read(reg)
        ar = (flags >> 8) & 0xF0FF
        if seg == Seg.TR and ar & 0xF in (1, 9):
            ar |= 2  # LTR marks the TSS busy; QEMU keeps the pre-LTR type in its segment cache
        s.segs[seg] = Segment(selector, base, limit, ar if ar & 0x80 else AR_UNUSABLE)
    s.sysenter_cs = r.read_msr(Msr.IA32_SYSENTER_CS)
    s.sysenter_esp = r.read_msr(Msr.IA32_SYSENTER_ESP)
    s.sysenter_eip = r.read_msr(Msr.IA32_SYSENTER_EIP)
