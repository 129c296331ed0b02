"""Every VMX instruction in VMX root operation, from the Intel SDM.

Sections are those of the current SDM (Vol. 3C chapter 31 is the VMX instruction reference,
§31.2 the RFLAGS conventions, §31.4 the VM-instruction error numbers; chapter 25 the VMCS,
chapter 27 VM entries).  Both the value API used by root-mode software (`cpu.vmread(...)`)
and decoded instructions (`cpu.execute(VmxInstruction, memory)`) are exercised.
"""

from __future__ import annotations

import dataclasses

import pytest

from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import EXIT_REASON_FAILED_VMENTRY, ExitReason
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import (
    EPT_CAP_INVEPT,
    FEATURE_CONTROL_LOCKED,
    FEATURE_CONTROL_VMXON_INSIDE_SMX,
    FEATURE_CONTROL_VMXON_OUTSIDE_SMX,
    Msr,
)
from nestvmx.hw.cpu_models import CPU_MODELS, CpuModel
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.instruction import MemOperand, VmxInstruction, VmxOp
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.paging import PagedMemory
from nestvmx.hw.processor import VM_FAIL_INVALID, VM_SUCCEED, LogicalProcessor
from nestvmx.hw.state import (
    AR_DB,
    AR_DPL_SHIFT,
    AR_L,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_VMXE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_AF,
    RFLAGS_ARITH,
    RFLAGS_CF,
    RFLAGS_FIXED,
    RFLAGS_IF,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_SF,
    RFLAGS_TF,
    RFLAGS_VM,
    RFLAGS_ZF,
    Seg,
)
from nestvmx.hw.vmcs import INVALID_POINTER
from nestvmx.hw.vmexit import VmExit
from tests.hw.conftest import (
    GUEST_RIP,
    HOST_RIP,
    MEMORY,
    PAGE_TABLES,
    SHADOW,
    VMCS_A,
    VMCS_B,
    VMXON_REGION,
    make_cpu,
    write_revision,
    write_valid_vmcs,
)

DATA = 0x30000  # identity-mapped scratch page for memory operands
UNMAPPED = 0x4000_0000  # first byte past the 1-GiB identity map of conftest
NON_CANONICAL = 0x0000_8000_0000_0000
RIP = 0x7000
RFLAGS_DF = 1 << 10
ALL_ARITH_AND_OTHERS = RFLAGS_FIXED | RFLAGS_ARITH | RFLAGS_TF | RFLAGS_IF | RFLAGS_DF


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


def run(cpu: LogicalProcessor, ins: VmxInstruction, memory=None, rip: int = RIP) -> VmExit | None:
    """Execute `ins` at `rip`; memory operands go through the processor's page walk by default."""
    cpu.state.rip = rip
    return cpu.execute(ins, memory if memory is not None else PagedMemory(cpu.state, cpu.memory))


def arith(cpu: LogicalProcessor) -> int:
    return cpu.state.rflags & RFLAGS_ARITH


def error_field(cpu: LogicalProcessor) -> int:
    status, value = cpu.vmread(F.VM_INSTRUCTION_ERROR)
    assert status == VM_SUCCEED
    return value


def assert_vmfail_valid(cpu: LogicalProcessor, error: int) -> None:
    assert arith(cpu) == RFLAGS_ZF
    assert error_field(cpu) == error


def load(cpu: LogicalProcessor, address: int = VMCS_A) -> None:
    assert cpu.vmclear(address) == VM_SUCCEED
    assert cpu.vmptrld(address) == VM_SUCCEED


def set_cpl3(cpu: LogicalProcessor) -> None:
    for seg in (Seg.CS, Seg.SS):
        cpu.state.segs[seg].ar |= 3 << AR_DPL_SHIFT


def set_compatibility_mode(cpu: LogicalProcessor) -> None:
    cs = cpu.state.segs[Seg.CS]
    cs.ar = (cs.ar & ~AR_L) | AR_DB


def set_legacy_protected_mode(cpu: LogicalProcessor) -> None:
    """32-bit protected mode (IA32_EFER.LMA = 0, CS.D = 1): VMX operands are 32 bits."""
    cpu.state.efer &= ~(EFER_LMA | EFER_LME)
    set_compatibility_mode(cpu)


class FlatMemory:
    """Linear = physical, for tests of 32-bit operand behaviour that do not depend on paging."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self.memory = memory

    def read(self, linear: int, size: int) -> bytes:
        return self.memory.read(linear, size)

    def write(self, linear: int, data: bytes) -> None:
        self.memory.write(linear, data)


class AliasingMemory(PhysicalMemory):
    """Physical memory whose contents repeat every MEMORY bytes on the bus.

    A processor that ignored the physical-address width would find a valid region beyond it.
    """

    def __init__(self, inner: PhysicalMemory) -> None:
        self.size = inner.size
        self.buffer = inner.buffer

    def read_bus(self, address: int, size: int) -> int:
        return super().read_bus(address % MEMORY, size)

    def write_bus(self, address: int, size: int, value: int) -> None:
        super().write_bus(address % MEMORY, size, value)


def aliasing_cpu(model: CpuModel, vmxon: bool = True) -> LogicalProcessor:
    cpu = make_cpu(model, vmxon=False)
    cpu.memory = AliasingMemory(cpu.memory)
    if vmxon:
        assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED
    return cpu


def launch_and_exit(cpu: LogicalProcessor) -> None:
    """VMLAUNCH the current VMCS, then leave the guest by a VMCALL VM exit."""
    write_valid_vmcs(cpu)
    assert cpu.vmlaunch() is None
    assert cpu.non_root
    exit = cpu.execute(instr(VmxOp.VMCALL, 3), PagedMemory(cpu.state, cpu.memory))
    assert exit is not None and exit.reason == ExitReason.VMCALL
    assert not cpu.non_root


def without_invept(model: CpuModel) -> CpuModel:
    msrs = dict(model.msrs)
    msrs[Msr.IA32_VMX_EPT_VPID_CAP] &= ~EPT_CAP_INVEPT
    return dataclasses.replace(model, name=model.name + "-no-invept", msrs=msrs)


@pytest.fixture
def cpu(model: CpuModel) -> LogicalProcessor:
    return make_cpu(model)


# ============================================================== VMXON


class TestVmxon:
    def test_ud_when_cr4_vmxe_clear(self, model):
        """SDM Vol. 3C §31.3 VMXON, §24.7: #UD if CR4.VMXE = 0."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.cr4 &= ~CR4_VMXE
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert e.value.vector == Vector.UD
        assert not cpu.vmx_operation

    @pytest.mark.parametrize("mode", ["compatibility", "real", "virtual-8086"])
    def test_ud_in_unsupported_modes(self, model, mode):
        """SDM Vol. 3C §31.3 VMXON: #UD if CR0.PE = 0, RFLAGS.VM = 1 or in compatibility mode."""
        cpu = make_cpu(model, vmxon=False)
        if mode == "compatibility":
            set_compatibility_mode(cpu)
        elif mode == "real":
            cpu.state.cr0 &= ~(CR0_PE | CR0_PG)
        else:
            cpu.state.rflags |= RFLAGS_VM
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert e.value.vector == Vector.UD
        assert not cpu.vmx_operation

    def test_ud_with_register_operand(self, model):
        """SDM Vol. 3C §31.3 VMXON: #UD if the operand is a register (mod = 11 is another instruction)."""
        cpu = make_cpu(model, vmxon=False)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMXON, 4, rm=0))
        assert e.value.vector == Vector.UD
        assert cpu.state.rip == RIP

    def test_gp_at_cpl3(self, model):
        """SDM Vol. 3C §31.3 VMXON: #GP(0) if CPL > 0 outside VMX operation."""
        cpu = make_cpu(model, vmxon=False)
        set_cpl3(cpu)
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert not cpu.vmx_operation

    @pytest.mark.parametrize(
        "feature_control",
        [
            FEATURE_CONTROL_VMXON_OUTSIDE_SMX,  # not locked
            FEATURE_CONTROL_LOCKED,  # locked, VMX disabled
            FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_INSIDE_SMX,  # only inside SMX
            0,
        ],
    )
    def test_gp_feature_control(self, model, feature_control):
        """SDM Vol. 3C §31.3 VMXON, §24.7: #GP(0) unless IA32_FEATURE_CONTROL is locked with
        VMXON outside SMX enabled."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.write_msr(Msr.IA32_FEATURE_CONTROL, feature_control)
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert not cpu.vmx_operation

    def test_gp_cr0_fixed0(self, model):
        """SDM Vol. 3C §31.3 VMXON, §24.8: #GP(0) if CR0 has a bit clear that IA32_VMX_CR0_FIXED0
        requires (NE)."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.cr0 &= ~CR0_NE
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)

    def test_gp_cr4_fixed1(self, model):
        """SDM Vol. 3C §31.3 VMXON, §24.8: #GP(0) if CR4 sets a bit IA32_VMX_CR4_FIXED1 reports 0 (bit 12)."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.cr4 |= 1 << 12
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)

    @pytest.mark.parametrize("name,expect_gp", [("sandybridge", True), ("haswell", False)])
    def test_cr4_fsgsbase_allowed_per_model(self, name, expect_gp):
        """SDM Vol. 3C §24.8, App. A.8: CR4.FSGSBASE (bit 16) is allowed by Haswell's CR4_FIXED1
        (0x1767FF), not by Sandy Bridge's (0x667FF)."""
        cpu = make_cpu(CPU_MODELS[name], vmxon=False)
        cpu.state.cr4 |= 1 << 16
        if expect_gp:
            with pytest.raises(X86Exception):
                cpu.vmxon(VMXON_REGION)
            assert not cpu.vmx_operation
        else:
            assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED

    def test_gp_precedes_memory_operand_access(self, model):
        """SDM Vol. 3C §31.3 VMXON: the CPL check comes before the m64 operand is read, so an
        unmapped operand at CPL 3 gives #GP(0), not #PF."""
        cpu = make_cpu(model, vmxon=False)
        set_cpl3(cpu)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMXON, 8, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)

    def test_feature_control_gp_precedes_memory_operand_access(self, model):
        """SDM Vol. 3C §31.3 VMXON: IA32_FEATURE_CONTROL is checked before the operand is read."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.write_msr(Msr.IA32_FEATURE_CONTROL, 0)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMXON, 8, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)

    def test_success(self, model):
        """SDM Vol. 3C §31.3 VMXON, §31.2: VMsucceed clears CF PF AF ZF SF OF; no VMCS is current."""
        cpu = make_cpu(model, vmxon=False)
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED
        assert cpu.state.rflags == ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH
        assert cpu.vmx_operation
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)

    def test_success_through_execute(self, model):
        """SDM Vol. 3C §31.3 VMXON: the pointer is the m64 operand; RIP advances by the length."""
        cpu = make_cpu(model, vmxon=False)
        cpu.memory.write_u(DATA, 8, VMXON_REGION)
        cpu.state.gpr[3] = DATA - 0x10
        assert run(cpu, instr(VmxOp.VMXON, 5, mem=mem(0x10, base=3))) is None
        assert cpu.vmx_operation
        assert cpu.state.rip == RIP + 5
        assert arith(cpu) == 0
        assert cpu.vmptrld(VMXON_REGION) == VM_FAIL_INVALID  # error 10, no current VMCS

    def test_vmfailinvalid_unaligned(self, model):
        """SDM Vol. 3C §31.3 VMXON: VMfailInvalid if the pointer is not 4-KByte aligned."""
        cpu = make_cpu(model, vmxon=False)
        write_revision(cpu, VMXON_REGION + 0x800)
        assert cpu.vmxon(VMXON_REGION + 0x800) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.vmx_operation

    def test_vmfailinvalid_beyond_maxphyaddr(self, model):
        """SDM Vol. 3C §31.3 VMXON: VMfailInvalid if the pointer sets bits beyond the physical-address
        width, even where the bus would find a valid region."""
        cpu = aliasing_cpu(model, vmxon=False)
        beyond = (1 << model.phys_addr_bits) | VMXON_REGION
        assert cpu.vmxon(beyond) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.vmx_operation
        # control: the highest in-width alias of the region is accepted
        assert cpu.vmxon((1 << (model.phys_addr_bits - 1)) | VMXON_REGION) == VM_SUCCEED

    def test_vmfailinvalid_wrong_revision(self, model):
        """SDM Vol. 3C §31.3 VMXON: VMfailInvalid if bits 30:0 of the region are not the revision id."""
        cpu = make_cpu(model, vmxon=False)
        cpu.memory.write_u(VMXON_REGION, 4, model.revision_id + 1)
        assert cpu.vmxon(VMXON_REGION) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.vmx_operation

    def test_vmfailinvalid_shadow_indicator(self, model):
        """SDM Vol. 3C §31.3 VMXON, §25.2: VMfailInvalid if bit 31 (shadow-VMCS indicator) is set."""
        cpu = make_cpu(model, vmxon=False)
        write_revision(cpu, VMXON_REGION, shadow=True)
        assert cpu.vmxon(VMXON_REGION) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.vmx_operation

    def test_in_root_without_current_vmcs_is_vmfailinvalid(self, cpu):
        """SDM Vol. 3C §31.3 VMXON: in VMX root operation VMfail(15) = VMfailInvalid without a
        current VMCS; the VMXON pointer is not replaced."""
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.vmxon(VMCS_B) == VM_FAIL_INVALID
        assert cpu.state.rflags == (ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH) | RFLAGS_CF
        assert cpu.vmxon_pointer == VMXON_REGION
        load(cpu)
        assert cpu.vmptrld(VMXON_REGION) == VmxError.VMPTRLD_VMXON_POINTER
        assert cpu.vmptrld(VMCS_B) == VM_SUCCEED

    def test_in_root_with_current_vmcs_is_error_15(self, cpu):
        """SDM Vol. 3C §31.3 VMXON, §31.4: in VMX root operation with a current VMCS,
        VMfailValid(15 "VMXON executed in VMX root operation")."""
        load(cpu)
        assert cpu.vmxon(VMXON_REGION) == VmxError.VMXON_IN_VMX_ROOT_OPERATION
        assert_vmfail_valid(cpu, 15)
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_in_root_does_not_read_the_operand(self, cpu):
        """SDM Vol. 3C §31.3 VMXON: in VMX root operation the m64 operand is not read; an unmapped
        operand still gives VMfail(15), not #PF."""
        load(cpu)
        assert run(cpu, instr(VmxOp.VMXON, 8, mem=mem(UNMAPPED))) is None
        assert_vmfail_valid(cpu, 15)
        assert cpu.state.rip == RIP + 8

    def test_in_root_gp_at_cpl3(self, cpu):
        """SDM Vol. 3C §31.3 VMXON: in VMX root operation at CPL > 0, #GP(0)."""
        set_cpl3(cpu)
        with pytest.raises(X86Exception) as e:
            cpu.vmxon(VMXON_REGION)
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)


# ============================================================== VMXOFF


class TestVmxoff:
    def test_ud_outside_vmx_operation(self, model):
        """SDM Vol. 3C §31.3 VMXOFF: #UD outside VMX operation."""
        cpu = make_cpu(model, vmxon=False)
        with pytest.raises(X86Exception) as e:
            cpu.vmxoff()
        assert e.value.vector == Vector.UD
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMXOFF, 3))
        assert e.value.vector == Vector.UD

    def test_gp_at_cpl3(self, cpu):
        """SDM Vol. 3C §31.3 VMXOFF: #GP(0) if CPL > 0; VMX operation continues."""
        set_cpl3(cpu)
        with pytest.raises(X86Exception) as e:
            cpu.vmxoff()
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert cpu.vmx_operation

    def test_success_leaves_vmx_operation(self, cpu):
        """SDM Vol. 3C §31.3 VMXOFF: VMsucceed and the processor leaves VMX operation: further VMX
        instructions but VMXON are #UD; VMXON works again."""
        load(cpu)
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert run(cpu, instr(VmxOp.VMXOFF, 3)) is None
        assert cpu.state.rip == RIP + 3
        assert cpu.state.rflags == ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH
        assert not cpu.vmx_operation
        with pytest.raises(X86Exception) as e:
            cpu.vmread(F.GUEST_RIP)
        assert e.value.vector == Vector.UD
        assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)

    def test_vmresume_after_vmxoff_is_error_6(self, cpu):
        """SDM Vol. 3C §31.4 (error 6), §25.11.1: VMXOFF does not VMCLEAR the active VMCS; after
        VMXOFF and VMXON, VMRESUME of it fails with error 6; VMCLEAR makes it usable again."""
        load(cpu)
        launch_and_exit(cpu)
        assert cpu.vmxoff() == VM_SUCCEED
        assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED
        assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
        assert cpu.vmresume() == VmxError.VMRESUME_AFTER_VMXOFF
        assert_vmfail_valid(cpu, 6)
        load(cpu)
        write_valid_vmcs(cpu)
        assert cpu.vmlaunch() is None


# ============================================================== VMCLEAR


class TestVmclear:
    def test_error_2_unaligned(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: VMfail(2) if the operand is not 4-KByte aligned."""
        load(cpu)
        assert cpu.vmclear(VMCS_B + 8) == VmxError.VMCLEAR_INVALID_ADDRESS
        assert_vmfail_valid(cpu, 2)

    def test_error_2_beyond_maxphyaddr(self, model):
        """SDM Vol. 3C §31.3 VMCLEAR: VMfail(2) if the operand sets bits beyond the physical-address width."""
        cpu = aliasing_cpu(model)
        load(cpu)
        assert cpu.vmclear((1 << model.phys_addr_bits) | VMCS_B) == VmxError.VMCLEAR_INVALID_ADDRESS
        assert_vmfail_valid(cpu, 2)

    def test_error_2_without_current_vmcs_is_vmfailinvalid(self, cpu):
        """SDM Vol. 3C §31.2 VMfail, §31.3 VMCLEAR: without a current VMCS, VMfail(2) sets only CF."""
        assert cpu.vmclear(VMCS_B | 0x10) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF

    def test_error_3_vmxon_pointer(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: VMfail(3) if the operand is the VMXON pointer."""
        load(cpu)
        assert cpu.vmclear(VMXON_REGION) == VmxError.VMCLEAR_VMXON_POINTER
        assert_vmfail_valid(cpu, 3)
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_error_3_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: VMfail(3) without a current VMCS is VMfailInvalid."""
        assert cpu.vmclear(VMXON_REGION) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF

    def test_clears_launch_state(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR, §25.1: the launch state becomes clear: VMRESUME then fails
        with error 5 and VMLAUNCH succeeds."""
        load(cpu)
        launch_and_exit(cpu)
        assert cpu.vmlaunch() == VmxError.VMLAUNCH_NONCLEAR_VMCS
        assert cpu.vmclear(VMCS_A) == VM_SUCCEED
        assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
        assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS
        assert_vmfail_valid(cpu, 5)
        assert cpu.vmlaunch() is None

    def test_current_pointer_becomes_invalid(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: clearing the current VMCS sets the current-VMCS pointer to
        FFFFFFFF_FFFFFFFFh; VMREAD then fails with VMfailInvalid."""
        load(cpu)
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.vmclear(VMCS_A) == VM_SUCCEED
        assert cpu.state.rflags == ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)
        assert cpu.vmread(F.GUEST_RIP) == (VM_FAIL_INVALID, 0)
        assert arith(cpu) == RFLAGS_CF

    def test_writes_data_back_to_memory(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR, §25.11.1: VMCLEAR writes the VMCS data to the region, so a copy
        of the region made by software and a later VMPTRLD see the same values."""
        values = {
            F.GUEST_ES_SELECTOR: 0x1234,
            F.TSC_OFFSET: 0x1122_3344_5566_7788,
            F.EXCEPTION_BITMAP: 0xDEAD_BEEF,
            F.GUEST_RIP: 0xFFFF_8000_1234_5678,
        }
        load(cpu)
        for field, value in values.items():
            assert cpu.vmwrite(field, value) == VM_SUCCEED
        assert cpu.vmclear(VMCS_A) == VM_SUCCEED
        for field, value in values.items():
            offset, size = cpu.model.layout.offsets[field]
            assert cpu.memory.read_u(VMCS_A + offset, size) == value, field.name
        region = cpu.memory.read(VMCS_A, 0x1000)
        cpu.memory.write(VMCS_B, region)  # software copies the cleared region
        for address in (VMCS_A, VMCS_B):
            assert cpu.vmptrld(address) == VM_SUCCEED
            for field, value in values.items():
                assert cpu.vmread(field) == (VM_SUCCEED, value), (hex(address), field.name)

    def test_non_current_vmcs_leaves_current(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: only if the operand is the current-VMCS pointer does it become
        invalid; clearing another VMCS leaves the current one current."""
        load(cpu, VMCS_A)
        load(cpu, VMCS_B)
        assert cpu.vmwrite(F.GUEST_RSP, 0xB0B0) == VM_SUCCEED
        assert cpu.vmclear(VMCS_A) == VM_SUCCEED
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_B)
        assert cpu.vmread(F.GUEST_RSP) == (VM_SUCCEED, 0xB0B0)

    def test_does_not_check_revision(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: the revision identifier of the region is not checked."""
        cpu.memory.write_u(VMCS_B, 4, 0x7777_7777)
        assert cpu.vmclear(VMCS_B) == VM_SUCCEED
        assert arith(cpu) == 0
        assert cpu.memory.read_u(VMCS_B, 4) == 0x7777_7777  # the processor never writes the revision

    def test_through_execute_memory_operand(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: the pointer is the m64 operand; RIP advances by the length."""
        load(cpu)
        cpu.memory.write_u(DATA + 0x40, 8, VMCS_A)
        cpu.state.gpr[6] = DATA
        cpu.state.gpr[7] = 0x10
        assert run(cpu, instr(VmxOp.VMCLEAR, 5, mem=mem(0, base=6, index=7, scale=2))) is None
        assert cpu.state.rip == RIP + 5
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)

    def test_ud_with_register_operand(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: #UD if the operand is a register."""
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMCLEAR, 4, rm=1))
        assert e.value.vector == Vector.UD


# ============================================================== VMPTRLD


class TestVmptrld:
    @pytest.mark.parametrize("offset", [0x10, 0x800, 1])
    def test_error_9_unaligned(self, cpu, offset):
        """SDM Vol. 3C §31.3 VMPTRLD: VMfail(9) if the operand is not 4-KByte aligned."""
        load(cpu)
        write_revision(cpu, VMCS_B + offset)
        assert cpu.vmptrld(VMCS_B + offset) == VmxError.VMPTRLD_INVALID_ADDRESS
        assert_vmfail_valid(cpu, 9)
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_error_9_beyond_maxphyaddr(self, model):
        """SDM Vol. 3C §31.3 VMPTRLD: VMfail(9) if the operand sets bits beyond the physical-address width."""
        cpu = aliasing_cpu(model)
        load(cpu)
        assert cpu.vmptrld((1 << model.phys_addr_bits) | VMCS_B) == VmxError.VMPTRLD_INVALID_ADDRESS
        assert_vmfail_valid(cpu, 9)
        assert cpu.vmptrld((1 << (model.phys_addr_bits - 1)) | VMCS_B) == VM_SUCCEED

    def test_error_9_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.2, §31.3 VMPTRLD: VMfail(9) without a current VMCS sets CF only."""
        assert cpu.vmptrld(VMCS_B + 0x10) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF

    def test_error_10_vmxon_pointer(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD: VMfail(10) if the operand is the VMXON pointer."""
        load(cpu)
        assert cpu.vmptrld(VMXON_REGION) == VmxError.VMPTRLD_VMXON_POINTER
        assert_vmfail_valid(cpu, 10)
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_error_11_wrong_revision(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD: VMfail(11) if bits 30:0 of the region are not the revision id."""
        load(cpu)
        cpu.memory.write_u(VMCS_B, 4, cpu.model.revision_id ^ 1)
        assert cpu.vmptrld(VMCS_B) == VmxError.VMPTRLD_INCORRECT_VMCS_REVISION_ID
        assert_vmfail_valid(cpu, 11)
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_error_11_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD: VMfail(11) without a current VMCS sets CF only."""
        cpu.memory.write_u(VMCS_B, 4, 0)
        assert cpu.vmptrld(VMCS_B) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)

    def test_shadow_region_refused_without_vmcs_shadowing(self, sandybridge):
        """SDM Vol. 3C §31.3 VMPTRLD: bit 31 set and the processor lacks the 1-setting of "VMCS
        shadowing" (Sandy Bridge) → VMfail(11)."""
        cpu = make_cpu(sandybridge)
        load(cpu)
        assert cpu.vmptrld(SHADOW) == VmxError.VMPTRLD_INCORRECT_VMCS_REVISION_ID
        assert_vmfail_valid(cpu, 11)

    def test_shadow_region_accepted_with_vmcs_shadowing(self, haswell):
        """SDM Vol. 3C §31.3 VMPTRLD, §25.10: with VMCS shadowing supported (Haswell) a shadow VMCS
        can be made current and read/written in root operation."""
        cpu = make_cpu(haswell)
        assert cpu.vmclear(SHADOW) == VM_SUCCEED
        assert cpu.vmptrld(SHADOW) == VM_SUCCEED
        assert arith(cpu) == 0
        assert cpu.vmptrst() == (VM_SUCCEED, SHADOW)
        assert cpu.vmwrite(F.GUEST_RIP, 0x1234) == VM_SUCCEED
        assert cpu.vmread(F.GUEST_RIP) == (VM_SUCCEED, 0x1234)

    def test_previous_vmcs_stays_active(self, cpu):
        """SDM Vol. 3C §25.1: VMPTRLD of another VMCS leaves the previous one active with its data."""
        load(cpu, VMCS_A)
        assert cpu.vmwrite(F.GUEST_RSP, 0xAAAA) == VM_SUCCEED
        load(cpu, VMCS_B)
        assert cpu.vmwrite(F.GUEST_RSP, 0xBBBB) == VM_SUCCEED
        assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
        assert cpu.vmread(F.GUEST_RSP) == (VM_SUCCEED, 0xAAAA)

    def test_through_execute_rip_relative(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD; Vol. 2 §2.2.1.6: a RIP-relative operand is relative to the next
        instruction."""
        cpu.memory.write_u(RIP + 7 + 0x100, 8, VMCS_B)
        cpu.vmclear(VMCS_B)
        assert run(cpu, instr(VmxOp.VMPTRLD, 7, mem=mem(0x100, rip=True))) is None
        assert cpu.state.rip == RIP + 7
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_B)

    def test_through_execute_fs_segment(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD; Vol. 3A §3.2.4: in 64-bit mode FS and GS bases apply to the operand."""
        cpu.state.segs[Seg.FS].base = DATA
        cpu.memory.write_u(DATA + 0x20, 8, VMCS_B)
        assert run(cpu, instr(VmxOp.VMPTRLD, 5, mem=mem(0x20, seg=Seg.FS))) is None
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_B)

    def test_ud_with_register_operand(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD: #UD if the operand is a register."""
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRLD, 3, rm=0))
        assert e.value.vector == Vector.UD


# ============================================================== VMPTRST


class TestVmptrst:
    def test_all_ones_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRST: stores FFFFFFFF_FFFFFFFFh when no VMCS is current; VMsucceed."""
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.vmptrst() == (VM_SUCCEED, INVALID_POINTER)
        assert cpu.state.rflags == ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH

    def test_stores_current_pointer_to_memory(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRST: the current-VMCS pointer is stored to the m64 destination."""
        cpu.memory.write_u(DATA, 16, (1 << 128) - 1)
        load(cpu)
        assert run(cpu, instr(VmxOp.VMPTRST, 4, mem=mem(DATA))) is None
        assert cpu.memory.read_u(DATA, 8) == VMCS_A
        assert cpu.memory.read_u(DATA + 8, 8) == 0xFFFF_FFFF_FFFF_FFFF  # exactly 8 bytes written
        assert cpu.state.rip == RIP + 4

    def test_stores_all_ones_to_memory(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRST: with no current VMCS the m64 destination receives all ones."""
        assert run(cpu, instr(VmxOp.VMPTRST, 4, mem=mem(DATA))) is None
        assert cpu.memory.read_u(DATA, 8) == INVALID_POINTER
        assert arith(cpu) == 0

    def test_ud_with_register_operand(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRST: #UD if the operand is a register."""
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRST, 3, rm=0))
        assert e.value.vector == Vector.UD


# ====================================================== VMREAD / VMWRITE

UNSUPPORTED_ENCODINGS = [
    pytest.param(0x1_0000_681E, id="bits-63:32"),
    pytest.param(0xFFFF_FFFF_0000_4400, id="bits-63:32-all"),
    pytest.param(0x681E | 1 << 12, id="reserved-bit-12"),
    pytest.param(0x681E | 1 << 15, id="bit-15"),
    pytest.param(F.VM_INSTRUCTION_ERROR | 1, id="HIGH-of-32-bit"),
    pytest.param(F.GUEST_RIP | 1, id="HIGH-of-natural"),
    pytest.param(F.GUEST_ES_SELECTOR | 1, id="HIGH-of-16-bit"),
    pytest.param(0x4FFE, id="undefined-index"),
    pytest.param(F.PML_ADDRESS, id="PML-not-supported"),
]


class TestVmreadVmwrite:
    def test_vmread_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: VMfailInvalid if the current-VMCS pointer is not valid."""
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.vmread(F.GUEST_RIP) == (VM_FAIL_INVALID, 0)
        assert cpu.state.rflags == (ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH) | RFLAGS_CF

    def test_vmwrite_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMWRITE: VMfailInvalid if the current-VMCS pointer is not valid."""
        assert cpu.vmwrite(F.GUEST_RIP, 1) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF

    @pytest.mark.parametrize("encoding", UNSUPPORTED_ENCODINGS)
    def test_vmread_unsupported_component(self, cpu, encoding):
        """SDM Vol. 3C §31.3 VMREAD, §25.11.2: VMfailValid(12) for an encoding naming no supported field."""
        load(cpu)
        assert cpu.vmread(encoding) == (VmxError.UNSUPPORTED_VMCS_COMPONENT, 0)
        assert_vmfail_valid(cpu, 12)

    @pytest.mark.parametrize("encoding", UNSUPPORTED_ENCODINGS)
    def test_vmwrite_unsupported_component(self, cpu, encoding):
        """SDM Vol. 3C §31.3 VMWRITE, §25.11.2: VMfailValid(12) for an encoding naming no supported field."""
        load(cpu)
        assert cpu.vmwrite(encoding, 5) == VmxError.UNSUPPORTED_VMCS_COMPONENT
        assert_vmfail_valid(cpu, 12)

    @pytest.mark.parametrize("field", [F.VMREAD_BITMAP, F.VMWRITE_BITMAP, F.VMREAD_BITMAP | 1])
    def test_shadowing_fields_exist_only_with_shadowing(self, field):
        """SDM Vol. 3C App. B.2.1: the VMREAD/VMWRITE-bitmap addresses exist only on processors that
        support VMCS shadowing: error 12 on Sandy Bridge, a plain field on Haswell."""
        snb = make_cpu(CPU_MODELS["sandybridge"])
        load(snb)
        assert snb.vmread(field) == (VmxError.UNSUPPORTED_VMCS_COMPONENT, 0)
        assert snb.vmwrite(field, 0x5000) == VmxError.UNSUPPORTED_VMCS_COMPONENT
        assert_vmfail_valid(snb, 12)
        hsw = make_cpu(CPU_MODELS["haswell"])
        load(hsw)
        assert hsw.vmwrite(field, 0x5000) == VM_SUCCEED
        assert hsw.vmread(field) == (VM_SUCCEED, 0x5000)

    @pytest.mark.parametrize("field", [F.VM_EXIT_REASON, F.EXIT_QUALIFICATION, F.VM_INSTRUCTION_ERROR])
    def test_vmwrite_read_only_without_misc_bit_29(self, sandybridge, field):
        """SDM Vol. 3C §31.3 VMWRITE, App. A.6: with IA32_VMX_MISC[29] = 0 (Sandy Bridge) VMWRITE to a
        VM-exit information field is VMfailValid(13) and the field keeps its value."""
        cpu = make_cpu(sandybridge)
        load(cpu)
        assert cpu.vmread(field) == (VM_SUCCEED, 0)
        assert cpu.vmwrite(field, 0x42) == VmxError.VMWRITE_READ_ONLY_VMCS_COMPONENT
        assert_vmfail_valid(cpu, 13)
        if field != F.VM_INSTRUCTION_ERROR:
            assert cpu.vmread(field) == (VM_SUCCEED, 0)

    @pytest.mark.parametrize("field", [F.VM_EXIT_REASON, F.EXIT_QUALIFICATION, F.GUEST_LINEAR_ADDRESS])
    def test_vmwrite_read_only_with_misc_bit_29(self, haswell, field):
        """SDM Vol. 3C §31.3 VMWRITE, App. A.6: with IA32_VMX_MISC[29] = 1 (Haswell) VMWRITE may write
        the VM-exit information fields."""
        cpu = make_cpu(haswell)
        load(cpu)
        assert cpu.vmwrite(field, 0x42) == VM_SUCCEED
        assert arith(cpu) == 0
        assert cpu.vmread(field) == (VM_SUCCEED, 0x42)

    def test_unsupported_precedes_read_only(self, sandybridge):
        """SDM Vol. 3C §31.3 VMWRITE: the unsupported-component check (12) precedes the read-only one (13)."""
        cpu = make_cpu(sandybridge)
        load(cpu)
        assert cpu.vmwrite(F.VM_EXIT_REASON | 1, 0) == VmxError.UNSUPPORTED_VMCS_COMPONENT

    def test_high_access_of_64_bit_field(self, cpu):
        """SDM Vol. 3C §25.11.2: the HIGH encoding (bit 0 = 1) of a 64-bit field reads bits 63:32 into
        bits 31:0 and writes bits 31:0 of the source into bits 63:32."""
        load(cpu)
        assert cpu.vmwrite(F.TSC_OFFSET, 0x1122_3344_5566_7788) == VM_SUCCEED
        assert cpu.vmread(F.TSC_OFFSET | 1) == (VM_SUCCEED, 0x1122_3344)
        assert cpu.vmwrite(F.TSC_OFFSET | 1, 0xFFFF_FFFF_AABB_CCDD) == VM_SUCCEED
        assert cpu.vmread(F.TSC_OFFSET) == (VM_SUCCEED, 0xAABB_CCDD_5566_7788)
        assert cpu.vmread(F.TSC_OFFSET | 1) == (VM_SUCCEED, 0xAABB_CCDD)

    @pytest.mark.parametrize(
        "field,written,read",
        [
            (F.GUEST_ES_SELECTOR, 0xFFFF_1234_5678_9ABC, 0x9ABC),
            (F.EXCEPTION_BITMAP, 0xFFFF_FFFF_1234_5678, 0x1234_5678),
            (F.TSC_OFFSET, 0xFFFF_FFFF_1234_5678, 0xFFFF_FFFF_1234_5678),
            (F.GUEST_RSP, 0x8000_0000_0000_0001, 0x8000_0000_0000_0001),
        ],
    )
    def test_width_truncation(self, cpu, field, written, read):
        """SDM Vol. 3C §25.11.2: VMWRITE of a 16- or 32-bit field uses only the low bits of the source;
        VMREAD zero-extends it."""
        load(cpu)
        assert cpu.vmwrite(field, written) == VM_SUCCEED
        assert cpu.vmread(field) == (VM_SUCCEED, read)

    def test_error_field_untouched_by_success(self, cpu):
        """SDM Vol. 3C §31.2: VMsucceed does not modify the VM-instruction error field."""
        load(cpu)
        assert cpu.vmread(0x7FFE) == (VmxError.UNSUPPORTED_VMCS_COMPONENT, 0)
        assert cpu.vmwrite(F.GUEST_RIP, 0x1000) == VM_SUCCEED
        assert cpu.vmread(F.GUEST_RIP) == (VM_SUCCEED, 0x1000)
        assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
        assert error_field(cpu) == 12

    @pytest.mark.parametrize("start", [RFLAGS_FIXED, ALL_ARITH_AND_OTHERS, RFLAGS_FIXED | RFLAGS_TF | RFLAGS_OF])
    def test_rflags_conventions(self, cpu, start):
        """SDM Vol. 3C §31.2: VMsucceed clears CF PF AF ZF SF OF; VMfailInvalid sets CF only;
        VMfailValid sets ZF only; all other RFLAGS bits are preserved."""
        others = start & ~RFLAGS_ARITH
        cpu.state.rflags = start
        assert cpu.vmread(F.GUEST_RIP) == (VM_FAIL_INVALID, 0)
        assert cpu.state.rflags == others | RFLAGS_CF
        load(cpu)
        cpu.state.rflags = start
        assert cpu.vmwrite(0x1_0000_0000, 0) == VmxError.UNSUPPORTED_VMCS_COMPONENT
        assert cpu.state.rflags == others | RFLAGS_ZF
        cpu.state.rflags = start | RFLAGS_PF | RFLAGS_AF | RFLAGS_SF
        assert cpu.vmwrite(F.GUEST_RIP, 0) == VM_SUCCEED
        assert cpu.state.rflags == others

    def test_vmread_register_destination(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: ModRM.reg holds the encoding, ModRM.r/m the 64-bit destination."""
        load(cpu)
        cpu.vmwrite(F.GUEST_RSP, 0x1234_5678_9ABC_DEF0)
        cpu.state.gpr[11] = F.GUEST_RSP
        cpu.state.gpr[13] = 0x5555
        assert run(cpu, instr(VmxOp.VMREAD, 4, reg=11, rm=13)) is None
        assert cpu.state.gpr[13] == 0x1234_5678_9ABC_DEF0
        assert cpu.state.rip == RIP + 4
        assert arith(cpu) == 0

    def test_vmread_memory_destination(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: in 64-bit mode a memory destination receives 64 bits."""
        load(cpu)
        cpu.vmwrite(F.GUEST_ES_SELECTOR, 0x2B)
        cpu.memory.write_u(DATA, 16, (1 << 128) - 1)
        cpu.state.gpr[0] = F.GUEST_ES_SELECTOR
        cpu.state.gpr[3] = DATA + 0x100
        assert run(cpu, instr(VmxOp.VMREAD, 4, reg=0, mem=mem(-0x100, base=3))) is None
        assert cpu.memory.read_u(DATA, 8) == 0x2B
        assert cpu.memory.read_u(DATA + 8, 8) == 0xFFFF_FFFF_FFFF_FFFF

    def test_vmread_failure_leaves_destination(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: on VMfail the destination operand is not written."""
        load(cpu)
        cpu.state.gpr[1] = 0x1_0000_0000 | F.GUEST_RIP  # bits 63:32 set: unsupported
        cpu.state.gpr[2] = 0x7777
        cpu.memory.write_u(DATA, 8, 0x8888)
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=1, rm=2)) is None
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=1, mem=mem(DATA))) is None
        assert cpu.state.gpr[2] == 0x7777
        assert cpu.memory.read_u(DATA, 8) == 0x8888
        assert_vmfail_valid(cpu, 12)

    def test_vmwrite_register_and_memory_source(self, cpu):
        """SDM Vol. 3C §31.3 VMWRITE: ModRM.reg holds the encoding, ModRM.r/m the value (register or m64)."""
        load(cpu)
        cpu.state.gpr[2] = F.GUEST_RIP
        cpu.state.gpr[9] = 0xABCD_0000
        assert run(cpu, instr(VmxOp.VMWRITE, 4, reg=2, rm=9)) is None
        assert cpu.vmread(F.GUEST_RIP) == (VM_SUCCEED, 0xABCD_0000)
        cpu.memory.write_u(DATA + 8, 8, 0xFFFF_8000_0000_1000)
        cpu.state.gpr[6] = DATA
        assert run(cpu, instr(VmxOp.VMWRITE, 5, reg=2, mem=mem(8, base=6))) is None
        assert cpu.state.rip == RIP + 5
        assert cpu.vmread(F.GUEST_RIP) == (VM_SUCCEED, 0xFFFF_8000_0000_1000)

    def test_vmwrite_memory_fault_precedes_unsupported_check(self, cpu):
        """SDM Vol. 3C §31.3 VMWRITE: the memory source is read after the VMCS-pointer check and before
        the field check: an unmapped source with an unsupported encoding is #PF."""
        load(cpu)
        cpu.state.gpr[0] = 0x7FFE
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMWRITE, 7, reg=0, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 0)
        cpu.state.gpr[0] = F.GUEST_RIP
        assert cpu.vmclear(VMCS_A) == VM_SUCCEED
        assert run(cpu, instr(VmxOp.VMWRITE, 7, reg=0, mem=mem(UNMAPPED))) is None  # CF, no access
        assert arith(cpu) == RFLAGS_CF

    def test_vmread_memory_fault_after_field_check(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: the destination is written only for a supported field: an unmapped
        destination gives #PF (write) for a valid field and VMfailValid(12) for an unsupported one."""
        load(cpu)
        cpu.state.rflags = RFLAGS_FIXED | RFLAGS_CF
        cpu.state.gpr[0] = F.GUEST_RIP
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMREAD, 7, reg=0, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 2)
        assert cpu.state.cr2 == UNMAPPED
        assert cpu.state.rflags == RFLAGS_FIXED | RFLAGS_CF  # no other effect
        assert cpu.state.rip == RIP
        cpu.state.gpr[0] = 0x7FFE
        assert run(cpu, instr(VmxOp.VMREAD, 7, reg=0, mem=mem(UNMAPPED))) is None
        assert_vmfail_valid(cpu, 12)


class TestVmreadVmwriteOutside64BitMode:
    """SDM Vol. 3C §25.11.2, §31.3: outside 64-bit mode the operands are 32 bits."""

    def test_encoding_upper_register_bits_ignored(self, cpu):
        """SDM Vol. 3C §31.3 VMREAD: outside 64-bit mode the encoding register is 32 bits, so bits 63:32
        of the register do not make the encoding unsupported."""
        load(cpu)
        cpu.vmwrite(F.GUEST_RSP, 0x1234)
        set_legacy_protected_mode(cpu)
        cpu.state.gpr[0] = 0xFFFF_FFFF_0000_0000 | F.GUEST_RSP
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=0, rm=1)) is None
        assert arith(cpu) == 0
        assert cpu.state.gpr[1] == 0x1234

    def test_vmread_64_bit_field_returns_low_half(self, cpu):
        """SDM Vol. 3C §25.11.2: outside IA-32e mode VMREAD of a 64-bit field (full access) returns
        bits 31:0; the HIGH access returns bits 63:32."""
        load(cpu)
        cpu.vmwrite(F.TSC_OFFSET, 0x1122_3344_5566_7788)
        set_legacy_protected_mode(cpu)
        cpu.state.gpr[0] = F.TSC_OFFSET
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=0, rm=1)) is None
        assert cpu.state.gpr[1] == 0x5566_7788
        cpu.state.gpr[0] = F.TSC_OFFSET | 1
        cpu.memory.write_u(DATA, 8, 0xFFFF_FFFF_FFFF_FFFF)
        assert run(cpu, instr(VmxOp.VMREAD, 3, reg=0, mem=mem(DATA, asize=32)), FlatMemory(cpu.memory)) is None
        assert cpu.memory.read_u(DATA, 8) == 0xFFFF_FFFF_1122_3344  # a 32-bit store

    def test_vmwrite_full_clears_upper_half(self, cpu):
        """SDM Vol. 3C §25.11.2: outside IA-32e mode VMWRITE (full access) of a 64-bit or natural-width
        field writes bits 31:0 and clears bits 63:32."""
        load(cpu)
        cpu.vmwrite(F.TSC_OFFSET, 0xAAAA_BBBB_CCCC_DDDD)
        cpu.vmwrite(F.GUEST_RIP, 0xFFFF_8000_0000_0000)
        set_legacy_protected_mode(cpu)
        cpu.state.gpr[0] = F.TSC_OFFSET
        cpu.state.gpr[1] = 0x1234_5678_9ABC_DEF0
        assert run(cpu, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        cpu.state.gpr[0] = F.GUEST_RIP
        cpu.memory.write_u(DATA, 8, 0x5555_5555_0040_1000)
        assert run(cpu, instr(VmxOp.VMWRITE, 3, reg=0, mem=mem(DATA, asize=32)), FlatMemory(cpu.memory)) is None
        assert arith(cpu) == 0
        assert cpu.vmread(F.TSC_OFFSET) == (VM_SUCCEED, 0x9ABC_DEF0)
        assert cpu.vmread(F.GUEST_RIP) == (VM_SUCCEED, 0x0040_1000)

    def test_vmwrite_high_keeps_low_half(self, cpu):
        """SDM Vol. 3C §25.11.2: VMWRITE of the HIGH access writes bits 63:32 only, in any mode."""
        load(cpu)
        cpu.vmwrite(F.TSC_OFFSET, 0xAAAA_BBBB_CCCC_DDDD)
        set_legacy_protected_mode(cpu)
        cpu.state.gpr[0] = F.TSC_OFFSET | 1
        cpu.state.gpr[1] = 0x1234_5678
        assert run(cpu, instr(VmxOp.VMWRITE, 3, reg=0, rm=1)) is None
        assert cpu.vmread(F.TSC_OFFSET) == (VM_SUCCEED, 0x1234_5678_CCCC_DDDD)


# ====================================================== VMLAUNCH / VMRESUME


ENTRY_OPS = [pytest.param(True, id="vmlaunch"), pytest.param(False, id="vmresume")]


def enter(cpu: LogicalProcessor, launch: bool):
    return cpu.vmlaunch() if launch else cpu.vmresume()


class TestVmentryInstructions:
    @pytest.mark.parametrize("launch", ENTRY_OPS)
    def test_no_current_vmcs(self, cpu, launch):
        """SDM Vol. 3C §31.3 VMLAUNCH/VMRESUME, §27.1: VMfailInvalid if there is no current VMCS."""
        assert enter(cpu, launch) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.non_root

    @pytest.mark.parametrize("launch", ENTRY_OPS)
    def test_shadow_vmcs_current(self, haswell, launch):
        """SDM Vol. 3C §27.1, §25.10: VMfailInvalid if the current VMCS is a shadow VMCS; no error
        number is stored in it."""
        cpu = make_cpu(haswell)
        load(cpu, SHADOW)
        write_valid_vmcs(cpu)
        assert enter(cpu, launch) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF
        assert not cpu.non_root
        assert error_field(cpu) == 0

    @pytest.mark.parametrize("launch", ENTRY_OPS)
    def test_mov_ss_blocking_is_error_26(self, cpu, launch):
        """SDM Vol. 3C §27.1: VMfailValid(26) if events are blocked by MOV SS; this precedes the
        launch-state checks (VMRESUME of a clear VMCS still reports 26)."""
        load(cpu)
        write_valid_vmcs(cpu)
        cpu.state.interruptibility = 2
        assert enter(cpu, launch) == VmxError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS
        assert_vmfail_valid(cpu, 26)
        assert not cpu.non_root

    def test_vmlaunch_launched_is_error_4(self, cpu):
        """SDM Vol. 3C §27.1: VMLAUNCH with launch state not clear is VMfailValid(4)."""
        load(cpu)
        launch_and_exit(cpu)
        assert cpu.vmlaunch() == VmxError.VMLAUNCH_NONCLEAR_VMCS
        assert_vmfail_valid(cpu, 4)
        assert cpu.vmresume() is None  # still launched: VMRESUME enters
        assert cpu.non_root

    def test_vmresume_clear_is_error_5(self, cpu):
        """SDM Vol. 3C §27.1: VMRESUME with launch state not launched is VMfailValid(5)."""
        load(cpu)
        write_valid_vmcs(cpu)
        assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS
        assert_vmfail_valid(cpu, 5)
        assert not cpu.non_root

    def test_launch_state_error_precedes_control_checks(self, cpu):
        """SDM Vol. 3C §27.1, §27.2: the launch-state checks come before the checks of controls."""
        load(cpu)
        assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS  # the VMCS is all zeros

    def test_failed_control_check_leaves_launch_state_clear(self, cpu):
        """SDM Vol. 3C §27.2, §25.1: a VMLAUNCH failing a control check (7) does not launch the VMCS."""
        load(cpu)
        write_valid_vmcs(cpu)
        assert cpu.vmwrite(F.CR3_TARGET_COUNT, 5) == VM_SUCCEED
        assert cpu.vmlaunch() == VmxError.ENTRY_INVALID_CONTROL_FIELD
        assert_vmfail_valid(cpu, 7)
        assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS
        assert cpu.vmwrite(F.CR3_TARGET_COUNT, 0) == VM_SUCCEED
        assert cpu.vmlaunch() is None

    def test_entry_failure_leaves_launch_state_clear(self, cpu):
        """SDM Vol. 3C §27.3.1.5, §27.8: an invalid VMCS link pointer is a VM-entry failure (exit reason
        0x80000021, qualification 4) that loads host state and leaves the launch state clear."""
        load(cpu)
        write_valid_vmcs(cpu)
        assert cpu.vmwrite(F.VMCS_LINK_POINTER, VMCS_A) == VM_SUCCEED  # = current VMCS pointer
        cpu.state.rip = RIP
        exit = cpu.vmlaunch()
        assert isinstance(exit, VmExit)
        assert exit.reason == EXIT_REASON_FAILED_VMENTRY | ExitReason.INVALID_GUEST_STATE
        assert exit.qualification == 4
        assert cpu.vmread(F.VM_EXIT_REASON) == (VM_SUCCEED, 0x8000_0021)
        assert cpu.vmread(F.EXIT_QUALIFICATION) == (VM_SUCCEED, 4)
        assert cpu.state.rip == HOST_RIP
        assert not cpu.non_root
        assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS

    def test_vmlaunch_success_enters_guest(self, cpu):
        """SDM Vol. 3C §27.3.2: a successful VMLAUNCH loads guest state (RIP, RSP) and enters non-root
        operation; VMLAUNCH through execute() returns no exit."""
        load(cpu)
        write_valid_vmcs(cpu)
        assert run(cpu, instr(VmxOp.VMLAUNCH, 3)) is None
        assert cpu.non_root
        assert cpu.state.rip == GUEST_RIP
        assert cpu.state.rsp == 0x90000
        assert cpu.state.rflags == RFLAGS_FIXED

    def test_vmfail_through_execute_advances_rip(self, cpu):
        """SDM Vol. 3C §27.1: when VM entry fails with VMfail control passes to the next instruction."""
        load(cpu)
        write_valid_vmcs(cpu)
        assert run(cpu, instr(VmxOp.VMRESUME, 3)) is None
        assert cpu.state.rip == RIP + 3
        assert_vmfail_valid(cpu, 5)


# ============================================================== VMCALL


class TestVmcallInRoot:
    def test_error_1_with_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMCALL: in VMX root operation without dual-monitor treatment, VMfail(1)."""
        load(cpu)
        assert run(cpu, instr(VmxOp.VMCALL, 3)) is None
        assert_vmfail_valid(cpu, 1)
        assert cpu.state.rip == RIP + 3

    def test_vmfailinvalid_without_current_vmcs(self, cpu):
        """SDM Vol. 3C §31.3 VMCALL: VMfail(1) without a current VMCS is VMfailInvalid."""
        assert run(cpu, instr(VmxOp.VMCALL, 3)) is None
        assert arith(cpu) == RFLAGS_CF

    def test_ud_outside_vmx_operation(self, model):
        """SDM Vol. 3C §31.3 VMCALL: #UD outside VMX operation."""
        cpu = make_cpu(model, vmxon=False)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMCALL, 3))
        assert e.value.vector == Vector.UD


# ====================================================== INVEPT / INVVPID

GOOD_EPTP = 0x50000 | 3 << 3 | 6  # WB, 4-level walk


def descriptor(low: int, high: int = 0) -> bytes:
    return low.to_bytes(8, "little") + high.to_bytes(8, "little")


@pytest.fixture
def invalidations(cpu):
    seen: list[tuple] = []
    cpu.on_invalidate = lambda kind, type_, context: seen.append((kind, type_, context))
    return seen


class TestInvept:
    @pytest.mark.parametrize("type_", [0, 3, 4, 1 << 32 | 1, 0xFFFF_FFFF_FFFF_FFFF])
    def test_unsupported_type_is_error_28(self, cpu, invalidations, type_):
        """SDM Vol. 3C §31.3 INVEPT: a type IA32_VMX_EPT_VPID_CAP does not report (only 1 and 2 exist) is
        VMfail(28)."""
        load(cpu)
        assert cpu.invept(type_, descriptor(GOOD_EPTP)) == VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID
        assert_vmfail_valid(cpu, 28)
        assert invalidations == []

    @pytest.mark.parametrize(
        "eptp",
        [
            pytest.param(0x50000 | 3 << 3 | 1, id="memtype-WC"),
            pytest.param(0x50000 | 1 << 3 | 6, id="walk-length-2"),
            pytest.param(0x50000 | 3 << 3 | 6 | 1 << 7, id="reserved-bit-7"),
            pytest.param(1 << 40 | 3 << 3 | 6, id="beyond-maxphyaddr"),
        ],
    )
    def test_single_context_bad_eptp_is_error_28(self, cpu, invalidations, eptp):
        """SDM Vol. 3C §31.3 INVEPT, §27.2.1.1: single-context with an EPTP that would fail VM entry is
        VMfail(28)."""
        load(cpu)
        assert cpu.invept(1, descriptor(eptp)) == VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID
        assert_vmfail_valid(cpu, 28)
        assert invalidations == []

    @pytest.mark.parametrize("name,ok", [("haswell", True), ("sandybridge", False)])
    def test_accessed_dirty_bit_per_model(self, name, ok):
        """SDM Vol. 3C §27.2.1.1, App. A.10: EPTP bit 6 (A/D flags) is valid only if EPT_VPID_CAP[21]
        (Haswell yes, Sandy Bridge no)."""
        cpu = make_cpu(CPU_MODELS[name])
        load(cpu)
        status = cpu.invept(1, descriptor(GOOD_EPTP | 1 << 6))
        assert status == (VM_SUCCEED if ok else VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)

    def test_single_context_success(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVEPT: type 1 invalidates the mappings of EPTP; VMsucceed keeps the previous
        VM-instruction error value."""
        load(cpu)
        cpu.vmread(0x7FFE)  # error 12
        cpu.state.rflags = ALL_ARITH_AND_OTHERS
        assert cpu.invept(1, descriptor(GOOD_EPTP, 0xFFFF)) == VM_SUCCEED
        assert cpu.state.rflags == ALL_ARITH_AND_OTHERS & ~RFLAGS_ARITH
        assert invalidations == [("ept", 1, GOOD_EPTP)]
        assert error_field(cpu) == 12

    def test_global_success(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVEPT: type 2 invalidates all EPTPs; the descriptor is not checked."""
        assert cpu.invept(2, descriptor(0xFFFF_FFFF_FFFF_FFFF)) == VM_SUCCEED
        assert arith(cpu) == 0
        assert invalidations == [("ept", 2, None)]

    def test_without_current_vmcs(self, cpu, invalidations):
        """SDM Vol. 3C §31.2, §31.3 INVEPT: VMfail(28) without a current VMCS is VMfailInvalid."""
        assert cpu.invept(0, descriptor(GOOD_EPTP)) == VM_FAIL_INVALID
        assert arith(cpu) == RFLAGS_CF

    def test_through_execute(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVEPT: type in the register operand, descriptor in m128; RIP advances."""
        cpu.memory.write(DATA, descriptor(GOOD_EPTP))
        cpu.state.gpr[8] = 1
        cpu.state.gpr[3] = DATA
        assert run(cpu, instr(VmxOp.INVEPT, 6, reg=8, mem=mem(base=3))) is None
        assert cpu.state.rip == RIP + 6
        assert arith(cpu) == 0
        assert invalidations == [("ept", 1, GOOD_EPTP)]

    def test_unsupported_type_checked_before_descriptor_read(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVEPT: the type is checked before the descriptor is read: an unsupported
        type with an unmapped descriptor is VMfail(28), not #PF."""
        load(cpu)
        cpu.state.gpr[0] = 3
        assert run(cpu, instr(VmxOp.INVEPT, 6, reg=0, mem=mem(UNMAPPED))) is None
        assert_vmfail_valid(cpu, 28)
        cpu.state.gpr[0] = 2
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.INVEPT, 6, reg=0, mem=mem(UNMAPPED)))
        assert e.value.vector == Vector.PF

    def test_32_bit_type_register_outside_64_bit_mode(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVEPT: outside IA-32e mode the register operand is 32 bits."""
        set_legacy_protected_mode(cpu)
        cpu.state.gpr[1] = 0xFFFF_FFFF_0000_0002
        cpu.memory.write(DATA, descriptor(0))
        assert run(cpu, instr(VmxOp.INVEPT, 5, reg=1, mem=mem(DATA, asize=32)), FlatMemory(cpu.memory)) is None
        assert arith(cpu) == 0
        assert invalidations == [("ept", 2, None)]

    def test_ud_without_invept_support(self, model):
        """SDM Vol. 3C §31.3 INVEPT: #UD if IA32_VMX_EPT_VPID_CAP[20] = 0 (INVEPT not supported)."""
        cpu = make_cpu(without_invept(model))
        cpu.memory.write(DATA, descriptor(0))
        cpu.state.gpr[0] = 2
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.INVEPT, 5, reg=0, mem=mem(DATA)))
        assert e.value.vector == Vector.UD

    def test_ud_with_register_operand(self, cpu):
        """SDM Vol. 3C §31.3 INVEPT: the descriptor must be m128; a register form is #UD."""
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.INVEPT, 5, reg=0, rm=1))
        assert e.value.vector == Vector.UD


class TestInvvpid:
    @pytest.mark.parametrize(
        "type_,low,address",
        [
            pytest.param(4, 1, 0, id="type-4"),
            pytest.param(1 << 32, 1, 0, id="type-bits-63:32"),
            pytest.param(1, 1 << 16 | 1, 0, id="descriptor-bits-63:16"),
            pytest.param(2, 1 << 63, 0, id="descriptor-bit-63-all-contexts"),
            pytest.param(0, 0, 0x1000, id="individual-vpid-0"),
            pytest.param(1, 0, 0, id="single-vpid-0"),
            pytest.param(3, 0, 0, id="single-retaining-globals-vpid-0"),
            pytest.param(0, 5, NON_CANONICAL, id="individual-non-canonical"),
        ],
    )
    def test_invalid_operand_is_error_28(self, cpu, invalidations, type_, low, address):
        """SDM Vol. 3C §31.3 INVVPID: unsupported type, descriptor bits 63:16 set, VPID 0 for types 0/1/3,
        or a non-canonical address for type 0 → VMfail(28)."""
        load(cpu)
        assert cpu.invvpid(type_, descriptor(low, address)) == VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID
        assert_vmfail_valid(cpu, 28)
        assert invalidations == []

    @pytest.mark.parametrize(
        "type_,low,address,context",
        [
            (0, 7, 0xFFFF_8000_0000_0000, 7),
            (1, 7, NON_CANONICAL, 7),  # the address matters only for type 0
            (2, 0, 0, None),
            (3, 0xFFFF, 0, 0xFFFF),
        ],
    )
    def test_success(self, cpu, invalidations, type_, low, address, context):
        """SDM Vol. 3C §31.3 INVVPID: each supported type (EPT_VPID_CAP bits 40-43) succeeds with a valid
        descriptor and keeps the previous VM-instruction error."""
        load(cpu)
        cpu.vmread(0x7FFE)  # error 12
        assert cpu.invvpid(type_, descriptor(low, address)) == VM_SUCCEED
        assert arith(cpu) == 0
        assert invalidations == [("vpid", type_, context)]
        assert error_field(cpu) == 12

    def test_through_execute(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVVPID: type in the register operand, descriptor in m128; RIP advances."""
        cpu.memory.write(DATA + 0x30, descriptor(9, 0x1000))
        cpu.state.gpr[5] = 0
        cpu.state.gpr[3] = DATA
        assert run(cpu, instr(VmxOp.INVVPID, 7, reg=5, mem=mem(0x30, base=3))) is None
        assert cpu.state.rip == RIP + 7
        assert invalidations == [("vpid", 0, 9)]

    def test_unsupported_type_checked_before_descriptor_read(self, cpu, invalidations):
        """SDM Vol. 3C §31.3 INVVPID: the type is checked before the descriptor is read."""
        load(cpu)
        cpu.state.gpr[0] = 4
        assert run(cpu, instr(VmxOp.INVVPID, 6, reg=0, mem=mem(UNMAPPED))) is None
        assert_vmfail_valid(cpu, 28)


# ====================================================== common pre-checks through execute()

ALL_OPS = [
    (VmxOp.VMXOFF, None, None),
    (VmxOp.VMCLEAR, None, mem(DATA)),
    (VmxOp.VMPTRLD, None, mem(DATA)),
    (VmxOp.VMPTRST, None, mem(DATA)),
    (VmxOp.VMREAD, 0, mem(DATA)),
    (VmxOp.VMWRITE, 0, mem(DATA)),
    (VmxOp.VMLAUNCH, None, None),
    (VmxOp.VMRESUME, None, None),
    (VmxOp.INVEPT, 0, mem(DATA)),
    (VmxOp.INVVPID, 0, mem(DATA)),
    (VmxOp.VMCALL, None, None),
    (VmxOp.VMXON, None, mem(DATA)),
]
ALL_OPS_IDS = [op.name for op, _, _ in ALL_OPS]


class TestCommonChecks:
    @pytest.mark.parametrize("op,reg,operand", [o for o in ALL_OPS if o[0] is not VmxOp.VMXON], ids=ALL_OPS_IDS[:-1])
    def test_ud_outside_vmx_operation(self, model, op, reg, operand):
        """SDM Vol. 3C §31.3 (each instruction's Operation): #UD outside VMX operation."""
        cpu = make_cpu(model, vmxon=False)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(op, 4, reg=reg, mem=operand))
        assert e.value.vector == Vector.UD
        assert cpu.state.rip == RIP

    @pytest.mark.parametrize("mode", ["compatibility", "real", "virtual-8086"])
    @pytest.mark.parametrize("op,reg,operand", ALL_OPS, ids=ALL_OPS_IDS)
    def test_ud_in_unsupported_modes(self, cpu, op, reg, operand, mode):
        """SDM Vol. 3C §31.3: #UD if CR0.PE = 0, RFLAGS.VM = 1 or in compatibility mode."""
        load(cpu)
        if mode == "compatibility":
            set_compatibility_mode(cpu)
        elif mode == "real":
            cpu.state.cr0 &= ~(CR0_PE | CR0_PG)
        else:
            cpu.state.rflags |= RFLAGS_VM
        flags = cpu.state.rflags
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(op, 4, reg=reg, mem=operand), FlatMemory(cpu.memory))
        assert e.value.vector == Vector.UD
        assert cpu.state.rflags == flags
        assert cpu.vmx_operation

    @pytest.mark.parametrize("op,reg,operand", ALL_OPS, ids=ALL_OPS_IDS)
    def test_gp_at_cpl3(self, cpu, op, reg, operand):
        """SDM Vol. 3C §31.3: in VMX root operation at CPL > 0, #GP(0) with no other effect."""
        load(cpu)
        set_cpl3(cpu)
        cpu.state.rflags = RFLAGS_FIXED | RFLAGS_CF
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(op, 4, reg=reg, mem=operand))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert cpu.state.rflags == RFLAGS_FIXED | RFLAGS_CF
        assert cpu.state.rip == RIP
        assert cpu.vmx_operation


class TestMemoryOperands:
    @pytest.mark.parametrize(
        "op,reg", [(VmxOp.VMPTRLD, None), (VmxOp.VMCLEAR, None), (VmxOp.VMPTRST, None), (VmxOp.VMWRITE, 0)]
    )
    def test_gp_non_canonical(self, cpu, op, reg):
        """SDM Vol. 3C §31.3 (64-Bit Mode Exceptions): #GP(0) if the memory address is non-canonical."""
        load(cpu)
        cpu.state.gpr[0] = F.GUEST_RIP
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(op, 8, reg=reg, mem=mem(NON_CANONICAL)))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
        assert cpu.state.rip == RIP
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_ss_non_canonical_stack_segment(self, cpu):
        """SDM Vol. 3C §31.3 (64-Bit Mode Exceptions): #SS(0) if an SS-relative address is non-canonical."""
        cpu.state.gpr[4] = NON_CANONICAL
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRLD, 4, mem=mem(base=4, seg=Seg.SS)))
        assert (e.value.vector, e.value.error_code) == (Vector.SS, 0)

    def test_non_canonical_after_index_and_scale(self, cpu):
        """SDM Vol. 1 §3.3.7.1, §3.7.5: the canonical check applies to the full base + index*scale + disp sum."""
        cpu.state.gpr[3] = 0x0000_7FFF_FFFF_F000
        cpu.state.gpr[6] = 0x400
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRST, 5, mem=mem(0, base=3, index=6, scale=3)))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)

    def test_pf_unmapped_read(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRLD: #PF if the operand is not mapped: error code 0 (read, not present,
        supervisor), CR2 = linear address; the instruction has no other effect."""
        load(cpu)
        cpu.state.rflags = RFLAGS_FIXED | RFLAGS_ZF
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRLD, 7, mem=mem(UNMAPPED + 0x18)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 0)
        assert cpu.state.cr2 == UNMAPPED + 0x18
        assert cpu.state.rip == RIP
        assert cpu.state.rflags == RFLAGS_FIXED | RFLAGS_ZF
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_A)

    def test_pf_unmapped_write(self, cpu):
        """SDM Vol. 3C §31.3 VMPTRST: #PF with error code 2 (write, not present) for an unmapped destination."""
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRST, 7, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 2)
        assert cpu.state.cr2 == UNMAPPED

    def test_operand_crossing_into_unmapped_page(self, cpu):
        """SDM Vol. 3A §4.7: an operand straddling a mapped and an unmapped page faults on the unmapped
        one (CR2 = its first byte) and writes nothing."""
        hole = 0x600000
        cpu.memory.write_u(PAGE_TABLES + 0x2000 + 8 * (hole >> 21), 8, 0)  # unmap the 2-MiB page at `hole`
        last = hole - 4
        cpu.memory.write_u(last, 8, 0x1234_5678)
        load(cpu)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRST, 7, mem=mem(last)))
        assert (e.value.vector, e.value.error_code) == (Vector.PF, 2)
        assert cpu.state.cr2 == hole
        assert cpu.memory.read_u(last, 8) == 0x1234_5678

    def test_address_size_32_wraps(self, cpu):
        """SDM Vol. 1 §3.3.7: with a 32-bit address size (67h prefix) the effective address is truncated to 32 bits."""
        cpu.memory.write_u(DATA, 8, VMCS_B)
        cpu.state.gpr[3] = 0xFFFF_FFFF_0000_0000 | (DATA - 0x10)
        assert run(cpu, instr(VmxOp.VMPTRLD, 5, mem=mem(0x10, base=3, asize=32))) is None
        assert cpu.vmptrst() == (VM_SUCCEED, VMCS_B)

    def test_ud_precedes_memory_fault(self, model):
        """SDM Vol. 3C §31.3 VMPTRLD: #UD outside VMX operation comes before any operand access."""
        cpu = make_cpu(model, vmxon=False)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMPTRLD, 7, mem=mem(UNMAPPED)))
        assert e.value.vector == Vector.UD

    def test_gp_cpl_precedes_memory_fault(self, cpu):
        """SDM Vol. 3C §31.3 VMCLEAR: the CPL check comes before the operand is read."""
        set_cpl3(cpu)
        with pytest.raises(X86Exception) as e:
            run(cpu, instr(VmxOp.VMCLEAR, 7, mem=mem(UNMAPPED)))
        assert (e.value.vector, e.value.error_code) == (Vector.GP, 0)
