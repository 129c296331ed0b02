"""Processor models: VMX capability MSRs of real parts and a VMCS layout of each model's own.

The MSR values are those dumped from real processors by the vmlatency project
(github.com/yulyugin/vmlatency, results/Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz.txt and
results/Intel(R) Core(TM) i7-2600 CPU @ 3.40GHz.txt).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nestvmx.arch import controls
from nestvmx.arch.controls import ControlKind, SecondaryCtls
from nestvmx.arch.fields import (
    VMCS_FIELDS,
    VMWRITE_MASKS,
    Access,
    FieldType,
    FieldWidth,
    VmcsField,
)
from nestvmx.arch.msr import VMX_BASIC_REVISION_MASK, VMX_BASIC_TRUE_CTLS, VMX_MISC_VMWRITE_ANY_FIELD, Msr

VMCS_HEADER_SIZE = 16  # revision id, abort indicator, launch state, reserved


@dataclass(frozen=True)
class VmcsLayout:
    """Where a model keeps each supported field in a VMCS region (implementation-specific)."""

    offsets: dict[int, tuple[int, int]]  # FULL encoding -> (offset, size in bytes)
    size: int

    @staticmethod
    def pack(fields: list[VmcsField]) -> VmcsLayout:
        offsets: dict[int, tuple[int, int]] = {}
        pos = VMCS_HEADER_SIZE
        for f in fields:
            size = f.width.bytes
            pos = (pos + size - 1) // size * size
            offsets[f.encoding] = (pos, size)
            pos += size
        return VmcsLayout(offsets, pos)


@dataclass(frozen=True)
class CpuModel:
    name: str
    description: str
    msrs: dict[int, int]
    phys_addr_bits: int
    field_order: str  # how this model packs its VMCS: "type-major" or "width-major"

    @cached_property  # the model's MSRs do not change; read on every VMPTRLD
    def revision_id(self) -> int:
        return self.msrs[Msr.IA32_VMX_BASIC] & VMX_BASIC_REVISION_MASK

    @property
    def vmcs_size(self) -> int:
        return (self.msrs[Msr.IA32_VMX_BASIC] >> 32) & 0x1FFF

    @property
    def true_ctls(self) -> bool:
        return bool(self.msrs[Msr.IA32_VMX_BASIC] & VMX_BASIC_TRUE_CTLS)

    @cached_property
    def vmwrite_any_field(self) -> bool:
        """IA32_VMX_MISC bit 29: VMWRITE may write the VM-exit information fields."""
        return bool(self.msrs[Msr.IA32_VMX_MISC] & VMX_MISC_VMWRITE_ANY_FIELD)

    def control_msr(self, kind: ControlKind) -> int:
        """The capability MSR that governs VM entry's check of a control word."""
        return self._control_msrs[kind]

    def allowed1(self, kind: ControlKind) -> int:
        return self._allowed1[kind]

    @cached_property
    def _control_msrs(self) -> dict[ControlKind, int]:
        true = self.true_ctls
        index = {
            ControlKind.PIN: Msr.IA32_VMX_TRUE_PINBASED_CTLS if true else Msr.IA32_VMX_PINBASED_CTLS,
            ControlKind.PRIMARY: Msr.IA32_VMX_TRUE_PROCBASED_CTLS if true else Msr.IA32_VMX_PROCBASED_CTLS,
            ControlKind.SECONDARY: Msr.IA32_VMX_PROCBASED_CTLS2,
            ControlKind.EXIT: Msr.IA32_VMX_TRUE_EXIT_CTLS if true else Msr.IA32_VMX_EXIT_CTLS,
            ControlKind.ENTRY: Msr.IA32_VMX_TRUE_ENTRY_CTLS if true else Msr.IA32_VMX_ENTRY_CTLS,
        }
        return {kind: self.msrs.get(msr, 0) for kind, msr in index.items()}

    @cached_property
    def _allowed1(self) -> dict[ControlKind, int]:
        table = {kind: msr >> 32 for kind, msr in self._control_msrs.items()}
        if not table[ControlKind.PRIMARY] & (1 << 31):
            table[ControlKind.SECONDARY] = 0
        table[ControlKind.TERTIARY] = self.msrs.get(Msr.IA32_VMX_PROCBASED_CTLS3, 0)
        table[ControlKind.VMFUNC] = self.msrs.get(Msr.IA32_VMX_VMFUNC, 0)
        table[ControlKind.SEAM] = 0
        return table

    def allows(self, kind: ControlKind, bits: int) -> bool:
        return self.allowed1(kind) & bits == bits

    @cached_property
    def has_vmcs_shadowing(self) -> bool:
        return self.allows(ControlKind.SECONDARY, SecondaryCtls.SHADOW_VMCS)

    def supports_field(self, f: VmcsField) -> bool:
        if f.requires is None:
            return True
        kind, bit = controls.FIELD_CAPABILITY[f.requires]
        return self.allows(kind, bit)

    @cached_property
    def fields(self) -> dict[int, VmcsField]:
        """The VMCS fields this processor has, by FULL encoding."""
        return {f.encoding: f for f in VMCS_FIELDS if self.supports_field(f)}

    @cached_property
    def vmcs_access(self) -> dict[int, tuple[int, bool, int, bool]]:
        """`encodings` as VMREAD/VMWRITE use it on every access: (FULL encoding, HIGH access, the bits
        a VMWRITE keeps (access-rights fields: AR_BYTES_WRITABLE), read-only field)."""
        table = {}
        for encoding, (f, access) in self.encodings.items():
            table[encoding] = (
                f.encoding,
                access is Access.HIGH,
                VMWRITE_MASKS[f.encoding],
                f.type is FieldType.READ_ONLY,
            )
        return table

    @cached_property
    def encodings(self) -> dict[int, tuple[VmcsField, Access]]:
        """Every encoding VMREAD/VMWRITE accept on this processor: FULL, and HIGH of 64-bit fields."""
        table: dict[int, tuple[VmcsField, Access]] = {}
        for f in self.fields.values():
            table[f.encoding] = (f, Access.FULL)
            if f.width is FieldWidth.W64:
                table[f.encoding | 1] = (f, Access.HIGH)
        return table

    @cached_property
    def layout(self) -> VmcsLayout:
        fields = list(self.fields.values())
        if self.field_order == "type-major":
            fields.sort(key=lambda f: (f.type, f.width, f.index))
        else:
            fields.sort(key=lambda f: (-f.width.bytes, f.type != FieldType.GUEST, f.encoding))
        layout = VmcsLayout.pack(fields)
        assert layout.size <= self.vmcs_size, f"{self.name}: VMCS layout needs {layout.size} bytes"
        return layout


_COMMON = {
    Msr.IA32_VMX_PINBASED_CTLS: 0x0000007F00000016,
    Msr.IA32_VMX_PROCBASED_CTLS: 0xFFF9FFFE0401E172,
    Msr.IA32_VMX_EXIT_CTLS: 0x007FFFFF00036DFF,
    Msr.IA32_VMX_ENTRY_CTLS: 0x0000FFFF000011FF,
    Msr.IA32_VMX_CR0_FIXED0: 0x80000021,
    Msr.IA32_VMX_CR0_FIXED1: 0xFFFFFFFF,
    Msr.IA32_VMX_CR4_FIXED0: 0x2000,
    Msr.IA32_VMX_VMCS_ENUM: 0x2A,
    Msr.IA32_VMX_TRUE_PINBASED_CTLS: 0x0000007F00000016,
    Msr.IA32_VMX_TRUE_PROCBASED_CTLS: 0xFFF9FFFE04006172,
    Msr.IA32_VMX_TRUE_EXIT_CTLS: 0x007FFFFF00036DFB,
    Msr.IA32_VMX_TRUE_ENTRY_CTLS: 0x0000FFFF000011FB,
}

HASWELL = CpuModel(
    name="haswell",
    description="Intel Core i7-4770 (Haswell, 2013): VMCS shadowing, VMWRITE to exit fields",
    msrs={
        **_COMMON,
        Msr.IA32_VMX_BASIC: 0x00DA040000000012,
        Msr.IA32_VMX_MISC: 0x300481E5,
        Msr.IA32_VMX_CR4_FIXED1: 0x001767FF,
        Msr.IA32_VMX_PROCBASED_CTLS2: 0x00007CFF00000000,
        Msr.IA32_VMX_EPT_VPID_CAP: 0x00000F0106334141,
        Msr.IA32_VMX_VMFUNC: 0x1,
    },
    phys_addr_bits=39,
    field_order="type-major",
)

SANDYBRIDGE = CpuModel(
    name="sandybridge",
    description="Intel Core i7-2600 (Sandy Bridge, 2011): no VMCS shadowing",
    msrs={
        **_COMMON,
        Msr.IA32_VMX_BASIC: 0x00DA040000000010,
        Msr.IA32_VMX_MISC: 0x100401E5,
        Msr.IA32_VMX_CR4_FIXED1: 0x000667FF,
        Msr.IA32_VMX_PROCBASED_CTLS2: 0x000000FF00000000,
        Msr.IA32_VMX_EPT_VPID_CAP: 0x00000F0106114141,
    },
    phys_addr_bits=36,
    field_order="width-major",
)

CPU_MODELS: dict[str, CpuModel] = {m.name: m for m in (HASWELL, SANDYBRIDGE)}
DEFAULT_CPU_MODEL = HASWELL.name


def get_cpu_model(name: str) -> CpuModel:
    try:
        return CPU_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(CPU_MODELS))
        raise ValueError(f"unknown CPU model {name!r} (known: {known})") from None
