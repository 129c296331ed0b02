"""Shared set-up for the processor tests: a processor in VMX root operation and a VMCS that
passes every VM-entry check, built only through VMWRITE as software would."""

from __future__ import annotations

import pytest

from nestvmx.arch.controls import ControlKind, EntryCtls, ExitCtls
from nestvmx.arch.fields import Field as F
from nestvmx.hw.cpu_models import CPU_MODELS, CpuModel
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.processor import VM_SUCCEED, LogicalProcessor
from nestvmx.hw.state import CR4_VMXE, CpuState
from nestvmx.hw.vmexit import GUEST_SEGMENT_FIELDS

MEMORY = 16 << 20
VMXON_REGION = 0x10000
VMCS_A = 0x11000
VMCS_B = 0x12000
SHADOW = 0x13000
BITMAPS = 0x14000  # VMREAD bitmap; VMWRITE bitmap at +0x1000
PAGE_TABLES = 0x20000  # identity map of the first 1 GiB with 2 MiB pages
GUEST_RIP = 0x400000
HOST_RIP = 0x500000


def identity_map(memory: PhysicalMemory) -> int:
    memory.write_u(PAGE_TABLES, 8, (PAGE_TABLES + 0x1000) | 3)
    memory.write_u(PAGE_TABLES + 0x1000, 8, (PAGE_TABLES + 0x2000) | 3)
    for i in range(512):
        memory.write_u(PAGE_TABLES + 0x2000 + 8 * i, 8, (i << 21) | 0x83)
    return PAGE_TABLES


def write_revision(cpu: LogicalProcessor, address: int, shadow: bool = False) -> None:
    cpu.memory.write_u(address, 4, cpu.model.revision_id | (1 << 31 if shadow else 0))


def make_cpu(model: CpuModel, vmxon: bool = True) -> LogicalProcessor:
    memory = PhysicalMemory(MEMORY)
    state = CpuState()
    state.cr3 = identity_map(memory)
    state.cr4 |= CR4_VMXE
    cpu = LogicalProcessor(model, memory, state)
    for region in (VMXON_REGION, VMCS_A, VMCS_B):
        write_revision(cpu, region)
    write_revision(cpu, SHADOW, shadow=True)
    if vmxon:
        assert cpu.vmxon(VMXON_REGION) == VM_SUCCEED
    return cpu


def required(model: CpuModel, kind: ControlKind, bits: int = 0) -> int:
    """The control value with the must-be-one bits set, plus `bits`."""
    return (model.control_msr(kind) & 0xFFFF_FFFF) | bits


def write_valid_vmcs(cpu: LogicalProcessor) -> None:
    """Make the current VMCS pass every VM-entry check for a 64-bit guest."""
    s, m = cpu.state, cpu.model
    values = {
        F.PIN_BASED_VM_EXEC_CONTROL: required(m, ControlKind.PIN),
        F.CPU_BASED_VM_EXEC_CONTROL: required(m, ControlKind.PRIMARY),
        F.VM_EXIT_CONTROLS: required(m, ControlKind.EXIT, ExitCtls.HOST_ADDR_SPACE_SIZE),
        F.VM_ENTRY_CONTROLS: required(m, ControlKind.ENTRY, EntryCtls.IA32E_MODE_GUEST),
        F.HOST_CR0: s.cr0,
        F.HOST_CR3: s.cr3,
        F.HOST_CR4: s.cr4,
        F.HOST_CS_SELECTOR: 0x08,
        F.HOST_SS_SELECTOR: 0x10,
        F.HOST_DS_SELECTOR: 0x10,
        F.HOST_ES_SELECTOR: 0x10,
        F.HOST_TR_SELECTOR: 0x18,
        F.HOST_RIP: HOST_RIP,
        F.HOST_RSP: 0x80000,
        F.GUEST_CR0: s.cr0,
        F.GUEST_CR3: s.cr3,
        F.GUEST_CR4: s.cr4,
        F.GUEST_DR7: 0x400,
        F.GUEST_RIP: GUEST_RIP,
        F.GUEST_RSP: 0x90000,
        F.GUEST_RFLAGS: 0x2,
        F.VMCS_LINK_POINTER: 0xFFFF_FFFF_FFFF_FFFF,
        F.GUEST_GDTR_LIMIT: 0xFFFF,
        F.GUEST_IDTR_LIMIT: 0xFFFF,
    }
    for seg, (sel, base, limit, ar) in zip(s.segs, GUEST_SEGMENT_FIELDS, strict=True):
        values[sel], values[base], values[limit], values[ar] = seg.selector, seg.base, seg.limit, seg.ar
    for field, value in values.items():
        assert cpu.vmwrite(field, value) == VM_SUCCEED, field.name


@pytest.fixture(params=sorted(CPU_MODELS))
def model(request: pytest.FixtureRequest) -> CpuModel:
    return CPU_MODELS[request.param]


@pytest.fixture
def haswell() -> CpuModel:
    return CPU_MODELS["haswell"]


@pytest.fixture
def sandybridge() -> CpuModel:
    return CPU_MODELS["sandybridge"]
