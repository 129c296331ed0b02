"""Decoding of the VMX instructions from their bytes (Unicorn does not know them).

Opcodes (SDM Vol. 2 and Vol. 3C §31.3): VMCALL 0F 01 C1, VMLAUNCH 0F 01 C2, VMRESUME 0F 01 C3,
VMXOFF 0F 01 C4, VMPTRLD NP 0F C7 /6, VMCLEAR 66 0F C7 /6, VMXON F3 0F C7 /6, VMPTRST NP 0F C7 /7,
VMREAD NP 0F 78 /r, VMWRITE NP 0F 79 /r, INVEPT 66 0F 38 80 /r, INVVPID 66 0F 38 81 /r.
Every operand form is decoded: ModRM/SIB, disp8/disp32, RIP-relative, REX.R/X/B/W, segment
overrides, the 67 address-size prefix and 16-bit addressing outside 64-bit mode.
"""

from __future__ import annotations

from nestvmx.hw.instruction import MemOperand, VmxInstruction, VmxOp
from nestvmx.hw.state import Seg

_SEGMENT_PREFIXES = {0x26: Seg.ES, 0x2E: Seg.CS, 0x36: Seg.SS, 0x3E: Seg.DS, 0x64: Seg.FS, 0x65: Seg.GS}
_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF0, 0xF2, 0xF3, *_SEGMENT_PREFIXES})
_NO_OPERAND = {0xC1: VmxOp.VMCALL, 0xC2: VmxOp.VMLAUNCH, 0xC3: VmxOp.VMRESUME, 0xC4: VmxOp.VMXOFF}
_C7_SLASH6 = {None: VmxOp.VMPTRLD, 0x66: VmxOp.VMCLEAR, 0xF3: VmxOp.VMXON}
# 16-bit addressing: (base, index) registers per ModRM.rm (SDM Vol. 2 Table 2-1).
_RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, None), (7, None), (5, None), (3, None))
_RSP, _RBP = 4, 5
MAX_INSTRUCTION_LENGTH = 15


def _sign(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


class _Reader:
    def __init__(self, code: bytes) -> None:
        self.code = code
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.code):
            raise IndexError("truncated instruction")
        b = self.code[self.pos]
        self.pos += 1
        return b

    def imm(self, size: int) -> int:
        value = int.from_bytes(self.code[self.pos : self.pos + size], "little")
        if self.pos + size > len(self.code):
            raise IndexError("truncated instruction")
        self.pos += size
        return value


def decode_vmx(code: bytes, long_mode_64: bool = True) -> VmxInstruction | None:
    """Decode a VMX instruction at the start of `code`; None if the bytes are not one."""
    try:
        return _decode(_Reader(code[:MAX_INSTRUCTION_LENGTH]), long_mode_64)
    except IndexError:
        return None


def _decode(r: _Reader, mode64: bool) -> VmxInstruction | None:
    segment: Seg | None = None
    rep: int | None = None  # the last of F2/F3
    operand_size = False  # 66
    address_override = False
    rex = 0
    b = r.byte()
    while b in _LEGACY_PREFIXES or (mode64 and 0x40 <= b <= 0x4F):
        if b not in _LEGACY_PREFIXES:
            rex = b
            b = r.byte()
            continue
        rex = 0  # a REX prefix followed by another prefix is ignored (SDM Vol. 2 §2.2.1)
        if b == 0xF0:
            return None  # LOCK with a VMX instruction is #UD
        if b in _SEGMENT_PREFIXES:
            segment = _SEGMENT_PREFIXES[b]
        elif b == 0x67:
            address_override = True
        elif b == 0x66:
            operand_size = True
        else:
            rep = b
        b = r.byte()
    # The mandatory prefix that selects the instruction: F2/F3 take precedence over 66 (as iced-x86
    # and XED decode, whatever the order).
    mandatory = rep if rep is not None else 0x66 if operand_size else None
    if b != 0x0F:
        return None
    b = r.byte()
    if b == 0x01:
        op = _NO_OPERAND.get(r.byte())
        return VmxInstruction(op, r.pos) if op and mandatory is None else None
    if b == 0x38:
        op = {0x80: VmxOp.INVEPT, 0x81: VmxOp.INVVPID}.get(r.byte())
        if op is None or mandatory != 0x66:
            return None
    elif b == 0xC7:
        op = None  # chosen by ModRM.reg below
    elif b in (0x78, 0x79):
        if mandatory is not None:
            return None  # 66 0F 78/79 are EXTRQ/INSERTQ
        op = VmxOp.VMREAD if b == 0x78 else VmxOp.VMWRITE
    else:
        return None

    modrm = r.byte()
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if b == 0xC7:
        if reg == 6:
            op = _C7_SLASH6.get(mandatory)
        elif reg == 7 and mandatory is None:
            op = VmxOp.VMPTRST
        if op is None or mod == 3:
            return None  # mod = 11 is RDRAND/RDSEED/SENDUIPI
    reg |= (rex & 4) << 1  # REX.R
    if mod == 3:
        if op not in (VmxOp.VMREAD, VmxOp.VMWRITE):
            return None
        return VmxInstruction(op, r.pos, reg=reg, rm_reg=rm | (rex & 1) << 3)
    address_size = (32 if address_override else 64) if mode64 else (16 if address_override else 32)
    mem = _memory_operand(r, mod, rm, rex, address_size, mode64, segment)
    return VmxInstruction(op, r.pos, reg=None if b == 0xC7 else reg, mem=mem)


def _memory_operand(
    r: _Reader, mod: int, rm: int, rex: int, address_size: int, mode64: bool, segment: Seg | None
) -> MemOperand:
    if address_size == 16:
        base, index = _RM16[rm]
        if mod == 0 and rm == 6:
            base = None
        size = 2 if mod == 2 or base is None else mod
        displacement = _sign(r.imm(size), 8 * size) if size else 0
        default = Seg.SS if base == _RBP else Seg.DS
        return MemOperand(segment if segment is not None else default, base, index, 0, displacement, 16)
    base: int | None
    index: int | None = None
    scale = 0
    rip_relative = False
    if rm == 4:
        sib = r.byte()
        scale, index, base = sib >> 6, ((sib >> 3) & 7) | (rex & 2) << 2, sib & 7
        if index == 4:
            index = None  # no index (REX.X selects R12)
        if base == 5 and mod == 0:
            base = None
        else:
            base |= (rex & 1) << 3
    elif rm == 5 and mod == 0:
        base = None
        rip_relative = mode64
    else:
        base = rm | (rex & 1) << 3
    if mod == 1:
        displacement = _sign(r.imm(1), 8)
    elif mod == 2 or base is None:
        displacement = _sign(r.imm(4), 32)
    else:
        displacement = 0
    default = Seg.SS if base in (_RSP, _RBP) else Seg.DS
    return MemOperand(
        segment if segment is not None else default, base, index, scale, displacement, address_size, rip_relative
    )
