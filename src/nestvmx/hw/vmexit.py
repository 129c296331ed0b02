"""VM exits (SDM Vol. 3C chapter 28): exit information, saving guest state, loading host state."""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from nestvmx.arch.controls import INTR_INFO_VALID, EntryCtls, ExitCtls
from nestvmx.arch.exit_reasons import EXIT_REASON_FAILED_VMENTRY, exit_reason_name
from nestvmx.arch.fields import Field as F
from nestvmx.hw.state import (
    AR_DB,
    AR_G,
    AR_L,
    AR_P,
    AR_S,
    AR_UNUSABLE,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_FIXED,
    RSP,
    CpuState,
    Segment,
)

# The CR0 bits that VM entry and VM exit load from a CR0 field: PE, MP, EM, TS, NE, WP, AM, PG.
# ET, NW, CD and the reserved bits (15:6, 17, 28:19, 63:32) are never modified (SDM §27.3.2.1,
# §28.5.1); Bochs masks them the same way (VMX_KEEP_CR0_BITS = 0x7FFAFFD0).
CR0_LOADED_BITS = 0x8005_002F


def load_cr0(current: int, field: int) -> int:
    return current & ~CR0_LOADED_BITS | field & CR0_LOADED_BITS


GUEST_SEGMENT_FIELDS = (  # selector, base, limit, access rights of ES, CS, SS, DS, FS, GS, LDTR, TR
    (F.GUEST_ES_SELECTOR, F.GUEST_ES_BASE, F.GUEST_ES_LIMIT, F.GUEST_ES_AR_BYTES),
    (F.GUEST_CS_SELECTOR, F.GUEST_CS_BASE, F.GUEST_CS_LIMIT, F.GUEST_CS_AR_BYTES),
    (F.GUEST_SS_SELECTOR, F.GUEST_SS_BASE, F.GUEST_SS_LIMIT, F.GUEST_SS_AR_BYTES),
    (F.GUEST_DS_SELECTOR, F.GUEST_DS_BASE, F.GUEST_DS_LIMIT, F.GUEST_DS_AR_BYTES),
    (F.GUEST_FS_SELECTOR, F.GUEST_FS_BASE, F.GUEST_FS_LIMIT, F.GUEST_FS_AR_BYTES),
    (F.GUEST_GS_SELECTOR, F.GUEST_GS_BASE, F.GUEST_GS_LIMIT, F.GUEST_GS_AR_BYTES),
    (F.GUEST_LDTR_SELECTOR, F.GUEST_LDTR_BASE, F.GUEST_LDTR_LIMIT, F.GUEST_LDTR_AR_BYTES),
    (F.GUEST_TR_SELECTOR, F.GUEST_TR_BASE, F.GUEST_TR_LIMIT, F.GUEST_TR_AR_BYTES),
)
HOST_SELECTOR_FIELDS = (  # ES, CS, SS, DS, FS, GS, TR
    F.HOST_ES_SELECTOR,
    F.HOST_CS_SELECTOR,
    F.HOST_SS_SELECTOR,
    F.HOST_DS_SELECTOR,
    F.HOST_FS_SELECTOR,
    F.HOST_GS_SELECTOR,
    F.HOST_TR_SELECTOR,
)


@dataclass(frozen=True)
class VmExit:
    """One VM exit as the processor reports it in the VM-exit information fields."""

    reason: int  # the exit-reason field: basic reason in 15:0, bit 31 = VM-entry failure
    qualification: int = 0
    instruction_length: int = 0
    instruction_info: int = 0
    intr_info: int = 0
    intr_error_code: int = 0
    idt_vectoring_info: int = 0
    idt_vectoring_error_code: int = 0
    guest_linear_address: int = 0
    guest_physical_address: int = 0

    @property
    def basic_reason(self) -> int:
        return self.reason & 0xFFFF

    @property
    def entry_failure(self) -> bool:
        return bool(self.reason & EXIT_REASON_FAILED_VMENTRY)

    def __str__(self) -> str:
        name = exit_reason_name(self.basic_reason)
        failed = " (VM-entry failure)" if self.entry_failure else ""
        return f"{name}{failed} qual={self.qualification:#x} len={self.instruction_length}"


# Guest fields a VM exit saves only under their VM-exit control (SDM §28.3.1), with the CpuState
# attribute each comes from.
SAVED_UNDER_EXIT_CONTROL = (
    (ExitCtls.SAVE_DEBUG_CONTROLS, ((F.GUEST_DR7, "dr7"), (F.GUEST_IA32_DEBUGCTL, "debugctl"))),
    (ExitCtls.SAVE_PAT, ((F.GUEST_IA32_PAT, "pat"),)),
    (ExitCtls.SAVE_EFER, ((F.GUEST_IA32_EFER, "efer"),)),
)


def write_exit_information(fields: dict[int, int], exit: VmExit) -> None:
    """SDM §28.2: record the exit information fields."""
    fields[F.VM_EXIT_REASON] = exit.reason
    fields[F.EXIT_QUALIFICATION] = exit.qualification
    if exit.entry_failure:
        return  # §27.8: only the exit reason and qualification are written
    fields[F.VM_EXIT_INTR_INFO] = exit.intr_info
    fields[F.VM_EXIT_INTR_ERROR_CODE] = exit.intr_error_code
    fields[F.IDT_VECTORING_INFO_FIELD] = exit.idt_vectoring_info
    fields[F.IDT_VECTORING_ERROR_CODE] = exit.idt_vectoring_error_code
    fields[F.VM_EXIT_INSTRUCTION_LEN] = exit.instruction_length
    fields[F.VMX_INSTRUCTION_INFO] = exit.instruction_info
    fields[F.GUEST_LINEAR_ADDRESS] = exit.guest_linear_address
    if F.GUEST_PHYSICAL_ADDRESS in fields:
        fields[F.GUEST_PHYSICAL_ADDRESS] = exit.guest_physical_address
    # Every VM exit clears the valid bit of the VM-entry interruption information (§28.2.5).
    fields[F.VM_ENTRY_INTR_INFO_FIELD] &= ~INTR_INFO_VALID


def save_guest_state(fields: dict[int, int], s: CpuState) -> None:
    """SDM §28.3: guest registers and non-register state into the VMCS."""
    fields[F.GUEST_CR0] = s.cr0
    fields[F.GUEST_CR3] = s.cr3
    fields[F.GUEST_CR4] = s.cr4
    fields[F.GUEST_RSP] = s.rsp
    fields[F.GUEST_RIP] = s.rip
    fields[F.GUEST_RFLAGS] = s.rflags
    for seg, (sel, base, limit, ar) in zip(s.segs, GUEST_SEGMENT_FIELDS, strict=True):
        fields[sel], fields[base], fields[limit], fields[ar] = seg.selector, seg.base, seg.limit, seg.ar
    fields[F.GUEST_GDTR_BASE], fields[F.GUEST_GDTR_LIMIT] = s.gdtr_base, s.gdtr_limit
    fields[F.GUEST_IDTR_BASE], fields[F.GUEST_IDTR_LIMIT] = s.idtr_base, s.idtr_limit
    fields[F.GUEST_SYSENTER_CS] = s.sysenter_cs
    fields[F.GUEST_SYSENTER_ESP] = s.sysenter_esp
    fields[F.GUEST_SYSENTER_EIP] = s.sysenter_eip
    exit_ctls = fields[F.VM_EXIT_CONTROLS]
    for control, saved in SAVED_UNDER_EXIT_CONTROL:
        if exit_ctls & control:
            for field, attribute in saved:
                fields[field] = getattr(s, attribute)
    fields[F.GUEST_ACTIVITY_STATE] = s.activity_state
    fields[F.GUEST_INTERRUPTIBILITY_INFO] = s.interruptibility
    fields[F.GUEST_PENDING_DBG_EXCEPTIONS] = s.pending_dbg_exceptions
    # The "IA-32e mode guest" entry control receives IA32_EFER.LMA (§28.2.5).
    if s.efer & EFER_LMA:
        fields[F.VM_ENTRY_CONTROLS] |= EntryCtls.IA32E_MODE_GUEST
    else:
        fields[F.VM_ENTRY_CONTROLS] &= ~EntryCtls.IA32E_MODE_GUEST


_host_control_registers = itemgetter(F.VM_EXIT_CONTROLS, F.HOST_CR0, F.HOST_CR3, F.HOST_CR4)
_host_selectors = itemgetter(*HOST_SELECTOR_FIELDS)
_host_segment_bases = itemgetter(F.HOST_FS_BASE, F.HOST_GS_BASE, F.HOST_TR_BASE)
_host_sysenter = itemgetter(F.HOST_IA32_SYSENTER_CS, F.HOST_IA32_SYSENTER_ESP, F.HOST_IA32_SYSENTER_EIP)
_HOST_DATA_AR = 0x3 | AR_S | AR_P | AR_DB | AR_G


def host_segments(fields: dict[int, int]) -> list[tuple[int, int, int, int]]:
    """(selector, base, limit, access rights) of ES, CS, SS, DS, FS, GS, LDTR and TR as a VM exit
    loads them from the host-state area (SDM §28.5.2)."""
    long_mode = bool(fields[F.VM_EXIT_CONTROLS] & ExitCtls.HOST_ADDR_SPACE_SIZE)
    es, cs, ss, ds, fs, gs, tr = _host_selectors(fields)
    fs_base, gs_base, tr_base = _host_segment_bases(fields)
    ar = [_HOST_DATA_AR | (AR_UNUSABLE if selector == 0 else 0) for selector in (es, ss, ds, fs, gs)]
    if long_mode:
        ar[1] &= ~AR_UNUSABLE  # a null SS stays usable in 64-bit mode
    code = 0xB | AR_S | AR_P | AR_G | (AR_L if long_mode else AR_DB)
    flat = 0xFFFF_FFFF
    return [
        (es, 0, flat, ar[0]),
        (cs, 0, flat, code),
        (ss, 0, flat, ar[1]),
        (ds, 0, flat, ar[2]),
        (fs, fs_base, flat, ar[3]),
        (gs, gs_base, flat, ar[4]),
        (0, 0, 0, AR_UNUSABLE),
        (tr, tr_base, 0x67, 0xB | AR_P),
    ]


def load_host_state(fields: dict[int, int], s: CpuState) -> None:
    """SDM §28.5: processor state from the host-state area; RFLAGS is cleared but for bit 1."""
    exit_ctls, cr0, cr3, cr4 = _host_control_registers(fields)
    long_mode = bool(exit_ctls & ExitCtls.HOST_ADDR_SPACE_SIZE)
    s.cr0 = load_cr0(s.cr0, cr0)
    s.cr3 = cr3
    s.cr4 = cr4 | (CR4_PAE if long_mode else 0)
    s.dr7 = 0x400
    s.debugctl = 0
    s.sysenter_cs, s.sysenter_esp, s.sysenter_eip = _host_sysenter(fields)
    if exit_ctls & ExitCtls.LOAD_PAT:
        s.pat = fields[F.HOST_IA32_PAT]
    if exit_ctls & ExitCtls.LOAD_EFER:
        s.efer = fields[F.HOST_IA32_EFER]
    elif long_mode:
        s.efer |= EFER_LMA | EFER_LME
    else:
        s.efer &= ~(EFER_LMA | EFER_LME)
    if exit_ctls & ExitCtls.LOAD_PERF_GLOBAL_CTRL:
        s.perf_global_ctrl = fields[F.HOST_IA32_PERF_GLOBAL_CTRL]
    s.segs[:] = [Segment(*segment) for segment in host_segments(fields)]
    s.gdtr_base, s.gdtr_limit = fields[F.HOST_GDTR_BASE], 0xFFFF
    s.idtr_base, s.idtr_limit = fields[F.HOST_IDTR_BASE], 0xFFFF
    s.gpr[RSP], s.rip = fields[F.HOST_RSP], fields[F.HOST_RIP]
    s.rflags = RFLAGS_FIXED
    s.activity_state = 0
    s.interruptibility = 0
    s.pending_dbg_exceptions = 0
