"""Every VMX instruction in VMX non-root operation, and VMCS shadowing, from the Intel SDM.

After a successful VMLAUNCH each VMX instruction executed by the guest causes a VM exit
(SDM Vol. 3C §26.1.2; VMREAD and VMWRITE §26.1.3) whose exit information is given by §28.2.1 (exit reason, exit
qualification) and §28.2.5 (VM-exit instruction length and instruction information, Tables
28-9, 28-13 and 28-14) -- except VMREAD and VMWRITE, which with "VMCS shadowing" may be served
from the shadow VMCS (§25.10, §31.3 VMREAD/VMWRITE).
"""

from __future__ import annotations

import dataclasses

import pytest

from nestvmx.arch.controls import PrimaryCtls, SecondaryCtls
from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import ExitReason
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import VMX_MISC_VMWRITE_ANY_FIELD, Msr
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.instruction import MemOperand, VmxInstruction, VmxOp
from nestvmx.hw.paging import PagedMemory
from nestvmx.hw.processor import VM_SUCCEED, LogicalProcessor
from nestvmx.hw.state import (
    AR_DB,
    AR_DPL_SHIFT,
    AR_L,
    CR0_PE,
    CR0_PG,
    RFLAGS_ARITH,
    RFLAGS_CF,
    RFLAGS_FIXED,
    RFLAGS_IF,
    RFLAGS_TF,
    RFLAGS_VM,
    RFLAGS_ZF,
    Seg,
)
from nestvmx.hw.vmcs import INVALID_POINTER
from nestvmx.hw.vmexit import VmExit
from tests.hw.conftest import (
    BITMAPS,
    GUEST_RIP,
    HOST_RIP,
    SHADOW,
    VMCS_A,
    VMCS_B,
    make_cpu,
    write_valid_vmcs,
)

READ_BITMAP = BITMAPS
WRITE_BITMAP = BITMAPS + 0x1000
DATA = 0x30000
UNMAPPED = 0x4000_0000
ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF


# ------------------------------------------------------------------------- helpers


def instr(op: VmxOp, length: int, reg: int | None = None, rm: int | None = None, mem: MemOperand | None = None):
    return VmxInstruction(op, length, reg=reg, rm_reg=rm, mem=mem)


def mem(
    disp: int = 0,
    base: int | None = None,
    index: int | None = None,
    scale: int = 0,
    seg: Seg = Seg.DS,
    asize: int = 64,
    rip: bool = False,
) -> MemOperand:
    return MemOperand(
        segment=seg, base=base, index=index, scale=scale, displacement=disp, address_size=asize, rip_relative=rip
    )


def run(cpu: LogicalProcessor, ins: VmxInstruction) -> VmExit | None:
    return cpu.execute(ins, PagedMemory(cpu.state, cpu.memory))


def read(cpu: LogicalProcessor, field: int) -> int:
    """Root-mode VMREAD of the current VMCS, asserting success."""
    status, value = cpu.vmread(field)
    assert status == VM_SUCCEED, hex(field)
    return value


def arith(cpu: LogicalProcessor) -> int:
    return cpu.state.rflags & RFLAGS_ARITH


def launch(cpu: LogicalProcessor) -> None:
    """VMLAUNCH of VMCS_A after VMWRITEs of conftest's valid VMCS."""
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    assert cpu.vmlaunch() is None
    assert cpu.non_root and cpu.state.rip == GUEST_RIP


def set_cpl3(cpu: LogicalProcessor) -> None:
    for seg in (Seg.CS, Seg.SS):
        cpu.state.segs[seg].ar |= 3 << AR_DPL_SHIFT


def set_compatibility_mode(cpu: LogicalProcessor) -> None:
    cs = cpu.state.segs[Seg.CS]
    cs.ar = (cs.ar & ~AR_L) | AR_DB


def set_bitmap_bit(cpu: LogicalProcessor, bitmap: int, encoding: int, value: int) -> None:
    """Bit (x & 7) of byte (x >> 3) of the bitmap, x = bits 14:0 of the encoding (SDM §26.1.3 footnote)."""
    x = encoding & 0x7FFF
    byte = cpu.memory.read_u(bitmap + (x >> 3), 1)
    byte = byte | 1 << (x & 7) if value else byte & ~(1 << (x & 7))
    cpu.memory.write_u(bitmap + (x >> 3), 1, byte)


def launch_with_shadowing(
    cpu: LogicalProcessor,
    shadow_values: dict[int, int] | None = None,
    read_ok: tuple[int, ...] = (),
    write_ok: tuple[int, ...] = (),
    link: int = SHADOW,
    bitmap_fill: int = 0xFF,
    clear_shadow: bool = False,
) -> None:
    """Launch VMCS_A with "VMCS shadowing" = 1, the shadow VMCS at SHADOW (prepared with root
    VMWRITEs) and VMREAD/VMWRITE bitmaps that are all `bitmap_fill` except 0 for the given encodings."""
    cpu.memory.write(READ_BITMAP, bytes([bitmap_fill]) * 0x1000)
    cpu.memory.write(WRITE_BITMAP, bytes([bitmap_fill]) * 0x1000)
    for encoding in read_ok:
        set_bitmap_bit(cpu, READ_BITMAP, encoding, 0)
    for encoding in write_ok:
        set_bitmap_bit(cpu, WRITE_BITMAP, encoding, 0)
    assert cpu.vmclear(SHADOW) == VM_SUCCEED
    assert cpu.vmptrld(SHADOW) == VM_SUCCEED
    for field, value in (shadow_values or {}).items():
        assert cpu.vmwrite(field, value) == VM_SUCCEED, hex(field)
    if clear_shadow:
        assert cpu.vmclear(SHADOW) == VM_SUCCEED  # inactive until VM entry activates it
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    primary = read(cpu, F.CPU_BASED_VM_EXEC_CONTROL) | PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS
    for field, value in (
        (F.CPU_BASED_VM_EXEC_CONTROL, primary),
        (F.SECONDARY_VM_EXEC_CONTROL, SecondaryCtls.SHADOW_VMCS),
        (F.VMREAD_BITMAP, READ_BITMAP),
        (F.VMWRITE_BITMAP, WRITE_BITMAP),
        (F.VMCS_LINK_POINTER, link),
    ):
        assert cpu.vmwrite(field, value) == VM_SUCCEED
    assert cpu.vmlaunch() is None, cpu.last_entry_check
    assert cpu.non_root


def exit_to_root(cpu: LogicalProcessor) -> VmExit:
    """Leave the guest with a VMCALL (exit reason 18) so root VMREADs can inspect the VMCS."""
    exit = run(cpu, instr(VmxOp.VMCALL, 3))
    assert exit is not None and exit.reason == ExitReason.VMCALL
    return exit


def shadow_field(cpu: LogicalProcessor, field: int) -> int:
    """What root software reads from the shadow VMCS after VMPTRLD of it."""
    assert not cpu.non_root
    assert cpu.vmptrld(SHADOW) == VM_SUCCEED
    value = read(cpu, field)
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    return value


def without_vmwrite_any_field(model: CpuModel) -> CpuModel:
    """The model with IA32_VMX_MISC bit 29 clear but VMCS shadowing still allowed."""
    msrs = dict(model.msrs)
    msrs[Msr.IA32_VMX_MISC] &= ~VMX_MISC_VMWRITE_ANY_FIELD
    return dataclasses.replace(model, name=model.name + "-misc29-clear", msrs=msrs)


@pytest.fixture
def guest(model: CpuModel) -> LogicalProcessor:
    cpu = make_cpu(model)
    launch(cpu)
    return cpu


@pytest.fixture
def hsw(haswell: CpuModel) -> LogicalProcessor:
    return make_cpu(haswell)


# ============================================================ exit reasons

EXITING = [
    pytest.param(instr(VmxOp.VMCALL, 3), ExitReason.VMCALL, 18, id="VMCALL"),
    pytest.param(instr(VmxOp.VMCLEAR, 4, mem=mem(DATA)), ExitReason.VMCLEAR, 19, id="VMCLEAR"),
    pytest.param(instr(VmxOp.VMLAUNCH, 3), ExitReason.VMLAUNCH, 20, id="VMLAUNCH"),
    pytest.param(instr(VmxOp.VMPTRLD, 3, mem=mem(DATA)), ExitReason.VMPTRLD, 21, id="VMPTRLD"),
    pytest.param(instr(VmxOp.VMPTRST, 3, mem=mem(DATA)), ExitReason.VMPTRST, 22, id="VMPTRST"),
    pytest.param(instr(VmxOp.VMREAD, 3, reg=0, rm=1), ExitReason.VMREAD, 23, id="VMREAD"),
    pytest.param(instr(VmxOp.VMRESUME, 3), ExitReason.VMRESUME, 24, id="VMRESUME"),
    pytest.param(instr(VmxOp.VMWRITE, 3, reg=0, rm=1), ExitReason.VMWRITE, 25, id="VMWRITE"),
    pytest.param(instr(VmxOp.VMXOFF, 3), ExitReason.VMXOFF, 26, id="VMXOFF"),
    pytest.param(instr(VmxOp.VMXON, 4, mem=mem(DATA)), ExitReason.VMXON, 27, id="VMXON"),
    pytest.param(instr(VmxOp.INVEPT, 5, reg=0, mem=mem(DATA)), ExitReason.INVEPT, 50, id="INVEPT"),
    pytest.param(instr(VmxOp.INVVPID, 5, reg=0, mem=mem(DATA)), ExitReason.INVVPID, 53, id="INVVPID"),
]


class TestExitReasons:
    @pytest.mark.parametrize("ins,reason,number", EXITING)
    def test_every_vmx_instruction_exits(self, guest, ins, reason, number):
        """SDM Vol. 3C §26.1.2 (unconditional exits), §26.1.3 (VMREAD/VMWRITE), §28.2.1, App. C: each VMX
        instruction in VMX non-root operation causes a VM exit with its basic exit reason; the processor
        is back in root operation."""
        guest.state.gpr[0] = F.GUEST_RIP
        exit = run(guest, ins)
        assert isinstance(exit, VmExit)
        assert exit.reason == number == reason
        assert not guest.non_root
        assert read(guest, F.VM_EXIT_REASON) == number
        assert read(guest, F.VM_EXIT_INSTRUCTION_LEN) == ins.length

    @pytest.mark.parametrize("ins,reason,number", EXITING)
    def test_exit_is_fault_like(self, guest, ins, reason, number):
        """SDM Vol. 3C §28.3.3 (saving RIP), §26.1.2: the exit happens before the instruction executes:
        GUEST_RIP is the RIP of the instruction, memory and RFLAGS are untouched."""
        guest.state.rip = 0x401234
        guest.state.rflags = RFLAGS_FIXED | RFLAGS_CF | RFLAGS_ZF | RFLAGS_IF
        guest.memory.write_u(DATA, 8, 0x5A5A)
        run(guest, ins)
        assert read(guest, F.GUEST_RIP) == 0x401234
        assert read(guest, F.GUEST_RFLAGS) == RFLAGS_FIXED | RFLAGS_CF | RFLAGS_ZF | RFLAGS_IF
        assert guest.memory.read_u(DATA, 8) == 0x5A5A
        assert read(guest, F.VM_INSTRUCTION_ERROR) == 0

    @pytest.mark.parametrize("ins,reason,number", EXITING)
    def test_exit_at_cpl3(self, guest, ins, reason, number):
        """SDM Vol. 3C §31.3 (Operation of each instruction): in VMX non-root operation the VM exit
        comes before the CPL check, so CPL 3 exits instead of #GP."""
        set_cpl3(guest)
        exit = run(guest, ins)
        assert exit is not None and exit.reason == number
        assert read(guest, F.GUEST_SS_AR_BYTES) >> AR_DPL_SHIFT & 3 == 3

    @pytest.mark.parametrize("mode", ["compatibility", "virtual-8086", "real"])
    @pytest.mark.parametrize("ins,reason,number", [p for p in EXITING if p.id != "VMCALL"])
    def test_ud_precedes_exit(self, guest, ins, reason, number, mode):
        """SDM Vol. 3C §31.3: #UD for CR0.PE = 0, RFLAGS.VM = 1 or compatibility mode comes before the
        VM exit (VMCALL excepted); the guest stays in non-root operation."""
        if mode == "compatibility":
            set_compatibility_mode(guest)
        elif mode == "virtual-8086":
            guest.state.rflags |= RFLAGS_VM
        else:
            guest.state.cr0 &= ~(CR0_PE | CR0_PG)
        with pytest.raises(X86Exception) as e:
            run(guest, ins)
        assert e.value.vector == Vector.UD
        assert guest.non_root
        assert guest.state.rip == GUEST_RIP

    @pytest.mark.parametrize("mode", ["compatibility", "virtual-8086"])
    def test_vmcall_exits_in_any_mode(self, guest, mode):
        """SDM Vol. 3C §31.3 VMCALL: in VMX non-root operation the VM exit precedes the mode checks."""
        if mode == "compatibility":
            set_compatibility_mode(guest)
        else:
            guest.state.rflags |= RFLAGS_VM
        exit = run(guest, instr(VmxOp.VMCALL, 3))
        assert exit is not None and exit.reason == ExitReason.VMCALL

    def test_register_operand_forms_are_ud(self, guest):
        """SDM Vol. 3C §31.3 VMPTRLD/VMCLEAR/VMPTRST/VMXON: mod = 11 is not the instruction (#UD), so no exit."""
        for op in (VmxOp.VMPTRLD, VmxOp.VMCLEAR, VmxOp.VMPTRST, VmxOp.VMXON):
            with pytest.raises(X86Exception) as e:
                run(guest, instr(op, 3, rm=0))
            assert e.value.vector == Vector.UD
            assert guest.non_root


# ============================================================ exit information


class TestExitInformation:
    def test_guest_state_saved_and_host_state_loaded(self, guest):
        """SDM Vol. 3C §28.3 (saving guest state), §28.5 (loading host state): guest RIP/RSP/RFLAGS go to
        the VMCS; RIP, RSP, segment selectors come from the host-state area; RFLAGS = 2."""
        s = guest.state
        s.rip = 0x40_0100
        s.rsp = 0x8_7654
        s.rflags = RFLAGS_FIXED | RFLAGS_TF | RFLAGS_CF
        s.gpr[3] = 0xB0B
        exit = run(guest, instr(VmxOp.VMPTRST, 3, mem=mem(DATA)))
        assert exit is not None
        assert (s.rip, s.rsp, s.rflags) == (HOST_RIP, 0x80000, RFLAGS_FIXED)
        assert (s.segs[Seg.CS].selector, s.segs[Seg.SS].selector, s.segs[Seg.TR].selector) == (0x08, 0x10, 0x18)
        assert s.gpr[3] == 0xB0B  # general-purpose registers are not switched
        assert read(guest, F.GUEST_RIP) == 0x40_0100
        assert read(guest, F.GUEST_RSP) == 0x8_7654
        assert read(guest, F.GUEST_RFLAGS) == RFLAGS_FIXED | RFLAGS_TF | RFLAGS_CF
        assert guest.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_vmresume_returns_to_the_exiting_instruction(self, guest):
        """SDM Vol. 3C §28.3.3, §27.3.2.1: RIP saved by a fault-like exit is that of the instruction, so
        VMRESUME re-executes it."""
        guest.state.rip = 0x40_2000
        run(guest, instr(VmxOp.VMXOFF, 3))
        assert guest.vmresume() is None
        assert guest.state.rip == 0x40_2000

    @pytest.mark.parametrize(
        "ins,qualification,info",
        [
            pytest.param(
                instr(VmxOp.VMREAD, 4, reg=11, rm=13),
                0,
                1 << 10 | 13 << 3 | 11 << 28,
                id="VMREAD-r13-r11",
            ),
            pytest.param(
                instr(VmxOp.VMWRITE, 3, reg=7, rm=0),
                0,
                1 << 10 | 0 << 3 | 7 << 28,
                id="VMWRITE-rdi-rax",
            ),
            pytest.param(
                instr(VmxOp.VMREAD, 6, reg=2, mem=mem(0x40, base=9, index=12, scale=2)),
                0x40,
                2 | 2 << 7 | 3 << 15 | 12 << 18 | 9 << 23 | 2 << 28,
                id="VMREAD-[r9+r12*4+0x40]-rdx",
            ),
            pytest.param(
                instr(VmxOp.VMWRITE, 5, reg=14, mem=mem(-0x18, base=5, seg=Seg.SS)),
                0xFFFF_FFFF_FFFF_FFE8,
                2 << 7 | 2 << 15 | 1 << 22 | 5 << 23 | 14 << 28,
                id="VMWRITE-r14-ss:[rbp-0x18]",
            ),
            pytest.param(
                instr(VmxOp.VMCLEAR, 6, mem=mem(8, base=4, seg=Seg.SS)),
                8,
                2 << 7 | 2 << 15 | 1 << 22 | 4 << 23,
                id="VMCLEAR-[rsp+8]",
            ),
            pytest.param(
                instr(VmxOp.VMPTRST, 9, mem=mem(-8, index=0, scale=3, seg=Seg.FS)),
                0xFFFF_FFFF_FFFF_FFF8,
                3 | 2 << 7 | 4 << 15 | 0 << 18 | 1 << 27,
                id="VMPTRST-fs:[rax*8-8]",
            ),
            pytest.param(
                instr(VmxOp.VMXON, 5, mem=mem(base=3, seg=Seg.GS, asize=32)),
                0,
                1 << 7 | 5 << 15 | 1 << 22 | 3 << 23,
                id="VMXON-gs:[ebx]",
            ),
            pytest.param(
                instr(VmxOp.VMPTRLD, 5, mem=mem(0x1234, seg=Seg.ES, asize=32)),
                0x1234,
                1 << 7 | 0 << 15 | 1 << 22 | 1 << 27,
                id="VMPTRLD-es:[0x1234]-addr32",
            ),
            pytest.param(
                instr(VmxOp.INVEPT, 9, reg=15, mem=mem(0x1234_5678, base=7, index=6, scale=1)),
                0x1234_5678,
                1 | 2 << 7 | 3 << 15 | 6 << 18 | 7 << 23 | 15 << 28,
                id="INVEPT-r15-[rdi+rsi*2+disp32]",
            ),
            pytest.param(
                instr(VmxOp.INVVPID, 7, reg=1, mem=mem(base=8, seg=Seg.ES, asize=32)),
                0,
                1 << 7 | 0 << 15 | 1 << 22 | 8 << 23 | 1 << 28,
                id="INVVPID-rcx-es:[r8d]",
            ),
            pytest.param(
                instr(VmxOp.INVVPID, 6, reg=9, mem=mem(-0x80, base=1, index=13, scale=0, seg=Seg.CS)),
                0xFFFF_FFFF_FFFF_FF80,
                0 | 2 << 7 | 1 << 15 | 13 << 18 | 1 << 23 | 9 << 28,
                id="INVVPID-r9-cs:[rcx+r13-0x80]",
            ),
        ],
    )
    def test_qualification_and_instruction_information(self, guest, ins, qualification, info):
        """SDM Vol. 3C §28.2.1 (exit qualification = sign-extended displacement, 0 for register operands)
        and §28.2.5 Tables 28-9, 28-13, 28-14: scaling 1:0, Reg1 6:3, address size 9:7, mem/reg 10,
        segment 17:15, index 21:18 (+ invalid 22), base 26:23 (+ invalid 27), Reg2 31:28."""
        exit = run(guest, ins)
        assert exit is not None and exit.reason == ins.op.exit_reason
        assert read(guest, F.EXIT_QUALIFICATION) == qualification
        assert read(guest, F.VM_EXIT_INSTRUCTION_LEN) == ins.length
        # Bits the SDM leaves undefined are not compared: bit 2 and 14:11 always, Reg1 for memory
        # operands, 9:7 and 27:11 for register operands; for VMCLEAR/VMPTRLD/VMPTRST/VMXON 6:2 and 31:28.
        defined = 0xFFFF_FFFF & ~(1 << 2) & ~(0xF << 11)
        if ins.mem is None:
            defined &= ~(7 << 7) & ~(0xFFFF << 11)
        else:
            defined &= ~(0xF << 3)
        if ins.op in (VmxOp.VMCLEAR, VmxOp.VMPTRLD, VmxOp.VMPTRST, VmxOp.VMXON, VmxOp.INVEPT, VmxOp.INVVPID):
            defined &= ~(0x1F << 2)
        if ins.op in (VmxOp.VMCLEAR, VmxOp.VMPTRLD, VmxOp.VMPTRST, VmxOp.VMXON):
            defined &= ~(0xF << 28)
        if ins.mem is not None and ins.mem.index is None:
            defined &= ~3  # scaling undefined without an index
        assert read(guest, F.VMX_INSTRUCTION_INFO) & defined == info & defined
        assert read(guest, F.VMX_INSTRUCTION_INFO) & (1 << 10) == info & (1 << 10)

    @pytest.mark.parametrize("disp", [0x100, -0x20])
    def test_rip_relative_qualification(self, guest, disp):
        """SDM Vol. 3C §28.2.1: for a RIP-relative operand the exit qualification is the displacement
        plus the RIP of the next instruction."""
        guest.state.rip = 0x40_0000
        exit = run(guest, instr(VmxOp.VMPTRLD, 7, mem=mem(disp, rip=True)))
        assert exit is not None and exit.reason == ExitReason.VMPTRLD
        assert read(guest, F.EXIT_QUALIFICATION) == 0x40_0000 + 7 + disp
        info = read(guest, F.VMX_INSTRUCTION_INFO)
        assert info & (1 << 22 | 1 << 27 | 1 << 10) == 1 << 22 | 1 << 27  # no index, no base, memory
        assert info >> 7 & 7 == 2

    @pytest.mark.parametrize("op", [VmxOp.VMCALL, VmxOp.VMLAUNCH, VmxOp.VMRESUME, VmxOp.VMXOFF])
    def test_no_operand_instructions_clear_qualification(self, guest, op):
        """SDM Vol. 3C §28.2.1: VMCALL, VMLAUNCH, VMRESUME and VMXOFF exits clear the exit qualification
        (a previous exit's nonzero value does not survive) and save the instruction length."""
        run(guest, instr(VmxOp.VMPTRLD, 8, mem=mem(0x777)))
        assert read(guest, F.EXIT_QUALIFICATION) == 0x777
        assert guest.vmresume() is None
        exit = run(guest, instr(op, 3))
        assert exit is not None and exit.reason == op.exit_reason
        assert read(guest, F.EXIT_QUALIFICATION) == 0
        assert read(guest, F.VM_EXIT_INSTRUCTION_LEN) == 3

    def test_exit_does_not_touch_guest_memory_or_vmcs_pointer(self, guest):
        """SDM Vol. 3C §26.1.2: VMPTRLD/VMCLEAR in the guest exit without acting: the current VMCS and the
        launch state of VMCS_A stay as they were (VMRESUME succeeds)."""
        guest.memory.write_u(DATA, 8, VMCS_B)
        run(guest, instr(VmxOp.VMCLEAR, 4, mem=mem(DATA)))
        assert guest.vmptrst() == (VM_SUCCEED, VMCS_A)
        guest.memory.write_u(DATA, 8, VMCS_A)
        assert guest.vmresume() is None
        run(guest, instr(VmxOp.VMCLEAR, 4, mem=mem(DATA)))
        assert guest.vmresume() is None


# ============================================================ VMCS shadowing

GUEST_RIP_VALUE = 0xFFFF_8000_DEAD_0000


class TestShadowingDisabled:
    def test_vmread_exits_without_shadowing_control(self, hsw):
        """SDM Vol. 3C §26.1.3: with "VMCS shadowing" = 0, VMREAD and VMWRITE always exit."""
        launch(hsw)
        hsw.state.gpr[0] = F.GUEST_RIP
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMREAD

    def test_secondary_controls_ignored_without_primary_bit_31(self, hsw):
        """SDM Vol. 3C §25.6.2: the secondary controls are used only if primary bit 31 is 1; with it 0,
        "VMCS shadowing" in the secondary field has no effect and VMREAD exits."""
        hsw.memory.write(READ_BITMAP, bytes(0x1000))
        assert hsw.vmclear(VMCS_A) == VM_SUCCEED
        assert hsw.vmptrld(VMCS_A) == VM_SUCCEED
        write_valid_vmcs(hsw)
        for field, value in (
            (F.SECONDARY_VM_EXEC_CONTROL, SecondaryCtls.SHADOW_VMCS),
            (F.VMREAD_BITMAP, READ_BITMAP),
            (F.VMWRITE_BITMAP, WRITE_BITMAP),
        ):
            assert hsw.vmwrite(field, value) == VM_SUCCEED
        assert hsw.vmlaunch() is None
        hsw.state.gpr[0] = F.GUEST_RIP
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMREAD


class TestShadowing:
    def test_vmread_bit_clear_served_from_shadow(self, hsw):
        """SDM Vol. 3C §31.3 VMREAD, §26.1.3: VMREAD-bitmap bit 0 → no exit; the value comes from the VMCS
        referenced by the link pointer; VMsucceed; RIP advances."""
        launch_with_shadowing(hsw, {F.GUEST_RIP: GUEST_RIP_VALUE}, read_ok=(F.GUEST_RIP,))
        hsw.state.rflags = RFLAGS_FIXED | RFLAGS_CF | RFLAGS_ZF | RFLAGS_TF
        hsw.state.gpr[2] = F.GUEST_RIP
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=2, rm=5)) is None
        assert hsw.non_root
        assert hsw.state.gpr[5] == GUEST_RIP_VALUE
        assert hsw.state.rip == GUEST_RIP + 3
        assert hsw.state.rflags == RFLAGS_FIXED | RFLAGS_TF

    def test_vm_entry_activates_a_cleared_shadow_vmcs(self, hsw):
        """SDM Vol. 3C §25.10, §25.11.1: a shadow VMCS that software VMCLEARed (so its data are in memory
        and it is not active) is made active by the VM entry that references it; shadowed VMREADs then
        return the values written before the VMCLEAR."""
        launch_with_shadowing(hsw, {F.GUEST_RIP: GUEST_RIP_VALUE}, read_ok=(F.GUEST_RIP,), clear_shadow=True)
        hsw.state.gpr[2] = F.GUEST_RIP
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=2, rm=5)) is None
        assert arith(hsw) == 0
        assert hsw.state.gpr[5] == GUEST_RIP_VALUE

    def test_vmread_bit_set_exits(self, hsw):
        """SDM Vol. 3C §26.1.3: VMREAD-bitmap bit 1 for the encoding → VM exit (reason 23)."""
        launch_with_shadowing(hsw, {F.GUEST_RIP: GUEST_RIP_VALUE}, read_ok=(F.GUEST_RSP,))
        hsw.state.gpr[2] = F.GUEST_RIP
        hsw.state.gpr[5] = 0x55
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=2, rm=5))
        assert exit is not None and exit.reason == ExitReason.VMREAD
        assert hsw.state.gpr[5] == 0x55
        assert read(hsw, F.GUEST_RIP) == GUEST_RIP

    def test_vmwrite_bit_clear_writes_shadow(self, hsw):
        """SDM Vol. 3C §31.3 VMWRITE, §26.1.3: VMWRITE-bitmap bit 0 → the field of the shadow VMCS is
        written with no exit; root VMREAD of the shadow VMCS (after VMPTRLD of it) returns the value and
        the ordinary VMCS is unchanged."""
        launch_with_shadowing(hsw, write_ok=(F.GUEST_RIP,))
        hsw.state.gpr[0] = F.GUEST_RIP
        hsw.state.gpr[1] = 0x1234_5678_9ABC
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        assert hsw.non_root
        assert arith(hsw) == 0
        assert hsw.state.rip == GUEST_RIP + 3
        exit_to_root(hsw)
        assert read(hsw, F.GUEST_RIP) == GUEST_RIP + 3  # the ordinary VMCS: where the VMCALL was
        assert shadow_field(hsw, F.GUEST_RIP) == 0x1234_5678_9ABC

    def test_vmwrite_bit_set_exits(self, hsw):
        """SDM Vol. 3C §26.1.3: VMWRITE-bitmap bit 1 → VM exit (reason 25); the shadow is not written."""
        launch_with_shadowing(hsw, {F.GUEST_RIP: 7}, read_ok=(F.GUEST_RIP,))
        hsw.state.gpr[0] = F.GUEST_RIP
        hsw.state.gpr[1] = 0x99
        exit = run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMWRITE
        assert shadow_field(hsw, F.GUEST_RIP) == 7

    def test_bitmaps_are_separate(self, hsw):
        """SDM Vol. 3C §25.6.15: the VMREAD bitmap governs only VMREAD and the VMWRITE bitmap only VMWRITE."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_RSP,))
        hsw.state.gpr[0] = F.GUEST_RSP
        exit = run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMWRITE

    def test_bitmap_bit_position(self, hsw):
        """SDM Vol. 3C §26.1.3 footnote: the bit is bit (x & 7) of byte x >> 3 of the bitmap, x = bits 14:0
        of the encoding; the neighbour bit does not select the field."""
        launch_with_shadowing(hsw, {F.GUEST_RSP: 0x42}, read_ok=(F.GUEST_RSP + 1,))  # 0x681D: HIGH slot
        hsw.state.gpr[0] = F.GUEST_RSP
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMREAD
        assert hsw.vmresume() is None
        hsw.memory.write_u(READ_BITMAP + (F.GUEST_RSP >> 3), 1, 0xFF & ~(1 << (F.GUEST_RSP & 7)))
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1)) is None
        assert hsw.state.gpr[1] == 0x42

    @pytest.mark.parametrize(
        "encoding",
        [
            pytest.param(F.GUEST_RIP | 1 << 15, id="bit-15"),
            pytest.param(F.GUEST_RIP | 1 << 31, id="bit-31"),
            pytest.param(F.GUEST_RIP | 1 << 32, id="bit-32"),
            pytest.param(ALL_ONES, id="all-ones"),
        ],
    )
    @pytest.mark.parametrize("op", [VmxOp.VMREAD, VmxOp.VMWRITE])
    def test_encoding_above_bit_14_exits(self, hsw, encoding, op):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE, §26.1.3: an encoding with any bit 63:15 set exits even if
        every bitmap bit is 0."""
        launch_with_shadowing(hsw, bitmap_fill=0)
        hsw.state.gpr[0] = encoding
        exit = run(hsw, instr(op, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == op.exit_reason
        assert read(hsw, F.VMX_INSTRUCTION_INFO) >> 28 == 0

    def test_encoding_upper_bits_ignored_outside_64_bit_mode(self, hsw):
        """SDM Vol. 3C §31.3 VMREAD: outside 64-bit mode the encoding is 32 bits (bits 31:15 checked),
        so register bits 63:32 neither exit nor fail."""
        launch_with_shadowing(hsw, {F.GUEST_RSP: 0x1234}, read_ok=(F.GUEST_RSP,))
        hsw.state.efer = 0  # a 32-bit protected-mode guest
        set_compatibility_mode(hsw)
        hsw.state.gpr[0] = 0xFFFF_FFFF_0000_0000 | F.GUEST_RSP
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1)) is None
        assert arith(hsw) == 0
        assert hsw.state.gpr[1] == 0x1234
        hsw.state.gpr[0] = 0x8000 | F.GUEST_RSP
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMREAD

    @pytest.mark.parametrize("op", [VmxOp.VMREAD, VmxOp.VMWRITE])
    def test_invalid_link_pointer_is_vmfailinvalid(self, hsw, op):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE: in non-root operation with the VMCS link pointer
        FFFFFFFF_FFFFFFFFh a non-exiting VMREAD/VMWRITE is VMfailInvalid (CF) and no error is recorded."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_RIP,), write_ok=(F.GUEST_RIP,), link=INVALID_POINTER)
        hsw.state.rflags = RFLAGS_FIXED | RFLAGS_ZF | RFLAGS_IF
        hsw.state.gpr[0] = F.GUEST_RIP
        hsw.state.gpr[1] = 0x77
        assert run(hsw, instr(op, 3, reg=0, rm=1)) is None
        assert hsw.non_root
        assert hsw.state.rflags == RFLAGS_FIXED | RFLAGS_CF | RFLAGS_IF
        assert hsw.state.gpr[1] == 0x77
        assert hsw.state.rip == GUEST_RIP + 3
        exit_to_root(hsw)
        assert read(hsw, F.VM_INSTRUCTION_ERROR) == 0

    @pytest.mark.parametrize(
        "encoding",
        [
            pytest.param(0x681E | 1 << 12, id="reserved-bit-12"),
            pytest.param(F.GUEST_RSP | 1, id="HIGH-of-natural"),
            pytest.param(F.PML_ADDRESS, id="PML_ADDRESS-not-on-haswell"),
            pytest.param(0x4FFE, id="undefined-index"),
        ],
    )
    @pytest.mark.parametrize("op", [VmxOp.VMREAD, VmxOp.VMWRITE])
    def test_unsupported_field_error_in_ordinary_vmcs(self, hsw, encoding, op):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE, §31.2: a non-exiting access to an unsupported component is
        VMfailValid(12), recorded in the VM-instruction error field of the current (ordinary) VMCS, not
        of the shadow VMCS."""
        launch_with_shadowing(hsw, {F.VM_INSTRUCTION_ERROR: 0x55}, read_ok=(encoding,), write_ok=(encoding,))
        hsw.state.gpr[0] = encoding
        hsw.state.gpr[1] = 0x66
        assert run(hsw, instr(op, 3, reg=0, rm=1)) is None
        assert arith(hsw) == RFLAGS_ZF
        assert hsw.state.gpr[1] == 0x66
        exit_to_root(hsw)
        assert read(hsw, F.VM_INSTRUCTION_ERROR) == 12
        assert shadow_field(hsw, F.VM_INSTRUCTION_ERROR) == 0x55

    def test_read_only_field_written_through_shadow_with_misc_bit_29(self, hsw):
        """SDM Vol. 3C §31.3 VMWRITE, App. A.6: with IA32_VMX_MISC[29] = 1 (Haswell) a shadowed VMWRITE
        to a VM-exit information field succeeds and writes the shadow VMCS."""
        launch_with_shadowing(hsw, write_ok=(F.EXIT_QUALIFICATION,))
        hsw.state.gpr[0] = F.EXIT_QUALIFICATION
        hsw.state.gpr[1] = 0xABC
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        assert arith(hsw) == 0
        exit_to_root(hsw)
        assert read(hsw, F.EXIT_QUALIFICATION) == 0  # the VMCALL exit's
        assert shadow_field(hsw, F.EXIT_QUALIFICATION) == 0xABC

    def test_read_only_field_through_shadow_without_misc_bit_29(self, haswell):
        """SDM Vol. 3C §31.3 VMWRITE, App. A.6: with IA32_VMX_MISC[29] = 0 a shadowed VMWRITE to a VM-exit
        information field is VMfailValid(13) recorded in the ordinary VMCS; the shadow keeps its value,
        which a shadowed VMREAD still returns."""
        model = without_vmwrite_any_field(haswell)
        assert model.has_vmcs_shadowing and not model.vmwrite_any_field
        cpu = make_cpu(model)
        launch_with_shadowing(cpu, read_ok=(F.EXIT_QUALIFICATION,), write_ok=(F.EXIT_QUALIFICATION, F.GUEST_RIP))
        cpu.state.gpr[0] = F.EXIT_QUALIFICATION
        cpu.state.gpr[1] = 0xABC
        assert run(cpu, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        assert arith(cpu) == RFLAGS_ZF
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=0, rm=2)) is None
        assert arith(cpu) == 0
        assert cpu.state.gpr[2] == 0
        cpu.state.gpr[0] = F.GUEST_RIP  # an ordinary field is still writable
        assert run(cpu, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        assert arith(cpu) == 0
        exit_to_root(cpu)
        assert read(cpu, F.VM_INSTRUCTION_ERROR) == 13
        assert shadow_field(cpu, F.EXIT_QUALIFICATION) == 0
        assert shadow_field(cpu, F.GUEST_RIP) == 0xABC
        assert cpu.vmwrite(F.EXIT_QUALIFICATION, 1) == VmxError.VMWRITE_READ_ONLY_VMCS_COMPONENT  # root too

    def test_high_access_through_shadow(self, hsw):
        """SDM Vol. 3C §25.11.2: the HIGH encoding of a 64-bit field through the shadow reads bits 63:32
        and writes only bits 63:32 (each encoding has its own bitmap bit)."""
        high = F.TSC_OFFSET | 1
        launch_with_shadowing(hsw, {F.TSC_OFFSET: 0x1122_3344_5566_7788}, read_ok=(high,), write_ok=(high,))
        hsw.state.gpr[0] = high
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1)) is None
        assert hsw.state.gpr[1] == 0x1122_3344
        hsw.state.gpr[1] = 0xFFFF_FFFF_AABB_CCDD
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        hsw.state.gpr[0] = F.TSC_OFFSET  # FULL encoding: its bit is 1 → exit
        exit = run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == ExitReason.VMREAD
        assert shadow_field(hsw, F.TSC_OFFSET) == 0xAABB_CCDD_5566_7788

    def test_width_truncation_through_shadow(self, hsw):
        """SDM Vol. 3C §25.11.2: a shadowed VMWRITE of a 16-bit field keeps the low 16 bits."""
        launch_with_shadowing(hsw, write_ok=(F.HOST_FS_SELECTOR,), read_ok=(F.HOST_FS_SELECTOR,))
        hsw.state.gpr[0] = F.HOST_FS_SELECTOR
        hsw.state.gpr[1] = 0xFFFF_FFFF_FFFF_0038
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        hsw.state.gpr[1] = 0
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=2)) is None
        assert hsw.state.gpr[2] == 0x0038

    def test_memory_operands_through_shadow(self, hsw):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE: shadowed accesses use the r/m64 memory operand like root ones."""
        launch_with_shadowing(hsw, {F.GUEST_CR3: 0x5000}, read_ok=(F.GUEST_CR3,), write_ok=(F.GUEST_CR0,))
        hsw.memory.write_u(DATA, 16, (1 << 128) - 1)
        hsw.memory.write_u(DATA + 0x20, 8, 0x8005_0033)
        hsw.state.gpr[0] = F.GUEST_CR3
        hsw.state.gpr[3] = DATA
        assert run(hsw, instr(VmxOp.VMREAD, 4, reg=0, mem=mem(base=3))) is None
        assert hsw.memory.read_u(DATA, 16) == 0xFFFF_FFFF_FFFF_FFFF_0000_0000_0000_5000
        hsw.state.gpr[0] = F.GUEST_CR0
        assert run(hsw, instr(VmxOp.VMWRITE, 5, reg=0, mem=mem(0x20, base=3))) is None
        assert hsw.state.rip == GUEST_RIP + 9
        exit_to_root(hsw)
        assert shadow_field(hsw, F.GUEST_CR0) == 0x8005_0033

    def test_memory_fault_through_shadow(self, hsw):
        """SDM Vol. 3C §31.3 VMREAD: a shadowed VMREAD to an unmapped destination is #PF in the guest
        (no exit, no flag change)."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_CR3,))
        hsw.state.rflags = RFLAGS_FIXED | RFLAGS_CF
        hsw.state.gpr[0] = F.GUEST_CR3
        with pytest.raises(X86Exception) as e:
            run(hsw, instr(VmxOp.VMREAD, 7, reg=0, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 2)
        assert hsw.non_root
        assert hsw.state.rflags == RFLAGS_FIXED | RFLAGS_CF
        assert hsw.state.rip == GUEST_RIP

    @pytest.mark.parametrize("op", [VmxOp.VMREAD, VmxOp.VMWRITE])
    def test_gp_at_cpl3_for_shadowed_access(self, hsw, op):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE: a VMREAD/VMWRITE that does not exit checks CPL next:
        CPL 3 → #GP(0) in the guest, no exit, nothing written."""
        launch_with_shadowing(hsw, {F.GUEST_RIP: 5}, read_ok=(F.GUEST_RIP,), write_ok=(F.GUEST_RIP,))
        set_cpl3(hsw)
        hsw.state.gpr[0] = F.GUEST_RIP
        hsw.state.gpr[1] = 0x99
        with pytest.raises(X86Exception) as e:
            run(hsw, instr(op, 3, reg=0, rm=1))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert hsw.non_root
        assert hsw.state.gpr[1] == 0x99
        assert hsw.state.rip == GUEST_RIP
        exit_to_root(hsw)
        assert shadow_field(hsw, F.GUEST_RIP) == 5

    @pytest.mark.parametrize("op", [VmxOp.VMREAD, VmxOp.VMWRITE])
    def test_exit_not_gp_at_cpl3_for_non_shadowed_access(self, hsw, op):
        """SDM Vol. 3C §31.3 VMREAD/VMWRITE: the bitmap exit precedes the CPL check: at CPL 3 a VMREAD/
        VMWRITE whose bitmap bit is 1 exits (reason 23/25) instead of #GP."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_RSP,), write_ok=(F.GUEST_RSP,))
        set_cpl3(hsw)
        hsw.state.gpr[0] = F.GUEST_RIP
        exit = run(hsw, instr(op, 3, reg=0, rm=1))
        assert exit is not None and exit.reason == op.exit_reason

    def test_gp_at_cpl3_even_with_invalid_link_pointer(self, hsw):
        """SDM Vol. 3C §31.3 VMREAD: the CPL check precedes the link-pointer check (#GP, not CF)."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_RIP,), link=INVALID_POINTER)
        set_cpl3(hsw)
        hsw.state.gpr[0] = F.GUEST_RIP
        with pytest.raises(X86Exception) as e:
            run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=1))
        assert e.value.vector == Vector.GP

    def test_shadow_survives_exit_and_resume(self, hsw):
        """SDM Vol. 3C §25.10, §25.11.1: the shadow VMCS stays active across VM exits; values written by
        the guest are still read back by it after a VMRESUME, and root VMWRITEs to the shadow VMCS are
        seen by the guest."""
        launch_with_shadowing(hsw, read_ok=(F.GUEST_RSP,), write_ok=(F.GUEST_RSP,))
        hsw.state.gpr[0] = F.GUEST_RSP
        hsw.state.gpr[1] = 0xAAAA
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        exit_to_root(hsw)
        assert hsw.vmptrld(SHADOW) == VM_SUCCEED
        assert read(hsw, F.GUEST_RSP) == 0xAAAA
        assert hsw.vmwrite(F.GUEST_RSP, 0xBBBB) == VM_SUCCEED
        assert hsw.vmptrld(VMCS_A) == VM_SUCCEED
        assert hsw.vmresume() is None
        assert run(hsw, instr(VmxOp.VMREAD, 3, reg=0, rm=2)) is None
        assert hsw.state.gpr[2] == 0xBBBB

    def test_shadow_vmcs_written_back_by_vmclear(self, hsw):
        """SDM Vol. 3C §25.11.1, §31.3 VMCLEAR: a guest write through the shadow reaches the shadow region
        in memory once root software VMCLEARs it; VMPTRLD of it afterwards reads the value."""
        launch_with_shadowing(hsw, write_ok=(F.GUEST_RSP,))
        hsw.state.gpr[0] = F.GUEST_RSP
        hsw.state.gpr[1] = 0xCAFE
        assert run(hsw, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        exit_to_root(hsw)
        assert hsw.vmclear(SHADOW) == VM_SUCCEED
        offset, size = hsw.model.layout.offsets[F.GUEST_RSP]
        assert hsw.memory.read_u(SHADOW + offset, size) == 0xCAFE
        assert shadow_field(hsw, F.GUEST_RSP) == 0xCAFE
