"""VMX control bits (SDM Vol. 3C §25.6, §25.7, §25.8) and which capability makes a VMCS field exist."""

from __future__ import annotations

import enum

# The control words are IntEnums, not IntFlags: `value & PrimaryCtls.X` then stays in C (IntFlag's
# operators are Python code, about a tenth of the time of a nested exit) and yields a plain int.


class PinBased(enum.IntEnum):
    """Pin-based VM-execution controls, field 0x4000 (SDM Table 25-5)."""

    EXT_INTR_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    PREEMPTION_TIMER = 1 << 6
    POSTED_INTR = 1 << 7


class PrimaryCtls(enum.IntEnum):
    """Primary processor-based VM-execution controls, field 0x4002 (SDM Table 25-6)."""

    INTR_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    ACTIVATE_TERTIARY_CONTROLS = 1 << 17
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCOND_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryCtls(enum.IntEnum):
    """Secondary processor-based VM-execution controls, field 0x401E (SDM Table 25-7)."""

    VIRTUALIZE_APIC_ACCESSES = 1 << 0
    ENABLE_EPT = 1 << 1
    DESC_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    VIRTUALIZE_X2APIC_MODE = 1 << 4
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7
    APIC_REGISTER_VIRT = 1 << 8
    VIRTUAL_INTR_DELIVERY = 1 << 9
    PAUSE_LOOP_EXITING = 1 << 10
    RDRAND_EXITING = 1 << 11
    ENABLE_INVPCID = 1 << 12
    ENABLE_VMFUNC = 1 << 13
    SHADOW_VMCS = 1 << 14
    ENCLS_EXITING = 1 << 15
    RDSEED_EXITING = 1 << 16
    ENABLE_PML = 1 << 17
    EPT_VIOLATION_VE = 1 << 18
    CONCEAL_VMX_FROM_PT = 1 << 19
    ENABLE_XSAVES = 1 << 20
    PASID_TRANSLATION = 1 << 21
    MODE_BASED_EPT_EXEC = 1 << 22
    SUB_PAGE_WRITE = 1 << 23
    PT_USE_GPA = 1 << 24
    TSC_SCALING = 1 << 25
    ENABLE_USR_WAIT_PAUSE = 1 << 26
    ENABLE_PCONFIG = 1 << 27
    ENCLV_EXITING = 1 << 28
    BUS_LOCK_DETECTION = 1 << 30
    INSTRUCTION_TIMEOUT = 1 << 31


class TertiaryCtls(enum.IntEnum):
    """Tertiary processor-based VM-execution controls, field 0x2034 (64 bits)."""

    LOADIWKEY_EXITING = 1 << 0
    ENABLE_HLAT = 1 << 1
    EPT_PAGING_WRITE = 1 << 2
    GUEST_PAGING_VERIFY = 1 << 3
    IPI_VIRTUALIZATION = 1 << 4
    ENABLE_MSRLIST = 1 << 6
    VIRTUALIZE_SPEC_CTRL = 1 << 7


class ExitCtls(enum.IntEnum):
    """Primary VM-exit controls, field 0x400C (SDM Table 25-13)."""

    SAVE_DEBUG_CONTROLS = 1 << 2
    HOST_ADDR_SPACE_SIZE = 1 << 9
    LOAD_PERF_GLOBAL_CTRL = 1 << 12
    ACK_INTR_ON_EXIT = 1 << 15
    SAVE_PAT = 1 << 18
    LOAD_PAT = 1 << 19
    SAVE_EFER = 1 << 20
    LOAD_EFER = 1 << 21
    SAVE_PREEMPTION_TIMER = 1 << 22
    CLEAR_BNDCFGS = 1 << 23
    CONCEAL_VMX_FROM_PT = 1 << 24
    CLEAR_RTIT_CTL = 1 << 25
    CLEAR_LBR_CTL = 1 << 26
    CLEAR_UINV = 1 << 27
    LOAD_CET_STATE = 1 << 28
    LOAD_PKRS = 1 << 29
    SAVE_PERF_GLOBAL_CTRL = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class EntryCtls(enum.IntEnum):
    """VM-entry controls, field 0x4012 (SDM Table 25-15)."""

    LOAD_DEBUG_CONTROLS = 1 << 2
    IA32E_MODE_GUEST = 1 << 9
    ENTRY_TO_SMM = 1 << 10
    DEACTIVATE_DUAL_MONITOR = 1 << 11
    LOAD_PERF_GLOBAL_CTRL = 1 << 13
    LOAD_PAT = 1 << 14
    LOAD_EFER = 1 << 15
    LOAD_BNDCFGS = 1 << 16
    CONCEAL_VMX_FROM_PT = 1 << 17
    LOAD_RTIT_CTL = 1 << 18
    LOAD_UINV = 1 << 19
    LOAD_CET_STATE = 1 << 20
    LOAD_LBR_CTL = 1 << 21
    LOAD_PKRS = 1 << 22
    LOAD_FRED = 1 << 23


class ControlKind(enum.Enum):
    """The control words a capability MSR describes."""

    PIN = "pin"
    PRIMARY = "primary"
    SECONDARY = "secondary"
    TERTIARY = "tertiary"
    EXIT = "exit"
    ENTRY = "entry"
    VMFUNC = "vmfunc"
    SEAM = "seam"  # TDX SEAM mode only; no modelled processor has it


# A field whose row in arch.fields names a capability exists only on processors that allow
# the 1-setting of that control (SDM Appendix B footnotes).
FIELD_CAPABILITY: dict[str, tuple[ControlKind, int]] = {
    "vpid": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_VPID),
    "posted_interrupts": (ControlKind.PIN, PinBased.POSTED_INTR),
    "ept_violation_ve": (ControlKind.SECONDARY, SecondaryCtls.EPT_VIOLATION_VE),
    "hlat": (ControlKind.TERTIARY, TertiaryCtls.ENABLE_HLAT),
    "ipi_virtualization": (ControlKind.TERTIARY, TertiaryCtls.IPI_VIRTUALIZATION),
    "virtual_interrupt_delivery": (ControlKind.SECONDARY, SecondaryCtls.VIRTUAL_INTR_DELIVERY),
    "pml": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_PML),
    "load_uinv": (ControlKind.ENTRY, EntryCtls.LOAD_UINV),
    "msr_bitmaps": (ControlKind.PRIMARY, PrimaryCtls.USE_MSR_BITMAPS),
    "tpr_shadow": (ControlKind.PRIMARY, PrimaryCtls.TPR_SHADOW),
    "virtualize_apic_accesses": (ControlKind.SECONDARY, SecondaryCtls.VIRTUALIZE_APIC_ACCESSES),
    "vm_functions": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_VMFUNC),
    "eptp_switching": (ControlKind.VMFUNC, 1 << 0),
    "ept": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_EPT),
    "vmcs_shadowing": (ControlKind.SECONDARY, SecondaryCtls.SHADOW_VMCS),
    "xsaves": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_XSAVES),
    "encls_exiting": (ControlKind.SECONDARY, SecondaryCtls.ENCLS_EXITING),
    "sub_page_write": (ControlKind.SECONDARY, SecondaryCtls.SUB_PAGE_WRITE),
    "tsc_scaling": (ControlKind.SECONDARY, SecondaryCtls.TSC_SCALING),
    "tertiary_controls": (ControlKind.PRIMARY, PrimaryCtls.ACTIVATE_TERTIARY_CONTROLS),
    "enclv_exiting": (ControlKind.SECONDARY, SecondaryCtls.ENCLV_EXITING),
    "pasid_translation": (ControlKind.SECONDARY, SecondaryCtls.PASID_TRANSLATION),
    "seam": (ControlKind.SEAM, 1),
    "pconfig": (ControlKind.SECONDARY, SecondaryCtls.ENABLE_PCONFIG),
    "secondary_exit_controls": (ControlKind.EXIT, ExitCtls.ACTIVATE_SECONDARY_CONTROLS),
    "virtualize_spec_ctrl": (ControlKind.TERTIARY, TertiaryCtls.VIRTUALIZE_SPEC_CTRL),
    "fred": (ControlKind.ENTRY, EntryCtls.LOAD_FRED),
    "load_pat": (ControlKind.ENTRY, EntryCtls.LOAD_PAT),
    "load_efer": (ControlKind.ENTRY, EntryCtls.LOAD_EFER),
    "load_perf_global_ctrl": (ControlKind.ENTRY, EntryCtls.LOAD_PERF_GLOBAL_CTRL),
    "load_bndcfgs": (ControlKind.ENTRY, EntryCtls.LOAD_BNDCFGS),
    "load_rtit_ctl": (ControlKind.ENTRY, EntryCtls.LOAD_RTIT_CTL),
    "load_lbr_ctl": (ControlKind.ENTRY, EntryCtls.LOAD_LBR_CTL),
    "load_pkrs": (ControlKind.ENTRY, EntryCtls.LOAD_PKRS),
    "load_cet": (ControlKind.ENTRY, EntryCtls.LOAD_CET_STATE),
    "load_host_pat": (ControlKind.EXIT, ExitCtls.LOAD_PAT),
    "load_host_efer": (ControlKind.EXIT, ExitCtls.LOAD_EFER),
    "load_host_perf_global_ctrl": (ControlKind.EXIT, ExitCtls.LOAD_PERF_GLOBAL_CTRL),
    "load_host_pkrs": (ControlKind.EXIT, ExitCtls.LOAD_PKRS),
    "load_host_cet": (ControlKind.EXIT, ExitCtls.LOAD_CET_STATE),
    "secondary_controls": (ControlKind.PRIMARY, PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS),
    "pause_loop_exiting": (ControlKind.SECONDARY, SecondaryCtls.PAUSE_LOOP_EXITING),
    "instruction_timeout": (ControlKind.SECONDARY, SecondaryCtls.INSTRUCTION_TIMEOUT),
    "preemption_timer": (ControlKind.PIN, PinBased.PREEMPTION_TIMER),
}


class InterruptionType(enum.IntEnum):
    """Bits 10:8 of the interruption-information formats (SDM §25.8.3, §28.2.2)."""

    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7


# Events an instruction raises (INT n, INT1, INT3/INTO): RIP is past it when they are delivered,
# and exits, injections and IDT-vectoring carry its length (SDM §27.6.1.1, §28.2.4).
INSTRUCTION_EVENT_TYPES = frozenset(
    {
        InterruptionType.SOFTWARE_INTERRUPT,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)

INTR_INFO_VALID = 1 << 31
INTR_INFO_DELIVER_ERROR_CODE = 1 << 11
