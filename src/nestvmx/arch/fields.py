"""The VMCS field catalogue (Intel SDM Vol. 3C, Appendix B) and encoding rules (§25.11.2).

`VMCS_FIELDS` is the one source table: name (KVM spelling), encoding (FULL access) and the
capability that makes the field exist on a processor ("This field exists only on processors
that support the 1-setting of ..." in Appendix B).  Width and type are not stored: the SDM
defines them by the encoding bits, so they are decoded from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property


class FieldWidth(enum.IntEnum):
    """Encoding bits 14:13."""

    W16 = 0
    W64 = 1
    W32 = 2
    NATURAL = 3

    @property
    def label(self) -> int | str:
        return {0: 16, 1: 64, 2: 32, 3: "natural"}[self.value]

    @property
    def bytes(self) -> int:
        return (2, 8, 4, 8)[self]

    @property
    def mask(self) -> int:
        """The bits a VMWRITE keeps (natural width is 64 bits on Intel 64 processors)."""
        return (0xFFFF, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)[self]


class FieldType(enum.IntEnum):
    """Encoding bits 11:10."""

    CONTROL = 0
    READ_ONLY = 1  # VM-exit information ("read-only data") fields
    GUEST = 2
    HOST = 3

    @property
    def label(self) -> str:
        return ("control", "read-only", "guest", "host")[self.value]


class Access(enum.IntEnum):
    """Encoding bit 0."""

    FULL = 0
    HIGH = 1


_ENCODING_DEFINED_BITS = 0x6FFF  # bits 14:13, 11:0; bit 12 and bits 63:15 are reserved (SDM Table 25-21)


@dataclass(frozen=True)
class EncodingDecode:
    """An arbitrary 32-bit value read as a VMCS component encoding."""

    encoding: int
    access: Access
    index: int
    type: FieldType
    width: FieldWidth
    reserved_bits: int  # bits set where the encoding must be 0

    @property
    def well_formed(self) -> bool:
        """Reserved bits clear and HIGH access only for a 64-bit field."""
        return not self.reserved_bits and not (self.access is Access.HIGH and self.width is not FieldWidth.W64)


def decode_encoding(encoding: int) -> EncodingDecode:
    """Split an encoding into its bit fields (SDM Table 25-21)."""
    if not 0 <= encoding <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"encoding {encoding:#x} is not a 64-bit value")
    return EncodingDecode(
        encoding=encoding,
        access=Access(encoding & 1),
        index=(encoding >> 1) & 0x1FF,
        type=FieldType((encoding >> 10) & 3),
        width=FieldWidth((encoding >> 13) & 3),
        reserved_bits=encoding & ~_ENCODING_DEFINED_BITS,
    )


@dataclass(frozen=True)
class VmcsField:
    """One VMCS component.  For a 64-bit field there is also the HIGH access, encoding | 1."""

    name: str
    encoding: int
    requires: str | None = None  # capability bit, a key of arch.controls.FIELD_CAPABILITY

    @cached_property
    def width(self) -> FieldWidth:
        return FieldWidth((self.encoding >> 13) & 3)

    @cached_property
    def type(self) -> FieldType:
        return FieldType((self.encoding >> 10) & 3)

    @property
    def index(self) -> int:
        return (self.encoding >> 1) & 0x1FF

    @property
    def read_only(self) -> bool:
        return self.type is FieldType.READ_ONLY


def _f(name: str, encoding: int, requires: str | None = None) -> VmcsField:
    return VmcsField(name, encoding, requires)


# fmt: off
VMCS_FIELDS: tuple[VmcsField, ...] = (
    # 16-bit control fields (SDM B.1.1)
    _f("VIRTUAL_PROCESSOR_ID", 0x0000, "vpid"),
    _f("POSTED_INTR_NV", 0x0002, "posted_interrupts"),
    _f("EPTP_INDEX", 0x0004, "ept_violation_ve"),
    _f("HLAT_PREFIX_SIZE", 0x0006, "hlat"),
    _f("LAST_PID_POINTER_INDEX", 0x0008, "ipi_virtualization"),
    # 16-bit guest-state fields (B.1.2)
    _f("GUEST_ES_SELECTOR", 0x0800),
    _f("GUEST_CS_SELECTOR", 0x0802),
    _f("GUEST_SS_SELECTOR", 0x0804),
    _f("GUEST_DS_SELECTOR", 0x0806),
    _f("GUEST_FS_SELECTOR", 0x0808),
    _f("GUEST_GS_SELECTOR", 0x080A),
    _f("GUEST_LDTR_SELECTOR", 0x080C),
    _f("GUEST_TR_SELECTOR", 0x080E),
    _f("GUEST_INTR_STATUS", 0x0810, "virtual_interrupt_delivery"),
    _f("GUEST_PML_INDEX", 0x0812, "pml"),
    _f("GUEST_UINV", 0x0814, "load_uinv"),
    # 16-bit host-state fields (B.1.3)
    _f("HOST_ES_SELECTOR", 0x0C00),
    _f("HOST_CS_SELECTOR", 0x0C02),
    _f("HOST_SS_SELECTOR", 0x0C04),
    _f("HOST_DS_SELECTOR", 0x0C06),
    _f("HOST_FS_SELECTOR", 0x0C08),
    _f("HOST_GS_SELECTOR", 0x0C0A),
    _f("HOST_TR_SELECTOR", 0x0C0C),
    # 64-bit control fields (B.2.1)
    _f("IO_BITMAP_A", 0x2000),
    _f("IO_BITMAP_B", 0x2002),
    _f("MSR_BITMAP", 0x2004, "msr_bitmaps"),
    _f("VM_EXIT_MSR_STORE_ADDR", 0x2006),
    _f("VM_EXIT_MSR_LOAD_ADDR", 0x2008),
    _f("VM_ENTRY_MSR_LOAD_ADDR", 0x200A),
    _f("EXECUTIVE_VMCS_POINTER", 0x200C),
    _f("PML_ADDRESS", 0x200E, "pml"),
    _f("TSC_OFFSET", 0x2010),
    _f("VIRTUAL_APIC_PAGE_ADDR", 0x2012, "tpr_shadow"),
    _f("APIC_ACCESS_ADDR", 0x2014, "virtualize_apic_accesses"),
    _f("POSTED_INTR_DESC_ADDR", 0x2016, "posted_interrupts"),
    _f("VM_FUNCTION_CONTROL", 0x2018, "vm_functions"),
    _f("EPT_POINTER", 0x201A, "ept"),
    _f("EOI_EXIT_BITMAP0", 0x201C, "virtual_interrupt_delivery"),
    _f("EOI_EXIT_BITMAP1", 0x201E, "virtual_interrupt_delivery"),
    _f("EOI_EXIT_BITMAP2", 0x2020, "virtual_interrupt_delivery"),
    _f("EOI_EXIT_BITMAP3", 0x2022, "virtual_interrupt_delivery"),
    _f("EPTP_LIST_ADDRESS", 0x2024, "eptp_switching"),
    _f("VMREAD_BITMAP", 0x2026, "vmcs_shadowing"),
    _f("VMWRITE_BITMAP", 0x2028, "vmcs_shadowing"),
    _f("VE_INFORMATION_ADDRESS", 0x202A, "ept_violation_ve"),
    _f("XSS_EXIT_BITMAP", 0x202C, "xsaves"),
    _f("ENCLS_EXITING_BITMAP", 0x202E, "encls_exiting"),
    _f("SPPT_POINTER", 0x2030, "sub_page_write"),
    _f("TSC_MULTIPLIER", 0x2032, "tsc_scaling"),
    _f("TERTIARY_VM_EXEC_CONTROL", 0x2034, "tertiary_controls"),
    _f("ENCLV_EXITING_BITMAP", 0x2036, "enclv_exiting"),
    _f("LOW_PASID_DIRECTORY_ADDR", 0x2038, "pasid_translation"),
    _f("HIGH_PASID_DIRECTORY_ADDR", 0x203A, "pasid_translation"),
    _f("SHARED_EPT_POINTER", 0x203C, "seam"),
    _f("PCONFIG_EXITING_BITMAP", 0x203E, "pconfig"),
    _f("HLAT_POINTER", 0x2040, "hlat"),
    _f("PID_POINTER_TABLE", 0x2042, "ipi_virtualization"),
    _f("SECONDARY_VM_EXIT_CONTROLS", 0x2044, "secondary_exit_controls"),
    _f("IA32_SPEC_CTRL_MASK", 0x204A, "virtualize_spec_ctrl"),
    _f("IA32_SPEC_CTRL_SHADOW", 0x204C, "virtualize_spec_ctrl"),
    _f("INJECTED_EVENT_DATA", 0x2052, "fred"),
    # 64-bit read-only data fields (B.2.2)
    _f("GUEST_PHYSICAL_ADDRESS", 0x2400, "ept"),
    _f("ORIGINAL_EVENT_DATA", 0x2404, "fred"),
    # 64-bit guest-state fields (B.2.3)
    _f("VMCS_LINK_POINTER", 0x2800),
    _f("GUEST_IA32_DEBUGCTL", 0x2802),
    _f("GUEST_IA32_PAT", 0x2804, "load_pat"),
    _f("GUEST_IA32_EFER", 0x2806, "load_efer"),
    _f("GUEST_IA32_PERF_GLOBAL_CTRL", 0x2808, "load_perf_global_ctrl"),
    _f("GUEST_PDPTR0", 0x280A, "ept"),
    _f("GUEST_PDPTR1", 0x280C, "ept"),
    _f("GUEST_PDPTR2", 0x280E, "ept"),
    _f("GUEST_PDPTR3", 0x2810, "ept"),
    _f("GUEST_BNDCFGS", 0x2812, "load_bndcfgs"),
    _f("GUEST_IA32_RTIT_CTL", 0x2814, "load_rtit_ctl"),
    _f("GUEST_IA32_LBR_CTL", 0x2816, "load_lbr_ctl"),
    _f("GUEST_IA32_PKRS", 0x2818, "load_pkrs"),
    _f("GUEST_IA32_FRED_CONFIG", 0x281A, "fred"),
    _f("GUEST_IA32_FRED_RSP1", 0x281C, "fred"),
    _f("GUEST_IA32_FRED_RSP2", 0x281E, "fred"),
    _f("GUEST_IA32_FRED_RSP3", 0x2820, "fred"),
    _f("GUEST_IA32_FRED_STKLVLS", 0x2822, "fred"),
    _f("GUEST_IA32_FRED_SSP1", 0x2824, "fred"),
    _f("GUEST_IA32_FRED_SSP2", 0x2826, "fred"),
    _f("GUEST_IA32_FRED_SSP3", 0x2828, "fred"),
    # 64-bit host-state fields (B.2.4)
    _f("HOST_IA32_PAT", 0x2C00, "load_host_pat"),
    _f("HOST_IA32_EFER", 0x2C02, "load_host_efer"),
    _f("HOST_IA32_PERF_GLOBAL_CTRL", 0x2C04, "load_host_perf_global_ctrl"),
    _f("HOST_IA32_PKRS", 0x2C06, "load_host_pkrs"),
    _f("HOST_IA32_FRED_CONFIG", 0x2C08, "fred"),
    _f("HOST_IA32_FRED_RSP1", 0x2C0A, "fred"),
    _f("HOST_IA32_FRED_RSP2", 0x2C0C, "fred"),
    _f("HOST_IA32_FRED_RSP3", 0x2C0E, "fred"),
    _f("HOST_IA32_FRED_STKLVLS", 0x2C10, "fred"),
    _f("HOST_IA32_FRED_SSP1", 0x2C12, "fred"),
    _f("HOST_IA32_FRED_SSP2", 0x2C14, "fred"),
    _f("HOST_IA32_FRED_SSP3", 0x2C16, "fred"),
    # 32-bit control fields (B.3.1)
    _f("PIN_BASED_VM_EXEC_CONTROL", 0x4000),
    _f("CPU_BASED_VM_EXEC_CONTROL", 0x4002),
    _f("EXCEPTION_BITMAP", 0x4004),
    _f("PAGE_FAULT_ERROR_CODE_MASK", 0x4006),
    _f("PAGE_FAULT_ERROR_CODE_MATCH", 0x4008),
    _f("CR3_TARGET_COUNT", 0x400A),
    _f("VM_EXIT_CONTROLS", 0x400C),
    _f("VM_EXIT_MSR_STORE_COUNT", 0x400E),
    _f("VM_EXIT_MSR_LOAD_COUNT", 0x4010),
    _f("VM_ENTRY_CONTROLS", 0x4012),
    _f("VM_ENTRY_MSR_LOAD_COUNT", 0x4014),
    _f("VM_ENTRY_INTR_INFO_FIELD", 0x4016),
    _f("VM_ENTRY_EXCEPTION_ERROR_CODE", 0x4018),
    _f("VM_ENTRY_INSTRUCTION_LEN", 0x401A),
    _f("TPR_THRESHOLD", 0x401C, "tpr_shadow"),
    _f("SECONDARY_VM_EXEC_CONTROL", 0x401E, "secondary_controls"),
    _f("PLE_GAP", 0x4020, "pause_loop_exiting"),
    _f("PLE_WINDOW", 0x4022, "pause_loop_exiting"),
    _f("NOTIFY_WINDOW", 0x4024, "instruction_timeout"),
    # 32-bit read-only data fields (B.3.2)
    _f("VM_INSTRUCTION_ERROR", 0x4400),
    _f("VM_EXIT_REASON", 0x4402),
    _f("VM_EXIT_INTR_INFO", 0x4404),
    _f("VM_EXIT_INTR_ERROR_CODE", 0x4406),
    _f("IDT_VECTORING_INFO_FIELD", 0x4408),
    _f("IDT_VECTORING_ERROR_CODE", 0x440A),
    _f("VM_EXIT_INSTRUCTION_LEN", 0x440C),
    _f("VMX_INSTRUCTION_INFO", 0x440E),
    # 32-bit guest-state fields (B.3.3)
    _f("GUEST_ES_LIMIT", 0x4800),
    _f("GUEST_CS_LIMIT", 0x4802),
    _f("GUEST_SS_LIMIT", 0x4804),
    _f("GUEST_DS_LIMIT", 0x4806),
    _f("GUEST_FS_LIMIT", 0x4808),
    _f("GUEST_GS_LIMIT", 0x480A),
    _f("GUEST_LDTR_LIMIT", 0x480C),
    _f("GUEST_TR_LIMIT", 0x480E),
    _f("GUEST_GDTR_LIMIT", 0x4810),
    _f("GUEST_IDTR_LIMIT", 0x4812),
    _f("GUEST_ES_AR_BYTES", 0x4814),
    _f("GUEST_CS_AR_BYTES", 0x4816),
    _f("GUEST_SS_AR_BYTES", 0x4818),
    _f("GUEST_DS_AR_BYTES", 0x481A),
    _f("GUEST_FS_AR_BYTES", 0x481C),
    _f("GUEST_GS_AR_BYTES", 0x481E),
    _f("GUEST_LDTR_AR_BYTES", 0x4820),
    _f("GUEST_TR_AR_BYTES", 0x4822),
    _f("GUEST_INTERRUPTIBILITY_INFO", 0x4824),
    _f("GUEST_ACTIVITY_STATE", 0x4826),
    _f("GUEST_SMBASE", 0x4828),
    _f("GUEST_SYSENTER_CS", 0x482A),
    _f("VMX_PREEMPTION_TIMER_VALUE", 0x482E, "preemption_timer"),
    # 32-bit host-state field (B.3.4)
    _f("HOST_IA32_SYSENTER_CS", 0x4C00),
    # natural-width control fields (B.4.1)
    _f("CR0_GUEST_HOST_MASK", 0x6000),
    _f("CR4_GUEST_HOST_MASK", 0x6002),
    _f("CR0_READ_SHADOW", 0x6004),
    _f("CR4_READ_SHADOW", 0x6006),
    _f("CR3_TARGET_VALUE0", 0x6008),
    _f("CR3_TARGET_VALUE1", 0x600A),
    _f("CR3_TARGET_VALUE2", 0x600C),
    _f("CR3_TARGET_VALUE3", 0x600E),
    # natural-width read-only data fields (B.4.2)
    _f("EXIT_QUALIFICATION", 0x6400),
    _f("IO_RCX", 0x6402),
    _f("IO_RSI", 0x6404),
    _f("IO_RDI", 0x6406),
    _f("IO_RIP", 0x6408),
    _f("GUEST_LINEAR_ADDRESS", 0x640A),
    # natural-width guest-state fields (B.4.3)
    _f("GUEST_CR0", 0x6800),
    _f("GUEST_CR3", 0x6802),
    _f("GUEST_CR4", 0x6804),
    _f("GUEST_ES_BASE", 0x6806),
    _f("GUEST_CS_BASE", 0x6808),
    _f("GUEST_SS_BASE", 0x680A),
    _f("GUEST_DS_BASE", 0x680C),
    _f("GUEST_FS_BASE", 0x680E),
    _f("GUEST_GS_BASE", 0x6810),
    _f("GUEST_LDTR_BASE", 0x6812),
    _f("GUEST_TR_BASE", 0x6814),
    _f("GUEST_GDTR_BASE", 0x6816),
    _f("GUEST_IDTR_BASE", 0x6818),
    _f("GUEST_DR7", 0x681A),
    _f("GUEST_RSP", 0x681C),
    _f("GUEST_RIP", 0x681E),
    _f("GUEST_RFLAGS", 0x6820),
    _f("GUEST_PENDING_DBG_EXCEPTIONS", 0x6822),
    _f("GUEST_SYSENTER_ESP", 0x6824),
    _f("GUEST_SYSENTER_EIP", 0x6826),
    _f("GUEST_S_CET", 0x6828, "load_cet"),
    _f("GUEST_SSP", 0x682A, "load_cet"),
    _f("GUEST_INTR_SSP_TABLE", 0x682C, "load_cet"),
    # natural-width host-state fields (B.4.4)
    _f("HOST_CR0", 0x6C00),
    _f("HOST_CR3", 0x6C02),
    _f("HOST_CR4", 0x6C04),
    _f("HOST_FS_BASE", 0x6C06),
    _f("HOST_GS_BASE", 0x6C08),
    _f("HOST_TR_BASE", 0x6C0A),
    _f("HOST_GDTR_BASE", 0x6C0C),
    _f("HOST_IDTR_BASE", 0x6C0E),
    _f("HOST_IA32_SYSENTER_ESP", 0x6C10),
    _f("HOST_IA32_SYSENTER_EIP", 0x6C12),
    _f("HOST_RSP", 0x6C14),
    _f("HOST_RIP", 0x6C16),
    _f("HOST_S_CET", 0x6C18, "load_host_cet"),
    _f("HOST_SSP", 0x6C1A, "load_host_cet"),
    _f("HOST_INTR_SSP_TABLE", 0x6C1C, "load_host_cet"),
)
# fmt: on

FIELD_BY_ENCODING: dict[int, VmcsField] = {f.encoding: f for f in VMCS_FIELDS}
FIELD_BY_NAME: dict[str, VmcsField] = {f.name: f for f in VMCS_FIELDS}


def lookup(encoding: int) -> tuple[VmcsField, Access] | None:
    """The catalogue field an encoding names (FULL or HIGH access), or None."""
    field = FIELD_BY_ENCODING.get(encoding & ~1)
    if field is None:
        return None
    if encoding & 1:
        return (field, Access.HIGH) if field.width is FieldWidth.W64 else None
    return field, Access.FULL


def access_name(field: VmcsField, access: Access) -> str:
    return field.name + ("_HIGH" if access is Access.HIGH else "")


# Field encodings by name, e.g. Field.GUEST_RIP == 0x681E (FULL access): plain int attributes of a
# namespace, not an enum, because Python 3.11's EnumType.__getattr__ makes each member access ~50 ns
# slower and the per-exit path reads hundreds of them; a field's name is FIELD_BY_ENCODING[e].name.
Field = type("Field", (), {f.name: f.encoding for f in VMCS_FIELDS})

# The guest access-rights fields.  Some Intel CPUs drop their reserved bits on VMWRITE, keeping only
# AR_BYTES_WRITABLE; KVM emulates the same for vmcs12 (Linux nested.c, handle_vmwrite).
ACCESS_RIGHTS_FIELDS = frozenset(
    f.encoding for f in VMCS_FIELDS if f.name.startswith("GUEST_") and f.name.endswith("_AR_BYTES")
)
AR_BYTES_WRITABLE = 0x1F0FF
# FULL encoding -> the bits a VMWRITE keeps: the field's width, and no reserved access-rights bits.
VMWRITE_MASKS: dict[int, int] = {
    f.encoding: f.width.mask & (AR_BYTES_WRITABLE if f.encoding in ACCESS_RIGHTS_FIELDS else -1) for f in VMCS_FIELDS
}
