"""Moving a guest's processor state between the processor model (hw.state) and Unicorn.

Unicorn loads the hidden part of CS/SS/DS/ES/FS/GS from the GDT when a selector is written,
so on the way back the descriptor is read from the GDT too; TR and LDTR go with their hidden
parts.  General-purpose registers stay in the register file across transitions (SDM §27.3).
"""

from __future__ import annotations

import ctypes

from unicorn import Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ERR_OK
from unicorn.unicorn_py3 import unicorn as _ucmod
from unicorn.unicorn_py3.arch.intel import UcRegMMR, UcRegMSR

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


# Registers read back at every exit (one uc_reg_read_batch call instead of ~40 binding calls of
# ~1-4 us each): 8-byte integers (selectors fill only 2 bytes), descriptor registers, MSRs.
_INT_READS = (
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
_MMR_READS = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR)
_MSR_READS = (Msr.IA32_EFER, Msr.IA32_SYSENTER_CS, Msr.IA32_SYSENTER_ESP, Msr.IA32_SYSENTER_EIP)
_MAX_WRITES = 64  # load_into_unicorn writes at most 47 registers


class _ReadBuffer(ctypes.Structure):
    """Values of _INT_READS and _MMR_READS.  Each slot only ever receives its own register, so the
    bytes a read leaves alone (above a 2-byte selector, say) stay as zero as they were allocated."""

    _fields_ = (("ints", ctypes.c_uint64 * len(_INT_READS)), ("mmrs", UcRegMMR * len(_MMR_READS)))


class UnicornRegisters:
    """Register access to one Unicorn instance that skips writes of values it already holds.

    Every register this module writes is read back at each exit, so the cache is exact; a VM
    entry then writes only what the VMM or the processor model changed.  Exits and entries each
    move their registers with one batch call into Unicorn's C library through buffers built once."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.known: dict[object, object] = {}
        # Batch read: ids and value pointers fixed; MSR reads need rid set, which Unicorn keeps.
        self._read = _ReadBuffer()
        self._msrs = (UcRegMSR * len(_MSR_READS))(*((index, 0) for index in _MSR_READS))
        buffers = [*_addresses(self._read.ints), *_addresses(self._read.mmrs), *_addresses(self._msrs)]
        ids = (*_INT_READS, *_MMR_READS, *(X.UC_X86_REG_MSR,) * len(_MSR_READS))
        self._read_ids = (ctypes.c_int * len(ids))(*ids)
        self._read_ptrs = (ctypes.c_void_p * len(ids))(*buffers)
        self._msr_keys = [("msr", index) for index in _MSR_READS]
        # Batch write: one value buffer per register written, filled in order.
        self._w_ids = (ctypes.c_int * _MAX_WRITES)()
        self._w_ptrs = (ctypes.c_void_p * _MAX_WRITES)()
        self._w_ints = (ctypes.c_uint64 * _MAX_WRITES)()
        self._w_mmrs = (UcRegMMR * _MAX_WRITES)()
        self._w_msrs = (UcRegMSR * _MAX_WRITES)()
        self._w_addr = [_addresses(b) for b in (self._w_ints, self._w_mmrs, self._w_msrs)]

    def read_all(self) -> tuple[list[int], list[tuple[int, int, int, int]], list[int]]:
        """Values of _INT_READS, _MMR_READS (selector, base, limit, flags) and _MSR_READS, cached."""
        status = _ucmod.uclib.uc_reg_read_batch(self.uc._uch, self._read_ids, self._read_ptrs, len(self._read_ids))
        if status != UC_ERR_OK:
            raise UcError(status)
        ints = self._read.ints[:]
        mmrs = [(m.selector, m.base, m.limit, m.flags) for m in self._read.mmrs]
        msrs = [m.val for m in self._msrs]
        known = self.known
        known.update(zip(_INT_READS, ints, strict=True))
        known.update(zip(_MMR_READS, mmrs, strict=True))
        known.update(
            ((key, (index, value)) for key, index, value in zip(self._msr_keys, _MSR_READS, msrs, strict=True))
        )
        return ints, mmrs, msrs

    def write_changed(self, writes: list[tuple[object, int, object]]) -> None:
        """Write (key, register, value) in order with one batch call, skipping values the cache
        holds under `key` (None: always write).  Unicorn writes a batch in array order."""
        known = self.known
        ids, ptrs, ints, mmrs, msrs = self._w_ids, self._w_ptrs, self._w_ints, self._w_mmrs, self._w_msrs
        int_addr, mmr_addr, msr_addr = self._w_addr
        n = 0
        written = []
        for key, reg, value in writes:
            if key is not None:
                if known.get(key) == value:
                    continue
                written.append((key, value))
            if reg == X.UC_X86_REG_MSR:
                msrs[n].rid, msrs[n].val = value
                ptrs[n] = msr_addr[n]
            elif reg in _MMR_READS:
                mmr = mmrs[n]
                mmr.selector, mmr.base, mmr.limit, mmr.flags = value
                ptrs[n] = mmr_addr[n]
            else:
                ints[n] = value
                ptrs[n] = int_addr[n]
            ids[n] = reg
            n += 1
        status = _ucmod.uclib.uc_reg_write_batch(self.uc._uch, ids, ptrs, n)
        if status != UC_ERR_OK:
            raise UcError(status)
        known.update(written)


def _addresses(array: ctypes.Array) -> list[int]:
    size = ctypes.sizeof(array._type_)
    return [ctypes.addressof(array) + i * size for i in range(len(array))]


def load_into_unicorn(r: UnicornRegisters, s: CpuState) -> None:
    """Make Unicorn's CPU the processor state `s` (VM entry).  Order matters: Unicorn loads a
    segment's hidden part when its selector is written, under the CR0/CR3/CR4/EFER given before."""
    segs, msr = s.segs, X.UC_X86_REG_MSR
    ldtr, tr = segs[Seg.LDTR], segs[Seg.TR]
    r.write_changed(
        [
            (X.UC_X86_REG_GDTR, X.UC_X86_REG_GDTR, (0, s.gdtr_base, s.gdtr_limit, 0)),
            (X.UC_X86_REG_IDTR, X.UC_X86_REG_IDTR, (0, s.idtr_base, s.idtr_limit, 0)),
            (X.UC_X86_REG_CR4, X.UC_X86_REG_CR4, s.cr4),
            (("msr", Msr.IA32_EFER), msr, (Msr.IA32_EFER, s.efer)),
            (X.UC_X86_REG_CR3, X.UC_X86_REG_CR3, s.cr3),
            (X.UC_X86_REG_CR0, X.UC_X86_REG_CR0, s.cr0),
            (None, X.UC_X86_REG_CR2, s.cr2),  # not cached: Unicorn's CR2 is not readable (see below)
            *((reg, reg, segs[seg].selector) for seg, reg in SEGMENT_IDS.items()),
            (X.UC_X86_REG_LDTR, X.UC_X86_REG_LDTR, (ldtr.selector, ldtr.base, ldtr.limit, (ldtr.ar & 0xF0FF) << 8)),
            (X.UC_X86_REG_TR, X.UC_X86_REG_TR, (tr.selector, tr.base, tr.limit, (tr.ar & 0xF0FF) << 8)),
            (X.UC_X86_REG_FS_BASE, X.UC_X86_REG_FS_BASE, segs[Seg.FS].base),
            (X.UC_X86_REG_GS_BASE, X.UC_X86_REG_GS_BASE, segs[Seg.GS].base),
            (("msr", Msr.IA32_SYSENTER_CS), msr, (Msr.IA32_SYSENTER_CS, s.sysenter_cs)),
            (("msr", Msr.IA32_SYSENTER_ESP), msr, (Msr.IA32_SYSENTER_ESP, s.sysenter_esp)),
            (("msr", Msr.IA32_SYSENTER_EIP), msr, (Msr.IA32_SYSENTER_EIP, s.sysenter_eip)),
            (X.UC_X86_REG_DR7, X.UC_X86_REG_DR7, s.dr7),
            *((None, msr, (index, value)) for index, value in s.msrs.items() if index in _PASSTHROUGH_MSRS),
            *((reg, reg, value) for reg, value in zip(GPR_IDS, s.gpr, strict=True)),
            (X.UC_X86_REG_RFLAGS, X.UC_X86_REG_RFLAGS, s.rflags),
            (X.UC_X86_REG_RIP, X.UC_X86_REG_RIP, s.rip),
        ]
    )


def save_from_unicorn(r: UnicornRegisters, s: CpuState, read_linear) -> None:
    """Copy Unicorn's CPU back into `s` (VM exit).  `read_linear(address, size)` reads the GDT.

    CR2 is not read: Unicorn 2.1.4 reports a wrong value once emu_start has returned, so the
    engine records it where it changes (page faults, MOV to CR2)."""
    ints, (gdtr, idtr, ldtr, tr), msrs = r.read_all()
    s.gpr[:] = ints[: len(GPR_IDS)]
    s.rip, s.rflags, s.cr0, s.cr3, s.cr4, s.dr7, *selectors, fs_base, gs_base = ints[len(GPR_IDS) :]
    s.efer, s.sysenter_cs, s.sysenter_esp, s.sysenter_eip = msrs
    _, s.gdtr_base, s.gdtr_limit, _ = gdtr
    _, s.idtr_base, s.idtr_limit, _ = idtr
    for seg, selector in zip(SEGMENT_IDS, selectors, strict=True):
        if selector == s.segs[seg].selector:
            continue  # not reloaded: keep the hidden part the processor already has
        raw = 0
        if selector & ~7 and selector | 7 <= s.gdtr_limit and not selector & 4:
            raw = int.from_bytes(read_linear(s.gdtr_base + (selector & ~7), 8), "little")
        s.segs[seg] = descriptor_segment(selector, raw)
    s.segs[Seg.FS].base = fs_base
    s.segs[Seg.GS].base = gs_base
    for seg, (selector, base, limit, flags) in ((Seg.LDTR, ldtr), (Seg.TR, tr)):
        ar = (flags >> 8) & 0xF0FF
        if seg == Seg.TR and ar & 0xF in (1, 9):
            ar |= 2  # LTR marks the TSS busy; QEMU keeps the pre-LTR type in its segment cache
        s.segs[seg] = Segment(selector, base, limit, ar if ar & 0x80 else AR_UNUSABLE)
