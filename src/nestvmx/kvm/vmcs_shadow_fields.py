"""The vmcs12 fields L0 shadows for L1 (Linux arch/x86/kvm/vmx/vmcs_shadow_fields.h, current list).

Read-only fields: L1 may VMREAD them from the shadow VMCS without an exit.  Read-write fields:
VMREAD and VMWRITE without an exit.  They are the fields a hypervisor touches on most exits and
that have no side effect on L0 when written.  Never shadowed:
- VM_INSTRUCTION_ERROR: L0 writes it when emulating a failing VMX instruction, after the shadow
  was last synced, so a shadowed copy would be stale (KVM's comment on nested_vmx_failValid);
- fields with side effects: controls that change how L0 builds vmcs02 (other than the primary
  and pin-based controls, which KVM re-reads at every nested entry anyway), pointers L0 must map
  and check (bitmaps, EPTP, MSR areas), and host state L0 must validate.
For 64-bit fields KVM clears the bitmap bits of both the FULL and the HIGH encoding, and copies
only the FULL field (a 64-bit host).
"""

from __future__ import annotations

from nestvmx.arch.fields import Field as F

SHADOW_READ_ONLY_FIELDS: tuple[int, ...] = (
    F.VM_EXIT_REASON,
    F.VM_EXIT_INTR_INFO,
    F.VM_EXIT_INSTRUCTION_LEN,
    F.IDT_VECTORING_INFO_FIELD,
    F.IDT_VECTORING_ERROR_CODE,
    F.VM_EXIT_INTR_ERROR_CODE,
    F.GUEST_CS_AR_BYTES,
    F.GUEST_SS_AR_BYTES,
    F.EXIT_QUALIFICATION,
    F.GUEST_LINEAR_ADDRESS,
    F.GUEST_PHYSICAL_ADDRESS,
)

SHADOW_READ_WRITE_FIELDS: tuple[int, ...] = (
    F.GUEST_INTR_STATUS,
    F.GUEST_PML_INDEX,
    F.HOST_FS_SELECTOR,
    F.HOST_GS_SELECTOR,
    F.CPU_BASED_VM_EXEC_CONTROL,
    F.PIN_BASED_VM_EXEC_CONTROL,
    F.EXCEPTION_BITMAP,
    F.VM_ENTRY_EXCEPTION_ERROR_CODE,
    F.VM_ENTRY_INTR_INFO_FIELD,
    F.VM_ENTRY_INSTRUCTION_LEN,
    F.TPR_THRESHOLD,
    F.GUEST_INTERRUPTIBILITY_INFO,
    F.VMX_PREEMPTION_TIMER_VALUE,
    F.GUEST_RIP,
    F.GUEST_RSP,
    F.GUEST_CR0,
    F.GUEST_CR3,
    F.GUEST_CR4,
    F.GUEST_RFLAGS,
    F.CR0_GUEST_HOST_MASK,
    F.CR0_READ_SHADOW,
    F.CR4_READ_SHADOW,
    F.HOST_FS_BASE,
    F.HOST_GS_BASE,
)

# Linux 4.10 (arch/x86/kvm/vmx.c, shadow_read_only_fields[] and shadow_read_write_fields[]), the
# L0 of the NEVE measurements (SOSP 2017): before the 2018-2019 rework, with guest CS state, ES
# base and TSC_OFFSET shadowed but not GUEST_SS_AR_BYTES, GUEST_INTR_STATUS or the PIN-based
# controls.  Read in duzhen16/linux-4.10 (Makefile 4.10.0).  Its read-only list is today's without
# the CS and SS access rights, in the same order.
SHADOW_READ_ONLY_FIELDS_4_10: tuple[int, ...] = tuple(
    f for f in SHADOW_READ_ONLY_FIELDS if f not in (F.GUEST_CS_AR_BYTES, F.GUEST_SS_AR_BYTES)
)

SHADOW_READ_WRITE_FIELDS_4_10: tuple[int, ...] = (
    F.TPR_THRESHOLD,
    F.GUEST_RIP,
    F.GUEST_RSP,
    F.GUEST_CR0,
    F.GUEST_CR3,
    F.GUEST_CR4,
    F.GUEST_INTERRUPTIBILITY_INFO,
    F.GUEST_RFLAGS,
    F.GUEST_CS_SELECTOR,
    F.GUEST_CS_AR_BYTES,
    F.GUEST_CS_LIMIT,
    F.GUEST_CS_BASE,
    F.GUEST_ES_BASE,
    F.GUEST_BNDCFGS,
    F.CR0_GUEST_HOST_MASK,
    F.CR0_READ_SHADOW,
    F.CR4_READ_SHADOW,
    F.TSC_OFFSET,
    F.EXCEPTION_BITMAP,
    F.CPU_BASED_VM_EXEC_CONTROL,
    F.VM_ENTRY_EXCEPTION_ERROR_CODE,
    F.VM_ENTRY_INTR_INFO_FIELD,
    F.VM_ENTRY_INSTRUCTION_LEN,
    F.HOST_FS_BASE,
    F.HOST_GS_BASE,
    F.HOST_FS_SELECTOR,
    F.HOST_GS_SELECTOR,
)

# L0's lists by KVM version: (read-only, read-write).
DEFAULT_SHADOW_FIELDS = "current"
SHADOW_FIELD_LISTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "current": (SHADOW_READ_ONLY_FIELDS, SHADOW_READ_WRITE_FIELDS),
    "linux-4.10": (SHADOW_READ_ONLY_FIELDS_4_10, SHADOW_READ_WRITE_FIELDS_4_10),
}
