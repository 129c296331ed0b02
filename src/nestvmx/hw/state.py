"""Architectural state of one logical processor: what VM entry loads and VM exit saves.

The general-purpose registers other than RSP are not in the VMCS: they stay in this register
file across VM entries and exits, as on hardware.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nestvmx.arch.msr import Msr

CR0_PE = 1 << 0
CR0_NE = 1 << 5
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_PCIDE = 1 << 17
CR4_VMXE = 1 << 13
CR4_SMXE = 1 << 14
CR4_SMEP = 1 << 20
CR4_PCE = 1 << 8
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1
RFLAGS_PF = 1 << 2
RFLAGS_AF = 1 << 4
RFLAGS_ZF = 1 << 6
RFLAGS_SF = 1 << 7
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_OF = 1 << 11
RFLAGS_VM = 1 << 17
RFLAGS_ARITH = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF

# Access-rights format of the VMCS segment fields (SDM §25.4.1, Table 25-2).
AR_TYPE_MASK = 0xF
AR_S = 1 << 4
AR_DPL_SHIFT = 5
AR_P = 1 << 7
AR_AVL = 1 << 12
AR_L = 1 << 13
AR_DB = 1 << 14
AR_G = 1 << 15
AR_UNUSABLE = 1 << 16
AR_RESERVED = 0xFFFE_0F00  # bits 11:8 and 31:17

GPR_NAMES = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)
RSP = 4


class Seg(enum.IntEnum):
    """Segment register numbers as the VM-exit instruction-information field encodes them."""

    ES = 0
    CS = 1
    SS = 2
    DS = 3
    FS = 4
    GS = 5
    LDTR = 6
    TR = 7


@dataclass(slots=True)
class Segment:
    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    ar: int = AR_UNUSABLE

    @property
    def dpl(self) -> int:
        return (self.ar >> AR_DPL_SHIFT) & 3

    @property
    def unusable(self) -> bool:
        return bool(self.ar & AR_UNUSABLE)


def _flat_segments() -> list[Segment]:
    code64 = 0xB | AR_S | AR_P | AR_L | AR_G  # execute/read, accessed, 64-bit
    data = 0x3 | AR_S | AR_P | AR_DB | AR_G  # read/write, accessed
    segs = [Segment(0x10, 0, 0xFFFF_FFFF, data) for _ in range(6)]
    segs[Seg.CS] = Segment(0x08, 0, 0xFFFF_FFFF, code64)
    segs.append(Segment(0, 0, 0, AR_UNUSABLE))  # LDTR
    segs.append(Segment(0x18, 0, 0x67, 0xB | AR_P))  # TR: busy 64-bit TSS
    return segs


@dataclass(slots=True)
class CpuState:
    """Registers of one logical processor.  Defaults: 64-bit mode, CPL 0, paging on."""

    gpr: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = 0
    rflags: int = RFLAGS_FIXED
    cr0: int = CR0_PE | CR0_NE | CR0_PG | (1 << 4)  # ET reads as 1
    cr2: int = 0
    cr3: int = 0
    cr4: int = CR4_PAE
    dr7: int = 0x400
    efer: int = EFER_LME | EFER_LMA
    segs: list[Segment] = field(default_factory=_flat_segments)
    gdtr_base: int = 0
    gdtr_limit: int = 0xFFFF
    idtr_base: int = 0
    idtr_limit: int = 0xFFFF
    # MSRs that VM entry / VM exit load or save; other MSRs live in `msrs`.
    pat: int = 0x0007_0406_0007_0406
    debugctl: int = 0
    perf_global_ctrl: int = 0
    sysenter_cs: int = 0
    sysenter_esp: int = 0
    sysenter_eip: int = 0
    msrs: dict[int, int] = field(default_factory=dict)
    # Non-register state (SDM §25.4.2).
    activity_state: int = 0
    interruptibility: int = 0
    pending_dbg_exceptions: int = 0
    smbase: int = 0x30000

    @property
    def rsp(self) -> int:
        return self.gpr[RSP]

    @rsp.setter
    def rsp(self, value: int) -> None:
        self.gpr[RSP] = value

    @property
    def cs(self) -> Segment:
        return self.segs[Seg.CS]

    @property
    def cpl(self) -> int:
        # The processor's CPL is SS.DPL (SDM §26.3.1.2 checks CS.DPL/SS.DPL against it).
        return self.segs[Seg.SS].dpl if self.cr0 & CR0_PE else 0

    @property
    def long_mode_active(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def in_64bit_mode(self) -> bool:
        return self.long_mode_active and bool(self.cs.ar & AR_L)

    @property
    def in_compatibility_mode(self) -> bool:
        return self.long_mode_active and not self.cs.ar & AR_L

    @property
    def virtual_8086(self) -> bool:
        return bool(self.rflags & RFLAGS_VM)

    def read_msr(self, index: int) -> int:
        named = _MSR_ATTRS.get(index)
        return getattr(self, named) if named else self.msrs.get(index, 0)

    def write_msr(self, index: int, value: int) -> None:
        named = _MSR_ATTRS.get(index)
        if named:
            setattr(self, named, value)
        else:
            self.msrs[index] = value


_MSR_ATTRS = {
    Msr.IA32_EFER: "efer",
    Msr.IA32_PAT: "pat",
    Msr.IA32_DEBUGCTL: "debugctl",
    Msr.IA32_PERF_GLOBAL_CTRL: "perf_global_ctrl",
    Msr.IA32_SYSENTER_CS: "sysenter_cs",
    Msr.IA32_SYSENTER_ESP: "sysenter_esp",
    Msr.IA32_SYSENTER_EIP: "sysenter_eip",
}


def canonical(address: int, linear_bits: int = 48) -> bool:
    top = address >> (linear_bits - 1)
    return top == 0 or top == (1 << (65 - linear_bits)) - 1
