"""VM-entry checks (SDM Vol. 3C §27.2-§27.4, §27.8) and the VM exit that follows an entry (§28).

Table-driven: every case starts from `write_valid_vmcs` (a VMCS that passes every check), makes
the VMWRITEs (and, where a rule is about memory or the processor's own state, the set-up) that
break exactly one rule, runs VMLAUNCH and expects one outcome:

- VMfailValid(7)  a VM-execution, VM-exit or VM-entry control rule (§27.2.1);
- VMfailValid(8)  a host-state rule (§27.2.2-§27.2.4);
- a VM-entry failure with exit reason 33 | 0x80000000 and an exit qualification
  (0, 2 = PDPTE, 3 = NMI injection under STI blocking, 4 = VMCS link pointer) (§27.3, §27.8);
- a VM-entry failure with exit reason 34 | 0x80000000 and the 1-based index of the failing
  VM-entry MSR-load entry (§27.4);
- or a successful entry, for the settings that the rules explicitly allow.

Each case also names the rule the model reports (`LogicalProcessor.last_entry_check`), so a case
cannot pass by tripping some other check; `test_every_rule_is_exercised` ties the tables to the
rules in nestvmx.hw.vmentry.  Cross-checked against KVM (nested_vmx_check_controls,
nested_vmx_check_host_state, nested_vmx_check_guest_state, nested_vmx_load_msr) and Bochs
(VMenterLoadCheckVmControls, VMenterLoadCheckHostState, VMenterLoadCheckGuestState, LoadMSRs);
where they differ from the SDM the case says so and follows the SDM.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from nestvmx.arch.controls import (
    INTR_INFO_DELIVER_ERROR_CODE,
    INTR_INFO_VALID,
    ControlKind,
    EntryCtls,
    ExitCtls,
    PinBased,
    PrimaryCtls,
    SecondaryCtls,
)
from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import EXIT_REASON_FAILED_VMENTRY, ExitReason
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import (
    EPT_CAP_AD_BITS,
    VMX_BASIC_TRUE_CTLS,
    VMX_MISC_ZERO_LEN_INJECTION,
    Msr,
)
from nestvmx.hw import vmentry
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.processor import VM_SUCCEED, LogicalProcessor
from nestvmx.hw.state import (
    AR_UNUSABLE,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    CR4_PCIDE,
    CR4_VMXE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_ZF,
    Seg,
    Segment,
)
from nestvmx.hw.vmexit import VmExit

from .conftest import GUEST_RIP, HOST_RIP, SHADOW, VMCS_A, VMCS_B, make_cpu, write_valid_vmcs

# ------------------------------------------------------------------------------- vocabulary

Value = int | Callable[[int, CpuModel], int]  # a constant, or f(current field value, model)
Write = tuple[F, Value]

MSR_AREA = 0x40000  # VM-entry / VM-exit MSR areas
MSR_AREA_2 = 0x41000
PDPT = 0x50000  # a PAE page-directory-pointer table
BAD_REVISION_REGION = 0x60000  # a 4-KByte page whose first dword is not the revision id
NO_MEMORY = 0x200_0000  # within every model's physical-address width, beyond the 16 MiB of RAM
EPTP_WB_4 = 6 | (3 << 3) | 0x30000  # WB, 4-level walk
NONCANONICAL = 0x0000_8000_0000_0000
CANONICAL_HIGH = 0xFFFF_8000_0000_0000
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})  # #DF #TS #NP #SS #GP #PF #AC

# Access rights (SDM Table 25-2): type | S<<4 | DPL<<5 | P<<7 | AVL<<12 | L<<13 | D/B<<14 | G<<15
CODE64 = 0xA09B
CODE32 = 0xC09B
DATA = 0xC093
TSS_BUSY = 0x8B
LDT = 0x82
V86 = 0xF3

# Interruption information (SDM §25.8.3): vector | type << 8 | deliver-error-code << 11 | valid << 31
EXT_INT_0x20 = INTR_INFO_VALID | 0x20
NMI = INTR_INFO_VALID | 2 << 8 | 2
HW_UD = INTR_INFO_VALID | 3 << 8 | 6
HW_DB = INTR_INFO_VALID | 3 << 8 | 1
HW_MC = INTR_INFO_VALID | 3 << 8 | 18
HW_GP = INTR_INFO_VALID | 3 << 8 | INTR_INFO_DELIVER_ERROR_CODE | 13
SW_INT_0x80 = INTR_INFO_VALID | 4 << 8 | 0x80
MTF = INTR_INFO_VALID | 7 << 8

BLOCK_STI, BLOCK_MOV_SS, BLOCK_SMI, BLOCK_NMI = 1, 2, 4, 8
RFLAGS_IF, RFLAGS_TF, RFLAGS_VM = 1 << 9, 1 << 8, 1 << 17
PENDING_BS = 1 << 14


def bits_set(mask: int) -> Value:
    return lambda old, m: old | mask


def bits_clear(mask: int) -> Value:
    return lambda old, m: old & ~mask


def beyond_width(offset: int = 0) -> Value:
    """The first physical address the model cannot reach, plus `offset`."""
    return lambda old, m: (1 << m.phys_addr_bits) + offset


def dpl(ar: int, level: int) -> int:
    return ar & ~0x60 | level << 5


def lowest_bit(mask: int) -> int:
    return mask & -mask


def must_be_one(model: CpuModel, kind: ControlKind) -> int:
    return model.control_msr(kind) & 0xFFFF_FFFF


def first_unsupported(model: CpuModel, kind: ControlKind) -> int:
    """The lowest control bit (below 32) that the capability MSR does not allow to be 1."""
    allowed1 = model.control_msr(kind) >> 32
    return next(1 << i for i in range(32) if not allowed1 >> i & 1)


def first_cr4_fixed0_bit(model: CpuModel) -> int:
    fixed1 = model.msrs[Msr.IA32_VMX_CR4_FIXED1]
    return next(1 << i for i in range(32) if not fixed1 >> i & 1)


def drop_allowed0(kind: ControlKind) -> Value:
    return lambda old, m: old & ~lowest_bit(must_be_one(m, kind))


def add_unsupported(kind: ControlKind) -> Value:
    return lambda old, m: old | first_unsupported(m, kind)


def secondary(bits: int) -> tuple[Write, ...]:
    return (
        (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS)),
        (F.SECONDARY_VM_EXEC_CONTROL, bits_set(bits)),
    )


def ept(eptp: Value = EPTP_WB_4) -> tuple[Write, ...]:
    return (*secondary(SecondaryCtls.ENABLE_EPT), (F.EPT_POINTER, eptp))


UNRESTRICTED = (*ept(), (F.SECONDARY_VM_EXEC_CONTROL, bits_set(SecondaryCtls.UNRESTRICTED_GUEST)))
NOT_IA32E = ((F.VM_ENTRY_CONTROLS, bits_clear(EntryCtls.IA32E_MODE_GUEST)),)
# A 32-bit protected-mode guest with 32-bit paging: no IA-32e mode, no PAE, so no PDPTEs.
PROTECTED_32 = (*NOT_IA32E, (F.GUEST_CR4, bits_clear(CR4_PAE)))
REAL_MODE = (*UNRESTRICTED, *NOT_IA32E, (F.GUEST_CR0, bits_clear(CR0_PE | CR0_PG)))
# A PAE guest outside IA-32e mode whose CR3 points at PDPT.
PAE_32 = (*NOT_IA32E, (F.GUEST_CR3, PDPT))
CPL3 = (
    (F.GUEST_CS_SELECTOR, 0x0B),
    (F.GUEST_CS_AR_BYTES, dpl(CODE64, 3)),
    (F.GUEST_SS_SELECTOR, 0x13),
    (F.GUEST_SS_AR_BYTES, dpl(DATA, 3)),
)
HOST_32 = ((F.VM_EXIT_CONTROLS, bits_clear(ExitCtls.HOST_ADDR_SPACE_SIZE)),)
VIRTUAL_NMIS = ((F.PIN_BASED_VM_EXEC_CONTROL, bits_set(PinBased.NMI_EXITING | PinBased.VIRTUAL_NMIS)),)
LINK = F.VMCS_LINK_POINTER


def v86_segments() -> tuple[Write, ...]:
    writes: list[Write] = []
    for sel, base, limit, ar in (
        (F.GUEST_ES_SELECTOR, F.GUEST_ES_BASE, F.GUEST_ES_LIMIT, F.GUEST_ES_AR_BYTES),
        (F.GUEST_CS_SELECTOR, F.GUEST_CS_BASE, F.GUEST_CS_LIMIT, F.GUEST_CS_AR_BYTES),
        (F.GUEST_SS_SELECTOR, F.GUEST_SS_BASE, F.GUEST_SS_LIMIT, F.GUEST_SS_AR_BYTES),
        (F.GUEST_DS_SELECTOR, F.GUEST_DS_BASE, F.GUEST_DS_LIMIT, F.GUEST_DS_AR_BYTES),
        (F.GUEST_FS_SELECTOR, F.GUEST_FS_BASE, F.GUEST_FS_LIMIT, F.GUEST_FS_AR_BYTES),
        (F.GUEST_GS_SELECTOR, F.GUEST_GS_BASE, F.GUEST_GS_LIMIT, F.GUEST_GS_AR_BYTES),
    ):
        writes += [(sel, 0x1000), (base, 0x10000), (limit, 0xFFFF), (ar, V86)]
    return (*writes, (F.GUEST_RFLAGS, 0x20002))


V86_GUEST = (*PROTECTED_32, *v86_segments())


# ------------------------------------------------------------------------ set-up helpers


def legacy_host(cpu: LogicalProcessor) -> None:
    """The processor executes VMLAUNCH outside IA-32e mode (IA32_EFER.LMA = 0)."""
    cpu.state.efer &= ~(EFER_LMA | EFER_LME)


def msr_entries(address: int, *entries: tuple[int, int, int]) -> Callable[[LogicalProcessor], None]:
    """Write (index, reserved dword, value) entries of an MSR area (SDM Table 25-15)."""

    def setup(cpu: LogicalProcessor) -> None:
        for i, (index, reserved, value) in enumerate(entries):
            cpu.memory.write_u(address + 16 * i, 4, index)
            cpu.memory.write_u(address + 16 * i + 4, 4, reserved)
            cpu.memory.write_u(address + 16 * i + 8, 8, value)

    return setup


def entry_msrs(*entries: tuple[int, int, int]) -> tuple[tuple[Write, ...], Callable[[LogicalProcessor], None]]:
    writes = ((F.VM_ENTRY_MSR_LOAD_COUNT, len(entries)), (F.VM_ENTRY_MSR_LOAD_ADDR, MSR_AREA))
    return writes, msr_entries(MSR_AREA, *entries)


def pdptes(*entries: int | Callable[[CpuModel], int]) -> Callable[[LogicalProcessor], None]:
    def setup(cpu: LogicalProcessor) -> None:
        for i, e in enumerate(entries):
            cpu.memory.write_u(PDPT + 8 * i, 8, e(cpu.model) if callable(e) else e)

    return setup


def vtpr(value: int) -> Callable[[LogicalProcessor], None]:
    def setup(cpu: LogicalProcessor) -> None:
        cpu.memory.write_u(VAPIC + 0x80, 1, value)

    return setup


def bad_revision_region(cpu: LogicalProcessor) -> None:
    cpu.memory.write_u(BAD_REVISION_REGION, 4, cpu.model.revision_id + 1)


def with_msr(index: int, set_bits: int = 0, clear_bits: int = 0) -> Callable[[CpuModel], CpuModel]:
    """A variant of a CPU model with one capability MSR changed."""

    def tweak(model: CpuModel) -> CpuModel:
        value = (model.msrs[index] | set_bits) & ~clear_bits
        return dataclasses.replace(model, name=f"{model.name}-{index:x}", msrs={**model.msrs, index: value})

    return tweak


VAPIC = 0x32000

# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Expect:
    error: int | None = None  # VMfailValid(error)
    reason: int | None = None  # basic exit reason of a VM-entry failure
    qualification: int = 0


ENTERS = Expect()
CONTROLS = Expect(error=VmxError.ENTRY_INVALID_CONTROL_FIELD)
HOST = Expect(error=VmxError.ENTRY_INVALID_HOST_STATE_FIELD)


def guest(qualification: int = 0) -> Expect:
    return Expect(reason=ExitReason.INVALID_GUEST_STATE, qualification=qualification)


def msr_load(index: int) -> Expect:
    return Expect(reason=ExitReason.MSR_LOADING, qualification=index)


@dataclass(frozen=True)
class Needs:
    what: str
    check: Callable[[CpuModel], bool]


SHADOWING = Needs("VMCS shadowing", lambda m: m.has_vmcs_shadowing)
VMFUNC = Needs("VM functions", lambda m: m.allows(ControlKind.SECONDARY, SecondaryCtls.ENABLE_VMFUNC))
EPT_AD = Needs("EPT A/D flags", lambda m: bool(m.msrs[Msr.IA32_VMX_EPT_VPID_CAP] & EPT_CAP_AD_BITS))
NO_EPT_AD = Needs("no EPT A/D flags", lambda m: not m.msrs[Msr.IA32_VMX_EPT_VPID_CAP] & EPT_CAP_AD_BITS)


@dataclass(frozen=True)
class Case:
    id: str
    sdm: str  # section and rule
    writes: tuple[Write, ...]
    expect: Expect
    rule: str | None = None  # the model's name for the broken rule (None: the entry succeeds)
    setup: Callable[[LogicalProcessor], None] | None = None
    needs: Needs | None = None
    tweak: Callable[[CpuModel], CpuModel] | None = None


def case(
    id: str,
    sdm: str,
    writes: tuple[Write, ...],
    expect: Expect,
    rule: str | None = None,
    **kw: object,
) -> Case:
    assert (rule is None) == (expect == ENTERS) or expect.reason == ExitReason.MSR_LOADING, id
    return Case(id, sdm, writes, expect, rule, **kw)  # type: ignore[arg-type]


# §27.2.1 Checks on VMX controls -> VMfailValid(7) ------------------------------------------

S_A3 = "App. A.3-A.5 / §27.2.1.1: reserved control bits per the (TRUE_) capability MSRs"
S_VMEXEC = "§27.2.1.1"

_hw_exception_cases = [
    case(
        f"hw-exception-{v}-{'without' if v in ERROR_CODE_VECTORS else 'with'}-error-code",
        "§27.2.1.3: deliver-error-code = 1 iff HW exception, protected mode, vector 8, 10-14 or 17",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 3 << 8 | v | (0 if v in ERROR_CODE_VECTORS else 1 << 11)),),
        CONTROLS,
        "injected event deliver-error-code bit",
    )
    for v in range(32)
] + [
    case(
        f"hw-exception-{v}-{'with' if v in ERROR_CODE_VECTORS else 'without'}-error-code-enters",
        "§27.2.1.3: deliver-error-code = 1 iff HW exception, protected mode, vector 8, 10-14 or 17",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 3 << 8 | v | (1 << 11 if v in ERROR_CODE_VECTORS else 0)),),
        ENTERS,
    )
    for v in range(32)
]

CONTROL_CASES = [
    # --- reserved bits (allowed-0 and allowed-1 settings, TRUE MSRs)
    case(
        "pin-allowed0",
        S_A3,
        ((F.PIN_BASED_VM_EXEC_CONTROL, drop_allowed0(ControlKind.PIN)),),
        CONTROLS,
        "pin-based controls reserved bits",
    ),
    case(
        "pin-allowed1",
        S_A3,
        ((F.PIN_BASED_VM_EXEC_CONTROL, add_unsupported(ControlKind.PIN)),),
        CONTROLS,
        "pin-based controls reserved bits",
    ),
    case(
        "primary-allowed0",
        S_A3,
        ((F.CPU_BASED_VM_EXEC_CONTROL, drop_allowed0(ControlKind.PRIMARY)),),
        CONTROLS,
        "primary processor-based controls reserved bits",
    ),
    case(
        "primary-allowed1",
        S_A3,
        ((F.CPU_BASED_VM_EXEC_CONTROL, add_unsupported(ControlKind.PRIMARY)),),
        CONTROLS,
        "primary processor-based controls reserved bits",
    ),
    case(
        "primary-cr3-exiting-0-with-true-msrs",
        "App. A.3.2: with IA32_VMX_BASIC[55] = 1 the TRUE_PROCBASED_CTLS lets CR3-load/store exiting be 0",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_clear(PrimaryCtls.CR3_LOAD_EXITING | PrimaryCtls.CR3_STORE_EXITING)),),
        ENTERS,
    ),
    case(
        "primary-cr3-exiting-0-without-true-msrs",
        "App. A.3.2: with IA32_VMX_BASIC[55] = 0, PROCBASED_CTLS makes bits 15 and 16 default1",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_clear(PrimaryCtls.CR3_LOAD_EXITING | PrimaryCtls.CR3_STORE_EXITING)),),
        CONTROLS,
        "primary processor-based controls reserved bits",
        tweak=with_msr(Msr.IA32_VMX_BASIC, clear_bits=VMX_BASIC_TRUE_CTLS),
    ),
    case(
        "entry-load-debug-controls-0-without-true-msrs",
        "App. A.5: with IA32_VMX_BASIC[55] = 0, ENTRY_CTLS makes 'load debug controls' default1",
        ((F.VM_ENTRY_CONTROLS, bits_clear(EntryCtls.LOAD_DEBUG_CONTROLS)),),
        CONTROLS,
        "VM-entry controls reserved bits",
        tweak=with_msr(Msr.IA32_VMX_BASIC, clear_bits=VMX_BASIC_TRUE_CTLS),
    ),
    case(
        "secondary-allowed1",
        S_A3,
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS)),
            (F.SECONDARY_VM_EXEC_CONTROL, add_unsupported(ControlKind.SECONDARY)),
        ),
        CONTROLS,
        "secondary processor-based controls reserved bits",
    ),
    case(
        "secondary-ignored-without-primary-bit-31",
        "§27.2.1.1: secondary controls are checked (and act) only if primary bit 31 = 1",
        ((F.SECONDARY_VM_EXEC_CONTROL, 0xFFFF_FFFF),),
        ENTERS,
    ),
    case(
        "secondary-shadowing-ignored-without-primary-bit-31",
        "§27.2.1.1: bitmap-address rules of VMCS shadowing apply only when the control is in effect",
        ((F.SECONDARY_VM_EXEC_CONTROL, SecondaryCtls.SHADOW_VMCS), (F.VMREAD_BITMAP, 0x801)),
        ENTERS,
        needs=SHADOWING,
    ),
    case(
        "exit-allowed0",
        S_A3,
        ((F.VM_EXIT_CONTROLS, drop_allowed0(ControlKind.EXIT)),),
        CONTROLS,
        "VM-exit controls reserved bits",
    ),
    case(
        "exit-allowed1",
        S_A3,
        ((F.VM_EXIT_CONTROLS, add_unsupported(ControlKind.EXIT)),),
        CONTROLS,
        "VM-exit controls reserved bits",
    ),
    case(
        "entry-allowed0",
        S_A3,
        ((F.VM_ENTRY_CONTROLS, drop_allowed0(ControlKind.ENTRY)),),
        CONTROLS,
        "VM-entry controls reserved bits",
    ),
    case(
        "entry-allowed1",
        S_A3,
        ((F.VM_ENTRY_CONTROLS, add_unsupported(ControlKind.ENTRY)),),
        CONTROLS,
        "VM-entry controls reserved bits",
    ),
    # --- CR3 targets
    case(
        "cr3-target-count-4",
        f"{S_VMEXEC}: CR3-target count <= 4 (IA32_VMX_MISC[24:16])",
        ((F.CR3_TARGET_COUNT, 4),),
        ENTERS,
    ),
    case(
        "cr3-target-count-5",
        f"{S_VMEXEC}: CR3-target count <= 4 (IA32_VMX_MISC[24:16])",
        ((F.CR3_TARGET_COUNT, 5),),
        CONTROLS,
        "CR3-target count",
    ),
    case(
        "cr3-target-count-minus-1",
        f"{S_VMEXEC}: CR3-target count <= 4 (IA32_VMX_MISC[24:16])",
        ((F.CR3_TARGET_COUNT, 0xFFFF_FFFF),),
        CONTROLS,
        "CR3-target count",
    ),
    # --- I/O and MSR bitmaps
    case(
        "io-bitmaps-valid",
        f"{S_VMEXEC}: I/O-bitmap addresses 4-KByte aligned, within the width",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_IO_BITMAPS)),
            (F.IO_BITMAP_A, 0x30000),
            (F.IO_BITMAP_B, 0x31000),
        ),
        ENTERS,
    ),
    case(
        "io-bitmap-a-unaligned",
        f"{S_VMEXEC}: I/O-bitmap address A bits 11:0 = 0",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_IO_BITMAPS)),
            (F.IO_BITMAP_A, 0x30800),
            (F.IO_BITMAP_B, 0x31000),
        ),
        CONTROLS,
        "I/O-bitmap addresses",
    ),
    case(
        "io-bitmap-b-beyond-width",
        f"{S_VMEXEC}: I/O-bitmap address B within the physical-address width",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_IO_BITMAPS)),
            (F.IO_BITMAP_A, 0x30000),
            (F.IO_BITMAP_B, beyond_width()),
        ),
        CONTROLS,
        "I/O-bitmap addresses",
    ),
    case(
        "io-bitmaps-ignored-without-control",
        f"{S_VMEXEC}: checked only if 'use I/O bitmaps' = 1",
        ((F.IO_BITMAP_A, 0x30800),),
        ENTERS,
    ),
    case(
        "msr-bitmap-valid",
        f"{S_VMEXEC}: MSR-bitmap address 4-KByte aligned, within the width",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_MSR_BITMAPS)), (F.MSR_BITMAP, 0x30000)),
        ENTERS,
    ),
    case(
        "msr-bitmap-unaligned",
        f"{S_VMEXEC}: MSR-bitmap address bits 11:0 = 0",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_MSR_BITMAPS)), (F.MSR_BITMAP, 0x30010)),
        CONTROLS,
        "MSR-bitmap address",
    ),
    case(
        "msr-bitmap-beyond-width",
        f"{S_VMEXEC}: MSR-bitmap address within the physical-address width",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.USE_MSR_BITMAPS)), (F.MSR_BITMAP, beyond_width())),
        CONTROLS,
        "MSR-bitmap address",
    ),
    # --- TPR shadow and APIC virtualization
    case(
        "tpr-shadow-valid",
        f"{S_VMEXEC}: use TPR shadow: threshold[3:0] <= VTPR[7:4]",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)),
            (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC),
            (F.TPR_THRESHOLD, 3),
        ),
        ENTERS,
        setup=vtpr(0x30),
    ),
    case(
        "tpr-shadow-vapic-unaligned",
        f"{S_VMEXEC}: virtual-APIC address bits 11:0 = 0",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)), (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC + 4)),
        CONTROLS,
        "virtual-APIC address",
    ),
    case(
        "tpr-shadow-vapic-beyond-width",
        f"{S_VMEXEC}: virtual-APIC address within the width",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)), (F.VIRTUAL_APIC_PAGE_ADDR, beyond_width())),
        CONTROLS,
        "virtual-APIC address",
    ),
    case(
        "tpr-threshold-bits-31-4",
        f"{S_VMEXEC}: TPR shadow without virtual-interrupt delivery: threshold[31:4] = 0",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)),
            (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC),
            (F.TPR_THRESHOLD, 0x10),
        ),
        CONTROLS,
        "TPR threshold bits 31:4",
        setup=vtpr(0xF0),
    ),
    case(
        "tpr-threshold-above-vtpr",
        f"{S_VMEXEC}: no APIC-access virtualization: threshold[3:0] <= VTPR[7:4]",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)),
            (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC),
            (F.TPR_THRESHOLD, 3),
        ),
        CONTROLS,
        "TPR threshold above VTPR",
        setup=vtpr(0x20),
    ),
    case(
        "tpr-threshold-above-vtpr-with-apic-access-virt",
        f"{S_VMEXEC}: the VTPR comparison is skipped when 'virtualize APIC accesses' = 1",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)),
            (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC),
            (F.TPR_THRESHOLD, 3),
            *secondary(SecondaryCtls.VIRTUALIZE_APIC_ACCESSES),
            (F.APIC_ACCESS_ADDR, 0x33000),
        ),
        ENTERS,
        setup=vtpr(0x20),
    ),
    case(
        "apic-access-address-unaligned",
        f"{S_VMEXEC}: APIC-access address bits 11:0 = 0",
        (*secondary(SecondaryCtls.VIRTUALIZE_APIC_ACCESSES), (F.APIC_ACCESS_ADDR, 0x33001)),
        CONTROLS,
        "APIC-access address",
    ),
    case(
        "x2apic-mode-without-tpr-shadow",
        f"{S_VMEXEC}: use TPR shadow = 0 -> virtualize x2APIC mode = 0",
        secondary(SecondaryCtls.VIRTUALIZE_X2APIC_MODE),
        CONTROLS,
        "APIC virtualization without TPR shadow",
    ),
    case(
        "x2apic-mode-with-apic-access-virt",
        f"{S_VMEXEC}: virtualize x2APIC mode = 1 -> virtualize APIC accesses = 0",
        (
            (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.TPR_SHADOW)),
            (F.VIRTUAL_APIC_PAGE_ADDR, VAPIC),
            *secondary(SecondaryCtls.VIRTUALIZE_X2APIC_MODE | SecondaryCtls.VIRTUALIZE_APIC_ACCESSES),
            (F.APIC_ACCESS_ADDR, 0x33000),
        ),
        CONTROLS,
        "x2APIC mode with APIC-access virtualization",
    ),
    # --- NMIs
    case(
        "virtual-nmis-without-nmi-exiting",
        f"{S_VMEXEC}: NMI exiting = 0 -> virtual NMIs = 0",
        ((F.PIN_BASED_VM_EXEC_CONTROL, bits_set(PinBased.VIRTUAL_NMIS)),),
        CONTROLS,
        "virtual NMIs without NMI exiting",
    ),
    case(
        "nmi-window-without-virtual-nmis",
        f"{S_VMEXEC}: virtual NMIs = 0 -> NMI-window exiting = 0",
        ((F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.NMI_WINDOW_EXITING)),),
        CONTROLS,
        "NMI-window exiting without virtual NMIs",
    ),
    case(
        "nmi-exiting-virtual-nmis-nmi-window",
        f"{S_VMEXEC}: NMI controls consistent",
        (*VIRTUAL_NMIS, (F.CPU_BASED_VM_EXEC_CONTROL, bits_set(PrimaryCtls.NMI_WINDOW_EXITING))),
        ENTERS,
    ),
    # --- VPID
    case("vpid-0", f"{S_VMEXEC}: enable VPID -> VPID != 0", secondary(SecondaryCtls.ENABLE_VPID), CONTROLS, "VPID 0"),
    case(
        "vpid-1",
        f"{S_VMEXEC}: enable VPID -> VPID != 0",
        (*secondary(SecondaryCtls.ENABLE_VPID), (F.VIRTUAL_PROCESSOR_ID, 1)),
        ENTERS,
    ),
    # --- EPT pointer
    case("eptp-wb-4-level", f"{S_VMEXEC}: EPTP memory type supported, walk length 4", ept(), ENTERS),
    case("eptp-uc", f"{S_VMEXEC}: EPTP memory type UC (IA32_VMX_EPT_VPID_CAP[8])", ept(EPTP_WB_4 & ~7), ENTERS),
    case(
        "eptp-memory-type-1",
        f"{S_VMEXEC}: EPTP memory type must be supported (0 or 6)",
        ept(EPTP_WB_4 & ~7 | 1),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-memory-type-7",
        f"{S_VMEXEC}: EPTP memory type must be supported (0 or 6)",
        ept(EPTP_WB_4 | 7),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-walk-length-2",
        f"{S_VMEXEC}: EPTP bits 5:3 = page-walk length - 1 (CAP[6]: 4 levels)",
        ept(EPTP_WB_4 & ~0x38 | 1 << 3),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-walk-length-5",
        f"{S_VMEXEC}: 5-level walk only if IA32_VMX_EPT_VPID_CAP[7]",
        ept(EPTP_WB_4 & ~0x38 | 4 << 3),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-ad-with-cap",
        f"{S_VMEXEC}: EPTP bit 6 (A/D) allowed if IA32_VMX_EPT_VPID_CAP[21]",
        ept(EPTP_WB_4 | 1 << 6),
        ENTERS,
        needs=EPT_AD,
    ),
    case(
        "eptp-ad-without-cap",
        f"{S_VMEXEC}: EPTP bit 6 (A/D) must be 0 if IA32_VMX_EPT_VPID_CAP[21] = 0",
        ept(EPTP_WB_4 | 1 << 6),
        CONTROLS,
        "EPT pointer",
        needs=NO_EPT_AD,
    ),
    case(
        "eptp-reserved-bit-7",
        f"{S_VMEXEC}: EPTP reserved bits 11:7 = 0",
        ept(EPTP_WB_4 | 1 << 7),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-reserved-bit-11",
        f"{S_VMEXEC}: EPTP reserved bits 11:7 = 0",
        ept(EPTP_WB_4 | 1 << 11),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "eptp-beyond-width",
        f"{S_VMEXEC}: EPTP bits 63:N = 0",
        ept(lambda old, m: EPTP_WB_4 | 1 << m.phys_addr_bits),
        CONTROLS,
        "EPT pointer",
    ),
    case(
        "unrestricted-guest-without-ept",
        f"{S_VMEXEC}: unrestricted guest -> enable EPT",
        secondary(SecondaryCtls.UNRESTRICTED_GUEST),
        CONTROLS,
        "unrestricted guest without EPT",
    ),
    case("unrestricted-guest-with-ept", f"{S_VMEXEC}: unrestricted guest -> enable EPT", UNRESTRICTED, ENTERS),
    # --- VM functions
    case(
        "vmfunc-reserved-bit",
        f"{S_VMEXEC}: VM-function controls reserved bits (IA32_VMX_VMFUNC)",
        (*secondary(SecondaryCtls.ENABLE_VMFUNC), (F.VM_FUNCTION_CONTROL, 2)),
        CONTROLS,
        "VM-function controls reserved bits",
        needs=VMFUNC,
    ),
    case(
        "eptp-switching-without-ept",
        f"{S_VMEXEC}: EPTP switching -> enable EPT",
        (*secondary(SecondaryCtls.ENABLE_VMFUNC), (F.VM_FUNCTION_CONTROL, 1), (F.EPTP_LIST_ADDRESS, 0x34000)),
        CONTROLS,
        "EPTP switching settings",
        needs=VMFUNC,
    ),
    case(
        "eptp-list-unaligned",
        f"{S_VMEXEC}: EPTP-list address bits 11:0 = 0",
        (*ept(), *secondary(SecondaryCtls.ENABLE_VMFUNC), (F.VM_FUNCTION_CONTROL, 1), (F.EPTP_LIST_ADDRESS, 0x34008)),
        CONTROLS,
        "EPTP switching settings",
        needs=VMFUNC,
    ),
    case(
        "eptp-switching-valid",
        f"{S_VMEXEC}: EPTP switching with EPT and an aligned list",
        (*ept(), *secondary(SecondaryCtls.ENABLE_VMFUNC), (F.VM_FUNCTION_CONTROL, 1), (F.EPTP_LIST_ADDRESS, 0x34000)),
        ENTERS,
        needs=VMFUNC,
    ),
    # --- VMCS shadowing
    case(
        "shadowing-bitmaps-valid",
        f"{S_VMEXEC}: VMREAD/VMWRITE bitmaps 4-KByte aligned, within the width",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (F.VMREAD_BITMAP, 0x14000), (F.VMWRITE_BITMAP, 0x15000)),
        ENTERS,
        needs=SHADOWING,
    ),
    case(
        "shadowing-vmread-bitmap-unaligned",
        f"{S_VMEXEC}: VMREAD-bitmap address bits 11:0 = 0",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (F.VMREAD_BITMAP, 0x14800)),
        CONTROLS,
        "VMREAD/VMWRITE-bitmap addresses",
        needs=SHADOWING,
    ),
    case(
        "shadowing-vmwrite-bitmap-unaligned",
        f"{S_VMEXEC}: VMWRITE-bitmap address bits 11:0 = 0",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (F.VMWRITE_BITMAP, 0x15001)),
        CONTROLS,
        "VMREAD/VMWRITE-bitmap addresses",
        needs=SHADOWING,
    ),
    case(
        "shadowing-vmread-bitmap-beyond-width",
        f"{S_VMEXEC}: VMREAD-bitmap address within the width",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (F.VMREAD_BITMAP, beyond_width())),
        CONTROLS,
        "VMREAD/VMWRITE-bitmap addresses",
        needs=SHADOWING,
    ),
    case(
        "shadowing-vmwrite-bitmap-beyond-width",
        f"{S_VMEXEC}: VMWRITE-bitmap address within the width",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (F.VMWRITE_BITMAP, beyond_width(0x1000))),
        CONTROLS,
        "VMREAD/VMWRITE-bitmap addresses",
        needs=SHADOWING,
    ),
    # --- §27.2.1.2 VM-exit controls
    case(
        "save-preemption-timer-without-timer",
        "§27.2.1.2: save VMX-preemption timer -> activate the timer",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.SAVE_PREEMPTION_TIMER)),),
        CONTROLS,
        "save preemption timer without the timer",
    ),
    case(
        "save-preemption-timer-with-timer",
        "§27.2.1.2: save VMX-preemption timer -> activate the timer",
        (
            (F.VM_EXIT_CONTROLS, bits_set(ExitCtls.SAVE_PREEMPTION_TIMER)),
            (F.PIN_BASED_VM_EXEC_CONTROL, bits_set(PinBased.PREEMPTION_TIMER)),
        ),
        ENTERS,
    ),
    *[
        c
        for count, addr, name in (
            (F.VM_EXIT_MSR_STORE_COUNT, F.VM_EXIT_MSR_STORE_ADDR, "exit-msr-store"),
            (F.VM_EXIT_MSR_LOAD_COUNT, F.VM_EXIT_MSR_LOAD_ADDR, "exit-msr-load"),
            (F.VM_ENTRY_MSR_LOAD_COUNT, F.VM_ENTRY_MSR_LOAD_ADDR, "entry-msr-load"),
        )
        for c in (
            case(
                f"{name}-unaligned",
                "§27.2.1.2/§27.2.1.3: MSR-area address bits 3:0 = 0 if count != 0",
                ((count, 1), (addr, MSR_AREA + 8)),
                CONTROLS,
                "MSR-area address",
            ),
            case(
                f"{name}-last-byte-beyond-width",
                "§27.2.1.2/§27.2.1.3: address + 16 * count - 1 within the physical-address width",
                ((count, 2), (addr, beyond_width(-16))),
                CONTROLS,
                "MSR-area address",
            ),
            case(
                f"{name}-count-0-ignores-address",
                "§27.2.1.2/§27.2.1.3: checked only if the count != 0",
                ((addr, MSR_AREA + 8),),
                ENTERS,
            ),
        )
    ],
    case(
        "exit-msr-store-last-byte-at-width-limit",
        "§27.2.1.2: the last byte of the area may be the last byte below 2^MAXPHYADDR",
        ((F.VM_EXIT_MSR_STORE_COUNT, 1), (F.VM_EXIT_MSR_STORE_ADDR, beyond_width(-16))),
        ENTERS,
    ),
    # --- §27.2.1.3 VM-entry controls
    case(
        "entry-to-smm",
        "§27.2.1.3: outside SMM, 'entry to SMM' = 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.ENTRY_TO_SMM)),),
        CONTROLS,
        "entry to SMM outside SMM",
    ),
    case(
        "deactivate-dual-monitor",
        "§27.2.1.3: outside SMM, 'deactivate dual-monitor treatment' = 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.DEACTIVATE_DUAL_MONITOR)),),
        CONTROLS,
        "entry to SMM outside SMM",
    ),
    case(
        "inject-type-1",
        "§27.2.1.3: interruption type 1 is reserved",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 1 << 8 | 0x20),),
        CONTROLS,
        "injected event type",
    ),
    case(
        "inject-invalid-bit-clear-ignores-field",
        "§27.2.1.3: event-injection checks apply only if bit 31 = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, 1 << 8 | 0x7FFF_F000),),
        ENTERS,
    ),
    case(
        "inject-mtf",
        "§27.2.1.3: type 7 (other event) allowed with the MTF control; vector 0",
        ((F.VM_ENTRY_INTR_INFO_FIELD, MTF),),
        ENTERS,
    ),
    case(
        "inject-other-event-vector-1",
        "§27.2.1.3: other event -> vector 0",
        ((F.VM_ENTRY_INTR_INFO_FIELD, MTF | 1),),
        CONTROLS,
        "injected event vector",
    ),
    case("inject-nmi-vector-2", "§27.2.1.3: NMI -> vector 2", ((F.VM_ENTRY_INTR_INFO_FIELD, NMI),), ENTERS),
    case(
        "inject-nmi-vector-3",
        "§27.2.1.3: NMI -> vector 2",
        ((F.VM_ENTRY_INTR_INFO_FIELD, NMI ^ 2 | 3),),
        CONTROLS,
        "injected event vector",
    ),
    case(
        "inject-hw-exception-vector-32",
        "§27.2.1.3: hardware exception -> vector <= 31",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 3 << 8 | 32),),
        CONTROLS,
        "injected event vector",
    ),
    case(
        "inject-ext-int-with-error-code",
        "§27.2.1.3: deliver-error-code = 0 unless a hardware exception",
        ((F.VM_ENTRY_INTR_INFO_FIELD, EXT_INT_0x20 | INTR_INFO_DELIVER_ERROR_CODE), (F.GUEST_RFLAGS, 0x202)),
        CONTROLS,
        "injected event deliver-error-code bit",
    ),
    *_hw_exception_cases,
    case(
        "inject-gp-real-mode-without-error-code",
        "§27.2.1.3: unrestricted guest with CR0.PE = 0: no error code is delivered",
        (*REAL_MODE, (F.VM_ENTRY_INTR_INFO_FIELD, HW_GP & ~INTR_INFO_DELIVER_ERROR_CODE)),
        ENTERS,
    ),
    case(
        "inject-gp-real-mode-with-error-code",
        "§27.2.1.3: unrestricted guest with CR0.PE = 0: deliver-error-code must be 0",
        (*REAL_MODE, (F.VM_ENTRY_INTR_INFO_FIELD, HW_GP)),
        CONTROLS,
        "injected event deliver-error-code bit",
    ),
    case(
        "inject-reserved-bit-12",
        "§27.2.1.3: interruption-information bits 30:12 = 0",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_UD | 1 << 12),),
        CONTROLS,
        "injected event reserved bits",
    ),
    case(
        "inject-reserved-bit-30",
        "§27.2.1.3: interruption-information bits 30:12 = 0",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_UD | 1 << 30),),
        CONTROLS,
        "injected event reserved bits",
    ),
    case(
        "inject-error-code-0x8000",
        "§27.2.1.3: error code bits 31:16 = 0 (SDM-2016 said 31:15; KVM and Bochs check 31:16)",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_GP), (F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0x8000)),
        ENTERS,
    ),
    case(
        "inject-error-code-bit-16",
        "§27.2.1.3: error code bits 31:16 = 0 when delivered",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_GP), (F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0x1_0000)),
        CONTROLS,
        "injected error code bits 31:16",
    ),
    case(
        "inject-error-code-ignored-when-not-delivered",
        "§27.2.1.3: error code checked only if delivered",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_UD), (F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0xFFFF_FFFF)),
        ENTERS,
    ),
    case(
        "inject-int-n-length-2",
        "§27.2.1.3: software interrupt -> instruction length 1-15",
        ((F.VM_ENTRY_INTR_INFO_FIELD, SW_INT_0x80), (F.VM_ENTRY_INSTRUCTION_LEN, 2)),
        ENTERS,
    ),
    case(
        "inject-int-n-length-15",
        "§27.2.1.3: software interrupt -> instruction length 1-15",
        ((F.VM_ENTRY_INTR_INFO_FIELD, SW_INT_0x80), (F.VM_ENTRY_INSTRUCTION_LEN, 15)),
        ENTERS,
    ),
    case(
        "inject-int-n-length-16",
        "§27.2.1.3: software interrupt -> instruction length <= 15",
        ((F.VM_ENTRY_INTR_INFO_FIELD, SW_INT_0x80), (F.VM_ENTRY_INSTRUCTION_LEN, 16)),
        CONTROLS,
        "injected event instruction length",
    ),
    case(
        "inject-int-n-length-0",
        "§27.2.1.3: length 0 only if IA32_VMX_MISC[30] = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, SW_INT_0x80),),
        CONTROLS,
        "injected event instruction length",
    ),
    case(
        "inject-int3-length-0",
        "§27.2.1.3: software exception -> length 0 only if IA32_VMX_MISC[30] = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 6 << 8 | 3),),
        CONTROLS,
        "injected event instruction length",
    ),
    case(
        "inject-int1-length-0",
        "§27.2.1.3: privileged SW exception -> length 0 only if IA32_VMX_MISC[30]",
        ((F.VM_ENTRY_INTR_INFO_FIELD, INTR_INFO_VALID | 5 << 8 | 1),),
        CONTROLS,
        "injected event instruction length",
    ),
    case(
        "inject-int-n-length-0-with-misc-30",
        "§27.2.1.3: length 0 allowed if IA32_VMX_MISC[30] = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, SW_INT_0x80),),
        ENTERS,
        tweak=with_msr(Msr.IA32_VMX_MISC, set_bits=VMX_MISC_ZERO_LEN_INJECTION),
    ),
]

# §27.2.2-§27.2.4 Checks on host state -> VMfailValid(8) -----------------------------------

S_HCR = "§27.2.2"
S_HSEG = "§27.2.3"
S_HSIZE = "§27.2.4"

HOST_CASES = [
    case(
        "cr0-pe-clear",
        f"{S_HCR}: host CR0 satisfies IA32_VMX_CR0_FIXED0",
        ((F.HOST_CR0, bits_clear(CR0_PE)),),
        HOST,
        "host CR0 fixed bits",
    ),
    case(
        "cr0-ne-clear",
        f"{S_HCR}: host CR0 satisfies IA32_VMX_CR0_FIXED0",
        ((F.HOST_CR0, bits_clear(CR0_NE)),),
        HOST,
        "host CR0 fixed bits",
    ),
    case(
        "cr0-pg-clear",
        f"{S_HCR}: host CR0 satisfies IA32_VMX_CR0_FIXED0",
        ((F.HOST_CR0, bits_clear(CR0_PG)),),
        HOST,
        "host CR0 fixed bits",
    ),
    case(
        "cr0-bit-32",
        f"{S_HCR}: host CR0 bits 63:32 = 0",
        ((F.HOST_CR0, bits_set(1 << 32)),),
        HOST,
        "host CR0 fixed bits",
    ),
    case("cr0-cd-nw", f"{S_HCR}: host CR0.CD and CR0.NW are not checked", ((F.HOST_CR0, bits_set(3 << 29)),), ENTERS),
    case(
        "cr4-vmxe-clear",
        f"{S_HCR}: host CR4 satisfies IA32_VMX_CR4_FIXED0",
        ((F.HOST_CR4, bits_clear(CR4_VMXE)),),
        HOST,
        "host CR4 fixed bits",
    ),
    case(
        "cr4-fixed1",
        f"{S_HCR}: host CR4 satisfies IA32_VMX_CR4_FIXED1",
        ((F.HOST_CR4, lambda old, m: old | first_cr4_fixed0_bit(m)),),
        HOST,
        "host CR4 fixed bits",
    ),
    case(
        "cr3-beyond-width",
        f"{S_HCR}: host CR3 bits beyond the physical-address width = 0",
        ((F.HOST_CR3, lambda old, m: old | 1 << m.phys_addr_bits),),
        HOST,
        "host CR3 beyond physical-address width",
    ),
    case(
        "cr3-bit-63",
        f"{S_HCR}: host CR3 bits 63:52 = 0",
        ((F.HOST_CR3, bits_set(1 << 63)),),
        HOST,
        "host CR3 beyond physical-address width",
    ),
    case(
        "sysenter-esp",
        f"{S_HCR}: host IA32_SYSENTER_ESP canonical",
        ((F.HOST_IA32_SYSENTER_ESP, NONCANONICAL),),
        HOST,
        "host SYSENTER_ESP/EIP not canonical",
    ),
    case(
        "sysenter-eip",
        f"{S_HCR}: host IA32_SYSENTER_EIP canonical",
        ((F.HOST_IA32_SYSENTER_EIP, NONCANONICAL),),
        HOST,
        "host SYSENTER_ESP/EIP not canonical",
    ),
    case(
        "perf-global-ctrl-reserved",
        f"{S_HCR}: load IA32_PERF_GLOBAL_CTRL -> reserved bits 0",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_PERF_GLOBAL_CTRL)), (F.HOST_IA32_PERF_GLOBAL_CTRL, 0x10)),
        HOST,
        "host IA32_PERF_GLOBAL_CTRL reserved bits",
    ),
    case(
        "perf-global-ctrl-valid",
        f"{S_HCR}: load IA32_PERF_GLOBAL_CTRL -> reserved bits 0",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_PERF_GLOBAL_CTRL)), (F.HOST_IA32_PERF_GLOBAL_CTRL, 0x7_0000_000F)),
        ENTERS,
    ),
    case(
        "perf-global-ctrl-not-loaded",
        f"{S_HCR}: checked only with 'load IA32_PERF_GLOBAL_CTRL'",
        ((F.HOST_IA32_PERF_GLOBAL_CTRL, 0xFFFF),),
        ENTERS,
    ),
    case(
        "pat-type-2",
        f"{S_HCR}: load IA32_PAT -> each byte in {{0, 1, 4, 5, 6, 7}}",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_PAT)), (F.HOST_IA32_PAT, 0x02)),
        HOST,
        "host IA32_PAT",
    ),
    case(
        "pat-type-3-top-byte",
        f"{S_HCR}: load IA32_PAT -> each byte in {{0, 1, 4, 5, 6, 7}}",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_PAT)), (F.HOST_IA32_PAT, 0x03 << 56)),
        HOST,
        "host IA32_PAT",
    ),
    case(
        "pat-valid",
        f"{S_HCR}: load IA32_PAT with the power-up value",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_PAT)), (F.HOST_IA32_PAT, 0x0007_0406_0007_0406)),
        ENTERS,
    ),
    case(
        "efer-valid",
        f"{S_HCR}: load IA32_EFER: LMA = LME = host address-space size",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_EFER)), (F.HOST_IA32_EFER, 0xD01)),
        ENTERS,
    ),
    case(
        "efer-reserved",
        f"{S_HCR}: load IA32_EFER -> reserved bits 0",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_EFER)), (F.HOST_IA32_EFER, 0xD03)),
        HOST,
        "host IA32_EFER",
    ),
    case(
        "efer-lma-clear",
        f"{S_HCR}: load IA32_EFER -> LMA = host address-space size",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_EFER)), (F.HOST_IA32_EFER, 0x901)),
        HOST,
        "host IA32_EFER",
    ),
    case(
        "efer-lme-clear",
        f"{S_HCR}: load IA32_EFER -> LME = host address-space size",
        ((F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_EFER)), (F.HOST_IA32_EFER, 0xC01)),
        HOST,
        "host IA32_EFER",
    ),
    *[
        case(
            f"{name}-selector-rpl",
            f"{S_HSEG}: host {name.upper()} selector RPL = 0",
            ((sel, value),),
            HOST,
            "host selector RPL/TI",
        )
        for name, sel, value in (
            ("es", F.HOST_ES_SELECTOR, 0x11),
            ("cs", F.HOST_CS_SELECTOR, 0x0B),
            ("ss", F.HOST_SS_SELECTOR, 0x13),
            ("ds", F.HOST_DS_SELECTOR, 0x12),
            ("fs", F.HOST_FS_SELECTOR, 0x01),
            ("gs", F.HOST_GS_SELECTOR, 0x03),
            ("tr", F.HOST_TR_SELECTOR, 0x19),
        )
    ],
    case(
        "ss-selector-ti",
        f"{S_HSEG}: host SS selector TI = 0",
        ((F.HOST_SS_SELECTOR, 0x14),),
        HOST,
        "host selector RPL/TI",
    ),
    case(
        "tr-selector-ti",
        f"{S_HSEG}: host TR selector TI = 0",
        ((F.HOST_TR_SELECTOR, 0x1C),),
        HOST,
        "host selector RPL/TI",
    ),
    case(
        "cs-selector-null",
        f"{S_HSEG}: host CS selector != 0",
        ((F.HOST_CS_SELECTOR, 0),),
        HOST,
        "host CS or TR selector null",
    ),
    case(
        "tr-selector-null",
        f"{S_HSEG}: host TR selector != 0",
        ((F.HOST_TR_SELECTOR, 0),),
        HOST,
        "host CS or TR selector null",
    ),
    case(
        "ss-selector-null-64-bit-host",
        f"{S_HSEG}: SS may be 0 if host address-space size = 1",
        ((F.HOST_SS_SELECTOR, 0),),
        ENTERS,
    ),
    case(
        "data-selectors-null",
        f"{S_HSEG}: DS, ES, FS, GS selectors may be 0",
        ((F.HOST_DS_SELECTOR, 0), (F.HOST_ES_SELECTOR, 0), (F.HOST_FS_SELECTOR, 0), (F.HOST_GS_SELECTOR, 0)),
        ENTERS,
    ),
    case(
        "ss-selector-null-32-bit-host",
        f"{S_HSEG}: SS != 0 if host address-space size = 0",
        (*HOST_32, *PROTECTED_32, (F.HOST_SS_SELECTOR, 0)),
        HOST,
        "host SS selector null",
        setup=legacy_host,
    ),
    *[
        case(
            f"{name}-base-not-canonical",
            f"{S_HSEG}: host {name.upper()} base canonical",
            ((base, NONCANONICAL),),
            HOST,
            "host base not canonical",
        )
        for name, base in (
            ("fs", F.HOST_FS_BASE),
            ("gs", F.HOST_GS_BASE),
            ("gdtr", F.HOST_GDTR_BASE),
            ("idtr", F.HOST_IDTR_BASE),
            ("tr", F.HOST_TR_BASE),
        )
    ],
    case(
        "host-size-0-in-ia32e-mode",
        f"{S_HSIZE}: IA32_EFER.LMA = 1 -> host address-space size = 1",
        HOST_32,
        HOST,
        "host address-space size 0 in IA-32e mode",
    ),
    case(
        "ia32e-guest-outside-ia32e-mode",
        f"{S_HSIZE}: IA32_EFER.LMA = 0 -> 'IA-32e mode guest' = 0",
        HOST_32,
        HOST,
        "IA-32e mode settings outside IA-32e mode",
        setup=legacy_host,
    ),
    case(
        "host-size-1-outside-ia32e-mode",
        f"{S_HSIZE}: IA32_EFER.LMA = 0 -> host address-space size = 0",
        PROTECTED_32,
        HOST,
        "IA-32e mode settings outside IA-32e mode",
        setup=legacy_host,
    ),
    case(
        "32-bit-host-and-guest",
        f"{S_HSIZE}: host address-space size 0 outside IA-32e mode",
        (*HOST_32, *PROTECTED_32),
        ENTERS,
        setup=legacy_host,
    ),
    case(
        "32-bit-host-cr4-pcide",
        f"{S_HSIZE}: host address-space size 0 -> host CR4.PCIDE = 0",
        (*HOST_32, *PROTECTED_32, (F.HOST_CR4, bits_set(CR4_PCIDE))),
        HOST,
        "host address-space size 0 settings",
        setup=legacy_host,
    ),
    case(
        "32-bit-host-rip-bit-32",
        f"{S_HSIZE}: host address-space size 0 -> host RIP bits 63:32 = 0",
        (*HOST_32, *PROTECTED_32, (F.HOST_RIP, 1 << 32 | HOST_RIP)),
        HOST,
        "host address-space size 0 settings",
        setup=legacy_host,
    ),
    case(
        "64-bit-host-cr4-pae-clear",
        f"{S_HSIZE}: host address-space size 1 -> host CR4.PAE = 1",
        ((F.HOST_CR4, bits_clear(CR4_PAE)),),
        HOST,
        "host address-space size 1 settings",
    ),
    case(
        "64-bit-host-rip-not-canonical",
        f"{S_HSIZE}: host address-space size 1 -> host RIP canonical",
        ((F.HOST_RIP, NONCANONICAL),),
        HOST,
        "host address-space size 1 settings",
    ),
    case(
        "64-bit-host-rip-canonical-high",
        f"{S_HSIZE}: host address-space size 1 -> host RIP canonical",
        ((F.HOST_RIP, CANONICAL_HIGH),),
        ENTERS,
    ),
]

# §27.3.1 Checks on the guest-state area -> VM-entry failure, exit reason 33 --------------

S_GCR = "§27.3.1.1"
S_GSEG = "§27.3.1.2"
S_GDT = "§27.3.1.3"
S_GRIP = "§27.3.1.4"
S_GNR = "§27.3.1.5"
S_PDPTE = "§27.3.1.6"

GUEST_CASES = [
    # --- control registers, debug registers, MSRs
    case(
        "cr0-pe-clear",
        f"{S_GCR}: guest CR0 satisfies FIXED0 (PE)",
        ((F.GUEST_CR0, bits_clear(CR0_PE)),),
        guest(),
        "guest CR0 fixed bits",
    ),
    case(
        "cr0-pg-clear",
        f"{S_GCR}: guest CR0 satisfies FIXED0 (PG)",
        ((F.GUEST_CR0, bits_clear(CR0_PG)),),
        guest(),
        "guest CR0 fixed bits",
    ),
    case(
        "cr0-ne-clear",
        f"{S_GCR}: guest CR0 satisfies FIXED0 (NE)",
        ((F.GUEST_CR0, bits_clear(CR0_NE)),),
        guest(),
        "guest CR0 fixed bits",
    ),
    case(
        "cr0-bit-32",
        f"{S_GCR}: guest CR0 bits 63:32 = 0",
        ((F.GUEST_CR0, bits_set(1 << 32)),),
        guest(),
        "guest CR0 fixed bits",
    ),
    case(
        "cr0-cd-nw", f"{S_GCR}: guest CR0.NW and CR0.CD are never checked", ((F.GUEST_CR0, bits_set(3 << 29)),), ENTERS
    ),
    case(
        "cr0-pe-pg-clear-unrestricted",
        f"{S_GCR}: PE and PG are not checked with 'unrestricted guest'",
        REAL_MODE,
        ENTERS,
    ),
    case(
        "cr0-pe-clear-pg-set-unrestricted",
        f"{S_GCR}: CR0.PG = 1 -> CR0.PE = 1",
        (*UNRESTRICTED, *NOT_IA32E, (F.GUEST_CR0, bits_clear(CR0_PE))),
        guest(),
        "guest CR0.PG without PE",
    ),
    case(
        "cr4-vmxe-clear",
        f"{S_GCR}: guest CR4 satisfies FIXED0",
        ((F.GUEST_CR4, bits_clear(CR4_VMXE)),),
        guest(),
        "guest CR4 fixed bits",
    ),
    case(
        "cr4-fixed1",
        f"{S_GCR}: guest CR4 satisfies FIXED1",
        ((F.GUEST_CR4, lambda old, m: old | first_cr4_fixed0_bit(m)),),
        guest(),
        "guest CR4 fixed bits",
    ),
    case(
        "debugctl-reserved",
        f"{S_GCR}: load debug controls -> IA32_DEBUGCTL reserved bits 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_DEBUG_CONTROLS)), (F.GUEST_IA32_DEBUGCTL, 1 << 2)),
        guest(),
        "guest DEBUGCTL/DR7 reserved bits",
    ),
    case(
        "dr7-bit-32",
        f"{S_GCR}: load debug controls -> DR7 bits 63:32 = 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_DEBUG_CONTROLS)), (F.GUEST_DR7, 1 << 32 | 0x400)),
        guest(),
        "guest DEBUGCTL/DR7 reserved bits",
    ),
    case(
        "debugctl-not-loaded",
        f"{S_GCR}: DEBUGCTL checked only with 'load debug controls'",
        ((F.GUEST_IA32_DEBUGCTL, 1 << 2),),
        ENTERS,
    ),
    case(
        "ia32e-without-pae",
        f"{S_GCR}: IA-32e mode guest -> CR4.PAE = 1",
        ((F.GUEST_CR4, bits_clear(CR4_PAE)),),
        guest(),
        "IA-32e mode guest without paging and PAE",
    ),
    case(
        "ia32e-without-paging-unrestricted",
        f"{S_GCR}: IA-32e mode guest -> CR0.PG = 1",
        (*UNRESTRICTED, (F.GUEST_CR0, bits_clear(CR0_PG))),
        guest(),
        "IA-32e mode guest without paging and PAE",
    ),
    case(
        "pcide-outside-ia32e",
        f"{S_GCR}: not IA-32e mode guest -> CR4.PCIDE = 0",
        (*NOT_IA32E, (F.GUEST_CR4, bits_set(CR4_PCIDE))),
        guest(),
        "guest CR4.PCIDE outside IA-32e mode",
    ),
    case(
        "pcide-in-ia32e",
        f"{S_GCR}: CR4.PCIDE allowed in an IA-32e mode guest",
        ((F.GUEST_CR4, bits_set(CR4_PCIDE)),),
        ENTERS,
    ),
    case(
        "cr3-beyond-width",
        f"{S_GCR}: guest CR3 bits beyond the physical-address width = 0",
        ((F.GUEST_CR3, lambda old, m: old | 1 << m.phys_addr_bits),),
        guest(),
        "guest CR3 beyond physical-address width",
    ),
    case(
        "sysenter-esp",
        f"{S_GCR}: guest IA32_SYSENTER_ESP canonical",
        ((F.GUEST_SYSENTER_ESP, NONCANONICAL),),
        guest(),
        "guest SYSENTER_ESP/EIP not canonical",
    ),
    case(
        "sysenter-eip",
        f"{S_GCR}: guest IA32_SYSENTER_EIP canonical",
        ((F.GUEST_SYSENTER_EIP, NONCANONICAL),),
        guest(),
        "guest SYSENTER_ESP/EIP not canonical",
    ),
    case(
        "perf-global-ctrl-reserved",
        f"{S_GCR}: load IA32_PERF_GLOBAL_CTRL -> reserved bits 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_PERF_GLOBAL_CTRL)), (F.GUEST_IA32_PERF_GLOBAL_CTRL, 1 << 4)),
        guest(),
        "guest IA32_PERF_GLOBAL_CTRL reserved bits",
    ),
    case(
        "pat-type-2",
        f"{S_GCR}: load IA32_PAT -> each byte in {{0, 1, 4, 5, 6, 7}}",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_PAT)), (F.GUEST_IA32_PAT, 0x0207_0406_0007_0406)),
        guest(),
        "guest IA32_PAT",
    ),
    case(
        "pat-valid",
        f"{S_GCR}: load IA32_PAT -> each byte in {{0, 1, 4, 5, 6, 7}}",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_PAT)), (F.GUEST_IA32_PAT, 0x0007_0406_0007_0406)),
        ENTERS,
    ),
    case(
        "efer-valid",
        f"{S_GCR}: load IA32_EFER: LMA = IA-32e mode guest = LME (CR0.PG = 1)",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_EFER)), (F.GUEST_IA32_EFER, 0xD01)),
        ENTERS,
    ),
    case(
        "efer-reserved",
        f"{S_GCR}: load IA32_EFER -> reserved bits 0",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_EFER)), (F.GUEST_IA32_EFER, 0xD03)),
        guest(),
        "guest IA32_EFER",
    ),
    case(
        "efer-lma-not-ia32e",
        f"{S_GCR}: load IA32_EFER -> LMA = 'IA-32e mode guest'",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_EFER)), (F.GUEST_IA32_EFER, 0x901)),
        guest(),
        "guest IA32_EFER",
    ),
    case(
        "efer-lme-not-lma-with-paging",
        f"{S_GCR}: load IA32_EFER, CR0.PG = 1 -> LME = LMA",
        ((F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_EFER)), (F.GUEST_IA32_EFER, 0xC01)),
        guest(),
        "guest IA32_EFER",
    ),
    case(
        "efer-lme-without-paging",
        f"{S_GCR}: LME is compared with LMA only if CR0.PG = 1",
        (*REAL_MODE, (F.VM_ENTRY_CONTROLS, bits_set(EntryCtls.LOAD_EFER)), (F.GUEST_IA32_EFER, 0x100)),
        ENTERS,
    ),
    # --- segment registers: selectors, bases, limits
    case("tr-ti", f"{S_GSEG}: TR selector TI = 0", ((F.GUEST_TR_SELECTOR, 0x1C),), guest(), "guest TR.TI"),
    case(
        "ldtr-usable",
        f"{S_GSEG}: a usable LDT",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_LIMIT, 0xFFFF), (F.GUEST_LDTR_AR_BYTES, LDT)),
        ENTERS,
    ),
    case(
        "ldtr-ti-usable",
        f"{S_GSEG}: usable LDTR -> selector TI = 0",
        ((F.GUEST_LDTR_SELECTOR, 0x24), (F.GUEST_LDTR_AR_BYTES, LDT)),
        guest(),
        "guest LDTR.TI",
    ),
    case(
        "ldtr-ti-unusable",
        f"{S_GSEG}: LDTR checks apply only if it is usable",
        ((F.GUEST_LDTR_SELECTOR, 0x24), (F.GUEST_LDTR_AR_BYTES, AR_UNUSABLE)),
        ENTERS,
    ),
    case(
        "ss-rpl-not-cs-rpl",
        f"{S_GSEG}: SS.RPL = CS.RPL (not v8086, not unrestricted guest)",
        ((F.GUEST_SS_SELECTOR, 0x13),),
        guest(),
        "guest SS.RPL != CS.RPL",
    ),
    case(
        "ss-rpl-not-cs-rpl-unrestricted",
        f"{S_GSEG}: SS.RPL rule does not apply to an unrestricted guest",
        (*UNRESTRICTED, (F.GUEST_SS_SELECTOR, 0x13)),
        ENTERS,
    ),
    case("v86-guest", f"{S_GSEG}: virtual-8086 guest: base = selector << 4, limit FFFFH, AR F3H", V86_GUEST, ENTERS),
    case(
        "v86-base",
        f"{S_GSEG}: virtual-8086 guest: base = selector << 4",
        (*V86_GUEST, (F.GUEST_DS_BASE, 0x10010)),
        guest(),
        "guest virtual-8086 segment",
    ),
    case(
        "v86-limit",
        f"{S_GSEG}: virtual-8086 guest: limit = FFFFH",
        (*V86_GUEST, (F.GUEST_SS_LIMIT, 0xFFFFF)),
        guest(),
        "guest virtual-8086 segment",
    ),
    case(
        "v86-cs-ar",
        f"{S_GSEG}: virtual-8086 guest: access rights = F3H",
        (*V86_GUEST, (F.GUEST_CS_AR_BYTES, 0xFB)),
        guest(),
        "guest virtual-8086 segment",
    ),
    *[
        case(
            f"{name}-base-not-canonical",
            f"{S_GSEG}: {name.upper()} base canonical",
            ((base, NONCANONICAL),),
            guest(),
            "guest TR/FS/GS base not canonical",
        )
        for name, base in (("tr", F.GUEST_TR_BASE), ("fs", F.GUEST_FS_BASE), ("gs", F.GUEST_GS_BASE))
    ],
    case(
        "ldtr-base-not-canonical",
        f"{S_GSEG}: usable LDTR base canonical",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_AR_BYTES, LDT), (F.GUEST_LDTR_BASE, NONCANONICAL)),
        guest(),
        "guest LDTR base not canonical",
    ),
    case(
        "ldtr-base-not-canonical-unusable",
        f"{S_GSEG}: unusable LDTR base is not checked",
        ((F.GUEST_LDTR_BASE, NONCANONICAL),),
        ENTERS,
    ),
    case(
        "cs-base-bit-32",
        f"{S_GSEG}: CS base bits 63:32 = 0",
        ((F.GUEST_CS_BASE, 1 << 32),),
        guest(),
        "guest segment base bits 63:32",
    ),
    case(
        "ss-base-bit-32",
        f"{S_GSEG}: usable SS base bits 63:32 = 0",
        ((F.GUEST_SS_BASE, 1 << 32),),
        guest(),
        "guest segment base bits 63:32",
    ),
    case(
        "ds-base-bit-32",
        f"{S_GSEG}: usable DS base bits 63:32 = 0",
        ((F.GUEST_DS_BASE, 1 << 32),),
        guest(),
        "guest segment base bits 63:32",
    ),
    case(
        "ds-base-bit-32-unusable",
        f"{S_GSEG}: unusable DS base is not checked",
        ((F.GUEST_DS_BASE, 1 << 32), (F.GUEST_DS_AR_BYTES, AR_UNUSABLE)),
        ENTERS,
    ),
    # --- CS access rights
    case(
        "cs-type-3",
        f"{S_GSEG}: CS type 9, 11, 13 or 15 (3 only with unrestricted guest)",
        ((F.GUEST_CS_AR_BYTES, CODE64 & ~0xF | 3),),
        guest(),
        "guest CS type",
    ),
    case(
        "cs-type-1",
        f"{S_GSEG}: CS type 9, 11, 13 or 15",
        ((F.GUEST_CS_AR_BYTES, CODE64 & ~0xF | 1),),
        guest(),
        "guest CS type",
    ),
    case(
        "cs-type-9",
        f"{S_GSEG}: CS type 9 (execute-only, accessed)",
        ((F.GUEST_CS_AR_BYTES, CODE64 & ~0xF | 9),),
        ENTERS,
    ),
    case(
        "cs-s-clear", f"{S_GSEG}: CS.S = 1", ((F.GUEST_CS_AR_BYTES, CODE64 & ~0x10),), guest(), "guest CS access rights"
    ),
    case(
        "cs-not-present",
        f"{S_GSEG}: CS.P = 1",
        ((F.GUEST_CS_AR_BYTES, CODE64 & ~0x80),),
        guest(),
        "guest CS access rights",
    ),
    case(
        "cs-g-with-limit-low-bits-0",
        f"{S_GSEG}: limit[11:0] != FFFH -> G = 0",
        ((F.GUEST_CS_LIMIT, 0xFFFF_F000),),
        guest(),
        "guest CS access rights",
    ),
    case(
        "cs-no-g-with-limit-above-1m",
        f"{S_GSEG}: limit[31:20] != 0 -> G = 1",
        ((F.GUEST_CS_AR_BYTES, CODE64 & ~0x8000), (F.GUEST_CS_LIMIT, 0x10_0000)),
        guest(),
        "guest CS access rights",
    ),
    case(
        "cs-type-3-unrestricted",
        f"{S_GSEG}: unrestricted guest: CS type 3 with DPL 0",
        (*UNRESTRICTED, *NOT_IA32E, (F.GUEST_CS_AR_BYTES, CODE64 & ~0xF | 3)),
        ENTERS,
    ),
    case(
        "cs-type-3-dpl-3-unrestricted",
        f"{S_GSEG}: CS type 3 -> CS.DPL = 0",
        (*UNRESTRICTED, *NOT_IA32E, (F.GUEST_CS_AR_BYTES, dpl(CODE64 & ~0xF | 3, 3))),
        guest(),
        "guest CS.DPL (type 3)",
    ),
    case(
        "cs-nonconforming-dpl-not-ss-dpl",
        f"{S_GSEG}: CS type 9/11 -> CS.DPL = SS.DPL",
        ((F.GUEST_CS_AR_BYTES, dpl(CODE64, 3)),),
        guest(),
        "guest CS.DPL != SS.DPL",
    ),
    case(
        "cs-conforming-dpl-above-ss-dpl",
        f"{S_GSEG}: CS type 13/15 -> CS.DPL <= SS.DPL",
        ((F.GUEST_CS_AR_BYTES, dpl(CODE64 | 4, 3)),),
        guest(),
        "guest CS.DPL > SS.DPL",
    ),
    case(
        "cs-conforming-dpl-below-ss-dpl",
        f"{S_GSEG}: CS type 13/15 -> CS.DPL <= SS.DPL",
        (*CPL3, (F.GUEST_CS_AR_BYTES, CODE64 | 4)),
        ENTERS,
    ),
    case(
        "cs-l-and-d",
        f"{S_GSEG}: IA-32e mode guest with CS.L = 1 -> CS.D/B = 0",
        ((F.GUEST_CS_AR_BYTES, CODE64 | 0x4000),),
        guest(),
        "guest CS.L and CS.D",
    ),
    case(
        "cs-l-and-d-not-ia32e",
        f"{S_GSEG}: the CS.L/CS.D rule applies only to an IA-32e mode guest",
        (*PROTECTED_32, (F.GUEST_CS_AR_BYTES, CODE64 | 0x4000)),
        ENTERS,
    ),
    case("cpl3-guest", f"{S_GSEG}: CS.DPL = SS.DPL = SS.RPL = CS.RPL = 3", CPL3, ENTERS),
    # --- SS access rights
    case(
        "ss-type-11",
        f"{S_GSEG}: usable SS type 3 or 7",
        ((F.GUEST_SS_AR_BYTES, DATA | 8),),
        guest(),
        "guest SS access rights",
    ),
    case(
        "ss-s-clear",
        f"{S_GSEG}: usable SS.S = 1",
        ((F.GUEST_SS_AR_BYTES, DATA & ~0x10),),
        guest(),
        "guest SS access rights",
    ),
    case(
        "ss-not-present",
        f"{S_GSEG}: usable SS.P = 1",
        ((F.GUEST_SS_AR_BYTES, DATA & ~0x80),),
        guest(),
        "guest SS access rights",
    ),
    case("ss-unusable", f"{S_GSEG}: SS may be unusable", ((F.GUEST_SS_AR_BYTES, DATA | AR_UNUSABLE),), ENTERS),
    case(
        "ss-dpl-not-rpl",
        f"{S_GSEG}: SS.DPL = SS.RPL (not unrestricted guest)",
        ((F.GUEST_CS_AR_BYTES, CODE64 | 4), (F.GUEST_SS_AR_BYTES, dpl(DATA, 3))),
        guest(),
        "guest SS.DPL != SS.RPL",
    ),
    case(
        "ss-dpl-3-real-mode",
        f"{S_GSEG}: CR0.PE = 0 -> SS.DPL = 0",
        (*REAL_MODE, (F.GUEST_CS_AR_BYTES, CODE64 | 4), (F.GUEST_SS_AR_BYTES, dpl(DATA, 3))),
        guest(),
        "guest SS.DPL (real mode)",
    ),
    # --- DS, ES, FS, GS access rights
    case(
        "ds-not-accessed",
        f"{S_GSEG}: usable data segment type bit 0 (accessed) = 1",
        ((F.GUEST_DS_AR_BYTES, DATA & ~1),),
        guest(),
        "guest data segment access rights",
    ),
    case(
        "es-execute-only-code",
        f"{S_GSEG}: usable code segment in ES must be readable",
        ((F.GUEST_ES_AR_BYTES, DATA & ~0xF | 9),),
        guest(),
        "guest data segment access rights",
    ),
    case("fs-readable-code", f"{S_GSEG}: a readable code segment in FS", ((F.GUEST_FS_AR_BYTES, DATA | 8),), ENTERS),
    case(
        "gs-s-clear",
        f"{S_GSEG}: usable GS.S = 1",
        ((F.GUEST_GS_AR_BYTES, DATA & ~0x10),),
        guest(),
        "guest data segment access rights",
    ),
    case(
        "ds-not-present",
        f"{S_GSEG}: usable DS.P = 1",
        ((F.GUEST_DS_AR_BYTES, DATA & ~0x80),),
        guest(),
        "guest data segment access rights",
    ),
    case(
        "ds-dpl-below-rpl",
        f"{S_GSEG}: data segment DPL >= RPL (type 0-11, not unrestricted guest)",
        ((F.GUEST_DS_SELECTOR, 0x13),),
        guest(),
        "guest data segment DPL < RPL",
    ),
    case(
        "ds-conforming-code-dpl-below-rpl",
        f"{S_GSEG}: DPL >= RPL does not apply to conforming code",
        ((F.GUEST_DS_SELECTOR, 0x13), (F.GUEST_DS_AR_BYTES, DATA | 0xC)),
        ENTERS,
    ),
    case(
        "ds-dpl-below-rpl-unrestricted",
        f"{S_GSEG}: DPL >= RPL does not apply to an unrestricted guest",
        (*UNRESTRICTED, (F.GUEST_DS_SELECTOR, 0x13)),
        ENTERS,
    ),
    case(
        "gs-limit-granularity",
        f"{S_GSEG}: usable GS: limit[31:20] != 0 -> G = 1",
        ((F.GUEST_GS_AR_BYTES, DATA & ~0x8000), (F.GUEST_GS_LIMIT, 0x10_0000)),
        guest(),
        "guest data segment limit/granularity",
    ),
    case(
        "es-unusable-garbage",
        f"{S_GSEG}: unusable ES is not checked",
        ((F.GUEST_ES_AR_BYTES, AR_UNUSABLE | 0x3), (F.GUEST_ES_LIMIT, 0x10_0000)),
        ENTERS,
    ),
    # --- TR and LDTR access rights
    case(
        "tr-type-3-ia32e",
        f"{S_GSEG}: IA-32e mode guest -> TR type 11",
        ((F.GUEST_TR_AR_BYTES, 0x83),),
        guest(),
        "guest TR type",
    ),
    case(
        "tr-type-3-not-ia32e",
        f"{S_GSEG}: outside IA-32e mode TR type 3 or 11",
        (*PROTECTED_32, (F.GUEST_TR_AR_BYTES, 0x83)),
        ENTERS,
    ),
    case(
        "tr-type-9", f"{S_GSEG}: TR type 3 or 11 (busy TSS)", ((F.GUEST_TR_AR_BYTES, 0x89),), guest(), "guest TR type"
    ),
    case(
        "tr-s-set", f"{S_GSEG}: TR.S = 0", ((F.GUEST_TR_AR_BYTES, TSS_BUSY | 0x10),), guest(), "guest TR access rights"
    ),
    case(
        "tr-not-present",
        f"{S_GSEG}: TR.P = 1",
        ((F.GUEST_TR_AR_BYTES, TSS_BUSY & ~0x80),),
        guest(),
        "guest TR access rights",
    ),
    case(
        "tr-unusable",
        f"{S_GSEG}: TR usable",
        ((F.GUEST_TR_AR_BYTES, TSS_BUSY | AR_UNUSABLE),),
        guest(),
        "guest TR access rights",
    ),
    case(
        "tr-g-with-limit-0x67",
        f"{S_GSEG}: TR limit[11:0] != FFFH -> G = 0",
        ((F.GUEST_TR_AR_BYTES, TSS_BUSY | 0x8000),),
        guest(),
        "guest TR access rights",
    ),
    case(
        "ldtr-type-3",
        f"{S_GSEG}: usable LDTR type 2",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_AR_BYTES, 0x83)),
        guest(),
        "guest LDTR access rights",
    ),
    case(
        "ldtr-s-set",
        f"{S_GSEG}: usable LDTR.S = 0",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_AR_BYTES, LDT | 0x10)),
        guest(),
        "guest LDTR access rights",
    ),
    case(
        "ldtr-not-present",
        f"{S_GSEG}: usable LDTR.P = 1",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_AR_BYTES, LDT & ~0x80)),
        guest(),
        "guest LDTR access rights",
    ),
    case(
        "ldtr-g-with-limit-low-bits-0",
        f"{S_GSEG}: usable LDTR limit[11:0] != FFFH -> G = 0",
        ((F.GUEST_LDTR_SELECTOR, 0x20), (F.GUEST_LDTR_LIMIT, 0x1_0000), (F.GUEST_LDTR_AR_BYTES, LDT | 0x8000)),
        guest(),
        "guest LDTR access rights",
    ),
    case(
        "ar-reserved-bits-dropped-by-vmwrite",
        f"{S_GSEG}: AR bits 11:8 and 31:17 reserved; VMWRITE drops them (processor.py, like KVM), so the "
        "entry succeeds (see test_access_rights_reserved_bits for the check itself)",
        ((F.GUEST_CS_AR_BYTES, CODE64 | 0x100), (F.GUEST_TR_AR_BYTES, TSS_BUSY | 1 << 20)),
        ENTERS,
    ),
    # --- descriptor-table registers
    case(
        "gdtr-base-not-canonical",
        f"{S_GDT}: GDTR base canonical",
        ((F.GUEST_GDTR_BASE, NONCANONICAL),),
        guest(),
        "guest GDTR/IDTR base not canonical",
    ),
    case(
        "idtr-base-not-canonical",
        f"{S_GDT}: IDTR base canonical",
        ((F.GUEST_IDTR_BASE, NONCANONICAL),),
        guest(),
        "guest GDTR/IDTR base not canonical",
    ),
    case(
        "gdtr-limit-bit-16",
        f"{S_GDT}: GDTR limit bits 31:16 = 0",
        ((F.GUEST_GDTR_LIMIT, 0x1_0000),),
        guest(),
        "guest GDTR/IDTR limit bits 31:16",
    ),
    case(
        "idtr-limit-bit-31",
        f"{S_GDT}: IDTR limit bits 31:16 = 0",
        ((F.GUEST_IDTR_LIMIT, 0x8000_FFFF),),
        guest(),
        "guest GDTR/IDTR limit bits 31:16",
    ),
    # --- RIP and RFLAGS
    case(
        "rip-not-canonical",
        f"{S_GRIP}: IA-32e mode guest, CS.L = 1 -> RIP canonical",
        ((F.GUEST_RIP, NONCANONICAL),),
        guest(),
        "guest RIP not canonical",
    ),
    case(
        "rip-canonical-high",
        f"{S_GRIP}: IA-32e mode guest, CS.L = 1 -> RIP canonical",
        ((F.GUEST_RIP, CANONICAL_HIGH),),
        ENTERS,
    ),
    case(
        "rip-bit-32-compatibility-mode",
        f"{S_GRIP}: CS.L = 0 -> RIP bits 63:32 = 0",
        ((F.GUEST_CS_AR_BYTES, CODE32), (F.GUEST_RIP, 1 << 32)),
        guest(),
        "guest RIP bits 63:32",
    ),
    case(
        "rip-bit-32-not-ia32e",
        f"{S_GRIP}: not IA-32e mode guest -> RIP bits 63:32 = 0",
        (*PROTECTED_32, (F.GUEST_RIP, 1 << 32)),
        guest(),
        "guest RIP bits 63:32",
    ),
    *[
        case(
            f"rflags-{name}",
            f"{S_GRIP}: RFLAGS bits 63:22, 15, 5, 3 = 0 and bit 1 = 1",
            ((F.GUEST_RFLAGS, value),),
            guest(),
            "guest RFLAGS reserved bits",
        )
        for name, value in (
            ("0", 0),
            ("bit-3", 0xA),
            ("bit-5", 0x22),
            ("bit-15", 0x8002),
            ("bit-22", 0x40_0002),
            ("bit-63", 1 << 63 | 2),
        )
    ],
    case(
        "rflags-vm-ia32e",
        f"{S_GRIP}: IA-32e mode guest -> RFLAGS.VM = 0",
        (*v86_segments(),),
        guest(),
        "guest RFLAGS.VM",
    ),
    case(
        "rflags-vm-real-mode",
        f"{S_GRIP}: CR0.PE = 0 -> RFLAGS.VM = 0",
        (*REAL_MODE, *v86_segments(), (F.GUEST_CR4, bits_clear(CR4_PAE))),
        guest(),
        "guest RFLAGS.VM",
    ),
    case(
        "ext-int-with-if-0",
        f"{S_GRIP}: injecting an external interrupt -> RFLAGS.IF = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, EXT_INT_0x20),),
        guest(),
        "external interrupt injected with RFLAGS.IF = 0",
    ),
    case(
        "ext-int-with-if-1",
        f"{S_GRIP}: injecting an external interrupt -> RFLAGS.IF = 1",
        ((F.VM_ENTRY_INTR_INFO_FIELD, EXT_INT_0x20), (F.GUEST_RFLAGS, 0x202)),
        ENTERS,
    ),
    # --- activity state
    *[
        case(
            f"activity-{state}",
            f"{S_GNR}: activity state supported (IA32_VMX_MISC[8:6])",
            ((F.GUEST_ACTIVITY_STATE, state),),
            ENTERS,
        )
        for state in (1, 2, 3)
    ],
    case(
        "activity-4", f"{S_GNR}: activity state in 0-3", ((F.GUEST_ACTIVITY_STATE, 4),), guest(), "guest activity state"
    ),
    case(
        "activity-hlt-not-supported",
        f"{S_GNR}: HLT only if IA32_VMX_MISC[6] = 1",
        ((F.GUEST_ACTIVITY_STATE, 1),),
        guest(),
        "guest activity state",
        tweak=with_msr(Msr.IA32_VMX_MISC, clear_bits=1 << 6),
    ),
    case(
        "activity-hlt-cpl3",
        f"{S_GNR}: HLT -> SS.DPL = 0",
        (*CPL3, (F.GUEST_ACTIVITY_STATE, 1)),
        guest(),
        "HLT activity state with SS.DPL != 0",
    ),
    case(
        "activity-hlt-sti-blocking",
        f"{S_GNR}: STI or MOV-SS blocking -> active",
        ((F.GUEST_ACTIVITY_STATE, 1), (F.GUEST_RFLAGS, 0x202), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI)),
        guest(),
        "inactive guest with STI/MOV-SS blocking",
    ),
    case(
        "activity-shutdown-mov-ss-blocking",
        f"{S_GNR}: STI or MOV-SS blocking -> active",
        ((F.GUEST_ACTIVITY_STATE, 2), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS)),
        guest(),
        "inactive guest with STI/MOV-SS blocking",
    ),
    *[
        case(
            f"activity-{state_name}-inject-{event_name}",
            f"{S_GNR}: HLT allows ext. int., NMI, #DB, #MC, MTF; shutdown NMI and #MC; wait-for-SIPI none",
            (
                (F.GUEST_ACTIVITY_STATE, state),
                (F.VM_ENTRY_INTR_INFO_FIELD, info),
                (F.GUEST_RFLAGS, 0x202),
                (F.VM_ENTRY_INSTRUCTION_LEN, 2),
            ),
            ENTERS if ok else guest(),
            None if ok else "event injection blocked in the activity state",
        )
        for state, state_name, event_name, info, ok in (
            (1, "hlt", "ext-int", EXT_INT_0x20, True),
            (1, "hlt", "nmi", NMI, True),
            (1, "hlt", "db", HW_DB, True),
            (1, "hlt", "mc", HW_MC, True),
            (1, "hlt", "mtf", MTF, True),
            (1, "hlt", "gp", HW_GP, False),
            (1, "hlt", "int-n", SW_INT_0x80, False),
            (2, "shutdown", "nmi", NMI, True),
            (2, "shutdown", "mc", HW_MC, True),
            (2, "shutdown", "ext-int", EXT_INT_0x20, False),
            (2, "shutdown", "db", HW_DB, False),
            # Bochs lets any event with vector 18 through; the SDM allows only #MC.
            (2, "shutdown", "int-18", INTR_INFO_VALID | 4 << 8 | 18, False),
            (3, "wait-for-sipi", "nmi", NMI, False),
            (3, "wait-for-sipi", "ext-int", EXT_INT_0x20, False),
        )
    ],
    # --- interruptibility state
    case(
        "interruptibility-bit-5",
        f"{S_GNR}: interruptibility bits 31:5 = 0",
        ((F.GUEST_INTERRUPTIBILITY_INFO, 1 << 5),),
        guest(),
        "guest interruptibility reserved bits",
    ),
    case(
        "interruptibility-enclave-without-sgx",
        f"{S_GNR}: bit 4 (enclave interruption) only with SGX",
        ((F.GUEST_INTERRUPTIBILITY_INFO, 1 << 4),),
        guest(),
        "guest interruptibility reserved bits",
    ),
    case(
        "sti-and-mov-ss",
        f"{S_GNR}: not both STI and MOV-SS blocking",
        ((F.GUEST_RFLAGS, 0x202), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI | BLOCK_MOV_SS)),
        guest(),
        "both STI and MOV-SS blocking",
    ),
    case(
        "sti-with-if-0",
        f"{S_GNR}: RFLAGS.IF = 0 -> no STI blocking",
        ((F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI),),
        guest(),
        "STI blocking with RFLAGS.IF = 0",
    ),
    case(
        "sti-with-if-1",
        f"{S_GNR}: STI blocking with RFLAGS.IF = 1",
        ((F.GUEST_RFLAGS, 0x202), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI)),
        ENTERS,
    ),
    case(
        "mov-ss-with-if-0",
        f"{S_GNR}: MOV-SS blocking does not need RFLAGS.IF",
        ((F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS),),
        ENTERS,
    ),
    case(
        "ext-int-under-sti",
        f"{S_GNR}: injecting an external interrupt -> no STI/MOV-SS blocking",
        (
            (F.VM_ENTRY_INTR_INFO_FIELD, EXT_INT_0x20),
            (F.GUEST_RFLAGS, 0x202),
            (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI),
        ),
        guest(),
        "event injected under STI/MOV-SS blocking",
    ),
    case(
        "ext-int-under-mov-ss",
        f"{S_GNR}: injecting an external interrupt -> no STI/MOV-SS blocking",
        (
            (F.VM_ENTRY_INTR_INFO_FIELD, EXT_INT_0x20),
            (F.GUEST_RFLAGS, 0x202),
            (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS),
        ),
        guest(),
        "event injected under STI/MOV-SS blocking",
    ),
    case(
        "nmi-under-mov-ss",
        f"{S_GNR}: injecting an NMI -> no MOV-SS blocking",
        ((F.VM_ENTRY_INTR_INFO_FIELD, NMI), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS)),
        guest(),
        "event injected under STI/MOV-SS blocking",
    ),
    case(
        "nmi-under-sti",
        f"{S_GNR} and §27.8: a processor may require no STI blocking when injecting an NMI; "
        "such a failure has exit qualification 3 (Bochs fails it with 0, KVM leaves it to the CPU)",
        ((F.VM_ENTRY_INTR_INFO_FIELD, NMI), (F.GUEST_RFLAGS, 0x202), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI)),
        guest(3),
        "NMI injected under STI blocking",
    ),
    case(
        "exception-under-sti",
        f"{S_GNR}: STI blocking does not restrict exception injection",
        ((F.VM_ENTRY_INTR_INFO_FIELD, HW_UD), (F.GUEST_RFLAGS, 0x202), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI)),
        ENTERS,
    ),
    case(
        "smi-blocking",
        f"{S_GNR}: outside SMM no blocking by SMI",
        ((F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_SMI),),
        guest(),
        "blocking by SMI outside SMM",
    ),
    case(
        "nmi-under-virtual-nmi-blocking",
        f"{S_GNR}: virtual NMIs = 1 and injecting an NMI -> bit 3 = 0",
        (*VIRTUAL_NMIS, (F.VM_ENTRY_INTR_INFO_FIELD, NMI), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_NMI)),
        guest(),
        "NMI injected while blocked by virtual NMI",
    ),
    case(
        "nmi-under-nmi-blocking",
        f"{S_GNR}: without virtual NMIs, NMI blocking does not prevent injection",
        ((F.VM_ENTRY_INTR_INFO_FIELD, NMI), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_NMI)),
        ENTERS,
    ),
    # --- pending debug exceptions
    *[
        case(
            f"pending-dbg-bit-{bit}",
            f"{S_GNR}: pending debug exceptions bits 11:4, 13, 15, 63:17 = 0"
            + (" (bit 16 RTM: no model enumerates RTM; Bochs also treats it as reserved)" if bit == 16 else ""),
            ((F.GUEST_PENDING_DBG_EXCEPTIONS, 1 << bit),),
            guest(),
            "pending debug exceptions reserved bits",
        )
        for bit in (4, 11, 13, 15, 16, 17, 63)
    ],
    case(
        "pending-dbg-b0-enabled",
        f"{S_GNR}: B3-B0 and enabled breakpoint (bit 12) are valid",
        ((F.GUEST_PENDING_DBG_EXCEPTIONS, 1 << 12 | 1),),
        ENTERS,
    ),
    case(
        "pending-dbg-bs-no-blocking",
        f"{S_GNR}: BS vs TF is checked only under STI/MOV-SS blocking or HLT",
        ((F.GUEST_PENDING_DBG_EXCEPTIONS, PENDING_BS),),
        ENTERS,
    ),
    case(
        "pending-dbg-tf-sti-no-bs",
        f"{S_GNR}: STI blocking, TF = 1, BTF = 0 -> BS = 1",
        ((F.GUEST_RFLAGS, 0x302), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI)),
        guest(),
        "pending debug exceptions BS vs. single-step",
    ),
    case(
        "pending-dbg-bs-sti-no-tf",
        f"{S_GNR}: STI blocking, TF = 0 -> BS = 0",
        (
            (F.GUEST_RFLAGS, 0x202),
            (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI),
            (F.GUEST_PENDING_DBG_EXCEPTIONS, PENDING_BS),
        ),
        guest(),
        "pending debug exceptions BS vs. single-step",
    ),
    case(
        "pending-dbg-tf-sti-bs",
        f"{S_GNR}: STI blocking, TF = 1, BTF = 0, BS = 1",
        (
            (F.GUEST_RFLAGS, 0x302),
            (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_STI),
            (F.GUEST_PENDING_DBG_EXCEPTIONS, PENDING_BS),
        ),
        ENTERS,
    ),
    case(
        "pending-dbg-tf-hlt-no-bs",
        f"{S_GNR}: HLT, TF = 1, BTF = 0 -> BS = 1",
        ((F.GUEST_RFLAGS, 0x102), (F.GUEST_ACTIVITY_STATE, 1)),
        guest(),
        "pending debug exceptions BS vs. single-step",
    ),
    case(
        "pending-dbg-tf-btf-mov-ss-no-bs",
        f"{S_GNR}: MOV-SS blocking, TF = 1, BTF = 1 -> BS = 0",
        ((F.GUEST_RFLAGS, 0x102), (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS), (F.GUEST_IA32_DEBUGCTL, 2)),
        ENTERS,
    ),
    case(
        "pending-dbg-tf-btf-mov-ss-bs",
        f"{S_GNR}: MOV-SS blocking, TF = 1, BTF = 1 -> BS = 0",
        (
            (F.GUEST_RFLAGS, 0x102),
            (F.GUEST_INTERRUPTIBILITY_INFO, BLOCK_MOV_SS),
            (F.GUEST_IA32_DEBUGCTL, 2),
            (F.GUEST_PENDING_DBG_EXCEPTIONS, PENDING_BS),
        ),
        guest(),
        "pending debug exceptions BS vs. single-step",
    ),
    # --- VMCS link pointer (exit qualification 4)
    case(
        "link-ordinary-vmcs-shadowing-off",
        f"{S_GNR}: link pointer to an ordinary VMCS, shadowing off",
        ((LINK, VMCS_B),),
        ENTERS,
    ),
    case(
        "link-unaligned",
        f"{S_GNR}: link pointer bits 11:0 = 0",
        ((LINK, VMCS_B + 8),),
        guest(4),
        "VMCS link pointer address",
    ),
    case(
        "link-beyond-width",
        f"{S_GNR}: link pointer within the physical-address width",
        ((LINK, beyond_width()),),
        guest(4),
        "VMCS link pointer address",
    ),
    case(
        "link-wrong-revision",
        f"{S_GNR}: referenced bits 30:0 = VMCS revision identifier",
        ((LINK, BAD_REVISION_REGION),),
        guest(4),
        "VMCS link pointer revision id",
        setup=bad_revision_region,
    ),
    case(
        "link-no-memory",
        f"{S_GNR}: referenced bits 30:0 = VMCS revision identifier (no RAM reads all ones)",
        ((LINK, NO_MEMORY),),
        guest(4),
        "VMCS link pointer revision id",
    ),
    case(
        "link-shadow-vmcs-shadowing-off",
        f"{S_GNR}: referenced bit 31 = 'VMCS shadowing' (0)",
        ((LINK, SHADOW),),
        guest(4),
        "VMCS link pointer shadow-VMCS indicator",
    ),
    case(
        "link-shadow-vmcs-shadowing-not-activated",
        f"{S_GNR}: bit 31 = 'VMCS shadowing', which is 0 while primary bit 31 = 0",
        ((F.SECONDARY_VM_EXEC_CONTROL, SecondaryCtls.SHADOW_VMCS), (LINK, SHADOW)),
        guest(4),
        "VMCS link pointer shadow-VMCS indicator",
        needs=SHADOWING,
    ),
    case(
        "link-ordinary-vmcs-shadowing-on",
        f"{S_GNR}: referenced bit 31 = 'VMCS shadowing' (1)",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (LINK, VMCS_B)),
        guest(4),
        "VMCS link pointer shadow-VMCS indicator",
        needs=SHADOWING,
    ),
    case(
        "link-shadow-vmcs-shadowing-on",
        f"{S_GNR}: a shadow VMCS with shadowing on",
        (*secondary(SecondaryCtls.SHADOW_VMCS), (LINK, SHADOW)),
        ENTERS,
        needs=SHADOWING,
    ),
    case(
        "link-invalid-shadowing-on",
        f"{S_GNR}: link pointer FFFFFFFF_FFFFFFFFH is never checked",
        secondary(SecondaryCtls.SHADOW_VMCS),
        ENTERS,
        needs=SHADOWING,
    ),
    case(
        "link-current-vmcs",
        f"{S_GNR}: outside SMM the link pointer != the current-VMCS pointer",
        ((LINK, VMCS_A),),
        guest(4),
        "VMCS link pointer is the current VMCS",
    ),
    # --- PDPTEs of a PAE guest outside IA-32e mode (exit qualification 2)
    case(
        "pdpte-valid",
        f"{S_PDPTE}: present PDPTEs without reserved bits",
        PAE_32,
        ENTERS,
        setup=pdptes(0x61001, 0x62001, 0, 0xFFFF_FFFF_FFFF_FFFE),
    ),
    case(
        "pdpte0-bit-1",
        f"{S_PDPTE}: present PDPTE bits 2:1 = 0",
        PAE_32,
        guest(2),
        "guest PDPTE reserved bits",
        setup=pdptes(0x61003),
    ),
    case(
        "pdpte1-bit-8",
        f"{S_PDPTE}: present PDPTE bits 8:5 = 0",
        PAE_32,
        guest(2),
        "guest PDPTE reserved bits",
        setup=pdptes(0, 0x61101),
    ),
    case(
        "pdpte3-beyond-width",
        f"{S_PDPTE}: present PDPTE bits 63:MAXPHYADDR = 0",
        PAE_32,
        guest(2),
        "guest PDPTE reserved bits",
        setup=pdptes(0, 0, 0, lambda m: 1 << m.phys_addr_bits | 1),
    ),
    case(
        "pdpte2-xd",
        f"{S_PDPTE}: present PDPTE bit 63 = 0",
        PAE_32,
        guest(2),
        "guest PDPTE reserved bits",
        setup=pdptes(0, 0, 1 << 63 | 0x61001),
    ),
    case(
        "pdpte-ept-fields",
        f"{S_PDPTE}: with EPT the PDPTE fields are checked, not memory",
        (*PAE_32, *ept(), (F.GUEST_PDPTR2, 0x61003)),
        guest(2),
        "guest PDPTE reserved bits",
        setup=pdptes(0x61001),
    ),
    case(
        "pdpte-ept-memory-ignored",
        f"{S_PDPTE}: with EPT the PDPTE fields are checked, not memory",
        (*PAE_32, *ept(), (F.GUEST_PDPTR0, 0x61001)),
        ENTERS,
        setup=pdptes(0x61003),
    ),
    case(
        "pdpte-ia32e-guest",
        f"{S_PDPTE}: an IA-32e mode guest has no PDPTEs to check",
        ((F.GUEST_CR3, PDPT),),
        ENTERS,
        setup=pdptes(0x61003),
    ),
]

# §27.4 Loading MSRs -> VM-entry failure, exit reason 34 with the entry's index ------------


def msr_case(id: str, sdm: str, entries: tuple[tuple[int, int, int], ...], expect: Expect) -> Case:
    writes, setup = entry_msrs(*entries)
    return case(id, f"§27.4: {sdm}", writes, expect, setup=setup)


SYSENTER_CS = (Msr.IA32_SYSENTER_CS, 0, 0x10)
KERNEL_GS_BASE = (Msr.IA32_KERNEL_GS_BASE, 0, 0x1234_5678)

MSR_CASES = [
    msr_case("valid", "entries that WRMSR accepts", (SYSENTER_CS, KERNEL_GS_BASE), ENTERS),
    msr_case("reserved-dword", "bits 63:32 of an entry = 0", (SYSENTER_CS, (Msr.IA32_SYSENTER_ESP, 1, 0)), msr_load(2)),
    msr_case("fs-base", "index != IA32_FS_BASE", ((Msr.IA32_FS_BASE, 0, 0x1000),), msr_load(1)),
    msr_case("gs-base", "index != IA32_GS_BASE", (SYSENTER_CS, KERNEL_GS_BASE, (Msr.IA32_GS_BASE, 0, 0)), msr_load(3)),
    msr_case(
        "x2apic-first",
        "index[31:8] != 000008H (x2APIC; KVM checks it only in x2APIC mode)",
        ((0x800, 0, 0),),
        msr_load(1),
    ),
    msr_case("x2apic-last", "index[31:8] != 000008H (x2APIC)", (SYSENTER_CS, (0x8FF, 0, 0)), msr_load(2)),
    msr_case("smm-monitor-ctl", "no MSR writable only in SMM (IA32_SMM_MONITOR_CTL)", ((0x9B, 0, 0),), msr_load(1)),
    msr_case(
        "vmx-capability",
        "no MSR whose WRMSR would #GP (read-only IA32_VMX_BASIC)",
        ((Msr.IA32_VMX_BASIC, 0, 0),),
        msr_load(1),
    ),
]

# ------------------------------------------------------------------------------ running


def prepare(model: CpuModel, c: Case) -> LogicalProcessor:
    if c.needs is not None and not c.needs.check(model):
        pytest.skip(f"{model.name} lacks {c.needs.what}")
    cpu = make_cpu(c.tweak(model) if c.tweak else model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    if c.setup is not None:
        c.setup(cpu)
    for field, value in c.writes:
        if callable(value):
            status, old = cpu.vmread(field)
            assert status == VM_SUCCEED, field.name
            value = value(old, cpu.model)
        assert cpu.vmwrite(field, value) == VM_SUCCEED, f"VMWRITE {field.name}"
    return cpu


def vmread(cpu: LogicalProcessor, field: F) -> int:
    status, value = cpu.vmread(field)
    assert status == VM_SUCCEED, field.name
    return value


def check(cpu: LogicalProcessor, result: int | VmExit | None, expect: Expect, rule: str | None) -> None:
    if expect.error is not None:
        assert result == expect.error, cpu.last_entry_check
        assert cpu.state.rflags & RFLAGS_ZF
        assert vmread(cpu, F.VM_INSTRUCTION_ERROR) == expect.error
        assert not cpu.non_root
    elif expect.reason is not None:
        assert isinstance(result, VmExit), (result, cpu.last_entry_check)
        assert result.reason == EXIT_REASON_FAILED_VMENTRY | expect.reason, cpu.last_entry_check
        assert result.qualification == expect.qualification, cpu.last_entry_check
        assert vmread(cpu, F.VM_EXIT_REASON) == EXIT_REASON_FAILED_VMENTRY | expect.reason
        assert vmread(cpu, F.EXIT_QUALIFICATION) == expect.qualification
        assert not cpu.non_root and cpu.state.rip == vmread(cpu, F.HOST_RIP)
    else:
        assert result is None, cpu.last_entry_check
        assert cpu.non_root and cpu.current is not None
        assert cpu.state.rip == cpu.current.fields[F.GUEST_RIP]  # (VMREAD is for root operation)
    if rule is not None or expect == ENTERS:
        assert cpu.last_entry_check == rule


def run(model: CpuModel, c: Case) -> None:
    cpu = prepare(model, c)
    check(cpu, cpu.vmlaunch(), c.expect, c.rule)


def ids(cases: list[Case]) -> list[str]:
    found = [c.id for c in cases]
    assert len(found) == len(set(found)), "duplicate case ids"
    return found


@pytest.mark.parametrize("c", CONTROL_CASES, ids=ids(CONTROL_CASES))
def test_control_checks(model: CpuModel, c: Case) -> None:
    """SDM §27.2.1: VM-execution, VM-exit and VM-entry control fields (VMfailValid 7)."""
    run(model, c)


@pytest.mark.parametrize("c", HOST_CASES, ids=ids(HOST_CASES))
def test_host_state_checks(model: CpuModel, c: Case) -> None:
    """SDM §27.2.2-§27.2.4: host-state area (VMfailValid 8)."""
    run(model, c)


@pytest.mark.parametrize("c", GUEST_CASES, ids=ids(GUEST_CASES))
def test_guest_state_checks(model: CpuModel, c: Case) -> None:
    """SDM §27.3.1: guest-state area (VM-entry failure, reason 33, qualification 0/2/3/4)."""
    run(model, c)


@pytest.mark.parametrize("c", MSR_CASES, ids=ids(MSR_CASES))
def test_msr_load_checks(model: CpuModel, c: Case) -> None:
    """SDM §27.4: VM-entry MSR-load area (VM-entry failure, reason 34, 1-based index)."""
    run(model, c)


ALL_CASES = CONTROL_CASES + HOST_CASES + GUEST_CASES + MSR_CASES

# Rules of nestvmx.hw.vmentry that no table case can reach through VMWRITE on a modelled CPU.
UNREACHABLE = {
    "posted-interrupt settings": "no model allows 'process posted interrupts' (reserved-bit check first)",
    "PML settings": "no model allows 'enable PML'",
    "#VE information address": "no model allows 'EPT-violation #VE'",
    "virtual-interrupt delivery without external-interrupt exiting": "no model allows virtual-interrupt delivery",
}


def _rules_in_source() -> set[str]:
    """Every rule name a check function of nestvmx.hw.vmentry returns."""
    tree = ast.parse(inspect.getsource(vmentry))
    rules: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Return) or node.value is None:
            continue
        value = node.value.elts[0] if isinstance(node.value, ast.Tuple) else node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            rules.add(value.value)
    return rules


def test_every_rule_is_exercised() -> None:
    """The tables cover every named rule of vmentry.py, and name no rule that does not exist."""
    source = _rules_in_source()
    covered = {c.rule for c in ALL_CASES if c.rule is not None}
    assert covered <= source, covered - source
    assert source - covered == set(UNREACHABLE), source - covered ^ set(UNREACHABLE)


def test_access_rights_reserved_bits(model: CpuModel) -> None:
    """§27.3.1.2: AR bits 11:8 and 31:17 of CS and of usable SS/DS/ES/FS/GS/TR/LDTR must be 0.

    VMWRITE drops these bits (processor.py), so the rules are checked on the field values
    directly, as if the VMCS region had been written by a processor that keeps them."""
    cpu = make_cpu(model)
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    assert cpu.current is not None
    base = dict(cpu.current.fields)
    assert vmentry.check_guest_state(model, base, cpu.memory, VMCS_A) is None
    for field, ar, rule in (
        (F.GUEST_CS_AR_BYTES, CODE64 | 0x100, "guest CS access rights"),
        (F.GUEST_CS_AR_BYTES, CODE64 | 1 << 20, "guest CS access rights"),
        (F.GUEST_SS_AR_BYTES, DATA | 0x800, "guest SS access rights"),
        (F.GUEST_DS_AR_BYTES, DATA | 1 << 31, "guest data segment access rights"),
        (F.GUEST_TR_AR_BYTES, TSS_BUSY | 0x200, "guest TR access rights"),
        (F.GUEST_LDTR_AR_BYTES, LDT | 1 << 17, "guest LDTR access rights"),
    ):
        fields = {**base, field: ar, F.GUEST_LDTR_SELECTOR: 0x20}
        assert vmentry.check_guest_state(model, fields, cpu.memory, VMCS_A) == (rule, 0)
    unusable = {**base, F.GUEST_DS_AR_BYTES: AR_UNUSABLE | 0x100}
    assert vmentry.check_guest_state(model, unusable, cpu.memory, VMCS_A) is None


# ------------------------------------------------------------------------ order of checks

_FS_BASE_WRITES, _FS_BASE_SETUP = entry_msrs((Msr.IA32_FS_BASE, 0, 0))

ORDER_CASES = [
    case(
        "control-before-host",
        "§27.2: controls are checked before the host state",
        ((F.CR3_TARGET_COUNT, 5), (F.HOST_CS_SELECTOR, 0)),
        CONTROLS,
        "CR3-target count",
    ),
    case(
        "control-before-guest",
        "§27.1-§27.3: checks on controls come before guest state",
        ((F.PIN_BASED_VM_EXEC_CONTROL, bits_set(PinBased.VIRTUAL_NMIS)), (F.GUEST_RFLAGS, 0)),
        CONTROLS,
        "virtual NMIs without NMI exiting",
    ),
    case(
        "host-before-guest",
        "§27.2-§27.3: host state is checked before guest state",
        ((F.HOST_TR_SELECTOR, 0), (F.GUEST_RFLAGS, 0), (LINK, VMCS_A)),
        HOST,
        "host CS or TR selector null",
    ),
    case(
        "guest-before-msr-load",
        "§27.3-§27.4: MSRs are loaded only after the guest-state checks pass",
        ((F.GUEST_RFLAGS, 0), *_FS_BASE_WRITES),
        guest(),
        "guest RFLAGS reserved bits",
        setup=_FS_BASE_SETUP,
    ),
]


@pytest.mark.parametrize("c", ORDER_CASES, ids=ids(ORDER_CASES))
def test_check_order(model: CpuModel, c: Case) -> None:
    """A VMCS that breaks rules of two groups fails with the earlier group's outcome."""
    run(model, c)


# ---------------------------------------------------------------- failed VM entries (§27.8)


def launched_cpu(model: CpuModel) -> LogicalProcessor:
    """A processor whose current VMCS (VMCS_A) has been launched and has just exited (CPUID)."""
    cpu = make_cpu(model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED and cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    assert cpu.vmlaunch() is None
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    return cpu


def test_failed_vmlaunch_keeps_the_vmcs_clear_and_loads_host_state(model: CpuModel) -> None:
    cpu = make_cpu(model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED and cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    assert cpu.vmwrite(F.GUEST_RFLAGS, 0) == VM_SUCCEED
    cpu.state.rflags = 0x8D7  # arbitrary flags before the instruction
    cpu.state.rip = 0x1234
    for _ in range(3):  # the launch state stays clear: VMLAUNCH again fails the same way, not with error 4
        result = cpu.vmlaunch()
        assert isinstance(result, VmExit)
        assert result.reason == EXIT_REASON_FAILED_VMENTRY | ExitReason.INVALID_GUEST_STATE
        assert result.qualification == 0
        assert vmread(cpu, F.VM_EXIT_REASON) == 0x8000_0021
        assert vmread(cpu, F.EXIT_QUALIFICATION) == 0
        # §27.8: host state is loaded as on a VM exit
        s = cpu.state
        assert (s.rip, s.rsp, s.rflags) == (HOST_RIP, vmread(cpu, F.HOST_RSP), 0x2)
        assert s.cs.selector == vmread(cpu, F.HOST_CS_SELECTOR)
        assert not cpu.non_root
    assert cpu.vmresume() == VmxError.VMRESUME_NONLAUNCHED_VMCS
    assert cpu.vmwrite(F.GUEST_RFLAGS, 2) == VM_SUCCEED
    assert cpu.vmlaunch() is None


def test_failed_vmlaunch_overwrites_only_reason_and_qualification(model: CpuModel) -> None:
    """§27.8: a VM-entry failure writes the exit reason and qualification; other exit fields stay."""
    cpu = launched_cpu(model)
    assert vmread(cpu, F.VM_EXIT_INSTRUCTION_LEN) == 2
    assert cpu.vmwrite(F.VMCS_LINK_POINTER, VMCS_A) == VM_SUCCEED
    result = cpu.vmresume()
    assert isinstance(result, VmExit) and (result.reason, result.qualification) == (0x8000_0021, 4)
    assert vmread(cpu, F.VM_EXIT_REASON) == 0x8000_0021
    assert vmread(cpu, F.EXIT_QUALIFICATION) == 4
    assert vmread(cpu, F.VM_EXIT_INSTRUCTION_LEN) == 2
    # The launch state stays "launched": VMRESUME fails the same way again, VMLAUNCH gives error 4.
    assert cpu.vmresume() == result
    assert cpu.vmlaunch() == VmxError.VMLAUNCH_NONCLEAR_VMCS
    assert cpu.vmwrite(F.VMCS_LINK_POINTER, 0xFFFF_FFFF_FFFF_FFFF) == VM_SUCCEED
    assert cpu.vmresume() is None


def test_failed_msr_load_keeps_the_vmcs_clear(model: CpuModel) -> None:
    cpu = prepare(model, next(c for c in MSR_CASES if c.id == "gs-base"))
    for _ in range(2):
        result = cpu.vmlaunch()
        assert isinstance(result, VmExit) and (result.reason, result.qualification) == (0x8000_0022, 3)
        assert (cpu.state.rip, cpu.state.rflags) == (HOST_RIP, 2) and not cpu.non_root
        assert cpu.state.efer & EFER_LMA  # host address-space size 1


def test_entry_msr_load_loads_the_msrs(model: CpuModel) -> None:
    cpu = prepare(model, MSR_CASES[0])
    assert cpu.vmlaunch() is None
    assert cpu.state.sysenter_cs == 0x10
    assert cpu.state.read_msr(Msr.IA32_KERNEL_GS_BASE) == 0x1234_5678


def test_failed_entry_loads_the_vm_exit_msr_load_area(model: CpuModel) -> None:
    """SDM §27.8: a VM-entry failure loads host state and the VM-exit MSR-load area, as a VM exit does."""
    cpu = make_cpu(model)
    assert cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    msr_entries(MSR_AREA, (Msr.IA32_KERNEL_GS_BASE, 0, 0xBEEF))(cpu)
    for field, value in ((F.VM_EXIT_MSR_LOAD_COUNT, 1), (F.VM_EXIT_MSR_LOAD_ADDR, MSR_AREA), (F.GUEST_RFLAGS, 0)):
        assert cpu.vmwrite(field, value) == VM_SUCCEED
    assert isinstance(cpu.vmlaunch(), VmExit)
    assert cpu.state.read_msr(Msr.IA32_KERNEL_GS_BASE) == 0xBEEF


# ------------------------------------------------------- a successful entry, then a VM exit (§28)

HOST_BASES = {
    F.HOST_FS_BASE: 0x7000,
    F.HOST_GS_BASE: 0xFFFF_8000_0000_8000,
    F.HOST_TR_BASE: 0x9000,
    F.HOST_GDTR_BASE: 0xA000,
    F.HOST_IDTR_BASE: 0xB000,
}


def entered_cpu(
    model: CpuModel, *writes: Write, setup: Callable[[LogicalProcessor], None] | None = None
) -> LogicalProcessor:
    """A processor in VMX non-root operation after VMLAUNCH of the valid VMCS plus `writes`."""
    c = case("exit", "§28", (*writes,), ENTERS, setup=setup)
    cpu = prepare(model, c)
    assert cpu.vmlaunch() is None, cpu.last_entry_check
    return cpu


def test_entry_loads_guest_state(model: CpuModel) -> None:
    cpu = entered_cpu(
        model,
        (F.GUEST_FS_BASE, 0x1000),
        (F.GUEST_RFLAGS, 0x202),
        (F.GUEST_SYSENTER_CS, 0x23),
        (F.VM_ENTRY_INTR_INFO_FIELD, HW_UD),
    )
    s = cpu.state
    assert (s.rip, s.rsp, s.rflags) == (GUEST_RIP, 0x90000, 0x202)
    assert s.segs[Seg.FS].base == 0x1000 and s.sysenter_cs == 0x23
    assert s.efer & EFER_LMA and s.in_64bit_mode
    assert cpu.pending_injection == (HW_UD, 0, 0)


def test_vm_exit_saves_guest_state_and_loads_host_state(model: CpuModel) -> None:
    store = msr_entries(MSR_AREA, (Msr.IA32_SYSENTER_CS, 0, 0), (Msr.IA32_KERNEL_GS_BASE, 0, 0))
    load = msr_entries(MSR_AREA_2, (Msr.IA32_KERNEL_GS_BASE, 0, 0xBEEF))
    cpu = entered_cpu(
        model,
        (F.VM_ENTRY_INTR_INFO_FIELD, HW_GP),
        (F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0x10),
        (F.HOST_IA32_SYSENTER_CS, 0x77),
        (F.VM_EXIT_MSR_STORE_COUNT, 2),
        (F.VM_EXIT_MSR_STORE_ADDR, MSR_AREA),
        (F.VM_EXIT_MSR_LOAD_COUNT, 1),
        (F.VM_EXIT_MSR_LOAD_ADDR, MSR_AREA_2),
        (F.HOST_FS_SELECTOR, 0x10),
        *HOST_BASES.items(),
        setup=lambda cpu: (store(cpu), load(cpu)),
    )
    # The guest runs: registers, a segment, an MSR change.
    s = cpu.state
    s.rip, s.rsp, s.rflags = 0x400100, 0x8FF00, 0x246
    s.segs[Seg.ES] = Segment(0x28, 0x5000, 0xFFFF, 0x93)
    s.sysenter_cs = 0x33
    s.write_msr(Msr.IA32_KERNEL_GS_BASE, 0xDEAD)
    s.interruptibility = BLOCK_STI
    exit = VmExit(reason=ExitReason.EXCEPTION_NMI, qualification=0xCAFE000, intr_info=0x8000_0B0E, intr_error_code=2)
    assert cpu.vm_exit(exit) is exit and not cpu.non_root
    # §28.2: exit information; the valid bit of the VM-entry interruption information is cleared.
    assert vmread(cpu, F.VM_EXIT_REASON) == ExitReason.EXCEPTION_NMI
    assert vmread(cpu, F.EXIT_QUALIFICATION) == 0xCAFE000
    assert vmread(cpu, F.VM_EXIT_INTR_INFO) == 0x8000_0B0E
    assert vmread(cpu, F.VM_EXIT_INTR_ERROR_CODE) == 2
    assert vmread(cpu, F.VM_ENTRY_INTR_INFO_FIELD) == HW_GP & ~INTR_INFO_VALID
    # §28.3: guest state saved
    assert vmread(cpu, F.GUEST_RIP) == 0x400100
    assert vmread(cpu, F.GUEST_RSP) == 0x8FF00
    assert vmread(cpu, F.GUEST_RFLAGS) == 0x246
    assert [vmread(cpu, f) for f in (F.GUEST_ES_SELECTOR, F.GUEST_ES_BASE, F.GUEST_ES_LIMIT, F.GUEST_ES_AR_BYTES)] == [
        0x28,
        0x5000,
        0xFFFF,
        0x93,
    ]
    assert vmread(cpu, F.GUEST_SYSENTER_CS) == 0x33
    assert vmread(cpu, F.GUEST_INTERRUPTIBILITY_INFO) == BLOCK_STI
    assert vmread(cpu, F.VM_ENTRY_CONTROLS) & EntryCtls.IA32E_MODE_GUEST
    # §28.4: the MSR-store area gets the guest's values (stored before host state is loaded).
    assert cpu.memory.read_u(MSR_AREA + 8, 8) == 0x33
    assert cpu.memory.read_u(MSR_AREA + 24, 8) == 0xDEAD
    # §28.5: host state
    assert (s.rip, s.rsp, s.rflags) == (HOST_RIP, 0x80000, 0x2)
    assert (s.cs.selector, s.cs.base, s.cs.limit, s.cs.ar) == (0x08, 0, 0xFFFF_FFFF, CODE64)
    assert (s.segs[Seg.SS].selector, s.segs[Seg.SS].ar) == (0x10, DATA)
    tr = s.segs[Seg.TR]
    assert (tr.selector, tr.base, tr.limit, tr.ar) == (0x18, 0x9000, 0x67, TSS_BUSY)
    assert s.segs[Seg.FS].base == 0x7000 and s.segs[Seg.GS].base == 0xFFFF_8000_0000_8000
    assert s.segs[Seg.LDTR].unusable and s.segs[Seg.LDTR].selector == 0
    assert (s.gdtr_base, s.gdtr_limit, s.idtr_base, s.idtr_limit) == (0xA000, 0xFFFF, 0xB000, 0xFFFF)
    assert s.efer & (EFER_LMA | EFER_LME) == EFER_LMA | EFER_LME
    assert (s.dr7, s.interruptibility, s.activity_state) == (0x400, 0, 0)
    assert s.sysenter_cs == 0x77
    # §28.6: then the VM-exit MSR-load area
    assert s.read_msr(Msr.IA32_KERNEL_GS_BASE) == 0xBEEF
    # The VMCS is launched: VMRESUME enters again.
    assert cpu.vmresume() is None, cpu.last_entry_check


@pytest.mark.parametrize("lma", [True, False], ids=["guest-in-ia32e-mode", "guest-left-ia32e-mode"])
def test_vm_exit_stores_efer_lma_into_ia32e_mode_guest(model: CpuModel, lma: bool) -> None:
    """§28.3 (IA32_VMX_MISC[5] = 1): the 'IA-32e mode guest' entry control receives IA32_EFER.LMA;
    the host's IA32_EFER.LMA/LME then follow 'host address-space size' (§28.5.1)."""
    assert model.msrs[Msr.IA32_VMX_MISC] & 1 << 5
    cpu = entered_cpu(model)
    if not lma:
        cpu.state.efer &= ~(EFER_LMA | EFER_LME)
        cpu.state.cr4 &= ~CR4_PAE
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    assert bool(vmread(cpu, F.VM_ENTRY_CONTROLS) & EntryCtls.IA32E_MODE_GUEST) is lma
    assert cpu.state.efer & (EFER_LMA | EFER_LME) == EFER_LMA | EFER_LME
    assert cpu.state.cr4 & CR4_PAE


def test_vm_exit_to_a_32_bit_host(model: CpuModel) -> None:
    """§28.5: host address-space size 0: CS is a 32-bit code segment, IA32_EFER.LMA = 0."""
    cpu = entered_cpu(model, *HOST_32, *PROTECTED_32, setup=legacy_host)
    assert not cpu.state.efer & EFER_LMA
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    s = cpu.state
    assert s.cs.ar == CODE32 and not s.efer & (EFER_LMA | EFER_LME) and not s.in_64bit_mode
    assert not vmread(cpu, F.VM_ENTRY_CONTROLS) & EntryCtls.IA32E_MODE_GUEST


def test_vm_exit_loads_host_efer_and_pat(model: CpuModel) -> None:
    cpu = entered_cpu(
        model,
        (F.VM_EXIT_CONTROLS, bits_set(ExitCtls.LOAD_EFER | ExitCtls.LOAD_PAT | ExitCtls.SAVE_EFER | ExitCtls.SAVE_PAT)),
        (F.HOST_IA32_EFER, 0xD01),
        (F.HOST_IA32_PAT, 0x0606_0606_0606_0606),
    )
    cpu.state.pat, cpu.state.efer = 0x0007_0406_0007_0406, 0x500
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    assert (cpu.state.efer, cpu.state.pat) == (0xD01, 0x0606_0606_0606_0606)
    assert (vmread(cpu, F.GUEST_IA32_EFER), vmread(cpu, F.GUEST_IA32_PAT)) == (0x500, 0x0007_0406_0007_0406)


CR0_CD, CR0_NW, CR0_ET = 1 << 30, 1 << 29, 1 << 4


def test_vm_entry_and_exit_leave_cr0_cd_nw_et_alone(model: CpuModel) -> None:
    """§27.3.2.1 and §28.5.1: VM entry and VM exit never modify CR0.ET, CR0.NW, CR0.CD (nor the
    reserved bits 15:6, 17, 28:19); the values in the CR0 fields are ignored.  Bochs masks them
    the same way (VMX_KEEP_CR0_BITS); KVM loads host CR0 whole."""
    cpu = entered_cpu(model, (F.GUEST_CR0, bits_set(CR0_CD | CR0_NW)), (F.HOST_CR0, bits_set(CR0_CD)))
    assert not cpu.state.cr0 & (CR0_CD | CR0_NW) and cpu.state.cr0 & CR0_ET
    cpu.state.cr0 |= CR0_CD
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    assert vmread(cpu, F.GUEST_CR0) & CR0_CD
    assert cpu.state.cr0 & CR0_CD  # host CR0.CD = 1 in the field, but the bit is not loaded ...
    cpu.state.cr0 &= ~CR0_CD
    assert cpu.vmresume() is None
    cpu.vm_exit(VmExit(reason=ExitReason.CPUID, instruction_length=2))
    assert not cpu.state.cr0 & CR0_CD  # ... in either direction
    assert cpu.state.cr0 & (CR0_PE | CR0_PG | CR0_NE) == CR0_PE | CR0_PG | CR0_NE
