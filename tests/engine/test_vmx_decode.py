"""The VMX instruction decoder against GNU as (encoding) and capstone (decoding), and the
VM-exit instruction information it yields (SDM Vol. 3C §28.2.5, Tables 28-9, 28-13, 28-14)."""

from __future__ import annotations

import shutil
import subprocess

import capstone
import pytest
from capstone import x86_const as X

from nestvmx.engine.vmx_decode import decode_vmx
from nestvmx.hw.instruction import MemOperand, VmxInstruction, VmxOp
from nestvmx.hw.state import Seg

_GPR64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{i}" for i in range(8, 16)]
_GPR32 = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"] + [f"r{i}d" for i in range(8, 16)]

MEMORY_FORMS = [
    "(%rax)",
    "(%r8)",
    "(%rsp)",
    "(%r12)",
    "(%rbp)",
    "(%r13)",
    "0x10(%rbx)",
    "-0x80(%rsi)",
    "0x12345678(%rdi)",
    "-4(%r15)",
    "(%rax,%rbx)",
    "(%rax,%rbx,2)",
    "0x40(%rcx,%rdx,4)",
    "-0x1000(%r9,%r10,8)",
    "(,%r14,8)",
    "0x1000(,%rax,1)",
    "(%rsp,%r12,2)",
    "0x20(%rip)",
    "-0x20(%rip)",
    "0x7fff0000",
    "%fs:0x28(%rax)",
    "%gs:(%r11)",
    "%es:8(%rbp)",
    "%ss:(%rax)",
    "%cs:(%rbx,%rcx,8)",
    "(%eax)",
    "0x10(%r8d,%ecx,4)",
]

INSTRUCTIONS = (
    [f"vmread %{r}, {m}" for r in ("rax", "r9", "r15") for m in MEMORY_FORMS]
    + [f"vmwrite {m}, %{r}" for r in ("rdx", "r12") for m in MEMORY_FORMS]
    + [f"vmread %{a}, %{b}" for a in _GPR64 for b in ("rax", "rsp", "r13")]
    + [f"vmwrite %{a}, %{b}" for a in ("rbx", "r8", "r15") for b in _GPR64]
    + [f"{op} {m}" for op in ("vmptrld", "vmclear", "vmxon", "vmptrst") for m in MEMORY_FORMS]
    + [f"{op} {m}, %{r}" for op in ("invept", "invvpid") for r in ("rax", "r10") for m in MEMORY_FORMS]
    + ["vmcall", "vmlaunch", "vmresume", "vmxoff"]
)

needs_as = pytest.mark.skipif(
    shutil.which("as") is None or shutil.which("objcopy") is None, reason="GNU binutils not installed"
)


def assemble(lines: list[str], code64: bool = True) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        src, obj, binary = Path(tmp, "a.s"), Path(tmp, "a.o"), Path(tmp, "a.bin")
        src.write_text((".code64\n" if code64 else ".code32\n") + "\n".join(lines) + "\n")
        subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True)
        return binary.read_bytes()


_CS_SEG = {
    X.X86_REG_ES: Seg.ES,
    X.X86_REG_CS: Seg.CS,
    X.X86_REG_SS: Seg.SS,
    X.X86_REG_DS: Seg.DS,
    X.X86_REG_FS: Seg.FS,
    X.X86_REG_GS: Seg.GS,
}


def _cs_regnum(md: capstone.Cs, reg: int) -> int | None:
    if reg == 0:
        return None
    name = md.reg_name(reg)
    for table in (_GPR64, _GPR32):
        if name in table:
            return table.index(name)
    raise AssertionError(name)


def expected_from_capstone(md: capstone.Cs, insn) -> VmxInstruction:
    op = VmxOp[insn.mnemonic.upper()]
    reg = rm_reg = mem = None
    for o in insn.operands:
        if o.type == X.X86_OP_MEM:
            m = o.mem
            rip_relative = m.base == X.X86_REG_RIP
            base = None if rip_relative else _cs_regnum(md, m.base)
            segment = _CS_SEG.get(m.segment)
            if segment is None:
                segment = Seg.SS if base in (4, 5) else Seg.DS
            address_size = (
                32
                if insn.bytes[0] == 0x67
                or (insn.bytes[0] in (0x64, 0x65, 0x26, 0x2E, 0x36, 0x3E) and 0x67 in insn.bytes[:3])
                else 64
            )
            mem = MemOperand(
                segment,
                base,
                _cs_regnum(md, m.index),
                {1: 0, 2: 1, 4: 2, 8: 3}[m.scale],
                m.disp,
                address_size,
                rip_relative,
            )
    regs = [_cs_regnum(md, o.reg) for o in insn.operands if o.type == X.X86_OP_REG]
    if op is VmxOp.VMREAD:  # Intel order: VMREAD r/m64, r64
        if mem is None:
            rm_reg, reg = regs
        else:
            (reg,) = regs
    elif op is VmxOp.VMWRITE:  # VMWRITE r64, r/m64
        if mem is None:
            reg, rm_reg = regs
        else:
            (reg,) = regs
    elif op in (VmxOp.INVEPT, VmxOp.INVVPID):
        (reg,) = regs
    return VmxInstruction(op, insn.size, reg=reg, rm_reg=rm_reg, mem=mem)


@needs_as
def test_decoder_agrees_with_capstone_on_every_operand_form() -> None:
    code = assemble(INSTRUCTIONS)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    count = 0
    for insn in md.disasm(code, 0x1000):
        got = decode_vmx(bytes(insn.bytes) + b"\x90" * 4)
        assert got == expected_from_capstone(md, insn), f"{insn.mnemonic} {insn.op_str} {bytes(insn.bytes).hex()}"
        count += 1
    assert count == len(INSTRUCTIONS)


@pytest.mark.parametrize(
    "code",
    [
        b"\x0f\x0b",  # UD2
        b"\x0f\xc7\xf0",  # RDRAND eax (0F C7 /6 with mod = 11)
        b"\x0f\xc7\xf8",  # RDSEED eax
        b"\x66\x0f\x78\xc0\x01\x02",  # EXTRQ (66 0F 78)
        b"\xf0\x0f\xc7\x30",  # LOCK VMPTRLD
        b"\x66\x0f\x01\xc2",  # 66 VMLAUNCH is not VMLAUNCH
        b"\x0f\xc7\x28",  # 0F C7 /5 is XRSTORS, not VMX
        b"\x0f\x38\x80\x00",  # INVEPT without 66
        b"\x66\x0f\x38\x80\xc0",  # INVEPT with a register operand
        b"\x0f\x78",  # truncated
        b"\x0f\x01\xd4",  # VMFUNC is not decoded here
    ],
)
def test_non_vmx_bytes_are_rejected(code: bytes) -> None:
    assert decode_vmx(code) is None


def test_register_forms_and_instruction_information() -> None:
    """VMREAD %r9 -> %rbx: Reg1 = r/m (bits 6:3), bit 10 set, Reg2 = the encoding register (31:28)."""
    i = decode_vmx(bytes.fromhex("4c0f78cb"))  # vmread %r9, %rbx
    assert i == VmxInstruction(VmxOp.VMREAD, 4, reg=9, rm_reg=3)
    assert i.instruction_info() == (9 << 28) | (1 << 10) | (3 << 3)
    assert i.exit_qualification(0x1234) == 0


def test_memory_form_instruction_information_and_qualification() -> None:
    """VMPTRLD 0x40(%rcx,%rdx,4): scale 2, 64-bit address, DS, index rdx, base rcx, qualification = disp."""
    i = decode_vmx(bytes.fromhex("0fc7749140"))
    assert i.mem == MemOperand(Seg.DS, 1, 2, 2, 0x40, 64, False)
    assert i.instruction_info() == 2 | (2 << 7) | (int(Seg.DS) << 15) | (2 << 18) | (1 << 23)
    assert i.exit_qualification(0) == 0x40


def test_rip_relative_qualification_adds_next_rip() -> None:
    """SDM §28.2.1: for RIP-relative operands the qualification is displacement + next RIP."""
    i = decode_vmx(bytes.fromhex("0fc735f0ffffff"))  # vmptrld -0x10(%rip)
    assert i.mem.rip_relative and i.mem.displacement == -0x10 and i.length == 7
    assert i.exit_qualification(0x400007) == 0x3FFFF7
    assert i.instruction_info() & (1 << 22) and i.instruction_info() & (1 << 27)  # no index, no base


def test_negative_displacement_is_sign_extended_in_the_qualification() -> None:
    i = decode_vmx(bytes.fromhex("0fc770fc"))  # vmptrld -4(%rax)
    assert i.exit_qualification(0) == 0xFFFF_FFFF_FFFF_FFFC


def test_32_bit_mode_uses_32_bit_addressing_and_16_bit_with_67() -> None:
    i = decode_vmx(bytes.fromhex("0fc73424"), long_mode_64=False)  # vmptrld (%esp) in 32-bit code
    assert i.mem == MemOperand(Seg.SS, 4, None, 0, 0, 32, False)
    i = decode_vmx(bytes.fromhex("670fc77702"), long_mode_64=False)  # vmptrld 2(%bx)
    assert i.mem == MemOperand(Seg.DS, 3, None, 0, 2, 16, False) and i.length == 5
    i = decode_vmx(bytes.fromhex("670fc77a02"), long_mode_64=False)  # vmptrld 2(%bp,%si)
    assert i.mem == MemOperand(Seg.SS, 5, 6, 0, 2, 16, False)
    i = decode_vmx(bytes.fromhex("670fc7365678"), long_mode_64=False)  # vmptrld 0x7856 (16-bit absolute)
    assert i.mem == MemOperand(Seg.DS, None, None, 0, 0x7856, 16, False) and i.length == 6
    i = decode_vmx(bytes.fromhex("410fc730"), long_mode_64=False)  # 0x41 is INC ECX outside 64-bit mode
    assert i is None


@pytest.mark.parametrize(
    "code, op, length",
    [
        # Found by benchmarks/fuzz_decoder.py against iced-x86: a REX prefix followed by another
        # prefix is ignored (SDM Vol. 2 §2.2.1), and F2/F3 take precedence over 66 in any order.
        (bytes.fromhex("40670f788001020304"), VmxOp.VMREAD, 9),
        (bytes.fromhex("f249660f38814df2"), None, 0),
        (bytes.fromhex("f3660fc73500000000"), VmxOp.VMXON, 9),
        (bytes.fromhex("66f30fc73500000000"), VmxOp.VMXON, 9),
    ],
)
def test_prefix_rules_found_by_fuzzing(code: bytes, op: VmxOp | None, length: int) -> None:
    ins = decode_vmx(code)
    assert (ins.op, ins.length) == (op, length) if op else ins is None
