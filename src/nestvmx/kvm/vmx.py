"""L0 as a single-level hypervisor: KVM's vmx.c for an ordinary guest.

Each vCPU runs its guest (L1) on its own vmcs01.  L0 touches vmcs01 only with the processor model's
VMX instructions (VMPTRLD/VMREAD/VMWRITE/VMLAUNCH/VMRESUME) and learns about every exit only
from the VM-exit information fields, as KVM does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nestvmx.arch.controls import (
    INSTRUCTION_EVENT_TYPES,
    INTR_INFO_DELIVER_ERROR_CODE,
    INTR_INFO_VALID,
    ControlKind,
    EntryCtls,
    ExitCtls,
    PinBased,
    PrimaryCtls,
    SecondaryCtls,
)
from nestvmx.arch.exit_reasons import ExitReason, exit_reason_name
from nestvmx.arch.fields import FIELD_BY_ENCODING
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import FEATURE_CONTROL_LOCKED, FEATURE_CONTROL_VMXON_OUTSIDE_SMX, Msr
from nestvmx.engine.delivery import Event, TripleFault, escalate
from nestvmx.engine.engine import Engine, EngineError
from nestvmx.hw.exceptions import ERROR_CODE_VECTORS, Vector
from nestvmx.hw.processor import VM_SUCCEED, LogicalProcessor
from nestvmx.hw.state import AR_L, CR0_CD, CR0_NE, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, CR4_VMXE, CpuState
from nestvmx.hw.vmexit import GUEST_SEGMENT_FIELDS, VmExit
from nestvmx.kvm.cpuid import CR4_GUEST_VALID, cpuid
from nestvmx.kvm.nested import NestedVmx
from nestvmx.kvm.stats import RunStats

if TYPE_CHECKING:
    from nestvmx.kvm.vm import Kvm

CONSOLE_PORT = 0xE9
EXIT_PORT = 0xF4
KVM_ENOSYS = 1000
_HOST_RIP = 0xFFFF_FFFF_8100_0000  # where L0's VM-exit handler would be
# IA32_DEBUGCTL bits KVM drops on a write instead of #GP: LBR and BTF (vmx_set_msr, 6.x).
_DEBUGCTL_IGNORED = 0b11
# Bits L0 intercepts in CR0/CR4 writes: its own needs and every bit a write of which is #GP(0).
_CR0_HOST_OWNED = CR0_PE | CR0_NE | CR0_PG | CR0_NW | CR0_CD | 0xFFFF_FFFF_0000_0000
_CR4_HOST_OWNED = CR4_VMXE | CR4_PAE | ~CR4_GUEST_VALID & 0xFFFF_FFFF_FFFF_FFFF
_CR0_FIXED = CR0_PE | CR0_NE | CR0_PG  # what the processor requires of the real CR0 of a guest


@dataclass(frozen=True)
class RunEnd:
    outcome: str  # "exit" | "crash" | "limit"
    status: int
    message: str = ""
    halted: bool = False  # the vCPU halted with nothing to wake it: the end only if no other vCPU runs


class L0Bug(Exception):
    """L0 itself did something the processor refused: a bug in nestvmx, never the guest's fault."""


class VmxVcpu:
    """One vCPU of a VM, with its vmcs01."""

    cr0_host_owned = _CR0_HOST_OWNED
    cr4_host_owned = _CR4_HOST_OWNED
    cr0_fixed = _CR0_FIXED

    def __init__(self, kvm: Kvm, vcpu_id: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id  # also its initial APIC ID
        # The VM's, for short (KVM's vcpu->kvm->...).
        self.model, self.memory, self.guest_size, self.eptp = kvm.model, kvm.memory, kvm.guest_size, kvm.eptp
        self.alloc_page, self.free_pages = kvm.alloc_page, kvm.free_pages
        self.enable_shadow_vmcs = kvm.enable_shadow_vmcs
        host = CpuState()
        host.cr4 |= CR4_VMXE
        self.cpu = LogicalProcessor(self.model, self.memory, host)
        self.engine = Engine(self.cpu)
        self.stats = RunStats()
        self.regs = [0] * 16  # guest GPRs (KVM's vcpu->arch.regs), RSP excepted
        self.cr2 = 0
        self.halted = False  # halted with nothing to wake it (KVM_MP_STATE_HALTED)
        # (interruption info, error code, instruction length) of an event whose delivery the last
        # exit interrupted, to be delivered again at the next entry (KVM's vmx_complete_interrupts).
        self.requeued: tuple[int, int, int] | None = None
        self.vmxon_region = self.alloc_page()
        self.vmcs01 = self.alloc_page()
        self.launched: set[int] = set()  # processor VMCSs (vmcs01, vmcs02) entered since their VMCLEAR
        self.nested = NestedVmx(self)
        self.stats.shadow_enabled = self.enable_shadow_vmcs
        self.vmread_bitmap, self.vmwrite_bitmap = (
            self.nested.init_vmcs_shadow_fields() if self.enable_shadow_vmcs else (None, None)
        )

    # ------------------------------------------------------------ set-up

    def vmwrite(self, field: int, value: int) -> None:
        self.vmwrite_many({field: value})

    def vmread(self, field: int) -> int:
        status, value = self.cpu.vmread(field)
        if status != VM_SUCCEED:
            raise L0Bug(f"VMREAD {FIELD_BY_ENCODING[field].name} failed")
        return value

    def vmread_many(self, fields: Sequence[int]) -> list[int]:
        """VMREADs of `fields`, back to back (the processor's batched form)."""
        status, values = self.cpu.vmread_many(fields)
        if status != VM_SUCCEED:
            raise L0Bug(f"VMREAD {FIELD_BY_ENCODING[fields[len(values)]].name} failed")
        return values

    def vmwrite_many(self, values: dict[int, int]) -> None:
        """VMWRITEs of `values` (field: value), back to back."""
        if self.cpu.vmwrite_many(values.items()) != VM_SUCCEED:
            raise L0Bug(f"VMWRITE failed, one of {[FIELD_BY_ENCODING[f].name for f in values]}")
        if self.cpu.current_vmcs == self.nested.vmcs02:
            self.nested.vmcs02_values.update(values)

    def adjust_controls_primary(self, wanted: int) -> int:
        return self._controls(ControlKind.PRIMARY, wanted)

    def _controls(self, kind: ControlKind, wanted: int) -> int:
        """adjust_vmx_controls: the wanted bits the processor allows, plus the must-be-one bits."""
        msr = self.model.control_msr(kind)
        return (wanted & (msr >> 32)) | (msr & 0xFFFF_FFFF)

    def setup(self, guest: CpuState) -> None:
        """VMXON and vmcs01 (KVM's hardware_enable, vmx_vcpu_create and init_vmcs)."""
        cpu, m = self.cpu, self.model
        self.memory.write_u(self.vmxon_region, 4, m.revision_id)
        self.memory.write_u(self.vmcs01, 4, m.revision_id)
        if cpu.vmxon(self.vmxon_region) != VM_SUCCEED or cpu.vmclear(self.vmcs01) or cpu.vmptrld(self.vmcs01):
            raise L0Bug("cannot enter VMX operation on the processor model")
        pin = self._controls(ControlKind.PIN, PinBased.EXT_INTR_EXITING | PinBased.NMI_EXITING)
        primary = self._controls(
            ControlKind.PRIMARY,
            PrimaryCtls.HLT_EXITING
            | PrimaryCtls.UNCOND_IO_EXITING
            | PrimaryCtls.MWAIT_EXITING
            | PrimaryCtls.MONITOR_EXITING
            | PrimaryCtls.RDPMC_EXITING
            | PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS,
        )
        secondary = self._controls(
            ControlKind.SECONDARY,
            SecondaryCtls.ENABLE_EPT
            | SecondaryCtls.ENABLE_VPID
            | SecondaryCtls.ENABLE_RDTSCP
            | SecondaryCtls.ENABLE_INVPCID,
        )
        exit_ctls = self._controls(
            ControlKind.EXIT,
            ExitCtls.HOST_ADDR_SPACE_SIZE
            | ExitCtls.SAVE_DEBUG_CONTROLS  # DR7 and DEBUGCTL travel with the guest, as in KVM's vmcs01
            | ExitCtls.SAVE_EFER
            | ExitCtls.LOAD_EFER
            | ExitCtls.SAVE_PAT
            | ExitCtls.LOAD_PAT
            | ExitCtls.ACK_INTR_ON_EXIT,
        )
        entry_ctls = self._controls(
            ControlKind.ENTRY,
            EntryCtls.IA32E_MODE_GUEST | EntryCtls.LOAD_EFER | EntryCtls.LOAD_PAT | EntryCtls.LOAD_DEBUG_CONTROLS,
        )
        host = cpu.state
        self.vmcs01_exit_controls = exit_ctls
        self.host_state_fields = {
            F.HOST_CR0: host.cr0,
            F.HOST_CR3: self.eptp & ~0xFFF,
            F.HOST_CR4: host.cr4,
            F.HOST_CS_SELECTOR: 0x08,
            F.HOST_SS_SELECTOR: 0x10,
            F.HOST_DS_SELECTOR: 0x10,
            F.HOST_ES_SELECTOR: 0x10,
            F.HOST_TR_SELECTOR: 0x18,
            F.HOST_IA32_EFER: host.efer,
            F.HOST_IA32_PAT: host.pat,
            F.HOST_RIP: _HOST_RIP,
            F.HOST_RSP: 0,
        }
        values = {
            F.PIN_BASED_VM_EXEC_CONTROL: pin,
            F.CPU_BASED_VM_EXEC_CONTROL: primary,
            F.SECONDARY_VM_EXEC_CONTROL: secondary,
            F.VM_EXIT_CONTROLS: exit_ctls,
            F.VM_ENTRY_CONTROLS: entry_ctls,
            F.VIRTUAL_PROCESSOR_ID: 1,
            F.EPT_POINTER: self.eptp,
            # Every exception exits until L1 has an IDT (see handle_exception_nmi).
            F.EXCEPTION_BITMAP: 0xFFFF_FFFF,
            F.CR0_GUEST_HOST_MASK: _CR0_HOST_OWNED,
            F.CR4_GUEST_HOST_MASK: _CR4_HOST_OWNED,
            F.CR0_READ_SHADOW: guest.cr0,
            F.CR4_READ_SHADOW: guest.cr4,
            F.VMCS_LINK_POINTER: 0xFFFF_FFFF_FFFF_FFFF,
            **self.host_state_fields,
            F.GUEST_CR0: guest.cr0,
            F.GUEST_CR3: guest.cr3,
            F.GUEST_CR4: guest.cr4 | CR4_VMXE,
            F.GUEST_DR7: guest.dr7,
            F.GUEST_RSP: guest.rsp,
            F.GUEST_RIP: guest.rip,
            F.GUEST_RFLAGS: guest.rflags,
            F.GUEST_GDTR_BASE: guest.gdtr_base,
            F.GUEST_GDTR_LIMIT: guest.gdtr_limit,
            F.GUEST_IDTR_BASE: guest.idtr_base,
            F.GUEST_IDTR_LIMIT: guest.idtr_limit,
            F.GUEST_IA32_EFER: guest.efer,
            F.GUEST_IA32_PAT: guest.pat,
            F.GUEST_ACTIVITY_STATE: 0,
            F.GUEST_INTERRUPTIBILITY_INFO: 0,
        }
        for seg, (sel, base, limit, ar) in zip(guest.segs, GUEST_SEGMENT_FIELDS, strict=True):
            values.update({sel: seg.selector, base: seg.base, limit: seg.limit, ar: seg.ar})
        if self.enable_shadow_vmcs:
            values[F.VMREAD_BITMAP], values[F.VMWRITE_BITMAP] = self.vmread_bitmap, self.vmwrite_bitmap
        for field, value in values.items():
            self.vmwrite(field, value)
        self.regs = list(guest.gpr)
        self.guest_msrs = {Msr.IA32_FEATURE_CONTROL: FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_OUTSIDE_SMX}

    # ------------------------------------------------------------ run loop

    def run_once(self, timer: int | None = None) -> RunEnd | None:
        """One round of vcpu_run: enter the guest and handle its next exit.  `timer`: the host's
        timer interrupt comes after that many guest instructions (the scheduler's time slice)."""
        if not self.nested.guest_mode:
            self.nested.before_l1_entry()
        # Guest GPRs and CR2 are not in the VMCS: L0 loads them before VM entry, as KVM's vmenter does.
        self.cpu.state.gpr[:] = self.regs
        self.cpu.state.cr2 = self.cr2
        current = self.cpu.current_vmcs
        result = self.cpu.vmresume() if current in self.launched else self.cpu.vmlaunch()
        if result is not None:
            if not self.nested.guest_mode:
                if isinstance(result, VmExit):  # L1's guest state (e.g. a hand-edited snapshot): KVM_EXIT_FAIL_ENTRY
                    return RunEnd("crash", 0, f"VM entry failed: {self.cpu.last_entry_check}")
                raise L0Bug(f"VM entry of vmcs01 failed: {result} ({self.cpu.last_entry_check})")
            return self.nested.vmcs02_entry_failed(result)  # a vmcs12 the processor refuses after all
        self.launched.add(current)
        try:
            self.engine.run(timer)
        except EngineError as err:
            return RunEnd("crash", 0, str(err))
        self.regs = list(self.cpu.state.gpr)
        self.cr2 = self.cpu.state.cr2
        return self.handle_exit()

    def handle_exit(self) -> RunEnd | None:
        reason, vectoring = self.vmread_many((F.VM_EXIT_REASON, F.IDT_VECTORING_INFO_FIELD))
        basic = reason & 0xFFFF
        from_l2 = self.nested.guest_mode
        self.stats.count_exit(basic, from_l2)
        if self.kvm.trace:
            self.kvm.trace(
                f"kvm_exit: {'L2' if from_l2 else 'L1'} vcpu 0 reason {exit_reason_name(basic)} "
                f"rip {self.vmread(F.GUEST_RIP):#x} "
                f"info1 {self.vmread(F.EXIT_QUALIFICATION):#x} info2 0x0 "
                f"intr_info {self.vmread(F.VM_EXIT_INTR_INFO):#x} "
                f"error_code {self.vmread(F.VM_EXIT_INTR_ERROR_CODE):#x}"
            )
        if reason & (1 << 31):
            raise L0Bug(f"VM-entry failure of vmcs01: {exit_reason_name(basic)} ({self.cpu.last_entry_check})")
        self.complete_interrupts(vectoring)
        end = self.nested.handle_l2_exit(basic) if from_l2 else self.handle_as_l0(basic)
        if end is None and self.requeued is not None:
            self.inject_event(*self.requeued)
            self.requeued = None
        return end

    def complete_interrupts(self, vectoring: int) -> None:
        """KVM's vmx_complete_interrupts: an exit during event delivery (SDM §28.2.3) leaves the
        event to deliver again, unless the handler reflects the exit to L1 or replaces the event."""
        self.requeued = None
        if vectoring & INTR_INFO_VALID:
            error_code = self.vmread(F.IDT_VECTORING_ERROR_CODE) if vectoring & INTR_INFO_DELIVER_ERROR_CODE else 0
            software = (vectoring >> 8) & 7 in INSTRUCTION_EVENT_TYPES
            length = self.vmread(F.VM_EXIT_INSTRUCTION_LEN) if software else 0
            self.requeued = (vectoring, error_code, length)

    def inject_event(self, info: int, error_code: int, length: int) -> None:
        """Event injection at the next VM entry (SDM §27.6): interruption info (bit 12, undefined in
        exit information, cleared), error code, length."""
        values = {F.VM_ENTRY_INTR_INFO_FIELD: info & ~(1 << 12)}
        if info & INTR_INFO_DELIVER_ERROR_CODE:
            values[F.VM_ENTRY_EXCEPTION_ERROR_CODE] = error_code
        if (info >> 8) & 7 in INSTRUCTION_EVENT_TYPES:
            values[F.VM_ENTRY_INSTRUCTION_LEN] = length
        self.vmwrite_many(values)

    def handle_as_l0(self, basic: int) -> RunEnd | None:
        """L0's own handling of an exit, from L1 or (when L1 does not want it) from L2."""
        return _EXIT_HANDLERS.get(basic, VmxVcpu.handle_unexpected)(self)

    # ------------------------------------------------------------ helpers

    def skip_emulated_instruction(self) -> None:
        rip, length, interruptibility = self.vmread_many(
            (F.GUEST_RIP, F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_INTERRUPTIBILITY_INFO)
        )
        self.vmwrite(F.GUEST_RIP, rip + length)
        if interruptibility & 3:
            self.vmwrite(F.GUEST_INTERRUPTIBILITY_INFO, interruptibility & ~3)

    def queue_exception(self, vector: int, error_code: int | None = None) -> RunEnd | None:
        """Inject a hardware exception at the next VM entry (KVM's kvm_queue_exception); in L2, L1
        may intercept it.  The platform has no IDT at entry: an exception before L1 loads one ends
        the run (L2's go through L2's IDT, or to L1)."""
        previous, self.requeued = self.requeued, None
        event = Event(vector, error_code)
        if previous is not None and not self.nested.guest_mode:
            # The exit interrupted the delivery of `previous` (KVM's kvm_multiple_exception).
            try:
                event = escalate(Event(previous[0] & 0xFF, kind=previous[0] >> 8 & 7), event)
            except TripleFault:
                return self.handle_triple_fault()
            vector, error_code = event.vector, event.error_code
        info = event.info
        if self.nested.guest_mode:
            if self.nested.exception_wanted(vector, error_code or 0):  # KVM's nested_vmx_check_exception
                return self.nested.nested_vmx_vmexit(
                    ExitReason.EXCEPTION_NMI, qualification=0, intr_info=info, intr_error_code=error_code or 0
                )
        elif self.vmread(F.GUEST_IDTR_LIMIT) == 0:
            name = Vector(vector).name if vector in Vector._value2member_map_ else str(vector)
            return self.crash(f"guest crashed: #{name} (vector {vector})")
        self.inject_event(info, error_code or 0, 0)
        return None

    def crash(self, what: str) -> RunEnd:
        return RunEnd("crash", 0, f"{what} at RIP {self.vmread(F.GUEST_RIP):#x}")

    # ------------------------------------------------------------ exit handlers

    def handle_exception_nmi(self) -> RunEnd | None:
        info = self.vmread(F.VM_EXIT_INTR_INFO)
        vector = info & 0xFF
        error_code = self.vmread(F.VM_EXIT_INTR_ERROR_CODE) if info & INTR_INFO_DELIVER_ERROR_CODE else None
        if self.vmread(F.GUEST_IDTR_LIMIT) == 0:
            return self.queue_exception(vector)  # no IDT yet: ends the run as a crash
        # L1 has an IDT: give it the exception, as the processor would have without interception.
        if vector == Vector.PF:
            self.cr2 = self.vmread(F.EXIT_QUALIFICATION)
        kind = (info >> 8) & 7
        if kind in INSTRUCTION_EVENT_TYPES:  # INT3, INT1: delivered again past the instruction
            self.inject_event(info, 0, self.vmread(F.VM_EXIT_INSTRUCTION_LEN))
            return None
        return self.queue_exception(vector, error_code if vector in ERROR_CODE_VECTORS else None)

    def handle_triple_fault(self) -> RunEnd:
        return self.crash("guest crashed: triple fault")

    def handle_cpuid(self) -> RunEnd | None:
        r = self.regs
        r[0], r[3], r[1], r[2] = cpuid(
            self.model, r[0] & 0xFFFF_FFFF, r[1] & 0xFFFF_FFFF, self.vcpu_id, len(self.kvm.vcpus)
        )
        self.skip_emulated_instruction()
        return None

    def handle_io(self) -> RunEnd | None:
        qualification = self.vmread(F.EXIT_QUALIFICATION)
        port, size, is_in, string = (
            qualification >> 16,
            (qualification & 7) + 1,
            qualification >> 3 & 1,
            qualification >> 4 & 1,
        )
        if string:
            return self.crash(f"string I/O on port {port:#x} is not supported by this platform")
        mask = (1 << (8 * size)) - 1
        if is_in:
            self.regs[0] = self.regs[0] & ~mask | mask  # no device: all ones
        elif port == CONSOLE_PORT:
            self.kvm.console(bytes([self.regs[0] & 0xFF]))
        elif port == EXIT_PORT:
            return RunEnd("exit", self.regs[0] & 0xFF)
        self.skip_emulated_instruction()
        return None

    def handle_rdmsr(self) -> RunEnd | None:
        index = self.regs[1] & 0xFFFF_FFFF
        value = self.get_msr(index)
        if value is None:
            return self.queue_exception(Vector.GP, 0)
        self.regs[0], self.regs[2] = value & 0xFFFF_FFFF, value >> 32
        self.skip_emulated_instruction()
        return None

    def handle_wrmsr(self) -> RunEnd | None:
        index = self.regs[1] & 0xFFFF_FFFF
        value = (self.regs[2] & 0xFFFF_FFFF) << 32 | (self.regs[0] & 0xFFFF_FFFF)
        if not self.set_msr(index, value):
            return self.queue_exception(Vector.GP, 0)
        self.skip_emulated_instruction()
        return None

    _VMCS_MSRS = {
        Msr.IA32_EFER: F.GUEST_IA32_EFER,
        Msr.IA32_PAT: F.GUEST_IA32_PAT,
        Msr.IA32_FS_BASE: F.GUEST_FS_BASE,
        Msr.IA32_GS_BASE: F.GUEST_GS_BASE,
        Msr.IA32_SYSENTER_CS: F.GUEST_SYSENTER_CS,
        Msr.IA32_SYSENTER_ESP: F.GUEST_SYSENTER_ESP,
        Msr.IA32_SYSENTER_EIP: F.GUEST_SYSENTER_EIP,
        Msr.IA32_DEBUGCTL: F.GUEST_IA32_DEBUGCTL,  # KVM's vmx_get_msr/vmx_set_msr (MSR_IA32_DEBUGCTLMSR)
    }
    # MSRs kept by L0 for the guest with their reset values (KVM's kvm_get/set_msr_common subset).
    _SOFTWARE_MSRS = {
        Msr.IA32_KERNEL_GS_BASE: 0,
        0xC0000081: 0,
        0xC0000082: 0,
        0xC0000083: 0,
        0xC0000084: 0,
        Msr.IA32_TSC_AUX: 0,
        0x1A0: 1,
    }  # STAR, LSTAR, CSTAR, FMASK, TSC_AUX, MISC_ENABLE

    def get_msr(self, index: int) -> int | None:
        if index == Msr.IA32_TIME_STAMP_COUNTER:
            return self.engine.tsc()
        if index in self.guest_msrs:
            return self.guest_msrs[index]
        if Msr.IA32_VMX_BASIC <= index <= Msr.IA32_VMX_VMFUNC:
            return self.nested.model.msrs.get(index)  # what L0 offers L1 (KVM: vmx_get_vmx_msr)
        if index in self._VMCS_MSRS:
            return self.vmread(self._VMCS_MSRS[index])
        return self._SOFTWARE_MSRS.get(index)

    def set_msr(self, index: int, value: int) -> bool:
        if index == Msr.IA32_TIME_STAMP_COUNTER:  # moves the counter (KVM adjusts the TSC offset)
            self.engine.tsc_base += value - self.engine.tsc()
            return True
        if index == Msr.IA32_EFER:
            if value & ~0xD01:  # SCE, LME, LMA, NXE
                return False
            self.vmwrite(F.GUEST_IA32_EFER, value)
            return True
        if index == Msr.IA32_DEBUGCTL:  # no LBR or other debug features are offered (vmx_get_supported_debugctl)
            if value & ~_DEBUGCTL_IGNORED:
                return False
            self.vmwrite(F.GUEST_IA32_DEBUGCTL, 0)
            return True
        if index in self._VMCS_MSRS:
            self.vmwrite(self._VMCS_MSRS[index], value)
            return True
        if index in self._SOFTWARE_MSRS:
            self.guest_msrs[index] = value
            return True
        return False  # read-only (feature control is locked, VMX capabilities) or unknown: #GP

    def handle_cr(self) -> RunEnd | None:
        qualification = self.vmread(F.EXIT_QUALIFICATION)
        cr, access, gpr = qualification & 0xF, (qualification >> 4) & 3, (qualification >> 8) & 0xF
        if access != 0 or cr not in (0, 4):
            return self.crash(f"unexpected control-register access (qualification {qualification:#x})")
        value = self.regs[gpr] if gpr != 4 else self.vmread(F.GUEST_RSP)
        if not self.nested.cr_valid(cr, value):
            return self.queue_exception(Vector.GP, 0)  # a VMX fixed bit (L1 in VMX operation, or L2)
        if cr == 0:
            # MOV to CR0 (SDM Vol. 2B): reserved bits, PG without PE, NW without CD, and clearing PG
            # in 64-bit mode are #GP(0).  NE may be cleared outside VMX operation: the real CR0 keeps it.
            if value >> 32 or (value & CR0_PG and not value & CR0_PE) or (value & CR0_NW and not value & CR0_CD):
                return self.queue_exception(Vector.GP, 0)
            if not value & CR0_PG:
                if self.vmread(F.GUEST_CS_AR_BYTES) & AR_L:
                    return self.queue_exception(Vector.GP, 0)
                return self.crash(f"guest left IA-32e mode (CR0 {value:#x}), which this platform does not model")
            self.vmwrite(F.CR0_READ_SHADOW, value)
            real = value & ~(CR0_NW | CR0_CD) | self.vmread(F.GUEST_CR0) & (CR0_NW | CR0_CD)
            self.vmwrite(F.GUEST_CR0, real | CR0_NE)
        else:
            if not value & CR4_PAE or value & ~CR4_GUEST_VALID:  # clearing PAE in IA-32e mode, reserved bits
                return self.queue_exception(Vector.GP, 0)
            self.vmwrite(F.CR4_READ_SHADOW, value)  # CR4.VMXE as L1 sees it
            self.vmwrite(F.GUEST_CR4, value | CR4_VMXE)
        self.skip_emulated_instruction()
        return None

    def handle_hlt(self) -> RunEnd:
        """The platform has no interrupt source: a halted vCPU never wakes (other vCPUs go on)."""
        end = self.crash("guest halted (HLT) and nothing can wake it")
        return RunEnd(end.outcome, end.status, end.message, halted=True)

    def handle_external_interrupt(self) -> None:
        """The host's own interrupt (its timer): the host handled it; the guest resumes when
        the scheduler runs this vCPU again."""
        return None

    def handle_rdpmc(self) -> RunEnd | None:
        """No virtual PMU (CPUID leaf 0AH reports none): every counter index is #GP(0), as KVM's
        kvm_emulate_rdpmc without a vPMU."""
        return self.queue_exception(Vector.GP, 0)

    def handle_vmcall(self) -> RunEnd | None:
        """KVM's hypercall ABI: no hypercall is implemented, so RAX = -KVM_ENOSYS."""
        self.regs[0] = -KVM_ENOSYS & 0xFFFF_FFFF_FFFF_FFFF
        self.skip_emulated_instruction()
        return None

    def handle_ept_violation(self) -> RunEnd:
        gpa = self.vmread(F.GUEST_PHYSICAL_ADDRESS)
        if gpa >= self.guest_size:
            return self.crash(f"guest accessed guest-physical {gpa:#x} outside its {self.guest_size >> 20} MiB")
        raise L0Bug(f"EPT violation at guest-physical {gpa:#x} inside guest memory")

    def handle_unexpected(self) -> RunEnd:
        return self.crash(f"unexpected VM exit {exit_reason_name(self.vmread(F.VM_EXIT_REASON) & 0xFFFF)}")


_EXIT_HANDLERS: dict[int, Callable[[VmxVcpu], RunEnd | None]] = {
    ExitReason.EXCEPTION_NMI: VmxVcpu.handle_exception_nmi,
    ExitReason.EXTERNAL_INTERRUPT: VmxVcpu.handle_external_interrupt,
    ExitReason.TRIPLE_FAULT: VmxVcpu.handle_triple_fault,
    ExitReason.CPUID: VmxVcpu.handle_cpuid,
    ExitReason.IO_INSTRUCTION: VmxVcpu.handle_io,
    ExitReason.RDMSR: VmxVcpu.handle_rdmsr,
    ExitReason.WRMSR: VmxVcpu.handle_wrmsr,
    ExitReason.CR_ACCESS: VmxVcpu.handle_cr,
    ExitReason.HLT: VmxVcpu.handle_hlt,
    ExitReason.RDPMC: VmxVcpu.handle_rdpmc,
    ExitReason.VMCALL: VmxVcpu.handle_vmcall,
    ExitReason.EPT_VIOLATION: VmxVcpu.handle_ept_violation,
    ExitReason.VMXON: lambda v: v.nested.handle_vmxon(),
    ExitReason.VMXOFF: lambda v: v.nested.handle_vmxoff(),
    ExitReason.VMCLEAR: lambda v: v.nested.handle_vmclear(),
    ExitReason.VMPTRLD: lambda v: v.nested.handle_vmptrld(),
    ExitReason.VMPTRST: lambda v: v.nested.handle_vmptrst(),
    ExitReason.VMREAD: lambda v: v.nested.handle_vmread(),
    ExitReason.VMWRITE: lambda v: v.nested.handle_vmwrite(),
    ExitReason.VMLAUNCH: lambda v: v.nested.handle_vmlaunch(),
    ExitReason.VMRESUME: lambda v: v.nested.handle_vmresume(),
    ExitReason.INVEPT: lambda v: v.nested.handle_invept(),
    ExitReason.INVVPID: lambda v: v.nested.handle_invvpid(),
}
