"""A decoded VMX instruction, as the processor needs it, and the VM-exit information it yields.

The engine decodes the bytes; this module says what the decode must carry and how the
processor turns it into the exit qualification and the VM-exit instruction-information field
(SDM Vol. 3C §28.2.1 and §28.2.5, Tables 28-9, 28-13, 28-14).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nestvmx.arch.exit_reasons import ExitReason
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.state import CpuState, Seg, canonical


class VmxOp(enum.Enum):
    VMXON = ExitReason.VMXON
    VMXOFF = ExitReason.VMXOFF
    VMCLEAR = ExitReason.VMCLEAR
    VMPTRLD = ExitReason.VMPTRLD
    VMPTRST = ExitReason.VMPTRST
    VMREAD = ExitReason.VMREAD
    VMWRITE = ExitReason.VMWRITE
    VMLAUNCH = ExitReason.VMLAUNCH
    VMRESUME = ExitReason.VMRESUME
    INVEPT = ExitReason.INVEPT
    INVVPID = ExitReason.INVVPID
    VMCALL = ExitReason.VMCALL

    @property
    def exit_reason(self) -> ExitReason:
        return self.value


# Instructions whose only operand is m64 (a register operand is another instruction or #UD).
POINTER_OPS = frozenset({VmxOp.VMXON, VmxOp.VMCLEAR, VmxOp.VMPTRLD, VmxOp.VMPTRST})
NO_OPERAND_OPS = frozenset({VmxOp.VMXOFF, VmxOp.VMLAUNCH, VmxOp.VMRESUME, VmxOp.VMCALL})

_ADDRESS_SIZE_CODE = {16: 0, 32: 1, 64: 2}


@dataclass(frozen=True)
class MemOperand:
    """A ModRM memory operand: segment:[base + index*2^scale + displacement]."""

    segment: Seg = Seg.DS
    base: int | None = None  # register number 0-15, None if absent
    index: int | None = None
    scale: int = 0  # log2 of the scale factor
    displacement: int = 0  # sign-extended
    address_size: int = 64  # 16, 32 or 64
    rip_relative: bool = False

    def linear_address(self, s: CpuState, instruction_length: int) -> int:
        """Effective address + segment base, with the 64-bit canonical check (SDM Vol. 1 §3.7.5)."""
        address = self.displacement
        if self.base is not None:
            address += s.gpr[self.base]
        if self.index is not None:
            address += s.gpr[self.index] << self.scale
        if self.rip_relative:
            address += s.rip + instruction_length
        address &= (1 << self.address_size) - 1
        if s.in_64bit_mode:
            if self.segment in (Seg.FS, Seg.GS):
                address = (address + s.segs[self.segment].base) & 0xFFFF_FFFF_FFFF_FFFF
            if not canonical(address):
                raise X86Exception(Vector.SS if self.segment == Seg.SS else Vector.GP, 0)
            return address
        seg = s.segs[self.segment]
        if seg.unusable:
            raise X86Exception(Vector.SS if self.segment == Seg.SS else Vector.GP, 0)
        return (seg.base + address) & 0xFFFF_FFFF


@dataclass(frozen=True)
class VmxInstruction:
    op: VmxOp
    length: int
    reg: int | None = None  # ModRM.reg: VMREAD/VMWRITE field encoding, INVEPT/INVVPID type
    rm_reg: int | None = None  # ModRM.r/m when mod = 11: VMREAD destination, VMWRITE source
    mem: MemOperand | None = None

    def exit_qualification(self, next_rip: int) -> int:
        """Displacement of the memory operand (plus next RIP if RIP-relative), else 0."""
        if self.op in NO_OPERAND_OPS or self.mem is None:
            return 0
        value = self.mem.displacement + (next_rip if self.mem.rip_relative else 0)
        return value & 0xFFFF_FFFF_FFFF_FFFF

    def instruction_info(self) -> int:
        """VM-exit instruction-information field; undefined bits are 0, as on Bochs."""
        if self.op in NO_OPERAND_OPS:
            return 0
        info = 0
        if self.op in (VmxOp.VMREAD, VmxOp.VMWRITE, VmxOp.INVEPT, VmxOp.INVVPID):
            info |= (self.reg or 0) << 28
        if self.mem is None:
            info |= 1 << 10 | (self.rm_reg or 0) << 3
            return info
        m = self.mem
        info |= _ADDRESS_SIZE_CODE[m.address_size] << 7 | int(m.segment) << 15
        if m.index is None:
            info |= 1 << 22
        else:
            info |= m.scale | m.index << 18
        if m.base is None:
            info |= 1 << 27
        else:
            info |= m.base << 23
        return info
