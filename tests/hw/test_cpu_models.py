"""Processor models: capability MSRs of real parts, their VMCS layouts, physical memory."""

from __future__ import annotations

import pytest

from nestvmx.arch.controls import ControlKind, SecondaryCtls
from nestvmx.arch.fields import FIELD_BY_NAME
from nestvmx.arch.msr import Msr
from nestvmx.hw.cpu_models import CPU_MODELS, DEFAULT_CPU_MODEL, VMCS_HEADER_SIZE, get_cpu_model
from nestvmx.hw.memory import BusError, PhysicalMemory


def test_two_models_with_and_without_shadowing() -> None:
    """haswell has VMCS shadowing and IA32_VMX_MISC bit 29; sandybridge has neither (SDM App. A.3.3, A.6)."""
    hsw, snb = get_cpu_model("haswell"), get_cpu_model("sandybridge")
    assert DEFAULT_CPU_MODEL == "haswell"
    assert hsw.has_vmcs_shadowing and hsw.vmwrite_any_field
    assert not snb.has_vmcs_shadowing and not snb.vmwrite_any_field
    assert hsw.revision_id != snb.revision_id
    assert hsw.layout.offsets != snb.layout.offsets


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown CPU model 'nehalem'.*haswell"):
        get_cpu_model("nehalem")


def test_capability_msrs_are_self_consistent(model) -> None:
    """SDM App. A: default1 bits are allowed-0 = 1 and also allowed-1; TRUE MSRs only relax default1 bits."""
    m = model.msrs
    basic = m[Msr.IA32_VMX_BASIC]
    assert basic & (1 << 31) == 0 and (basic >> 32) & 0x1FFF == 1024 and basic & (1 << 55)
    for plain, true in ((0x481, 0x48D), (0x482, 0x48E), (0x483, 0x48F), (0x484, 0x490)):
        lo, hi = m[plain] & 0xFFFF_FFFF, m[plain] >> 32
        assert lo & ~hi == 0, hex(plain)
        assert m[true] >> 32 == hi and m[true] & ~lo & 0xFFFF_FFFF == 0
    assert m[Msr.IA32_VMX_CR0_FIXED0] & ~m[Msr.IA32_VMX_CR0_FIXED1] == 0
    assert m[Msr.IA32_VMX_CR4_FIXED0] & ~m[Msr.IA32_VMX_CR4_FIXED1] == 0


def test_fields_follow_the_capabilities(model) -> None:
    """A field exists only where the processor allows the control it belongs to (SDM App. B footnotes)."""
    has = {f.name for f in model.fields.values()}
    assert {"GUEST_RIP", "VMCS_LINK_POINTER", "EPT_POINTER", "VIRTUAL_PROCESSOR_ID"} <= has
    assert ("VMREAD_BITMAP" in has) == model.allows(ControlKind.SECONDARY, SecondaryCtls.SHADOW_VMCS)
    assert not {"GUEST_IA32_FRED_CONFIG", "POSTED_INTR_NV", "GUEST_PML_INDEX", "XSS_EXIT_BITMAP"} & has
    assert ("VM_FUNCTION_CONTROL" in has) == (model.name == "haswell")
    link = FIELD_BY_NAME["VMCS_LINK_POINTER"]
    assert link.encoding | 1 in model.encodings and 0x681F not in model.encodings


def test_layout_fits_the_region_without_overlap(model) -> None:
    spans = sorted(model.layout.offsets.values())
    assert spans[0][0] >= VMCS_HEADER_SIZE
    for (a, n), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + n <= b
    assert spans[-1][0] + spans[-1][1] <= model.vmcs_size
    assert set(model.layout.offsets) == set(model.fields)


def test_physical_memory_bounds() -> None:
    mem = PhysicalMemory(0x2000)
    mem.write_u(0x1FF8, 8, 0x1122334455667788)
    assert mem.read_u(0x1FF8, 8) == 0x1122334455667788
    with pytest.raises(BusError):
        mem.read(0x1FFC, 8)
    with pytest.raises(BusError):
        mem.write(-1, b"x")
    assert mem.read_bus(0x4000, 4) == 0xFFFF_FFFF  # no memory: the bus reads all ones
    mem.write_bus(0x4000, 4, 0)  # dropped, no error
    with pytest.raises(ValueError):
        PhysicalMemory(1000)


def test_models_are_named_as_documented() -> None:
    assert sorted(CPU_MODELS) == ["haswell", "sandybridge"]
