"""Nested VMX: L0 emulates VMX for L1 and runs L1's L2 guests (KVM's arch/x86/kvm/vmx/nested.c).

L1's VMX instructions all exit to L0 (handle_vmxon ... handle_invvpid), which emulates them
on vmcs12 using only the VM-exit information fields to find operands.  VMLAUNCH/VMRESUME check
vmcs12, build vmcs02 (prepare_vmcs02) and EPT02, and enter L2; each L2 exit is either reflected
to L1 (nested_vmx_vmexit, when nested_vmx_l1_wants_exit) or handled by L0 itself.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

from nestvmx.arch.controls import INTR_INFO_VALID, EntryCtls, ExitCtls, PinBased, PrimaryCtls, SecondaryCtls
from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import EXIT_REASON_FAILED_VMENTRY, ExitReason, exit_reason_name
from nestvmx.arch.fields import VMCS_FIELDS, FieldType
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import EPT_CAP_INVEPT_ALL_CONTEXT, EPT_CAP_INVEPT_SINGLE_CONTEXT, Msr
from nestvmx.engine.ept import EPT_EXEC, EPT_READ, EPT_WRITE, EptFault, ept_translate
from nestvmx.engine.guest_memory import GuestMemory
from nestvmx.hw import vmentry
from nestvmx.hw.bitmaps import io_bitmap_bits, msr_bitmap_bit
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.processor import VM_SUCCEED
from nestvmx.hw.state import (
    AR_L,
    CR4_VMXE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_ARITH,
    RFLAGS_CF,
    RFLAGS_ZF,
    CpuState,
    Seg,
    Segment,
    canonical,
)
from nestvmx.hw.vmcs import INVALID_POINTER, SHADOW_VMCS_INDICATOR, secondary_controls
from nestvmx.hw.vmexit import GUEST_SEGMENT_FIELDS, SAVED_UNDER_EXIT_CONTROL, VmExit, host_segments, load_cr0
from nestvmx.kvm.ept import EptTables
from nestvmx.kvm.nested_caps import nested_model
from nestvmx.kvm.vmcs12 import ABORT_OFFSET, VMCS12_REVISION, VMCS12_SIZE, Vmcs12
from nestvmx.kvm.vmcs_shadow_fields import SHADOW_FIELD_LISTS

if TYPE_CHECKING:
    from nestvmx.kvm.vmx import RunEnd, VmxVcpu

# Guest-state fields copied from vmcs12 into vmcs02 on entry and back on a nested exit (but those
# the exit controls do not save: SAVED_UNDER_EXIT_CONTROL).
GUEST_STATE_FIELDS = tuple(
    f.encoding
    for f in VMCS_FIELDS
    if (f.encoding >> 10) & 3 == 2
    and f.encoding != F.VMCS_LINK_POINTER
    and f.name not in ("GUEST_INTR_STATUS", "GUEST_PML_INDEX", "GUEST_UINV")
    and not f.name.startswith(
        (
            "GUEST_IA32_FRED",
            "GUEST_S_CET",
            "GUEST_SSP",
            "GUEST_INTR_SSP",
            "GUEST_BNDCFGS",
            "GUEST_IA32_RTIT",
            "GUEST_IA32_LBR",
            "GUEST_IA32_PKRS",
            "GUEST_IA32_PERF",
        )
    )
)
EXIT_INFO_FIELDS = (
    F.VM_EXIT_REASON,
    F.EXIT_QUALIFICATION,
    F.VM_EXIT_INTR_INFO,
    F.VM_EXIT_INTR_ERROR_CODE,
    F.IDT_VECTORING_INFO_FIELD,
    F.IDT_VECTORING_ERROR_CODE,
    F.VM_EXIT_INSTRUCTION_LEN,
    F.VMX_INSTRUCTION_INFO,
    F.GUEST_LINEAR_ADDRESS,
    F.GUEST_PHYSICAL_ADDRESS,
)
_ALWAYS_REFLECTED = {
    ExitReason.TRIPLE_FAULT,
    ExitReason.CPUID,
    ExitReason.VMCALL,
    ExitReason.VMCLEAR,
    ExitReason.VMLAUNCH,
    ExitReason.VMPTRLD,
    ExitReason.VMPTRST,
    ExitReason.VMREAD,
    ExitReason.VMRESUME,
    ExitReason.VMWRITE,
    ExitReason.VMXOFF,
    ExitReason.VMXON,
    ExitReason.INVEPT,
    ExitReason.INVVPID,
    ExitReason.INVALID_GUEST_STATE,
}
_VPID02 = 2
VMX_ABORT_SAVE_GUEST_MSR_FAIL = 1  # VMX-abort indicators (SDM §28.7)
VMX_ABORT_LOAD_HOST_MSR_FAIL = 4
EPT02_MAX_PAGES = 256  # table pages of one vCPU's EPT02 (1 MiB of L0's memory)
# What l1_state reads from vmcs01.
_L1_STATE_FIELDS = (
    F.GUEST_CR0,
    F.GUEST_CR3,
    F.GUEST_CR4,
    F.GUEST_IA32_EFER,
    F.GUEST_SS_AR_BYTES,
    F.GUEST_CS_AR_BYTES,
    F.GUEST_FS_BASE,
    F.GUEST_GS_BASE,
)
# A VMCS's guest state and CR read shadows: L2's state as sync_vmcs02_to_vmcs12 reads it from vmcs02
# (the shadows hold the CR bits only L0 owns), and L1's as migration saves it from vmcs01.
GUEST_STATE_AND_READ_SHADOWS = (*GUEST_STATE_FIELDS, F.CR0_READ_SHADOW, F.CR4_READ_SHADOW)
_guest_state = itemgetter(*GUEST_STATE_FIELDS)
# Non-guest-state fields of vmcs02 that a VM exit modifies (SDM §28.2): always rewritten.
_CHANGED_BY_VM_EXIT = frozenset({F.VM_ENTRY_CONTROLS, F.VM_ENTRY_INTR_INFO_FIELD})
# The controls of vmcs02 beyond vmcs12's (prepare_vmcs02).  L0 reads L1's I/O and MSR bitmaps
# itself; HLT is L0's to handle when L1 does not intercept it (a halted L2 blocks its vCPU, KVM's
# kvm_emulate_halt); L0 emulates RDPMC (no PMU) when L1 does not intercept it.
_PIN02 = PinBased.EXT_INTR_EXITING | PinBased.NMI_EXITING
_PRIMARY12_DROPPED = PrimaryCtls.USE_IO_BITMAPS | PrimaryCtls.USE_MSR_BITMAPS
_PRIMARY02 = (
    PrimaryCtls.UNCOND_IO_EXITING
    | PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS
    | PrimaryCtls.HLT_EXITING
    | PrimaryCtls.RDPMC_EXITING
)
_SECONDARY12_KEPT = SecondaryCtls.ENABLE_RDTSCP | SecondaryCtls.ENABLE_INVPCID
_SECONDARY02 = SecondaryCtls.ENABLE_EPT | SecondaryCtls.ENABLE_VPID
_ENTRY02 = EntryCtls.LOAD_EFER | EntryCtls.LOAD_PAT | EntryCtls.LOAD_DEBUG_CONTROLS  # L1's values, or L2's


class NestedVmx:
    """Per-vCPU nested state (KVM's struct nested_vmx) and the emulation of VMX for L1."""

    def __init__(self, vcpu: VmxVcpu) -> None:
        self.vcpu = vcpu
        self.model = nested_model(vcpu.model)  # the processor L1 sees
        # The recommended maximum of an MSR area, 512 × (IA32_VMX_MISC[27:25] + 1) (SDM A.6); KVM
        # fails the load or store at that index (nested_vmx_load_msr), which bounds L0's work.
        self.msr_area_limit = 512 * (((self.model.msrs[Msr.IA32_VMX_MISC] >> 25) & 7) + 1)
        self.entry_checks = vmentry.EntryChecks(
            self.model, catalogue=True
        )  # L0's checks of vmcs12 (nested_vmx_check_*)
        self.exit_info_fields = [f for f in EXIT_INFO_FIELDS if f in vcpu.model.fields]  # those vmcs02 has
        self.l1_memory = vcpu.memory.window(vcpu.guest_size)
        self.vmxon = False
        self.vmxon_ptr = INVALID_POINTER
        self.current_vmptr = INVALID_POINTER
        self.cached_vmcs12: Vmcs12 | None = None
        self.guest_mode = False
        self.nested_run_pending = False  # L1 entered L2 and L2 has not run yet (KVM's flag)
        self.vmcs02 = vcpu.alloc_page()
        vcpu.memory.write_u(self.vmcs02, 4, vcpu.model.revision_id)
        self.ept01_cache: dict = {}  # EPT01 never changes: its translations can be kept
        self.vmcs02_values: dict[int, int] = {}  # what L0 last wrote to (VmxVcpu.vmwrite) or read from vmcs02
        self.ept02: EptTables | None = None
        self.ept02_source: int | None = None  # the EPTP12 EPT02 was built from
        # VMCS shadowing (the 2013 "KVM: nVMX: shadow VMCS support" series).
        self.enable_shadow_vmcs = vcpu.enable_shadow_vmcs
        self.shadow_vmcs: int | None = None  # one per vCPU, allocated at VMXON
        self.sync_shadow_vmcs = False
        read_only, read_write = SHADOW_FIELD_LISTS[vcpu.kvm.shadow_fields]
        usable = [
            f for f in (*read_only, *read_write) if f in vcpu.model.fields and f in self.model.fields
        ]  # dropped where L1 or the CPU lacks them
        self.shadow_read_write = [f for f in usable if f in read_write]
        self.shadow_read_only = frozenset(f for f in usable if f not in read_write)
        self.shadow_fields = usable

    def init_vmcs_shadow_fields(self) -> tuple[int, int]:
        """The VMREAD and VMWRITE bitmaps: every bit set but those of the shadowed fields."""
        v = self.vcpu
        read_bitmap, write_bitmap = v.alloc_page(), v.alloc_page()
        v.memory.write(read_bitmap, b"\xff" * 0x1000)
        v.memory.write(write_bitmap, b"\xff" * 0x1000)
        for field in self.shadow_fields:
            encodings = (field, field | 1) if (field >> 13) & 3 == 1 else (field,)  # 64-bit: FULL and HIGH
            for enc in encodings:
                bitmaps = (read_bitmap, write_bitmap) if field in self.shadow_read_write else (read_bitmap,)
                for bitmap in bitmaps:
                    byte = v.memory.read_u(bitmap + (enc >> 3), 1)
                    v.memory.write_u(bitmap + (enc >> 3), 1, byte & ~(1 << (enc & 7)))
        return read_bitmap, write_bitmap

    def alloc_shadow_vmcs(self) -> None:
        """At VMXON: one shadow VMCS per vCPU, VMCLEARed, reused for every vmcs12 L1 makes current."""
        v = self.vcpu
        self.shadow_vmcs = v.alloc_page()
        v.memory.write_u(self.shadow_vmcs, 4, v.model.revision_id | SHADOW_VMCS_INDICATOR)
        if v.cpu.vmclear(self.shadow_vmcs) != VM_SUCCEED:
            raise AssertionError("VMCLEAR of the shadow VMCS failed")
        v.stats.shadow_vmcs_allocated += 1
        v.stats.shadow_vmcs_live += 1

    def free_shadow_vmcs(self) -> None:
        v = self.vcpu
        if self.shadow_vmcs is not None:
            v.cpu.vmclear(self.shadow_vmcs)
            v.free_pages([self.shadow_vmcs])
            self.shadow_vmcs = None
            v.stats.shadow_vmcs_live -= 1

    def _set_shadowing(self, on: bool) -> None:
        """vmcs01 uses the shadow VMCS only while L1 has a current vmcs12."""
        v = self.vcpu
        secondary = v.vmread(F.SECONDARY_VM_EXEC_CONTROL)
        if on:
            v.vmwrite(F.SECONDARY_VM_EXEC_CONTROL, secondary | SecondaryCtls.SHADOW_VMCS)
            v.vmwrite(F.VMCS_LINK_POINTER, self.shadow_vmcs)
        else:
            v.vmwrite(F.SECONDARY_VM_EXEC_CONTROL, secondary & ~SecondaryCtls.SHADOW_VMCS)
            v.vmwrite(F.VMCS_LINK_POINTER, INVALID_POINTER)

    def load_vmcs(self, vmcs: int) -> None:
        """Make one of L0's VMCSs current (KVM's vmcs_load)."""
        if self.vcpu.cpu.vmptrld(vmcs) != VM_SUCCEED:
            raise AssertionError(f"VMPTRLD of L0's VMCS {vmcs:#x} failed")

    def copy_shadow_to_vmcs12(self) -> None:
        """The read-write fields L1 may have changed without exits, back into vmcs12."""
        v, vmcs12 = self.vcpu, self.vmcs12
        self.load_vmcs(self.shadow_vmcs)
        vmcs12.write_full(zip(self.shadow_read_write, v.vmread_many(self.shadow_read_write), strict=True))
        self.load_vmcs(v.vmcs01)
        v.stats.copies_from_shadow += 1
        v.stats.fields_copied += len(self.shadow_read_write)

    def copy_vmcs12_to_shadow(self) -> None:
        """Read-only and read-write fields of vmcs12 into the shadow VMCS, before L1 runs again."""
        v, vmcs12 = self.vcpu, self.vmcs12
        self.load_vmcs(self.shadow_vmcs)
        fields = vmcs12.fields
        v.vmwrite_many({field: fields.get(field, 0) for field in self.shadow_fields})
        self.load_vmcs(v.vmcs01)
        v.stats.copies_to_shadow += 1
        v.stats.fields_copied += len(self.shadow_fields)

    def before_l1_entry(self) -> None:
        """Checked on every entry into L1: sync_shadow_vmcs copies vmcs12 into the shadow once."""
        if self.sync_shadow_vmcs:
            self.copy_vmcs12_to_shadow()
            self.sync_shadow_vmcs = False

    # ------------------------------------------------------------ helpers

    @property
    def vmcs12(self) -> Vmcs12:
        assert self.cached_vmcs12 is not None
        return self.cached_vmcs12

    def l1_state(self) -> CpuState:
        """L1's paging and privilege state, read from vmcs01 (for operand accesses)."""
        s = CpuState()
        s.cr0, s.cr3, s.cr4, s.efer, ss_ar, cs_ar, s.segs[Seg.FS].base, s.segs[Seg.GS].base = self.vcpu.vmread_many(
            _L1_STATE_FIELDS
        )
        s.segs[Seg.SS], s.segs[Seg.CS] = Segment(0, 0, 0, ss_ar), Segment(0, 0, 0, cs_ar)
        return s

    def _reg(self, number: int) -> int:
        return self.vcpu.vmread(F.GUEST_RSP) if number == 4 else self.vcpu.regs[number]

    def _set_reg(self, number: int, value: int) -> None:
        if number == 4:
            self.vcpu.vmwrite(F.GUEST_RSP, value)
        else:
            self.vcpu.regs[number] = value

    def _operand_address(self, state: CpuState) -> int:
        """get_vmx_mem_address: the linear address of a memory operand from the exit information."""
        v = self.vcpu
        info, displacement = v.vmread(F.VMX_INSTRUCTION_INFO), v.vmread(F.EXIT_QUALIFICATION)
        address = displacement
        if not info & (1 << 27):
            address += self._reg((info >> 23) & 0xF)
        if not info & (1 << 22):
            address += self._reg((info >> 18) & 0xF) << (info & 3)
        size_bits = {0: 16, 1: 32, 2: 64}.get((info >> 7) & 7, 64)
        address &= (1 << size_bits) - 1
        segment = (info >> 15) & 7
        if segment in (Seg.FS, Seg.GS):
            address = (address + state.segs[segment].base) & 0xFFFF_FFFF_FFFF_FFFF
        if not canonical(address):
            raise X86Exception(Vector.SS if segment == Seg.SS else Vector.GP, 0)
        return address

    def _memory(self, state: CpuState) -> GuestMemory:
        return GuestMemory(self.vcpu.model, self.vcpu.memory, state, self.vcpu.eptp, self.ept01_cache)

    def _read_operand(self, size: int) -> int:
        state = self.l1_state()
        return int.from_bytes(self._memory(state).read(self._operand_address(state), size), "little")

    def _write_operand(self, value: int, size: int) -> None:
        state = self.l1_state()
        self._memory(state).write(self._operand_address(state), value.to_bytes(size, "little"))

    def _set_rflags(self, set_bits: int) -> None:
        v = self.vcpu
        v.vmwrite(F.GUEST_RFLAGS, v.vmread(F.GUEST_RFLAGS) & ~RFLAGS_ARITH | set_bits)

    def succeed(self) -> None:
        """nested_vmx_succeed, then skip the instruction."""
        self._set_rflags(0)
        self.vcpu.skip_emulated_instruction()

    def fail_invalid(self) -> None:
        self._set_rflags(RFLAGS_CF)
        self.vcpu.skip_emulated_instruction()

    def fail(self, error: VmxError) -> None:
        """nested_vmx_fail: VMfailValid into vmcs12 if there is a current vmcs12, else VMfailInvalid."""
        if self.current_vmptr == INVALID_POINTER:
            self.fail_invalid()
            return
        self.vmcs12[F.VM_INSTRUCTION_ERROR] = error
        self._set_rflags(RFLAGS_ZF)
        self.vcpu.skip_emulated_instruction()

    def _check_permission(self) -> RunEnd | None:
        """nested_vmx_check_permission: #UD outside VMX operation, #GP(0) at CPL > 0."""
        if not self.vmxon:
            return self.vcpu.queue_exception(Vector.UD)
        if (self.vcpu.vmread(F.GUEST_SS_AR_BYTES) >> 5) & 3:
            return self.vcpu.queue_exception(Vector.GP, 0)
        return None

    def page_address_valid(self, address: int) -> bool:
        return address & 0xFFF == 0 and address >> self.model.phys_addr_bits == 0

    def _exception(self, exc: X86Exception) -> RunEnd | None:
        if exc.vector == Vector.PF:
            self.vcpu.cr2 = exc.address
        return self.vcpu.queue_exception(exc.vector, exc.error_code)

    def _emulate(self, body) -> RunEnd | None:
        """Run an instruction emulation; faults on operands become exceptions in L1."""
        try:
            body()
        except X86Exception as exc:
            return self._exception(exc)
        except EptFault as fault:
            return self.vcpu.crash(f"L1's VMX operand at guest-physical {fault.gpa:#x} is outside its memory")
        return None

    # --------------------------------------------- vmcs12 in L1 memory

    def _read_region(self, address: int) -> bytes:
        if self.l1_memory.contains(address, VMCS12_SIZE):
            return self.l1_memory.read(address, VMCS12_SIZE)
        return b"\xff" * VMCS12_SIZE

    def release_vmcs12(self) -> None:
        """nested_release_vmcs12: write the cached vmcs12 back to L1 memory; no current VMCS."""
        if self.cached_vmcs12 is not None:
            if self.shadow_vmcs is not None:
                self.copy_shadow_to_vmcs12()
                self._set_shadowing(False)
                self.sync_shadow_vmcs = False
            if self.l1_memory.contains(self.vmcs12.address, VMCS12_SIZE):
                self.l1_memory.write(self.vmcs12.address, self.vmcs12.to_bytes())
            self.cached_vmcs12 = None
        self.current_vmptr = INVALID_POINTER

    # ------------------------------------------------ VMX instructions of L1

    def handle_vmxon(self) -> RunEnd | None:
        v = self.vcpu
        if not v.vmread(F.CR4_READ_SHADOW) & CR4_VMXE:
            return v.queue_exception(Vector.UD)  # CR4.VMXE as L1 set it (KVM emulates this #UD)
        if (v.vmread(F.GUEST_SS_AR_BYTES) >> 5) & 3:
            return v.queue_exception(Vector.GP, 0)
        if self.vmxon:
            self.fail(VmxError.VMXON_IN_VMX_ROOT_OPERATION)
            return None
        cr0_shadow = v.vmread(F.CR0_READ_SHADOW)
        m = self.model.msrs
        if not vmentry._fixed_ok(cr0_shadow, m[Msr.IA32_VMX_CR0_FIXED0], m[Msr.IA32_VMX_CR0_FIXED1]):
            return v.queue_exception(Vector.GP, 0)

        def body() -> None:
            pointer = self._read_operand(8)
            if not self.page_address_valid(pointer) or self.l1_memory.read_bus(pointer, 4) != VMCS12_REVISION:
                self.fail_invalid()
                return
            self.enter_vmx_operation(pointer)
            self.succeed()

        return self._emulate(body)

    def enter_vmx_operation(self, pointer: int) -> None:
        self.vmxon, self.vmxon_ptr = True, pointer
        if self.enable_shadow_vmcs:
            self.alloc_shadow_vmcs()

    def handle_vmxoff(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end
        self.free_nested()
        self.succeed()
        return None

    def free_nested(self) -> None:
        """Leave VMX operation (VMXOFF, vCPU teardown)."""
        self.release_vmcs12()
        self.free_shadow_vmcs()
        self.vmxon, self.vmxon_ptr = False, INVALID_POINTER

    def _vmcs_pointer_operand(self, invalid: VmxError, vmxon_pointer: VmxError) -> int | None:
        """The VMCLEAR/VMPTRLD operand, or None after the VMfail its checks call for."""
        pointer = self._read_operand(8)
        if not self.page_address_valid(pointer):
            self.fail(invalid)
            return None
        if pointer == self.vmxon_ptr:
            self.fail(vmxon_pointer)
            return None
        return pointer

    def handle_vmclear(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end

        def body() -> None:
            pointer = self._vmcs_pointer_operand(VmxError.VMCLEAR_INVALID_ADDRESS, VmxError.VMCLEAR_VMXON_POINTER)
            if pointer is None:
                return
            if pointer == self.current_vmptr:
                self.release_vmcs12()
            self.l1_memory.write_bus(pointer + 8, 4, 0)  # launch state := clear (KVM writes it directly)
            self.succeed()

        return self._emulate(body)

    def handle_vmptrld(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end

        def body() -> None:
            pointer = self._vmcs_pointer_operand(VmxError.VMPTRLD_INVALID_ADDRESS, VmxError.VMPTRLD_VMXON_POINTER)
            if pointer is None:
                return
            if self.current_vmptr != pointer:
                # Memory beyond L1's RAM reads as all ones: not the vmcs12 revision (as KVM).
                if self.l1_memory.read_bus(pointer, 4) != VMCS12_REVISION:
                    self.fail(VmxError.VMPTRLD_INCORRECT_VMCS_REVISION_ID)
                    return
                self.release_vmcs12()
                self.set_current_vmptr(Vmcs12.from_bytes(pointer, self._read_region(pointer)))
            self.succeed()

        return self._emulate(body)

    def set_current_vmptr(self, vmcs12: Vmcs12) -> None:
        self.cached_vmcs12, self.current_vmptr = vmcs12, vmcs12.address
        if self.shadow_vmcs is not None:
            self._set_shadowing(True)
            self.sync_shadow_vmcs = True

    def handle_vmptrst(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end

        def body() -> None:
            self._write_operand(self.current_vmptr, 8)
            self.succeed()

        return self._emulate(body)

    def _field_operand(self) -> int:
        return self._reg((self.vcpu.vmread(F.VMX_INSTRUCTION_INFO) >> 28) & 0xF)

    def handle_vmread(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end
        if self.current_vmptr == INVALID_POINTER:
            self.fail_invalid()
            return None
        found = self.model.encodings.get(self._field_operand())
        if found is None:
            self.fail(VmxError.UNSUPPORTED_VMCS_COMPONENT)
            return None
        value = self.vmcs12.read(*found)
        info = self.vcpu.vmread(F.VMX_INSTRUCTION_INFO)

        def body() -> None:
            if info & (1 << 10):
                self._set_reg((info >> 3) & 0xF, value)
            else:
                self._write_operand(value, 8)
            self.succeed()

        return self._emulate(body)

    def handle_vmwrite(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end
        if self.current_vmptr == INVALID_POINTER:
            self.fail_invalid()
            return None
        info = self.vcpu.vmread(F.VMX_INSTRUCTION_INFO)

        def body() -> None:
            value = self._reg((info >> 3) & 0xF) if info & (1 << 10) else self._read_operand(8)
            found = self.model.encodings.get(self._field_operand())
            if found is None:
                self.fail(VmxError.UNSUPPORTED_VMCS_COMPONENT)
                return
            if found[0].type is FieldType.READ_ONLY and not self.model.vmwrite_any_field:
                self.fail(VmxError.VMWRITE_READ_ONLY_VMCS_COMPONENT)
                return
            self.vmcs12.write(*found, value)
            encoding = found[0].encoding
            if self.shadow_vmcs is not None and encoding in self.shadow_read_only:
                # L1 reads this field from the shadow VMCS without exiting: update it there too
                # (KVM's handle_vmwrite, "is_shadow_field_ro").
                self.load_vmcs(self.shadow_vmcs)
                self.vcpu.vmwrite(encoding, self.vmcs12[encoding])
                self.load_vmcs(self.vcpu.vmcs01)
            self.succeed()

        return self._emulate(body)

    def handle_invept(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end
        type_ = self._invalidation_type()
        cap = self.model.msrs[Msr.IA32_VMX_EPT_VPID_CAP]
        supported = {1: EPT_CAP_INVEPT_SINGLE_CONTEXT, 2: EPT_CAP_INVEPT_ALL_CONTEXT}

        def body() -> None:
            if type_ not in supported or not cap & supported[type_]:
                self.fail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
                return
            eptp = self._read_operand(16) & 0xFFFF_FFFF_FFFF_FFFF
            if type_ == 1 and not vmentry.eptp_valid(self.model, eptp):
                self.fail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
                return
            self.drop_ept02()
            self.succeed()

        return self._emulate(body)

    def _invalidation_type(self) -> int:
        """INVEPT/INVVPID's register operand: 64 bits in 64-bit mode (CS.L), else 32 (kvm_register_read)."""
        value = self._field_operand()
        return value if self.vcpu.vmread(F.GUEST_CS_AR_BYTES) & AR_L else value & 0xFFFF_FFFF

    def handle_invvpid(self) -> RunEnd | None:
        end = self._check_permission()
        if end is not None:
            return end
        type_ = self._invalidation_type()
        cap = self.model.msrs[Msr.IA32_VMX_EPT_VPID_CAP]

        def body() -> None:
            if type_ > 3 or not cap >> (40 + type_) & 1:  # before the descriptor is read (SDM INVVPID)
                self.fail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
                return
            state = self.l1_state()
            raw = self._memory(state).read(self._operand_address(state), 16)
            low, address = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
            if low >> 16 or (type_ != 2 and low & 0xFFFF == 0) or (type_ == 0 and not canonical(address)):
                self.fail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
                return
            self.succeed()  # L2's linear translations are not cached across exits by the engine

        return self._emulate(body)

    # ------------------------------------------------ nested VM entry

    def handle_vmlaunch(self) -> RunEnd | None:
        return self.nested_vmx_run(launch=True)

    def handle_vmresume(self) -> RunEnd | None:
        return self.nested_vmx_run(launch=False)

    def nested_vmx_run(self, launch: bool) -> RunEnd | None:
        v = self.vcpu
        end = self._check_permission()
        if end is not None:
            return end
        if self.current_vmptr == INVALID_POINTER:
            self.fail_invalid()
            return None
        if self.shadow_vmcs is not None:
            self.copy_shadow_to_vmcs12()  # vmcs12 must be whole before L0 checks or uses it
        if v.vmread(F.GUEST_INTERRUPTIBILITY_INFO) & 2:
            self.fail(VmxError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
            return None
        vmcs12 = self.vmcs12
        if launch and vmcs12.launched:
            self.fail(VmxError.VMLAUNCH_NONCLEAR_VMCS)
            return None
        if not launch and not vmcs12.launched:
            self.fail(VmxError.VMRESUME_NONLAUNCHED_VMCS)
            return None
        f = vmcs12.fields
        failure = self.entry_checks.first_failure(f, self.l1_memory, self.current_vmptr, self.l1_state())
        if failure and failure[0] == vmentry.CONTROLS:
            self.fail(VmxError.ENTRY_INVALID_CONTROL_FIELD)
            return None
        if failure and failure[0] == vmentry.HOST:
            self.fail(VmxError.ENTRY_INVALID_HOST_STATE_FIELD)
            return None
        if failure:
            return self.entry_failure(ExitReason.INVALID_GUEST_STATE, failure[1][1])
        v.skip_emulated_instruction()  # L1 resumes after VMLAUNCH/VMRESUME at its next nested exit
        self.prepare_vmcs02(launch)
        # The MSR-load area goes into L2's state, after its guest state (SDM §27.4; nested_vmx_load_msr).
        bad_msr = self._load_msrs(f[F.VM_ENTRY_MSR_LOAD_ADDR], f[F.VM_ENTRY_MSR_LOAD_COUNT])
        if bad_msr is not None:
            v.stats.nested_vmentries -= 1  # L2 never ran: the VMCS is not launched by this entry
            self.guest_mode = self.nested_run_pending = False
            if launch:
                vmcs12.launched = False
            return self.entry_failure(ExitReason.MSR_LOADING, bad_msr)
        return None

    def _store_msrs(self, address: int, count: int) -> int | None:
        """The VM-exit MSR-store area (SDM §28.4): L2's MSR values, while vmcs02 is current (KVM's
        nested_vmx_store_msr); the 1-based index of the first entry that fails, or None."""
        max_entries = self.msr_area_limit
        for i in range(count):
            entry = address + 16 * i
            index, reserved = self.l1_memory.read_bus(entry, 4), self.l1_memory.read_bus(entry + 4, 4)
            value = None
            if i < max_entries and not reserved and index >> 8 != 0x8 and index != Msr.IA32_SMM_MONITOR_CTL:
                value = self.vcpu.get_msr(index)
            if value is None:
                return i + 1
            self.l1_memory.write_bus(entry + 8, 8, value)
        return None

    def _load_msrs(self, address: int, count: int) -> int | None:
        max_entries = self.msr_area_limit
        for i in range(count):
            if i >= max_entries:
                return i + 1
            entry = address + 16 * i
            index, reserved = self.l1_memory.read_bus(entry, 4), self.l1_memory.read_bus(entry + 4, 4)
            value = self.l1_memory.read_bus(entry + 8, 8)
            if reserved or not vmentry.msr_loadable(index) or not self.vcpu.set_msr(index, value):
                return i + 1
        return None

    def entry_failure(self, reason: int, qualification: int) -> RunEnd | None:
        """nested_vmx_entry_failure: L1 sees a VM-entry failure exit of vmcs12 (SDM §27.8)."""
        vmcs12 = self.vmcs12
        vmcs12[F.VM_EXIT_REASON] = EXIT_REASON_FAILED_VMENTRY | reason
        vmcs12[F.EXIT_QUALIFICATION] = qualification
        self.vcpu.stats.nested_vmexits += 1
        self.sync_shadow_vmcs = self.shadow_vmcs is not None
        return self.load_vmcs12_host_state()

    def prepare_vmcs02(self, launch: bool) -> None:
        """Build vmcs02 from vmcs12 and L0's own needs, then make it current."""
        v, vmcs12 = self.vcpu, self.vmcs12
        f = vmcs12.fields
        secondary12 = secondary_controls(f)
        eptp12 = f[F.EPT_POINTER] if secondary12 & SecondaryCtls.ENABLE_EPT else None
        if self.ept02 is None or self.ept02_source != eptp12:
            self._build_ept02(eptp12)
        l1_cr0, l1_efer, l1_pat, l1_dr7, l1_debugctl = v.vmread_many(
            (F.CR0_READ_SHADOW, F.GUEST_IA32_EFER, F.GUEST_IA32_PAT, F.GUEST_DR7, F.GUEST_IA32_DEBUGCTL)
        )
        l2_cr0 = load_cr0(l1_cr0, f[F.GUEST_CR0])  # CD, NW, ET stay L1's (§27.3.2.1)
        self.load_vmcs(self.vmcs02)
        primary = f[F.CPU_BASED_VM_EXEC_CONTROL] & ~_PRIMARY12_DROPPED | _PRIMARY02
        secondary = secondary12 & _SECONDARY12_KEPT | _SECONDARY02
        cr0_l0, cr4_l0 = v.cr0_host_owned, v.cr4_host_owned
        values = {
            F.PIN_BASED_VM_EXEC_CONTROL: f[F.PIN_BASED_VM_EXEC_CONTROL] | _PIN02,
            F.CPU_BASED_VM_EXEC_CONTROL: v.adjust_controls_primary(primary),
            F.SECONDARY_VM_EXEC_CONTROL: secondary,
            F.VM_EXIT_CONTROLS: v.vmcs01_exit_controls,
            F.VM_ENTRY_CONTROLS: f[F.VM_ENTRY_CONTROLS] | _ENTRY02,
            F.VIRTUAL_PROCESSOR_ID: _VPID02,
            F.EPT_POINTER: self.ept02.eptp,
            F.EXCEPTION_BITMAP: f[F.EXCEPTION_BITMAP],
            F.PAGE_FAULT_ERROR_CODE_MASK: f[F.PAGE_FAULT_ERROR_CODE_MASK],
            F.PAGE_FAULT_ERROR_CODE_MATCH: f[F.PAGE_FAULT_ERROR_CODE_MATCH],
            F.CR3_TARGET_COUNT: f[F.CR3_TARGET_COUNT],
            F.CR0_GUEST_HOST_MASK: f[F.CR0_GUEST_HOST_MASK] | cr0_l0,
            F.CR4_GUEST_HOST_MASK: f[F.CR4_GUEST_HOST_MASK] | cr4_l0,
            # Bits L1 owns read as L1's shadow; bits only L0 owns read as L2 wrote them.
            F.CR0_READ_SHADOW: f[F.CR0_READ_SHADOW] & f[F.CR0_GUEST_HOST_MASK] | l2_cr0 & ~f[F.CR0_GUEST_HOST_MASK],
            F.CR4_READ_SHADOW: f[F.CR4_READ_SHADOW] & f[F.CR4_GUEST_HOST_MASK]
            | f[F.GUEST_CR4] & ~f[F.CR4_GUEST_HOST_MASK],
            F.VMCS_LINK_POINTER: INVALID_POINTER,
            F.VM_ENTRY_INTR_INFO_FIELD: f[F.VM_ENTRY_INTR_INFO_FIELD],
            F.VM_ENTRY_EXCEPTION_ERROR_CODE: f[F.VM_ENTRY_EXCEPTION_ERROR_CODE],
            F.VM_ENTRY_INSTRUCTION_LEN: f[F.VM_ENTRY_INSTRUCTION_LEN],
            F.VM_ENTRY_MSR_LOAD_COUNT: 0,
            F.VM_EXIT_MSR_LOAD_COUNT: 0,
            F.VM_EXIT_MSR_STORE_COUNT: 0,
        }
        for i in range(4):
            values[F.CR3_TARGET_VALUE0 + 2 * i] = f[F.CR3_TARGET_VALUE0 + 2 * i]
        values.update(zip(GUEST_STATE_FIELDS, _guest_state(f), strict=True))
        values[F.GUEST_CR4] = f[F.GUEST_CR4] | CR4_VMXE
        if not f[F.VM_ENTRY_CONTROLS] & EntryCtls.LOAD_EFER:  # L2 runs with L1's EFER, adjusted (KVM)
            efer = l1_efer
            ia32e = f[F.VM_ENTRY_CONTROLS] & EntryCtls.IA32E_MODE_GUEST
            values[F.GUEST_IA32_EFER] = efer | EFER_LMA | EFER_LME if ia32e else efer & ~(EFER_LMA | EFER_LME)
        if not f[F.VM_ENTRY_CONTROLS] & EntryCtls.LOAD_PAT:
            values[F.GUEST_IA32_PAT] = l1_pat
        if not f[F.VM_ENTRY_CONTROLS] & EntryCtls.LOAD_DEBUG_CONTROLS:  # L2 keeps L1's (KVM: pre_vmenter_debugctl)
            values[F.GUEST_DR7], values[F.GUEST_IA32_DEBUGCTL] = l1_dr7, l1_debugctl
        values.update(v.host_state_fields)
        # Write only what vmcs02 does not hold already (KVM's split of prepare_vmcs02 into a "rare"
        # part): the processor itself changes only the guest state, which the last nested exit read.
        known = self.vmcs02_values
        v.vmwrite_many(
            {
                field: value
                for field, value in values.items()
                if known.get(field) != value or field in _CHANGED_BY_VM_EXIT
            }
        )
        if launch:
            vmcs12.launched = True
        self.guest_mode = self.nested_run_pending = True
        v.stats.nested_vmentries += 1

    # ------------------------------------------------ EPT02

    def _build_ept02(self, eptp12: int | None) -> None:
        """EPT02 = EPT12 composed with EPT01 (identity for L1's RAM).  With EPT12 it starts empty and
        is filled on L2's EPT violations, as KVM's shadow EPT MMU does: L0 never walks EPT12 as a
        whole (a hostile L1 can alias its tables into billions of leaves)."""
        v = self.vcpu
        self.drop_ept02()
        self.ept02 = EptTables(v.memory, v.alloc_page)
        self.ept02_source = eptp12
        if eptp12 is None:  # L2 without EPT12 sees L1's guest-physical memory as is
            for gpa in range(0, v.guest_size, 1 << 21):
                self.ept02.map(gpa, gpa, min(1 << 21, v.guest_size - gpa), EPT_READ | EPT_WRITE | EPT_EXEC)

    def drop_ept02(self) -> None:
        """L1 changed or flushed EPT12: forget EPT02 and invalidate it on the processor."""
        if self.ept02 is not None:
            # Single-context INVEPT: the processor drops the translations cached for EPT02.
            self.vcpu.cpu.invept(1, self.ept02.eptp.to_bytes(8, "little") + bytes(8))
            self.vcpu.free_pages(self.ept02.pages)
        self.ept02 = None
        self.ept02_source = None

    def vmcs02_entry_failed(self, result: int | VmExit) -> RunEnd | None:
        """The processor refused vmcs02 although vmcs12 passed L0's checks: L1 sees the failure."""
        v = self.vcpu
        v.stats.nested_vmentries -= 1
        if isinstance(result, VmExit):
            return self.entry_failure(result.basic_reason, result.qualification)
        self.load_vmcs(v.vmcs01)
        self.guest_mode = False
        self.vmcs12.launched = False
        self.vmcs12[F.VM_INSTRUCTION_ERROR] = result if result > 0 else VmxError.ENTRY_INVALID_CONTROL_FIELD
        self._set_rflags(RFLAGS_ZF)  # RIP already points past VMLAUNCH/VMRESUME
        self.sync_shadow_vmcs = self.shadow_vmcs is not None
        return None

    def handle_ept_violation_l2(self) -> RunEnd | None:
        """An L2 access EPT02 does not allow: fill EPT02 from EPT12, or reflect to L1."""
        v = self.vcpu
        gpa = v.vmread(F.GUEST_PHYSICAL_ADDRESS)
        qualification = v.vmread(F.EXIT_QUALIFICATION)
        eptp12 = self.ept02_source
        if eptp12 is None:
            return v.crash(f"L2 accessed guest-physical {gpa:#x} outside L1's memory")
        try:
            m = ept_translate(self.model, self.l1_memory, eptp12, gpa)
        except EptFault as fault:
            if fault.misconfig:
                return self.nested_vmx_vmexit(ExitReason.EPT_MISCONFIG)
            return self.nested_vmx_vmexit(ExitReason.EPT_VIOLATION, qualification=qualification & ~0x38)
        if qualification & 7 & ~m.perms:
            return self.nested_vmx_vmexit(ExitReason.EPT_VIOLATION, qualification=qualification & ~0x38 | m.perms << 3)
        l1_gpa = m.hpa + (gpa & ~0xFFF) - m.gpa
        if l1_gpa >= v.guest_size:
            return v.crash(f"L1's EPT maps L2 guest-physical {gpa:#x} outside L1's memory")
        if len(self.ept02.pages) + 3 > EPT02_MAX_PAGES:
            # KVM zaps shadow pages past its limit (kvm_mmu_zap_oldest_mmu_pages); L0 zaps all of EPT02,
            # which L2 refills as it runs again: EPT02 stays bounded whatever L1's EPT12 looks like.
            v.free_pages(self.ept02.zap())
            v.cpu.invept(1, self.ept02.eptp.to_bytes(8, "little") + bytes(8))
        # The EPT02 fill: L2 resumes, L1 never knows.  A 2 MiB page where EPT12 has one and it is all in RAM.
        huge = gpa & ~0x1F_FFFF, l1_gpa & ~0x1F_FFFF
        if m.size >= 1 << 21 and huge[1] + (1 << 21) <= v.guest_size:
            self.ept02.map(huge[0], huge[1], 1 << 21, m.perms)
        else:
            self.ept02.map(gpa & ~0xFFF, l1_gpa, 0x1000, m.perms)
        v.stats.ept02_fills += 1
        return None

    # ------------------------------------------------ nested VM exit

    def handle_l2_exit(self, basic: int) -> RunEnd | None:
        """Decide who handles an exit of L2: L1 (reflect it) or L0."""
        self.nested_run_pending = False
        if basic == ExitReason.EPT_VIOLATION:
            return self.handle_ept_violation_l2()
        if basic == ExitReason.EXTERNAL_INTERRUPT:  # the host's interrupt (nested_vmx_l0_wants_exit)
            return self.vcpu.handle_as_l0(basic)
        if self.l1_wants_exit(basic):
            return self.nested_vmx_vmexit(basic)
        return self.vcpu.handle_as_l0(basic)

    def l1_wants_exit(self, basic: int) -> bool:
        """nested_vmx_l1_wants_exit: would this exit have happened with vmcs12 on real hardware?"""
        v, f = self.vcpu, self.vmcs12.fields
        primary = f[F.CPU_BASED_VM_EXEC_CONTROL]
        if basic in _ALWAYS_REFLECTED:
            return True
        if basic == ExitReason.HLT:
            return bool(primary & PrimaryCtls.HLT_EXITING)
        if basic == ExitReason.RDPMC:
            return bool(primary & PrimaryCtls.RDPMC_EXITING)
        if basic == ExitReason.IO_INSTRUCTION:
            return self._io_exit_wanted(v.vmread(F.EXIT_QUALIFICATION), primary)
        if basic in (ExitReason.RDMSR, ExitReason.WRMSR):
            return self._msr_exit_wanted(v.regs[1] & 0xFFFF_FFFF, basic == ExitReason.WRMSR, primary)
        if basic == ExitReason.CR_ACCESS:
            return self._cr_exit_wanted(v.vmread(F.EXIT_QUALIFICATION), primary)
        if basic == ExitReason.EXCEPTION_NMI:
            return self.exception_wanted(v.vmread(F.VM_EXIT_INTR_INFO) & 0xFF, v.vmread(F.VM_EXIT_INTR_ERROR_CODE))
        return True

    def exception_wanted(self, vector: int, error_code: int) -> bool:
        """vmcs12's exception bitmap, with the page-fault error-code mask and match (SDM §26.2)."""
        f = self.vmcs12.fields
        if vector == Vector.PF:
            hit = error_code & f[F.PAGE_FAULT_ERROR_CODE_MASK] == f[F.PAGE_FAULT_ERROR_CODE_MATCH]
            return bool(f[F.EXCEPTION_BITMAP] >> 14 & 1) == hit
        return bool(f[F.EXCEPTION_BITMAP] >> vector & 1)

    def cr_valid(self, cr: int, value: int) -> bool:
        """A MOV to CR0/CR4 that L0 emulates keeps the VMX fixed bits (SDM §24.8) while L1 is in VMX
        operation (KVM's nested_host_cr0_valid) and in L2, where the bits L1 owns count as vmcs12's
        guest CR value (handle_set_cr0/cr4, nested_guest_cr0_valid, nested_cr4_valid)."""
        if not self.vmxon:
            return True
        m = self.model.msrs
        fixed0, fixed1 = (
            (m[Msr.IA32_VMX_CR0_FIXED0], m[Msr.IA32_VMX_CR0_FIXED1])
            if cr == 0
            else (m[Msr.IA32_VMX_CR4_FIXED0], m[Msr.IA32_VMX_CR4_FIXED1])
        )
        if self.guest_mode:
            f = self.vmcs12.fields
            mask, guest = (
                (f[F.CR0_GUEST_HOST_MASK], f[F.GUEST_CR0]) if cr == 0 else (f[F.CR4_GUEST_HOST_MASK], f[F.GUEST_CR4])
            )
            value = value & ~mask | guest & mask
        return value & fixed0 == fixed0 and not value & ~fixed1

    def _io_exit_wanted(self, qualification: int, primary: int) -> bool:
        """nested_vmx_exit_handled_io: L1's I/O bitmaps, in L1's memory."""
        if not primary & PrimaryCtls.USE_IO_BITMAPS:
            return bool(primary & PrimaryCtls.UNCOND_IO_EXITING)
        bits = io_bitmap_bits(qualification >> 16, (qualification & 7) + 1)
        bitmaps = (self.vmcs12[F.IO_BITMAP_A], self.vmcs12[F.IO_BITMAP_B])
        return bits is None or any(self.l1_memory.read_bus(bitmaps[b] + o, 1) >> i & 1 for b, o, i in bits)

    def _msr_exit_wanted(self, index: int, write: bool, primary: int) -> bool:
        """nested_vmx_exit_handled_msr: L1's MSR bitmap, in L1's memory."""
        position = msr_bitmap_bit(index, write)
        if not primary & PrimaryCtls.USE_MSR_BITMAPS or position is None:
            return True
        return bool(self.l1_memory.read_bus(self.vmcs12[F.MSR_BITMAP] + position[0], 1) >> position[1] & 1)

    def _cr_exit_wanted(self, qualification: int, primary: int) -> bool:
        f = self.vmcs12.fields
        cr, access, gpr = qualification & 0xF, (qualification >> 4) & 3, (qualification >> 8) & 0xF
        if access == 0:  # MOV to CR
            value = self._reg(gpr)
            if cr in (0, 4):
                mask = f[F.CR0_GUEST_HOST_MASK if cr == 0 else F.CR4_GUEST_HOST_MASK]
                shadow = f[F.CR0_READ_SHADOW if cr == 0 else F.CR4_READ_SHADOW]
                return bool((value ^ shadow) & mask)
            if cr == 3:
                targets = [f[F.CR3_TARGET_VALUE0 + 2 * i] for i in range(min(f[F.CR3_TARGET_COUNT], 4))]
                return bool(primary & PrimaryCtls.CR3_LOAD_EXITING) and value not in targets
            return bool(primary & PrimaryCtls.CR8_LOAD_EXITING)
        if access == 1:
            return bool(primary & (PrimaryCtls.CR3_STORE_EXITING if cr == 3 else PrimaryCtls.CR8_STORE_EXITING))
        mask, shadow = f[F.CR0_GUEST_HOST_MASK], f[F.CR0_READ_SHADOW]
        if access == 2:  # CLTS
            return bool(mask & 8 and shadow & 8)
        source = qualification >> 16 & 0xF  # LMSW
        return bool((source ^ shadow) & mask & 0xE or (mask & 1 and source & 1 and not shadow & 1))

    def nested_vmx_vmexit(
        self,
        reason: int,
        qualification: int | None = None,
        intr_info: int | None = None,
        intr_error_code: int = 0,
    ) -> RunEnd | None:
        """Reflect the current L2 exit to L1: exit information and L2 state into vmcs12, then L1's
        host state.  The arguments replace what the processor recorded (an exit L0 synthesises)."""
        v, vmcs12 = self.vcpu, self.vmcs12
        v.requeued = None  # an interrupted event goes to L1 in the IDT-vectoring information instead
        vmcs12.fields.update(zip(self.exit_info_fields, v.vmread_many(self.exit_info_fields), strict=True))
        vmcs12[F.VM_EXIT_REASON] = reason
        if qualification is not None:
            vmcs12[F.EXIT_QUALIFICATION] = qualification
        if intr_info is not None:
            vmcs12[F.VM_EXIT_INTR_INFO], vmcs12[F.VM_EXIT_INTR_ERROR_CODE] = intr_info, intr_error_code
        l2 = self.sync_vmcs02_to_vmcs12()
        bad_store = self._store_msrs(vmcs12[F.VM_EXIT_MSR_STORE_ADDR], vmcs12[F.VM_EXIT_MSR_STORE_COUNT])
        v.stats.nested_vmexits += 1
        self.sync_shadow_vmcs = self.shadow_vmcs is not None
        if v.kvm.trace:
            v.kvm.trace(
                f"kvm_nested_vmexit: vcpu {v.vcpu_id} reason {exit_reason_name(reason & 0xFFFF)} "
                f"rip {vmcs12[F.GUEST_RIP]:#x} info1 {vmcs12[F.EXIT_QUALIFICATION]:#x}"
            )
        end = self.load_vmcs12_host_state(l2)
        if bad_store is not None:
            return self.vmx_abort(VMX_ABORT_SAVE_GUEST_MSR_FAIL, f"storing MSR-store entry {bad_store} failed")
        return end

    def vmx_abort(self, indicator: int, why: str) -> RunEnd:
        """A VMX abort (SDM §28.7): the indicator goes into the vmcs12 region and L1's processor shuts
        down (KVM's nested_vmx_abort: a triple fault of L1)."""
        self.vmcs12.abort = indicator
        self.l1_memory.write_bus(self.current_vmptr + ABORT_OFFSET, 4, indicator)
        return self.vcpu.crash(f"guest crashed: VMX abort {indicator} ({why})")

    def sync_vmcs02_to_vmcs12(self) -> dict[int, int]:
        """L2's state from vmcs02 into vmcs12, as the VM exit saves it (SDM §28.3); returns L2's
        guest state as vmcs02 holds it."""
        v, vmcs12 = self.vcpu, self.vmcs12
        f = vmcs12.fields
        *values, cr0_shadow, cr4_shadow = v.vmread_many(GUEST_STATE_AND_READ_SHADOWS)
        l2 = dict(zip(GUEST_STATE_FIELDS, values, strict=True))
        self.vmcs02_values.update(l2)
        exit_ctls = f[F.VM_EXIT_CONTROLS]
        unsaved = {
            field: f[field]
            for control, saved in SAVED_UNDER_EXIT_CONTROL
            if not exit_ctls & control
            for field, _ in saved
        }
        f.update(l2)
        f.update(unsaved)  # as L1 wrote them
        for cr, mask_f, shadow in (
            (F.GUEST_CR0, F.CR0_GUEST_HOST_MASK, cr0_shadow),
            (F.GUEST_CR4, F.CR4_GUEST_HOST_MASK, cr4_shadow),
        ):
            l0_mask = v.cr0_host_owned if cr == F.GUEST_CR0 else v.cr4_host_owned
            mask12 = vmcs12[mask_f]
            hidden = l0_mask & ~mask12  # bits only L0 intercepts: L2's value is in vmcs02's read shadow
            f[cr] = f[cr] & ~hidden | shadow & hidden
        if l2[F.GUEST_IA32_EFER] & EFER_LMA:
            f[F.VM_ENTRY_CONTROLS] |= EntryCtls.IA32E_MODE_GUEST
        else:
            f[F.VM_ENTRY_CONTROLS] &= ~EntryCtls.IA32E_MODE_GUEST
        f[F.VM_ENTRY_INTR_INFO_FIELD] &= ~INTR_INFO_VALID
        return l2

    def load_vmcs12_host_state(self, l2: dict[int, int] | None = None) -> RunEnd | None:
        """Switch back to vmcs01 and give L1 the host state of vmcs12 (SDM §28.5, KVM's function).
        `l2`: L2's last guest state (None: L2 did not run), whose EFER, PAT and CR0.CD/NW/ET the exit
        keeps (§28.5.1)."""
        v, f = self.vcpu, self.vmcs12.fields
        if v.cpu.current_vmcs != v.vmcs01:
            self.load_vmcs(v.vmcs01)
        self.guest_mode = False
        exit_ctls = f[F.VM_EXIT_CONTROLS]
        host64 = bool(exit_ctls & ExitCtls.HOST_ADDR_SPACE_SIZE)
        # CR0.ET/CD/NW and reserved bits stay as they were (§28.5.1; KVM loads HOST_CR0 whole).
        cr0 = load_cr0(f[F.GUEST_CR0] if l2 else v.vmread(F.CR0_READ_SHADOW), f[F.HOST_CR0])
        values = {
            F.GUEST_CR0: cr0 | v.cr0_fixed,
            F.CR0_READ_SHADOW: cr0,
            F.GUEST_CR4: f[F.HOST_CR4] | CR4_VMXE,
            F.CR4_READ_SHADOW: f[F.HOST_CR4],
            F.GUEST_CR3: f[F.HOST_CR3],
            F.GUEST_RIP: f[F.HOST_RIP],
            F.GUEST_RSP: f[F.HOST_RSP],
            F.GUEST_RFLAGS: 0x2,
            F.GUEST_DR7: 0x400,
            F.GUEST_IA32_DEBUGCTL: 0,
            F.GUEST_SYSENTER_CS: f[F.HOST_IA32_SYSENTER_CS],
            F.GUEST_SYSENTER_ESP: f[F.HOST_IA32_SYSENTER_ESP],
            F.GUEST_SYSENTER_EIP: f[F.HOST_IA32_SYSENTER_EIP],
            F.GUEST_GDTR_BASE: f[F.HOST_GDTR_BASE],
            F.GUEST_GDTR_LIMIT: 0xFFFF,
            F.GUEST_IDTR_BASE: f[F.HOST_IDTR_BASE],
            F.GUEST_IDTR_LIMIT: 0xFFFF,
            F.GUEST_INTERRUPTIBILITY_INFO: 0,
            F.GUEST_ACTIVITY_STATE: 0,
        }
        if exit_ctls & ExitCtls.LOAD_EFER:
            values[F.GUEST_IA32_EFER] = f[F.HOST_IA32_EFER]
        else:  # only LMA and LME change (§28.5.1)
            efer = l2[F.GUEST_IA32_EFER] if l2 else v.vmread(F.GUEST_IA32_EFER)
            values[F.GUEST_IA32_EFER] = efer | EFER_LMA | EFER_LME if host64 else efer & ~(EFER_LMA | EFER_LME)
        if exit_ctls & ExitCtls.LOAD_PAT:
            values[F.GUEST_IA32_PAT] = f[F.HOST_IA32_PAT]
        elif l2:
            values[F.GUEST_IA32_PAT] = l2[F.GUEST_IA32_PAT]
        for fields, segment in zip(GUEST_SEGMENT_FIELDS, host_segments(f), strict=True):
            values.update(zip(fields, segment, strict=True))
        v.vmwrite_many(values)
        bad_msr = self._load_msrs(f[F.VM_EXIT_MSR_LOAD_ADDR], f[F.VM_EXIT_MSR_LOAD_COUNT])
        if bad_msr is not None:
            return self.vmx_abort(VMX_ABORT_LOAD_HOST_MSR_FAIL, f"loading VM-exit MSR-load entry {bad_msr} failed")
        return None
