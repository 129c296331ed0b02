"""VM-entry checks and loading (SDM Vol. 3C chapter 27).

`check_controls` (§27.2.1, failure = VMfailValid(7)), `check_host_state` (§27.2.2-27.2.4,
VMfailValid(8)), `check_guest_state` (§27.3.1, VM-entry failure with exit reason 33),
`load_guest_state` (§27.3.2) and `load_msrs` (§27.4, exit reason 34).  Every check is a named
rule so that tests/hw/test_vmentry_checks.py can list and exercise them.
"""

from __future__ import annotations

import operator

from nestvmx.arch.controls import (
    INSTRUCTION_EVENT_TYPES,
    INTR_INFO_DELIVER_ERROR_CODE,
    INTR_INFO_VALID,
    ControlKind,
    EntryCtls,
    ExitCtls,
    InterruptionType,
    PinBased,
    PrimaryCtls,
    SecondaryCtls,
)
from nestvmx.arch.exit_reasons import EntryFailureQualification
from nestvmx.arch.fields import VMCS_FIELDS, FieldType
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import (
    EPT_CAP_AD_BITS,
    EPT_CAP_MEMTYPE_UC,
    EPT_CAP_MEMTYPE_WB,
    EPT_CAP_PAGE_WALK_4,
    EPT_CAP_PAGE_WALK_5,
    VMX_MISC_ZERO_LEN_INJECTION,
    Msr,
)
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.state import (
    AR_DB,
    AR_G,
    AR_L,
    AR_P,
    AR_RESERVED,
    AR_S,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    CR4_PCIDE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_FIXED,
    RFLAGS_IF,
    RFLAGS_TF,
    RFLAGS_VM,
    RSP,
    CpuState,
    Seg,
    Segment,
    canonical,
)
from nestvmx.hw.vmcs import INVALID_POINTER, SHADOW_VMCS_INDICATOR, read_revision, secondary_controls
from nestvmx.hw.vmexit import GUEST_SEGMENT_FIELDS, HOST_SELECTOR_FIELDS, load_cr0

Fields = dict[int, int]

_EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17})
_EFER_VALID = (1 << 0) | EFER_LME | EFER_LMA | (1 << 11)  # SCE, LME, LMA, NXE
_PERF_GLOBAL_CTRL_VALID = 0x0000_0007_0000_000F  # 4 general and 3 fixed counters
_DEBUGCTL_RESERVED = 0xFFFF_FFFF_FFFF_803C  # bits 2-5 and 15-63
_RFLAGS_RESERVED = 0xFFFF_FFFF_FFC0_8028  # bits 63:22, 15, 5, 3
# B3-B0, enabled breakpoint, BS.  Bit 16 (RTM) needs CPUID RTM, which no modelled processor
# enumerates (Haswell's TSX is disabled by microcode, erratum HSW136); Bochs also rejects it.
_PENDING_DBG_VALID = 0x500F
_BS = 1 << 14
# Bits 31:5 are reserved; bit 4 (enclave interruption) needs SGX, which no modelled processor has.
_INTERRUPTIBILITY_RESERVED = 0xFFFF_FFF0
_BLOCK_STI, _BLOCK_MOV_SS, _BLOCK_SMI, _BLOCK_NMI = 1, 2, 4, 8
_ACTIVITY_HLT, _ACTIVITY_SHUTDOWN, _ACTIVITY_WAIT_FOR_SIPI = 1, 2, 3


def _injection_allowed(activity: int, kind: int, vector: int) -> bool:
    """SDM §27.3.1.5: the events VM entry may inject into each activity state."""
    if activity == _ACTIVITY_HLT:
        return (
            kind in (InterruptionType.EXTERNAL_INTERRUPT, InterruptionType.NMI)
            or (kind == InterruptionType.HARDWARE_EXCEPTION and vector in (1, 18))
            or (kind == InterruptionType.OTHER_EVENT and vector == 0)
        )
    if activity == _ACTIVITY_SHUTDOWN:
        return kind == InterruptionType.NMI or (kind == InterruptionType.HARDWARE_EXCEPTION and vector == 18)
    return activity != _ACTIVITY_WAIT_FOR_SIPI


def _addr_ok(model: CpuModel, address: int, align: int = 0x1000) -> bool:
    """Aligned and within the physical-address width."""
    return address % align == 0 and address >> model.phys_addr_bits == 0


def _pat_ok(pat: int) -> bool:
    """Every byte a memory type 0, 1, 4, 5, 6 or 7: none above 7, none with bit 1 set and bit 2 clear."""
    return not (pat & 0xF8F8_F8F8_F8F8_F8F8 or pat & ~(pat >> 1) & 0x0202_0202_0202_0202)


def control_allowed(model: CpuModel, kind: ControlKind, value: int) -> bool:
    """Allowed-0 bits set and allowed-1 bits respected (SDM Appendix A.3-A.5)."""
    msr = model.control_msr(kind)
    must_be_one, may_be_one = msr & 0xFFFF_FFFF, msr >> 32
    return value & must_be_one == must_be_one and value & ~may_be_one & 0xFFFF_FFFF == 0


def eptp_valid(model: CpuModel, eptp: int) -> bool:
    """SDM §27.2.1.1, EPT-pointer rules (also INVEPT's single-context check)."""
    cap = model.msrs.get(Msr.IA32_VMX_EPT_VPID_CAP, 0)
    memtype = eptp & 7
    if not ((memtype == 0 and cap & EPT_CAP_MEMTYPE_UC) or (memtype == 6 and cap & EPT_CAP_MEMTYPE_WB)):
        return False
    walk = (eptp >> 3) & 7
    if not ((walk == 3 and cap & EPT_CAP_PAGE_WALK_4) or (walk == 4 and cap & EPT_CAP_PAGE_WALK_5)):
        return False
    if eptp & (1 << 6) and not cap & EPT_CAP_AD_BITS:
        return False
    return eptp & 0xF80 == 0 and eptp >> model.phys_addr_bits == 0


def check_controls(model: CpuModel, f: Fields, memory: PhysicalMemory) -> str | None:
    """The first VM-execution, VM-exit or VM-entry control rule the VMCS breaks, or None."""
    pin, primary, secondary = f[F.PIN_BASED_VM_EXEC_CONTROL], f[F.CPU_BASED_VM_EXEC_CONTROL], secondary_controls(f)
    exit_ctls, entry_ctls = f[F.VM_EXIT_CONTROLS], f[F.VM_ENTRY_CONTROLS]
    if not control_allowed(model, ControlKind.PIN, pin):
        return "pin-based controls reserved bits"
    if not control_allowed(model, ControlKind.PRIMARY, primary):
        return "primary processor-based controls reserved bits"
    if primary & PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS and not control_allowed(
        model, ControlKind.SECONDARY, secondary
    ):
        return "secondary processor-based controls reserved bits"
    if f[F.CR3_TARGET_COUNT] > (model.msrs[Msr.IA32_VMX_MISC] >> 16) & 0x1FF:
        return "CR3-target count"
    if primary & PrimaryCtls.USE_IO_BITMAPS and not (
        _addr_ok(model, f[F.IO_BITMAP_A]) and _addr_ok(model, f[F.IO_BITMAP_B])
    ):
        return "I/O-bitmap addresses"
    if primary & PrimaryCtls.USE_MSR_BITMAPS and not _addr_ok(model, f[F.MSR_BITMAP]):
        return "MSR-bitmap address"
    vid = secondary & SecondaryCtls.VIRTUAL_INTR_DELIVERY
    if primary & PrimaryCtls.TPR_SHADOW:
        vapic = f[F.VIRTUAL_APIC_PAGE_ADDR]
        if not _addr_ok(model, vapic):
            return "virtual-APIC address"
        threshold = f[F.TPR_THRESHOLD]
        if not vid and threshold & 0xFFFF_FFF0:
            return "TPR threshold bits 31:4"
        if not vid and not secondary & SecondaryCtls.VIRTUALIZE_APIC_ACCESSES:
            vtpr = memory.read_bus(vapic + 0x80, 1)
            if threshold & 0xF > vtpr >> 4:
                return "TPR threshold above VTPR"
    elif secondary & (SecondaryCtls.VIRTUALIZE_X2APIC_MODE | SecondaryCtls.APIC_REGISTER_VIRT | vid):
        return "APIC virtualization without TPR shadow"
    if not pin & PinBased.NMI_EXITING and pin & PinBased.VIRTUAL_NMIS:
        return "virtual NMIs without NMI exiting"
    if not pin & PinBased.VIRTUAL_NMIS and primary & PrimaryCtls.NMI_WINDOW_EXITING:
        return "NMI-window exiting without virtual NMIs"
    if secondary & SecondaryCtls.VIRTUALIZE_APIC_ACCESSES and not _addr_ok(model, f[F.APIC_ACCESS_ADDR]):
        return "APIC-access address"
    if secondary & SecondaryCtls.VIRTUALIZE_X2APIC_MODE and secondary & SecondaryCtls.VIRTUALIZE_APIC_ACCESSES:
        return "x2APIC mode with APIC-access virtualization"
    if vid and not pin & PinBased.EXT_INTR_EXITING:
        return "virtual-interrupt delivery without external-interrupt exiting"
    if pin & PinBased.POSTED_INTR and not (
        vid
        and exit_ctls & ExitCtls.ACK_INTR_ON_EXIT
        and f[F.POSTED_INTR_NV] <= 0xFF
        and _addr_ok(model, f[F.POSTED_INTR_DESC_ADDR], 64)
    ):
        return "posted-interrupt settings"
    if secondary & SecondaryCtls.ENABLE_VPID and f[F.VIRTUAL_PROCESSOR_ID] == 0:
        return "VPID 0"
    ept = secondary & SecondaryCtls.ENABLE_EPT
    if ept and not eptp_valid(model, f[F.EPT_POINTER]):
        return "EPT pointer"
    if secondary & SecondaryCtls.ENABLE_PML and not (ept and _addr_ok(model, f[F.PML_ADDRESS])):
        return "PML settings"
    if secondary & SecondaryCtls.UNRESTRICTED_GUEST and not ept:
        return "unrestricted guest without EPT"
    if secondary & SecondaryCtls.ENABLE_VMFUNC:
        vmfunc = f[F.VM_FUNCTION_CONTROL]
        if vmfunc & ~model.msrs.get(Msr.IA32_VMX_VMFUNC, 0):
            return "VM-function controls reserved bits"
        if vmfunc & 1 and not (ept and _addr_ok(model, f[F.EPTP_LIST_ADDRESS])):
            return "EPTP switching settings"
    if secondary & SecondaryCtls.SHADOW_VMCS and not (
        _addr_ok(model, f[F.VMREAD_BITMAP]) and _addr_ok(model, f[F.VMWRITE_BITMAP])
    ):
        return "VMREAD/VMWRITE-bitmap addresses"
    if secondary & SecondaryCtls.EPT_VIOLATION_VE and not _addr_ok(model, f[F.VE_INFORMATION_ADDRESS]):
        return "#VE information address"
    # VM-exit controls (§27.2.1.2)
    if not control_allowed(model, ControlKind.EXIT, exit_ctls):
        return "VM-exit controls reserved bits"
    if exit_ctls & ExitCtls.SAVE_PREEMPTION_TIMER and not pin & PinBased.PREEMPTION_TIMER:
        return "save preemption timer without the timer"
    for count, addr in (
        (F.VM_EXIT_MSR_STORE_COUNT, F.VM_EXIT_MSR_STORE_ADDR),
        (F.VM_EXIT_MSR_LOAD_COUNT, F.VM_EXIT_MSR_LOAD_ADDR),
        (F.VM_ENTRY_MSR_LOAD_COUNT, F.VM_ENTRY_MSR_LOAD_ADDR),
    ):
        n = f[count]
        if n and not (f[addr] % 16 == 0 and (f[addr] + 16 * n - 1) >> model.phys_addr_bits == 0):
            return "MSR-area address"
    # VM-entry controls (§27.2.1.3)
    if not control_allowed(model, ControlKind.ENTRY, entry_ctls):
        return "VM-entry controls reserved bits"
    if entry_ctls & (EntryCtls.ENTRY_TO_SMM | EntryCtls.DEACTIVATE_DUAL_MONITOR):
        return "entry to SMM outside SMM"
    return _check_event_injection(model, f, primary, secondary)


def _check_event_injection(model: CpuModel, f: Fields, primary: int, secondary: int) -> str | None:
    info = f[F.VM_ENTRY_INTR_INFO_FIELD]
    if not info & INTR_INFO_VALID:
        return None
    vector, kind = info & 0xFF, (info >> 8) & 7
    if kind == 1 or (
        kind == InterruptionType.OTHER_EVENT and not model.allows(ControlKind.PRIMARY, PrimaryCtls.MONITOR_TRAP_FLAG)
    ):
        return "injected event type"
    if (
        (kind == InterruptionType.NMI and vector != 2)
        or (kind == InterruptionType.HARDWARE_EXCEPTION and vector > 31)
        or (kind == InterruptionType.OTHER_EVENT and vector != 0)
    ):
        return "injected event vector"
    protected = f[F.GUEST_CR0] & CR0_PE or not secondary & SecondaryCtls.UNRESTRICTED_GUEST
    wants_error_code = (
        kind == InterruptionType.HARDWARE_EXCEPTION and vector in _EXCEPTIONS_WITH_ERROR_CODE and protected
    )
    if bool(info & INTR_INFO_DELIVER_ERROR_CODE) != bool(wants_error_code):
        return "injected event deliver-error-code bit"
    if info & 0x7FFF_F000:
        return "injected event reserved bits"
    if info & INTR_INFO_DELIVER_ERROR_CODE and f[F.VM_ENTRY_EXCEPTION_ERROR_CODE] & 0xFFFF_0000:
        return "injected error code bits 31:16"
    if kind in INSTRUCTION_EVENT_TYPES:
        length = f[F.VM_ENTRY_INSTRUCTION_LEN]
        zero_ok = model.msrs[Msr.IA32_VMX_MISC] & VMX_MISC_ZERO_LEN_INJECTION
        if not (1 <= length <= 15 or (length == 0 and zero_ok)):
            return "injected event instruction length"
    return None


def _fixed_ok(value: int, fixed0: int, fixed1: int) -> bool:
    return value & fixed0 == fixed0 and value & ~fixed1 & 0xFFFF_FFFF == 0 and value >> 32 == 0


def check_host_state(model: CpuModel, f: Fields, root: CpuState) -> str | None:
    """The first host-state rule (SDM §27.2.2-27.2.4) the VMCS breaks, or None."""
    m = model.msrs
    exit_ctls, entry_ctls = f[F.VM_EXIT_CONTROLS], f[F.VM_ENTRY_CONTROLS]
    host64 = bool(exit_ctls & ExitCtls.HOST_ADDR_SPACE_SIZE)
    if not _fixed_ok(f[F.HOST_CR0], m[Msr.IA32_VMX_CR0_FIXED0], m[Msr.IA32_VMX_CR0_FIXED1]):
        return "host CR0 fixed bits"
    if not _fixed_ok(f[F.HOST_CR4], m[Msr.IA32_VMX_CR4_FIXED0], m[Msr.IA32_VMX_CR4_FIXED1]):
        return "host CR4 fixed bits"
    if f[F.HOST_CR3] >> model.phys_addr_bits:
        return "host CR3 beyond physical-address width"
    if not (canonical(f[F.HOST_IA32_SYSENTER_ESP]) and canonical(f[F.HOST_IA32_SYSENTER_EIP])):
        return "host SYSENTER_ESP/EIP not canonical"
    if exit_ctls & ExitCtls.LOAD_PERF_GLOBAL_CTRL and f[F.HOST_IA32_PERF_GLOBAL_CTRL] & ~_PERF_GLOBAL_CTRL_VALID:
        return "host IA32_PERF_GLOBAL_CTRL reserved bits"
    if exit_ctls & ExitCtls.LOAD_PAT and not _pat_ok(f[F.HOST_IA32_PAT]):
        return "host IA32_PAT"
    if exit_ctls & ExitCtls.LOAD_EFER:
        efer = f[F.HOST_IA32_EFER]
        if efer & ~_EFER_VALID or bool(efer & EFER_LMA) != host64 or bool(efer & EFER_LME) != host64:
            return "host IA32_EFER"
    for sel in HOST_SELECTOR_FIELDS:
        if f[sel] & 7:
            return "host selector RPL/TI"
    if f[F.HOST_CS_SELECTOR] == 0 or f[F.HOST_TR_SELECTOR] == 0:
        return "host CS or TR selector null"
    if not host64 and f[F.HOST_SS_SELECTOR] == 0:
        return "host SS selector null"
    for base in (F.HOST_FS_BASE, F.HOST_GS_BASE, F.HOST_GDTR_BASE, F.HOST_IDTR_BASE, F.HOST_TR_BASE):
        if not canonical(f[base]):
            return "host base not canonical"
    ia32e_guest = bool(entry_ctls & EntryCtls.IA32E_MODE_GUEST)
    if not root.efer & EFER_LMA:
        if ia32e_guest or host64:
            return "IA-32e mode settings outside IA-32e mode"
    elif not host64:
        return "host address-space size 0 in IA-32e mode"
    if not host64:
        if ia32e_guest or f[F.HOST_CR4] & CR4_PCIDE or f[F.HOST_RIP] >> 32:
            return "host address-space size 0 settings"
    elif not f[F.HOST_CR4] & CR4_PAE or not canonical(f[F.HOST_RIP]):
        return "host address-space size 1 settings"
    return None


_guest_segment_fields = tuple(operator.itemgetter(*fields) for fields in GUEST_SEGMENT_FIELDS)


def _guest_segments(f: Fields) -> list[Segment]:
    return [Segment(*fields(f)) for fields in _guest_segment_fields]


def _limit_granularity_ok(seg: Segment) -> bool:
    if seg.limit & 0xFFF != 0xFFF and seg.ar & AR_G:
        return False
    return not (seg.limit & 0xFFF0_0000 and not seg.ar & AR_G)


def check_guest_state(model: CpuModel, f: Fields, memory: PhysicalMemory, current_vmcs: int) -> tuple[str, int] | None:
    """The first guest-state rule (SDM §27.3.1) the VMCS breaks, with the exit qualification."""
    m = model.msrs
    entry_ctls, secondary = f[F.VM_ENTRY_CONTROLS], secondary_controls(f)
    unrestricted = bool(secondary & SecondaryCtls.UNRESTRICTED_GUEST)
    ia32e = bool(entry_ctls & EntryCtls.IA32E_MODE_GUEST)
    cr0, cr4, rflags = f[F.GUEST_CR0], f[F.GUEST_CR4], f[F.GUEST_RFLAGS]
    fail = EntryFailureQualification.DEFAULT

    # Control registers, debug registers and MSRs (§27.3.1.1)
    fixed0 = m[Msr.IA32_VMX_CR0_FIXED0] & ~((CR0_PE | CR0_PG) if unrestricted else 0)
    if not _fixed_ok(cr0, fixed0, m[Msr.IA32_VMX_CR0_FIXED1]):
        return "guest CR0 fixed bits", fail
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return "guest CR0.PG without PE", fail
    if not _fixed_ok(cr4, m[Msr.IA32_VMX_CR4_FIXED0], m[Msr.IA32_VMX_CR4_FIXED1]):
        return "guest CR4 fixed bits", fail
    if entry_ctls & EntryCtls.LOAD_DEBUG_CONTROLS and (
        f[F.GUEST_IA32_DEBUGCTL] & _DEBUGCTL_RESERVED or f[F.GUEST_DR7] >> 32
    ):
        return "guest DEBUGCTL/DR7 reserved bits", fail
    if ia32e and not (cr0 & CR0_PG and cr4 & CR4_PAE):
        return "IA-32e mode guest without paging and PAE", fail
    if not ia32e and cr4 & CR4_PCIDE:
        return "guest CR4.PCIDE outside IA-32e mode", fail
    if f[F.GUEST_CR3] >> model.phys_addr_bits:
        return "guest CR3 beyond physical-address width", fail
    if not (canonical(f[F.GUEST_SYSENTER_ESP]) and canonical(f[F.GUEST_SYSENTER_EIP])):
        return "guest SYSENTER_ESP/EIP not canonical", fail
    if entry_ctls & EntryCtls.LOAD_PERF_GLOBAL_CTRL and f[F.GUEST_IA32_PERF_GLOBAL_CTRL] & ~_PERF_GLOBAL_CTRL_VALID:
        return "guest IA32_PERF_GLOBAL_CTRL reserved bits", fail
    if entry_ctls & EntryCtls.LOAD_PAT and not _pat_ok(f[F.GUEST_IA32_PAT]):
        return "guest IA32_PAT", fail
    if entry_ctls & EntryCtls.LOAD_EFER:
        efer = f[F.GUEST_IA32_EFER]
        if efer & ~_EFER_VALID or bool(efer & EFER_LMA) != ia32e or (cr0 & CR0_PG and bool(efer & EFER_LME) != ia32e):
            return "guest IA32_EFER", fail

    # Segment registers (§27.3.1.2)
    segs = _guest_segments(f)
    v86 = bool(rflags & RFLAGS_VM)
    problem = _check_guest_segments(segs, v86, unrestricted, ia32e, cr0)
    if problem:
        return problem, fail

    # Descriptor-table registers (§27.3.1.3)
    if not (canonical(f[F.GUEST_GDTR_BASE]) and canonical(f[F.GUEST_IDTR_BASE])):
        return "guest GDTR/IDTR base not canonical", fail
    if (f[F.GUEST_GDTR_LIMIT] | f[F.GUEST_IDTR_LIMIT]) >> 16:
        return "guest GDTR/IDTR limit bits 31:16", fail

    # RIP and RFLAGS (§27.3.1.4)
    rip = f[F.GUEST_RIP]
    if (not ia32e or not segs[Seg.CS].ar & AR_L) and rip >> 32:
        return "guest RIP bits 63:32", fail
    if ia32e and segs[Seg.CS].ar & AR_L and not canonical(rip):
        return "guest RIP not canonical", fail
    if rflags & _RFLAGS_RESERVED or not rflags & RFLAGS_FIXED:
        return "guest RFLAGS reserved bits", fail
    if (ia32e or not cr0 & CR0_PE) and v86:
        return "guest RFLAGS.VM", fail
    intr_info = f[F.VM_ENTRY_INTR_INFO_FIELD]
    injecting = bool(intr_info & INTR_INFO_VALID)
    inject_kind = (intr_info >> 8) & 7 if injecting else None
    if inject_kind == InterruptionType.EXTERNAL_INTERRUPT and not rflags & RFLAGS_IF:
        return "external interrupt injected with RFLAGS.IF = 0", fail

    # Non-register state (§27.3.1.5)
    activity, intr = f[F.GUEST_ACTIVITY_STATE], f[F.GUEST_INTERRUPTIBILITY_INFO]
    supported_activity = {0} | {s for s in (1, 2, 3) if m[Msr.IA32_VMX_MISC] >> (5 + s) & 1}
    if activity not in supported_activity:
        return "guest activity state", fail
    if activity == _ACTIVITY_HLT and segs[Seg.SS].dpl != 0:
        return "HLT activity state with SS.DPL != 0", fail
    if activity and intr & (_BLOCK_STI | _BLOCK_MOV_SS):
        return "inactive guest with STI/MOV-SS blocking", fail
    if injecting and not _injection_allowed(activity, inject_kind, intr_info & 0xFF):
        return "event injection blocked in the activity state", fail
    if intr & _INTERRUPTIBILITY_RESERVED:
        return "guest interruptibility reserved bits", fail
    if intr & _BLOCK_STI and intr & _BLOCK_MOV_SS:
        return "both STI and MOV-SS blocking", fail
    if not rflags & RFLAGS_IF and intr & _BLOCK_STI:
        return "STI blocking with RFLAGS.IF = 0", fail
    if inject_kind == InterruptionType.EXTERNAL_INTERRUPT and intr & (_BLOCK_STI | _BLOCK_MOV_SS):
        return "event injected under STI/MOV-SS blocking", fail
    if inject_kind == InterruptionType.NMI and intr & _BLOCK_MOV_SS:
        return "event injected under STI/MOV-SS blocking", fail
    # "A processor may require bit 0 (blocking by STI) to be 0" when injecting an NMI; this one
    # does, and reports it with exit qualification 3 (§27.8).
    if inject_kind == InterruptionType.NMI and intr & _BLOCK_STI:
        return "NMI injected under STI blocking", EntryFailureQualification.NMI_INJECTION
    if intr & _BLOCK_SMI:
        return "blocking by SMI outside SMM", fail
    if (
        inject_kind == InterruptionType.NMI
        and f[F.PIN_BASED_VM_EXEC_CONTROL] & PinBased.VIRTUAL_NMIS
        and intr & _BLOCK_NMI
    ):
        return "NMI injected while blocked by virtual NMI", fail
    pending = f[F.GUEST_PENDING_DBG_EXCEPTIONS]
    if pending & ~_PENDING_DBG_VALID:
        return "pending debug exceptions reserved bits", fail
    if intr & (_BLOCK_STI | _BLOCK_MOV_SS) or activity == _ACTIVITY_HLT:
        single_step = bool(rflags & RFLAGS_TF) and not f[F.GUEST_IA32_DEBUGCTL] & 2
        if bool(pending & _BS) != single_step:
            return "pending debug exceptions BS vs. single-step", fail

    problem = _check_link_pointer(model, f, memory, current_vmcs, secondary)
    if problem:
        return problem, EntryFailureQualification.VMCS_LINK_POINTER

    # PDPTEs for PAE paging outside IA-32e mode (§27.3.1.6)
    if cr0 & CR0_PG and cr4 & CR4_PAE and not ia32e:
        if secondary & SecondaryCtls.ENABLE_EPT:
            pdptes = [f[F.GUEST_PDPTR0], f[F.GUEST_PDPTR1], f[F.GUEST_PDPTR2], f[F.GUEST_PDPTR3]]
        else:
            base = f[F.GUEST_CR3] & 0xFFFF_FFE0
            pdptes = [memory.read_bus(base + 8 * i, 8) for i in range(4)]
        reserved = 0x1E6 | ~((1 << model.phys_addr_bits) - 1) & 0xFFFF_FFFF_FFFF_FFFF
        if any(p & 1 and p & reserved for p in pdptes):
            return "guest PDPTE reserved bits", EntryFailureQualification.PDPTE_LOAD
    return None


# Which group of checks failed (EntryChecks.first_failure): VMfailValid(7), VMfailValid(8), exit 33.
CONTROLS, HOST, GUEST = "controls", "host", "guest"
_UNCHECKED = object()


class EntryChecks:
    """The VM-entry checks (§27.2, §27.3.1) of one processor, or of L0's checks of vmcs12s, kept by
    their inputs.  The checks are a function of the VMCS's fields other than exit information, the
    processor model, the root state's IA32_EFER.LMA, the current-VMCS pointer and, for a valid
    VMCS link pointer, the revision dword it points to; a guest looping on one exit enters the
    same VMCS content again and again, and the result is reused instead of derived anew (Intel's
    processors likewise skip consistency checks on an unmodified cached VMCS: Linux commit
    3af80fec).  Checks that read other memory (the virtual-APIC page's VTPR, PAE PDPTEs without
    EPT) always run."""

    SIZE = 64  # results kept (oldest dropped): memory stays flat whatever the guest does

    def __init__(self, model: CpuModel, catalogue: bool = False) -> None:
        """`catalogue`: the VMCSs checked hold every field of the catalogue (a vmcs12 read from memory)
        rather than exactly the model's (a VMCS of this processor)."""
        self.model = model
        fields = VMCS_FIELDS if catalogue else model.fields.values()
        # Every one is in the VMCS (see `catalogue`): one itemgetter reads them all.
        self._key_values = operator.itemgetter(*(f.encoding for f in fields if f.type is not FieldType.READ_ONLY))
        self.results: dict[tuple, tuple[str, object] | None] = {}

    def first_failure(
        self, f: Fields, memory: PhysicalMemory, current_vmcs: int, root: CpuState
    ) -> tuple[str, object] | None:
        """("controls", rule), ("host", rule), ("guest", (rule, exit qualification)) or None."""
        if _reads_other_memory(f):
            return self._evaluate(f, memory, current_vmcs, root)
        link = f[F.VMCS_LINK_POINTER]
        linked = read_revision(memory, link) if link != INVALID_POINTER and _addr_ok(self.model, link) else None
        key = (self._key_values(f), current_vmcs, root.efer & EFER_LMA, linked)
        result = self.results.get(key, _UNCHECKED)  # one lookup: a key hashes ~150 values
        if result is not _UNCHECKED:
            return result
        if len(self.results) >= self.SIZE:
            del self.results[next(iter(self.results))]
        result = self.results[key] = self._evaluate(f, memory, current_vmcs, root)
        return result

    def _evaluate(self, f: Fields, memory: PhysicalMemory, current_vmcs: int, root: CpuState):
        rule = check_controls(self.model, f, memory)
        if rule:
            return CONTROLS, rule
        rule = check_host_state(self.model, f, root)
        if rule:
            return HOST, rule
        failure = check_guest_state(self.model, f, memory, current_vmcs)
        return (GUEST, failure) if failure else None


def _reads_other_memory(f: Fields) -> bool:
    """Whether the checks read memory besides the link pointer's revision (VTPR, PAE PDPTEs)."""
    if f[F.CPU_BASED_VM_EXEC_CONTROL] & PrimaryCtls.TPR_SHADOW:
        return True
    cr0, cr4 = f[F.GUEST_CR0], f[F.GUEST_CR4]
    ia32e = f[F.VM_ENTRY_CONTROLS] & EntryCtls.IA32E_MODE_GUEST
    return bool(cr0 & CR0_PG and cr4 & CR4_PAE and not ia32e and not secondary_controls(f) & SecondaryCtls.ENABLE_EPT)


def _check_link_pointer(
    model: CpuModel, f: Fields, memory: PhysicalMemory, current_vmcs: int, secondary: int
) -> str | None:
    link = f[F.VMCS_LINK_POINTER]
    if link == INVALID_POINTER:
        return None
    if not _addr_ok(model, link):
        return "VMCS link pointer address"
    revision = read_revision(memory, link)
    if revision & ~SHADOW_VMCS_INDICATOR != model.revision_id:
        return "VMCS link pointer revision id"
    if bool(revision & SHADOW_VMCS_INDICATOR) != bool(secondary & SecondaryCtls.SHADOW_VMCS):
        return "VMCS link pointer shadow-VMCS indicator"
    if link == current_vmcs:
        return "VMCS link pointer is the current VMCS"
    return None


def _check_guest_segments(segs: list[Segment], v86: bool, unrestricted: bool, ia32e: bool, cr0: int) -> str | None:
    cs, ss, tr, ldtr = segs[Seg.CS], segs[Seg.SS], segs[Seg.TR], segs[Seg.LDTR]
    if tr.selector & 4:
        return "guest TR.TI"
    if not ldtr.unusable and ldtr.selector & 4:
        return "guest LDTR.TI"
    if not v86 and not unrestricted and ss.selector & 3 != cs.selector & 3:
        return "guest SS.RPL != CS.RPL"
    if v86:
        for seg in segs[:6]:
            if seg.base != seg.selector << 4 or seg.limit != 0xFFFF or seg.ar != 0xF3:
                return "guest virtual-8086 segment"
    if not (canonical(tr.base) and canonical(segs[Seg.FS].base) and canonical(segs[Seg.GS].base)):
        return "guest TR/FS/GS base not canonical"
    if not ldtr.unusable and not canonical(ldtr.base):
        return "guest LDTR base not canonical"
    if cs.base >> 32 or any(not s.unusable and s.base >> 32 for s in (ss, segs[Seg.DS], segs[Seg.ES])):
        return "guest segment base bits 63:32"
    if v86:
        return _check_system_segments(tr, ldtr, ia32e)
    cs_type = cs.ar & 0xF
    if cs_type not in (9, 11, 13, 15) and not (unrestricted and cs_type == 3):
        return "guest CS type"
    if not cs.ar & AR_S or not cs.ar & AR_P or cs.ar & AR_RESERVED or not _limit_granularity_ok(cs):
        return "guest CS access rights"
    if cs_type == 3 and cs.dpl != 0:
        return "guest CS.DPL (type 3)"
    if cs_type in (9, 11) and cs.dpl != ss.dpl:
        return "guest CS.DPL != SS.DPL"
    if cs_type in (13, 15) and cs.dpl > ss.dpl:
        return "guest CS.DPL > SS.DPL"
    if ia32e and cs.ar & AR_L and cs.ar & AR_DB:
        return "guest CS.L and CS.D"
    if not ss.unusable:
        if (
            ss.ar & 0xF not in (3, 7)
            or not ss.ar & AR_S
            or not ss.ar & AR_P
            or ss.ar & AR_RESERVED
            or not _limit_granularity_ok(ss)
        ):
            return "guest SS access rights"
    if not unrestricted and ss.dpl != ss.selector & 3:
        return "guest SS.DPL != SS.RPL"
    if (cs_type == 3 or not cr0 & CR0_PE) and ss.dpl != 0:
        return "guest SS.DPL (real mode)"
    for seg in (segs[Seg.DS], segs[Seg.ES], segs[Seg.FS], segs[Seg.GS]):
        if seg.unusable:
            continue
        t = seg.ar & 0xF
        if not t & 1 or (t & 8 and not t & 2) or not seg.ar & AR_S or not seg.ar & AR_P or seg.ar & AR_RESERVED:
            return "guest data segment access rights"
        if not unrestricted and t <= 11 and seg.dpl < seg.selector & 3:
            return "guest data segment DPL < RPL"
        if not _limit_granularity_ok(seg):
            return "guest data segment limit/granularity"
    return _check_system_segments(tr, ldtr, ia32e)


def _check_system_segments(tr: Segment, ldtr: Segment, ia32e: bool) -> str | None:
    if (tr.ar & 0xF) not in ((11,) if ia32e else (3, 11)):
        return "guest TR type"
    if tr.ar & AR_S or not tr.ar & AR_P or tr.ar & AR_RESERVED or tr.unusable or not _limit_granularity_ok(tr):
        return "guest TR access rights"
    if not ldtr.unusable:
        if (
            ldtr.ar & 0xF != 2
            or ldtr.ar & AR_S
            or not ldtr.ar & AR_P
            or ldtr.ar & AR_RESERVED
            or not _limit_granularity_ok(ldtr)
        ):
            return "guest LDTR access rights"
    return None


_guest_control_registers = operator.itemgetter(F.VM_ENTRY_CONTROLS, F.GUEST_CR0, F.GUEST_CR3, F.GUEST_CR4)
_guest_sysenter = operator.itemgetter(F.GUEST_SYSENTER_CS, F.GUEST_SYSENTER_ESP, F.GUEST_SYSENTER_EIP)
_guest_tables = operator.itemgetter(F.GUEST_GDTR_BASE, F.GUEST_GDTR_LIMIT, F.GUEST_IDTR_BASE, F.GUEST_IDTR_LIMIT)
_guest_registers = operator.itemgetter(F.GUEST_RSP, F.GUEST_RIP, F.GUEST_RFLAGS)
_guest_non_register_state = operator.itemgetter(
    F.GUEST_ACTIVITY_STATE, F.GUEST_INTERRUPTIBILITY_INFO, F.GUEST_PENDING_DBG_EXCEPTIONS
)


def load_guest_state(f: Fields, s: CpuState) -> None:
    """SDM §27.3.2: processor state from the guest-state area."""
    entry_ctls, cr0, s.cr3, s.cr4 = _guest_control_registers(f)
    ia32e = bool(entry_ctls & EntryCtls.IA32E_MODE_GUEST)
    s.cr0 = load_cr0(s.cr0, cr0)
    if entry_ctls & EntryCtls.LOAD_DEBUG_CONTROLS:
        s.dr7, s.debugctl = f[F.GUEST_DR7], f[F.GUEST_IA32_DEBUGCTL]
    s.sysenter_cs, s.sysenter_esp, s.sysenter_eip = _guest_sysenter(f)
    if entry_ctls & EntryCtls.LOAD_PERF_GLOBAL_CTRL:
        s.perf_global_ctrl = f[F.GUEST_IA32_PERF_GLOBAL_CTRL]
    if entry_ctls & EntryCtls.LOAD_PAT:
        s.pat = f[F.GUEST_IA32_PAT]
    if entry_ctls & EntryCtls.LOAD_EFER:
        s.efer = f[F.GUEST_IA32_EFER]
    else:
        lm = EFER_LMA | EFER_LME
        s.efer = (s.efer | lm) if ia32e else (s.efer & ~EFER_LMA & ~(EFER_LME if s.cr0 & CR0_PG else 0))
    s.segs = _guest_segments(f)
    s.gdtr_base, s.gdtr_limit, s.idtr_base, s.idtr_limit = _guest_tables(f)
    s.gpr[RSP], s.rip, s.rflags = _guest_registers(f)
    s.activity_state, s.interruptibility, s.pending_dbg_exceptions = _guest_non_register_state(f)


# MSRs that the VM-entry MSR-load area may not load (SDM §27.4): FS/GS base, the SMM
# monitor control and SMBASE, the x2APIC range, and the read-only VMX capability MSRs.
def msr_loadable(index: int) -> bool:
    return not (
        index in (Msr.IA32_FS_BASE, Msr.IA32_GS_BASE, Msr.IA32_SMM_MONITOR_CTL, Msr.IA32_SMBASE)
        or 0x800 <= index <= 0x8FF
        or Msr.IA32_VMX_BASIC <= index <= Msr.IA32_VMX_EXIT_CTLS2
    )


def load_msrs(memory: PhysicalMemory, address: int, count: int, s: CpuState) -> int | None:
    """Load the MSR area; the 1-based index of the first entry that fails, or None."""
    for i in range(count):
        entry = address + 16 * i
        index, reserved, value = memory.read_bus(entry, 4), memory.read_bus(entry + 4, 4), memory.read_bus(entry + 8, 8)
        if reserved or not msr_loadable(index):
            return i + 1
        s.write_msr(index, value)
    return None


def store_msrs(memory: PhysicalMemory, address: int, count: int, s: CpuState) -> None:
    """VM-exit MSR-store area (SDM §28.4): the data field of each entry receives the MSR."""
    for i in range(count):
        entry = address + 16 * i
        memory.write_bus(entry + 8, 8, s.read_msr(memory.read_bus(entry, 4)))
