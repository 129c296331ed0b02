"""A vCPU's state at a VM-exit boundary, for migration (KVM_GET/SET_REGS, SREGS, MSRS,
VCPU_EVENTS and NESTED_STATE).

Nothing processor-specific is in it: L1's VMCS-held state is a list of named fields, L0's nested
state is KVM's (VMXON pointer, current vmcs12 pointer, guest mode, nested_run_pending), in guest
mode L2's guest state as vmcs02 holds it (named fields too), plus the current vmcs12 in its
software format. vmcs01, vmcs02 and the shadow VMCS are rebuilt on the restoring processor,
whatever its VMCS layout or shadowing support.
"""

from __future__ import annotations

from typing import Any

from nestvmx.arch.fields import FIELD_BY_ENCODING, FIELD_BY_NAME
from nestvmx.arch.fields import Field as F
from nestvmx.hw.vmcs import INVALID_POINTER
from nestvmx.kvm.nested import GUEST_STATE_AND_READ_SHADOWS, GUEST_STATE_FIELDS
from nestvmx.kvm.vm import Kvm
from nestvmx.kvm.vmcs12 import REVISION_OFFSET, VMCS12_REVISION, VMCS12_SIZE, Vmcs12
from nestvmx.kvm.vmx import VmxVcpu

# KVM_GET_VCPU_EVENTS: an event L0 queued for the next VM entry of the running level.
EVENT_FIELDS = (F.VM_ENTRY_INTR_INFO_FIELD, F.VM_ENTRY_EXCEPTION_ERROR_CODE, F.VM_ENTRY_INSTRUCTION_LEN)


class MigrationError(Exception):
    """A saved state that cannot be restored; the restoring VM is discarded."""


def get_vcpu_state(vcpu: VmxVcpu) -> tuple[dict[str, Any], bytes | None]:
    """The vCPU's state as JSON-able data, and the current vmcs12 (None without one)."""
    nested = vcpu.nested
    vmcs12_blob = None
    if nested.current_vmptr != INVALID_POINTER:
        # vmx_get_nested_state: make the cached vmcs12 whole first.
        if nested.guest_mode:
            if not nested.nested_run_pending:
                nested.sync_vmcs02_to_vmcs12()  # L2's state now lives in vmcs02
        elif nested.shadow_vmcs is not None and not nested.sync_shadow_vmcs:
            nested.copy_shadow_to_vmcs12()  # L1's exit-less VMWRITEs (the lost-VMWRITE bug otherwise)
        vmcs12_blob = nested.vmcs12.to_bytes()
    # Of the current VMCS: vmcs02 in guest mode.
    events = {FIELD_BY_ENCODING[f].name: vcpu.vmread(f) for f in EVENT_FIELDS}
    # L2's state as vmcs02 holds it: vmcs12 lacks what the VM-entry MSR-load area or L0 put there and
    # what the exit controls do not save (KVM migrates it as the vCPU's registers and MSRs).
    vmcs02 = {FIELD_BY_ENCODING[f].name: vcpu.vmread(f) for f in GUEST_STATE_FIELDS} if nested.guest_mode else None
    if nested.guest_mode:
        nested.load_vmcs(vcpu.vmcs01)
    vmcs01 = {FIELD_BY_ENCODING[f].name: vcpu.vmread(f) for f in GUEST_STATE_AND_READ_SHADOWS}
    if nested.guest_mode:
        nested.load_vmcs(nested.vmcs02)
    state = {
        "mp_state": "halted" if vcpu.halted else "runnable",  # KVM_GET_MP_STATE
        "regs": list(vcpu.regs),  # RSP is in the VMCS (its slot is unused)
        "cr2": vcpu.cr2,
        "tsc": vcpu.engine.tsc(),  # KVM_GET_MSRS' IA32_TSC: the guest's counter goes on from here
        "msrs": {str(index): value for index, value in vcpu.guest_msrs.items()},
        "vmcs01": vmcs01,
        "events": events,
        "nested": {
            "vmxon": nested.vmxon,
            "vmxon_ptr": nested.vmxon_ptr,
            "current_vmptr": nested.current_vmptr,
            "guest_mode": nested.guest_mode,
            "nested_run_pending": nested.guest_mode and nested.nested_run_pending,
            "vmcs02": vmcs02,
        },
    }
    return state, vmcs12_blob


def set_vcpu_state(vcpu: VmxVcpu, state: dict[str, Any], vmcs12_blob: bytes | None) -> None:
    """Load a saved state into a freshly set-up vCPU (vmcs01 current), checking it as
    vmx_set_nested_state does. On MigrationError the vCPU is half-loaded and must be dropped."""
    try:
        regs, cr2, msrs = state["regs"], state["cr2"], state["msrs"]
        vmcs01, events, nested_state = state["vmcs01"], state["events"], state["nested"]
        vmxon, vmxon_ptr = bool(nested_state["vmxon"]), nested_state["vmxon_ptr"]
        vmptr, guest_mode = nested_state["current_vmptr"], bool(nested_state["guest_mode"])
        run_pending = bool(nested_state["nested_run_pending"])
        mp_state = state.get("mp_state", "runnable")
        loaded_regs, loaded_cr2 = [_u64(r, "register") for r in regs], _u64(cr2, "CR2")
        tsc = _u64(state.get("tsc", 0), "TSC")
        loaded_msrs = {int(index): _u64(value, "MSR value") for index, value in msrs.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise MigrationError(f"malformed vCPU state ({type(err).__name__}: {err})") from None
    if len(loaded_regs) != 16:
        raise MigrationError(f"malformed vCPU state: {len(loaded_regs)} registers instead of 16")
    if mp_state not in ("runnable", "halted"):
        raise MigrationError(f"malformed vCPU state: mp_state {mp_state!r}")
    vcpu.halted = mp_state == "halted"
    vcpu.engine.tsc_base = tsc - vcpu.engine.executed
    _write_fields(vcpu, vmcs01, GUEST_STATE_AND_READ_SHADOWS, "vmcs01")
    vcpu.regs, vcpu.cr2, vcpu.guest_msrs = loaded_regs, loaded_cr2, loaded_msrs
    nested = vcpu.nested

    def nested_ok(pointer: object) -> bool:  # a page of L1's memory
        return isinstance(pointer, int) and nested.page_address_valid(pointer) and pointer < vcpu.guest_size

    if vmxon:
        if not nested_ok(vmxon_ptr):
            raise MigrationError(f"nested state: bad VMXON pointer {vmxon_ptr!r}")
        nested.enter_vmx_operation(vmxon_ptr)
    if vmptr != INVALID_POINTER:
        if not vmxon or not nested_ok(vmptr) or vmptr == vmxon_ptr:
            raise MigrationError(f"nested state: bad current VMCS pointer {vmptr!r}")
        if vmcs12_blob is None or len(vmcs12_blob) != VMCS12_SIZE:
            raise MigrationError("nested state: the current vmcs12 is missing or not 4096 bytes")
        if int.from_bytes(vmcs12_blob[REVISION_OFFSET : REVISION_OFFSET + 4], "little") != VMCS12_REVISION:
            raise MigrationError("nested state: the vmcs12 has a wrong revision identifier")
        nested.set_current_vmptr(Vmcs12.from_bytes(vmptr, vmcs12_blob))
    elif vmcs12_blob is not None:
        raise MigrationError("nested state: a vmcs12 without a current VMCS pointer")
    if guest_mode:
        _enter_guest_mode(vcpu)
        nested.nested_run_pending = run_pending
        if nested_state.get("vmcs02") is not None:  # vmcs02 is current
            _write_fields(vcpu, nested_state["vmcs02"], GUEST_STATE_FIELDS, "vmcs02")
    _write_fields(vcpu, events, EVENT_FIELDS, "events")


def _enter_guest_mode(vcpu: VmxVcpu) -> None:
    """nested_vmx_enter_non_root_mode for a restore: the vmcs12 must pass the VM-entry checks."""
    nested = vcpu.nested
    if nested.cached_vmcs12 is None or not nested.vmcs12.launched:
        raise MigrationError("nested state: guest mode without a launched current vmcs12")
    failure = nested.entry_checks.first_failure(
        nested.vmcs12.fields, nested.l1_memory, nested.current_vmptr, nested.l1_state()
    )
    if failure:
        raise MigrationError(f"nested state: the vmcs12 fails the VM-entry checks ({failure[1]})")
    nested.prepare_vmcs02(launch=False)


def _write_fields(vcpu: VmxVcpu, values: Any, fields: tuple[int, ...], what: str) -> None:
    if not isinstance(values, dict) or set(values) != {FIELD_BY_ENCODING[f].name for f in fields}:
        raise MigrationError(f"malformed vCPU state: {what} does not hold exactly the expected fields")
    for name, value in values.items():
        field = FIELD_BY_NAME[name]
        if not isinstance(value, int) or not 0 <= value <= field.width.mask:
            raise MigrationError(f"malformed vCPU state: {what} {name} = {value!r} does not fit the field")
        vcpu.vmwrite(field.encoding, value)


def _u64(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise ValueError(f"{what} {value!r} is not a 64-bit value")
    return value


def get_schedule_state(kvm: Kvm) -> dict[str, int]:
    """Where the scheduler stands: whose turn it is and how much of it was used."""
    return {"current": kvm.current, "turn_instructions": kvm.turn_instructions, "turn_exits": kvm.turn_exits}


def set_schedule_state(kvm: Kvm, state: Any) -> None:
    """Continue the saved turn (a snapshot without one starts with vCPU 0's turn)."""
    if state is None:
        return
    if not isinstance(state, dict) or set(state) != {"current", "turn_instructions", "turn_exits"}:
        raise MigrationError("malformed scheduler state")
    current, used, exits = state["current"], state["turn_instructions"], state["turn_exits"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (current, used, exits)):
        raise MigrationError("malformed scheduler state")
    if current >= len(kvm.vcpus) or kvm.vcpus[current].halted:
        raise MigrationError(f"scheduler state: vCPU {current} cannot be running")
    kvm.current, kvm.turn_instructions, kvm.turn_exits = current, used, exits
