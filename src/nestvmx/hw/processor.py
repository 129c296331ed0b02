"""One logical processor's VMX: the state machine and every VMX instruction (SDM Vol. 3C ch. 31).

Two ways in:
- the value API (`vmxon`, `vmptrld`, `vmread`, `vmwrite`, `vmlaunch`, ...) is what software
  running in VMX root operation gets: L0 calls it the way KVM executes the instructions;
- `execute(instruction, memory)` runs a decoded guest instruction with its operands, in root or
  non-root operation; in non-root operation it yields the VM exit the instruction causes, or
  serves VMREAD/VMWRITE from the shadow VMCS (§26.10).

Status results: `VM_SUCCEED` (0), `VM_FAIL_INVALID` (-1), or a positive `VmxError` number for
VMfailValid.  RFLAGS is updated as the SDM's conventions say (§31.2).  #UD/#GP/#PF are raised
as `X86Exception`; the instruction then has no other effect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from nestvmx.arch.controls import INTR_INFO_VALID, ControlKind, SecondaryCtls
from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import EXIT_REASON_FAILED_VMENTRY, ExitReason
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import (
    EPT_CAP_INVEPT,
    EPT_CAP_INVEPT_ALL_CONTEXT,
    EPT_CAP_INVEPT_SINGLE_CONTEXT,
    FEATURE_CONTROL_LOCKED,
    FEATURE_CONTROL_VMXON_OUTSIDE_SMX,
    VPID_CAP_ALL_CONTEXT,
    VPID_CAP_INDIVIDUAL_ADDR,
    VPID_CAP_INVVPID,
    VPID_CAP_SINGLE_CONTEXT,
    VPID_CAP_SINGLE_CONTEXT_RETAIN_GLOBALS,
    Msr,
)
from nestvmx.hw import vmentry
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.instruction import MemOperand, VmxInstruction, VmxOp
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.native import vmcs_access
from nestvmx.hw.paging import LinearMemory
from nestvmx.hw.state import (
    AR_L,
    CR0_PE,
    CR4_VMXE,
    EFER_LMA,
    RFLAGS_ARITH,
    RFLAGS_CF,
    RFLAGS_VM,
    RFLAGS_ZF,
    CpuState,
    canonical,
)
from nestvmx.hw.vmcs import (
    INVALID_POINTER,
    SHADOW_VMCS_INDICATOR,
    LaunchState,
    VmcsData,
    clear_region,
    load_region,
    read_revision,
    secondary_controls,
    store_region,
)
from nestvmx.hw.vmexit import VmExit, load_host_state, save_guest_state, write_exit_information

VM_SUCCEED = 0
VM_FAIL_INVALID = -1

_VMREAD_VMWRITE = (VmxOp.VMREAD, VmxOp.VMWRITE)
# hw/native.c's access outcomes: success, an encoding the VMCS lacks, a read-only field (SDM §31.4).
_ACCESS_STATUS = (
    VM_SUCCEED,
    VmxError.UNSUPPORTED_VMCS_COMPONENT,
    VmxError.VMWRITE_READ_ONLY_VMCS_COMPONENT,
)

_INVEPT_TYPES = {1: EPT_CAP_INVEPT_SINGLE_CONTEXT, 2: EPT_CAP_INVEPT_ALL_CONTEXT}
_INVVPID_TYPES = {
    0: VPID_CAP_INDIVIDUAL_ADDR,
    1: VPID_CAP_SINGLE_CONTEXT,
    2: VPID_CAP_ALL_CONTEXT,
    3: VPID_CAP_SINGLE_CONTEXT_RETAIN_GLOBALS,
}


class LogicalProcessor:
    """The VMX state of one logical processor over a host-physical memory."""

    def __init__(self, model: CpuModel, memory: PhysicalMemory, state: CpuState | None = None) -> None:
        self.model = model
        self.memory = memory
        self.state = state if state is not None else CpuState()
        self.state.msrs.setdefault(Msr.IA32_FEATURE_CONTROL, FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMXON_OUTSIDE_SMX)
        self.vmx_operation = False
        self.non_root = False
        self.vmxon_pointer = INVALID_POINTER
        self.current_vmcs = INVALID_POINTER
        self.active_vmcs: dict[int, VmcsData] = {}  # the processor's VMCS cache
        self.pending_injection: tuple[int, int, int] | None = None  # (intr info, error code, length)
        # Called with (invalidation type, EPTP or VPID) so the execution engine can drop translations.
        self.on_invalidate: Callable[[str, int, int | None], None] = lambda kind, type_, context: None
        self.events: Counter[str] = Counter()  # hardware events, for the cost model
        self.last_entry_check: str | None = None  # the VM-entry rule the last entry broke
        self.entry_checks = vmentry.EntryChecks(model)
        self._native = vmcs_access()

    # ----------------------------------------------------------------- helpers

    def _set_status(self, status: int) -> int:
        """Apply VMsucceed / VMfailInvalid / VMfailValid(n) to RFLAGS (SDM §31.2)."""
        s = self.state
        s.rflags &= ~RFLAGS_ARITH
        if status == VM_FAIL_INVALID:
            s.rflags |= RFLAGS_CF
        elif status > 0:
            s.rflags |= RFLAGS_ZF
            self.active_vmcs[self.current_vmcs].fields[F.VM_INSTRUCTION_ERROR] = status
        return status

    def _vmfail(self, error: VmxError) -> int:
        """VMfail(n): VMfailValid if there is a current VMCS, else VMfailInvalid."""
        return self._set_status(error if self.current_vmcs != INVALID_POINTER else VM_FAIL_INVALID)

    def _ud_unless_vmx_capable_mode(self) -> None:
        """#UD with CR0.PE = 0, in virtual-8086 mode or in compatibility mode (on the hot path: inlined)."""
        s = self.state
        if not s.cr0 & CR0_PE or s.rflags & RFLAGS_VM or (s.efer & EFER_LMA and not s.segs[1].ar & AR_L):
            raise X86Exception(Vector.UD)

    def _root_prechecks(self) -> None:
        """#UD outside VMX operation or in an unsupported mode, #GP(0) at CPL > 0."""
        if not self.vmx_operation:
            raise X86Exception(Vector.UD)
        self._ud_unless_vmx_capable_mode()
        if self.non_root:
            raise RuntimeError("the value API is for VMX root operation; use execute() for guest code")
        s = self.state
        if s.cr0 & CR0_PE and s.segs[2].ar & 0x60:  # CPL = SS.DPL
            raise X86Exception(Vector.GP, 0)

    def _pointer_ok(self, address: int) -> bool:
        return address & 0xFFF == 0 and address >> self.model.phys_addr_bits == 0

    def _activate(self, address: int) -> VmcsData:
        data = self.active_vmcs.get(address)
        if data is None:
            data = self.active_vmcs[address] = load_region(self.model, self.memory, address)
        return data

    @property
    def current(self) -> VmcsData | None:
        return self.active_vmcs.get(self.current_vmcs)

    # ------------------------------------------------------------ value API

    def vmxon(self, pointer: int) -> int:
        """SDM VMXON.  The #UD for CR4.VMXE = 0 replaces the 'outside VMX operation' one."""
        status = self._vmxon_prechecks()
        return status if status is not None else self._vmxon_pointer_checks(pointer)

    def _vmxon_prechecks(self) -> int | None:
        """#UD, #GP(0), and VMfail(15) in VMX operation; None when the pointer is to be used.

        Outside VMX operation every #GP condition precedes the read of the m64 operand.
        """
        s = self.state
        if not s.cr4 & CR4_VMXE:
            raise X86Exception(Vector.UD)
        self._ud_unless_vmx_capable_mode()
        if self.vmx_operation:
            if self.non_root:
                raise RuntimeError("VMXON in non-root operation exits; use execute()")
            if s.cpl > 0:
                raise X86Exception(Vector.GP, 0)
            return self._vmfail(VmxError.VMXON_IN_VMX_ROOT_OPERATION)
        m = self.model.msrs
        feature_control = s.read_msr(Msr.IA32_FEATURE_CONTROL)
        if (
            s.cpl > 0
            or not vmentry._fixed_ok(s.cr0, m[Msr.IA32_VMX_CR0_FIXED0], m[Msr.IA32_VMX_CR0_FIXED1])
            or not vmentry._fixed_ok(s.cr4, m[Msr.IA32_VMX_CR4_FIXED0], m[Msr.IA32_VMX_CR4_FIXED1])
            or not feature_control & FEATURE_CONTROL_LOCKED
            or not feature_control & FEATURE_CONTROL_VMXON_OUTSIDE_SMX
        ):
            raise X86Exception(Vector.GP, 0)
        return None

    def _vmxon_pointer_checks(self, pointer: int) -> int:
        if not self._pointer_ok(pointer) or read_revision(self.memory, pointer) != self.model.revision_id:
            return self._set_status(VM_FAIL_INVALID)  # bit 31 set also fails: not a shadow VMCS
        self.vmx_operation = True
        self.vmxon_pointer = pointer
        self.current_vmcs = INVALID_POINTER
        return self._set_status(VM_SUCCEED)

    def vmxoff(self) -> int:
        self._root_prechecks()
        # VMXOFF does not VMCLEAR active VMCSs (SDM §25.11.1): they stay in memory as they were
        # last written, marked so that a later VMRESUME fails with error 6.
        for data in self.active_vmcs.values():
            if data.launch_state is LaunchState.LAUNCHED:
                data.launch_state = LaunchState.LAUNCHED_BEFORE_VMXOFF
            store_region(self.model, self.memory, data)
        self.active_vmcs.clear()
        self.vmx_operation = False
        self.vmxon_pointer = self.current_vmcs = INVALID_POINTER
        return self._set_status(VM_SUCCEED)

    def vmclear(self, pointer: int) -> int:
        self._root_prechecks()
        return self._vmclear(pointer)

    def _vmclear(self, pointer: int) -> int:
        if not self._pointer_ok(pointer):
            return self._vmfail(VmxError.VMCLEAR_INVALID_ADDRESS)
        if pointer == self.vmxon_pointer:
            return self._vmfail(VmxError.VMCLEAR_VMXON_POINTER)
        self.events["vmclear"] += 1
        data = self.active_vmcs.pop(pointer, None)
        if data is not None:
            data.launch_state = LaunchState.CLEAR
            store_region(self.model, self.memory, data)
        else:
            clear_region(self.memory, pointer)
        if pointer == self.current_vmcs:
            self.current_vmcs = INVALID_POINTER
        return self._set_status(VM_SUCCEED)

    def vmptrld(self, pointer: int) -> int:
        self._root_prechecks()
        return self._vmptrld(pointer)

    def _vmptrld(self, pointer: int) -> int:
        if not self._pointer_ok(pointer):
            return self._vmfail(VmxError.VMPTRLD_INVALID_ADDRESS)
        if pointer == self.vmxon_pointer:
            return self._vmfail(VmxError.VMPTRLD_VMXON_POINTER)
        revision = read_revision(self.memory, pointer)
        shadow_ok = self.model.has_vmcs_shadowing
        if revision & ~SHADOW_VMCS_INDICATOR != self.model.revision_id or (
            revision & SHADOW_VMCS_INDICATOR and not shadow_ok
        ):
            return self._vmfail(VmxError.VMPTRLD_INCORRECT_VMCS_REVISION_ID)
        self.events["vmptrld"] += 1
        data = self._activate(pointer)
        data.shadow = bool(revision & SHADOW_VMCS_INDICATOR)
        self.current_vmcs = pointer
        return self._set_status(VM_SUCCEED)

    def vmptrst(self) -> tuple[int, int]:
        self._root_prechecks()
        return self._set_status(VM_SUCCEED), self.current_vmcs

    def vmread(self, encoding: int) -> tuple[int, int]:
        """(status, value); value is 0 unless the status is VM_SUCCEED."""
        status, values = self.vmread_many((encoding,))
        return status, values[0] if values else 0

    def vmwrite(self, encoding: int, value: int) -> int:
        return self.vmwrite_many(((encoding, value),))

    def vmread_many(self, encodings: Iterable[int]) -> tuple[int, list[int]]:
        """VMREADs of `encodings` in turn, as L0 executes them back to back: the same checks, events
        and RFLAGS as that many VMREADs (nothing changes the state in between).  Stops at the first
        that fails: (its status, the values read before it); else (VM_SUCCEED, all values)."""
        self._root_prechecks()
        status, values = self._vmread_values(self.active_vmcs.get(self.current_vmcs), encodings, op64=True)
        self.events["vmread"] += len(values)
        return self._set_status(status), values

    def vmwrite_many(self, writes: Iterable[tuple[int, int]]) -> int:
        """VMWRITEs of (encoding, value) pairs in turn (see vmread_many); the status of the first
        that fails, else VM_SUCCEED."""
        self._root_prechecks()
        return self._vmwrite_values(self.active_vmcs.get(self.current_vmcs), writes, op64=True)

    def _vmread_values(self, vmcs: VmcsData | None, encodings: Iterable[int], op64: bool) -> tuple[int, list[int]]:
        """(status, values) of VMREADs in turn, without side effects; stops at the first that fails
        (hw/native.c's vmcs_read: the values of FULL or HIGH accesses, 32 bits outside 64-bit mode)."""
        if vmcs is None:
            return VM_FAIL_INVALID, []
        outcome, values = self._native.vmcs_read(self.model.vmcs_access, vmcs.fields, encodings, op64)
        return _ACCESS_STATUS[outcome], values

    def _vmwrite_values(
        self, vmcs: VmcsData | None, writes: Iterable[tuple[int, int]], op64: bool, shadow: bool = False
    ) -> int:
        """VMWRITEs in turn, with their status in RFLAGS; stops at the first that fails."""
        if vmcs is None:
            return self._set_status(VM_FAIL_INVALID)
        # hw/native.c's vmcs_write: a HIGH access keeps the low half; outside 64-bit mode the source is 32
        # bits and the upper half of the field is cleared; read-only fields need VMWRITE-any-field.
        outcome, written = self._native.vmcs_write(
            self.model.vmcs_access, vmcs.fields, writes, op64, self.model.vmwrite_any_field
        )
        self.events["shadow_vmwrite" if shadow else "vmwrite"] += written
        status = _ACCESS_STATUS[outcome]
        return self._set_status(status) if status == VM_SUCCEED else self._vmfail(status)

    def vmlaunch(self) -> int | VmExit | None:
        """None when the guest was entered; a status on VMfail; a VmExit on VM-entry failure."""
        self._root_prechecks()
        return self._vmentry(launch=True)

    def vmresume(self) -> int | VmExit | None:
        self._root_prechecks()
        return self._vmentry(launch=False)

    def _vmentry(self, launch: bool) -> int | VmExit | None:
        vmcs = self.current
        if vmcs is None or vmcs.shadow:  # SDM §27.1: a shadow VMCS cannot be used for VM entry
            return self._set_status(VM_FAIL_INVALID)
        s = self.state
        if s.interruptibility & 2:
            return self._vmfail(VmxError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
        if launch and vmcs.launch_state is not LaunchState.CLEAR:
            return self._vmfail(VmxError.VMLAUNCH_NONCLEAR_VMCS)
        if not launch and vmcs.launch_state is LaunchState.LAUNCHED_BEFORE_VMXOFF:
            return self._vmfail(VmxError.VMRESUME_AFTER_VMXOFF)
        if not launch and vmcs.launch_state is not LaunchState.LAUNCHED:
            return self._vmfail(VmxError.VMRESUME_NONLAUNCHED_VMCS)
        f = vmcs.fields
        failure = self.entry_checks.first_failure(f, self.memory, self.current_vmcs, s)
        stage = failure[0] if failure else None
        if stage == vmentry.CONTROLS:
            self.last_entry_check = failure[1]
            return self._vmfail(VmxError.ENTRY_INVALID_CONTROL_FIELD)
        if stage == vmentry.HOST:
            self.last_entry_check = failure[1]
            return self._vmfail(VmxError.ENTRY_INVALID_HOST_STATE_FIELD)
        self.events["vmentry"] += 1
        if stage == vmentry.GUEST:
            self.last_entry_check, qualification = failure[1]
            return self._entry_failure(vmcs, ExitReason.INVALID_GUEST_STATE, qualification)
        # From here on the guest state is loaded (§27.3.2); an MSR-loading failure unloads it.
        saved = (s.cr0, s.cr3, s.cr4, s.efer)
        vmentry.load_guest_state(f, s)
        bad_msr = vmentry.load_msrs(self.memory, f[F.VM_ENTRY_MSR_LOAD_ADDR], f[F.VM_ENTRY_MSR_LOAD_COUNT], s)
        if bad_msr is not None:
            self.last_entry_check = f"VM-entry MSR-load entry {bad_msr}"
            s.cr0, s.cr3, s.cr4, s.efer = saved
            return self._entry_failure(vmcs, ExitReason.MSR_LOADING, bad_msr)
        self.last_entry_check = None
        vmcs.launch_state = LaunchState.LAUNCHED
        self.non_root = True
        if self._shadowing_enabled(f) and f[F.VMCS_LINK_POINTER] != INVALID_POINTER:
            self._activate(f[F.VMCS_LINK_POINTER])  # the shadow VMCS becomes active (§25.10)
        info = f[F.VM_ENTRY_INTR_INFO_FIELD]
        self.pending_injection = (
            (info, f[F.VM_ENTRY_EXCEPTION_ERROR_CODE], f[F.VM_ENTRY_INSTRUCTION_LEN])
            if info & INTR_INFO_VALID
            else None
        )
        return None

    def _entry_failure(self, vmcs: VmcsData, reason: ExitReason, qualification: int) -> VmExit:
        """SDM §27.8: load host state as a VM exit would; the launch state stays as it was."""
        exit = VmExit(reason=EXIT_REASON_FAILED_VMENTRY | reason, qualification=qualification)
        f = vmcs.fields
        write_exit_information(f, exit)
        load_host_state(f, self.state)
        vmentry.load_msrs(self.memory, f[F.VM_EXIT_MSR_LOAD_ADDR], f[F.VM_EXIT_MSR_LOAD_COUNT], self.state)
        return exit

    def invept(self, type_: int, descriptor: bytes) -> int:
        self._root_prechecks()
        return self._invept(type_, descriptor)

    def _invept_supported(self) -> bool:
        return self.model.allows(ControlKind.SECONDARY, SecondaryCtls.ENABLE_EPT) and bool(
            self.model.msrs.get(Msr.IA32_VMX_EPT_VPID_CAP, 0) & EPT_CAP_INVEPT
        )

    def _inv_type_supported(self, op: VmxOp, type_: int) -> bool:
        """Whether IA32_VMX_EPT_VPID_CAP reports the INVEPT/INVVPID type (checked before the descriptor is read)."""
        types = _INVEPT_TYPES if op is VmxOp.INVEPT else _INVVPID_TYPES
        return type_ in types and bool(self.model.msrs.get(Msr.IA32_VMX_EPT_VPID_CAP, 0) & types[type_])

    def _invept(self, type_: int, descriptor: bytes) -> int:
        if not self._inv_type_supported(VmxOp.INVEPT, type_):
            return self._vmfail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
        eptp = int.from_bytes(descriptor[:8], "little")
        if type_ == 1 and not vmentry.eptp_valid(self.model, eptp):
            return self._vmfail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
        self.events["invept"] += 1
        self.on_invalidate("ept", type_, eptp if type_ == 1 else None)
        return self._set_status(VM_SUCCEED)

    def invvpid(self, type_: int, descriptor: bytes) -> int:
        self._root_prechecks()
        return self._invvpid(type_, descriptor)

    def _invvpid(self, type_: int, descriptor: bytes) -> int:
        low, address = int.from_bytes(descriptor[:8], "little"), int.from_bytes(descriptor[8:16], "little")
        vpid = low & 0xFFFF
        if (
            not self._inv_type_supported(VmxOp.INVVPID, type_)
            or low >> 16
            or (type_ != 2 and vpid == 0)
            or (type_ == 0 and not canonical(address))
        ):
            return self._vmfail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
        self.events["invvpid"] += 1
        self.on_invalidate("vpid", type_, vpid if type_ != 2 else None)
        return self._set_status(VM_SUCCEED)

    # ----------------------------------------------------------- VM exits

    def vm_exit(self, exit: VmExit) -> VmExit:
        """Deliver a VM exit from non-root operation (SDM ch. 28) and return it."""
        vmcs = self.current
        assert self.non_root and vmcs is not None, "VM exit outside non-root operation"
        f = vmcs.fields
        write_exit_information(f, exit)
        save_guest_state(f, self.state)
        vmentry.store_msrs(self.memory, f[F.VM_EXIT_MSR_STORE_ADDR], f[F.VM_EXIT_MSR_STORE_COUNT], self.state)
        load_host_state(f, self.state)
        vmentry.load_msrs(self.memory, f[F.VM_EXIT_MSR_LOAD_ADDR], f[F.VM_EXIT_MSR_LOAD_COUNT], self.state)
        self.non_root = False
        self.pending_injection = None
        self.events["vmexit"] += 1
        return exit

    def _shadowing_enabled(self, f: dict[int, int]) -> bool:
        return bool(secondary_controls(f) & SecondaryCtls.SHADOW_VMCS)

    # ------------------------------------------------ decoded instructions

    def execute(self, instr: VmxInstruction, memory: LinearMemory) -> VmExit | None:
        """Execute a decoded VMX instruction at state.rip.

        Returns the VM exit it caused in non-root operation, else None (RIP then points past it).
        Raises X86Exception for #UD/#GP/#PF, with no other effect.
        """
        s = self.state
        if instr.op is VmxOp.VMXON and (instr.mem is None or not s.cr4 & CR4_VMXE):
            raise X86Exception(Vector.UD)
        if instr.op in (VmxOp.VMCLEAR, VmxOp.VMPTRLD, VmxOp.VMPTRST, VmxOp.INVEPT, VmxOp.INVVPID) and instr.mem is None:
            raise X86Exception(Vector.UD)
        if self.non_root:
            if self._shadow_access(instr, memory):
                return None
            if instr.op is not VmxOp.VMCALL:
                self._ud_unless_vmx_capable_mode()
            return self.vm_exit(
                VmExit(
                    reason=instr.op.exit_reason,
                    qualification=instr.exit_qualification(s.rip + instr.length),
                    instruction_length=instr.length,
                    instruction_info=instr.instruction_info(),
                )
            )
        rip = s.rip
        result = self._execute_root(instr, memory)
        if isinstance(result, int):  # completed with a status: continue with the next instruction
            s.rip = rip + instr.length
            return None
        return result  # VM entry (None: the guest runs) or VM-entry failure (host state loaded)

    def _execute_root(self, instr: VmxInstruction, memory: LinearMemory) -> int | VmExit | None:
        op, s = instr.op, self.state
        if op is VmxOp.VMCALL:
            if not self.vmx_operation:
                raise X86Exception(Vector.UD)
            self._ud_unless_vmx_capable_mode()
            if s.cpl > 0:
                raise X86Exception(Vector.GP, 0)
            # No SMM dual-monitor treatment is modelled: VMCALL in root operation is VMfail(1).
            return self._vmfail(VmxError.VMCALL_IN_VMX_ROOT_OPERATION)
        if op is VmxOp.VMXON:
            status = self._vmxon_prechecks()
            if status is not None:
                return status  # the pointer is not read in VMX operation
            return self._vmxon_pointer_checks(self._read_operand(instr, memory, 8))
        if op in (VmxOp.INVEPT, VmxOp.INVVPID):
            supported = self._invept_supported() if op is VmxOp.INVEPT else self._invvpid_supported()
            if not supported:
                raise X86Exception(Vector.UD)
        self._root_prechecks()
        op64 = s.in_64bit_mode
        if op is VmxOp.VMXOFF:
            return self.vmxoff()
        if op is VmxOp.VMCLEAR:
            return self._vmclear(self._read_operand(instr, memory, 8))
        if op is VmxOp.VMPTRLD:
            return self._vmptrld(self._read_operand(instr, memory, 8))
        if op is VmxOp.VMPTRST:
            self._write_operand(instr, memory, self.current_vmcs, 8)
            return self._set_status(VM_SUCCEED)
        if op is VmxOp.VMREAD:
            return self._vmread_instr(self.current, instr, memory, op64)
        if op is VmxOp.VMWRITE:
            return self._vmwrite_instr(self.current, instr, memory, op64)
        if op in (VmxOp.VMLAUNCH, VmxOp.VMRESUME):
            return self._vmentry(launch=op is VmxOp.VMLAUNCH)
        type_ = self._reg(instr.reg, op64)
        if not self._inv_type_supported(op, type_):  # SDM: the type is checked before the descriptor is read
            return self._vmfail(VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID)
        descriptor = memory.read(self._linear_address(instr.mem, instr.length), 16)
        return self._invept(type_, descriptor) if op is VmxOp.INVEPT else self._invvpid(type_, descriptor)

    def _invvpid_supported(self) -> bool:
        return self.model.allows(ControlKind.SECONDARY, SecondaryCtls.ENABLE_VPID) and bool(
            self.model.msrs.get(Msr.IA32_VMX_EPT_VPID_CAP, 0) & VPID_CAP_INVVPID
        )

    def _shadow_access(self, instr: VmxInstruction, memory: LinearMemory) -> bool:
        """A VMREAD/VMWRITE of non-root operation served from the shadow VMCS (SDM §26.1.3, §26.10):
        True once done; False, with no effect, if the instruction exits."""
        if instr.op not in _VMREAD_VMWRITE:
            return False
        s = self.state
        f = self.active_vmcs[self.current_vmcs].fields
        op64 = s.in_64bit_mode
        if self._vmread_vmwrite_exits(f, instr.op, self._reg(instr.reg, op64)):
            return False
        self._ud_unless_vmx_capable_mode()
        if s.cpl > 0:
            raise X86Exception(Vector.GP, 0)
        shadow = self._shadow_vmcs(f)
        if instr.op is VmxOp.VMREAD:
            self._vmread_instr(shadow, instr, memory, op64, shadow=True)
        else:
            self._vmwrite_instr(shadow, instr, memory, op64, shadow=True)
        s.rip += instr.length
        return True

    def _shadow_vmcs(self, f: dict[int, int]) -> VmcsData | None:
        """The active VMCS the link pointer of `f` references, if any."""
        link = f[F.VMCS_LINK_POINTER]
        return self.active_vmcs.get(link) if link != INVALID_POINTER else None

    def shadow_vmcs_in_use(self) -> tuple[VmcsData, int, int] | None:
        """For an engine serving non-root VMREAD/VMWRITE without calling execute(): the shadow VMCS
        and the VMREAD and VMWRITE bitmap addresses, while the current VMCS has shadowing on with an
        active shadow VMCS, CPL is 0 and the mode allows VMX instructions; else None."""
        if not self.non_root:
            return None
        f = self.active_vmcs[self.current_vmcs].fields
        shadow = self._shadow_vmcs(f)
        if shadow is None or not self._shadowing_enabled(f) or self.state.cpl > 0:
            return None
        try:
            self._ud_unless_vmx_capable_mode()
        except X86Exception:
            return None
        return shadow, f[F.VMREAD_BITMAP], f[F.VMWRITE_BITMAP]

    def _vmread_vmwrite_exits(self, f: dict[int, int], op: VmxOp, encoding: int) -> bool:
        """SDM §26.1.3: exit unless shadowing is on, the encoding fits 15 bits and its bitmap bit is 0."""
        if not self._shadowing_enabled(f) or encoding >> 15:
            return True
        bitmap = f[F.VMREAD_BITMAP if op is VmxOp.VMREAD else F.VMWRITE_BITMAP]
        return bool(self.memory.read_bus(bitmap + (encoding >> 3), 1) >> (encoding & 7) & 1)

    def _vmread_instr(
        self, vmcs: VmcsData | None, instr: VmxInstruction, memory: LinearMemory, op64: bool, shadow: bool = False
    ) -> int:
        status, values = self._vmread_values(vmcs, (self._reg(instr.reg, op64),), op64)
        if status == VM_SUCCEED:
            value = values[0]
            # The destination is written last: a fault there leaves flags and VMCS untouched.
            if instr.mem is None:
                self._set_reg(instr.rm_reg, value, op64)
            else:
                self._write_operand(instr, memory, value, 8 if op64 else 4)
            self.events["shadow_vmread" if shadow else "vmread"] += 1
        return self._set_status(status)

    def _vmwrite_instr(
        self, vmcs: VmcsData | None, instr: VmxInstruction, memory: LinearMemory, op64: bool, shadow: bool = False
    ) -> int:
        encoding = self._reg(instr.reg, op64)
        if vmcs is None:
            return self._set_status(VM_FAIL_INVALID)
        if instr.mem is None:
            value = self._reg(instr.rm_reg, op64)
        else:
            value = int.from_bytes(
                memory.read(self._linear_address(instr.mem, instr.length), 8 if op64 else 4), "little"
            )
        return self._vmwrite_values(vmcs, ((encoding, value),), op64, shadow)

    # ------------------------------------------------------------ operands

    def _reg(self, number: int | None, op64: bool) -> int:
        value = self.state.gpr[number or 0]
        return value if op64 else value & 0xFFFF_FFFF

    def _set_reg(self, number: int | None, value: int, op64: bool) -> None:
        # A 32-bit destination register is zero-extended in 64-bit mode; outside it, 32 bits.
        self.state.gpr[number or 0] = value if op64 else value & 0xFFFF_FFFF

    def _linear_address(self, mem: MemOperand | None, length: int) -> int:
        assert mem is not None
        return mem.linear_address(self.state, length)

    def _read_operand(self, instr: VmxInstruction, memory: LinearMemory, size: int) -> int:
        data = memory.read(self._linear_address(instr.mem, instr.length), size)
        return int.from_bytes(data, "little")

    def _write_operand(self, instr: VmxInstruction, memory: LinearMemory, value: int, size: int) -> None:
        memory.write(
            self._linear_address(instr.mem, instr.length), (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        )
