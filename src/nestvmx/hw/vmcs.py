"""VMCS regions in host memory and the processor's on-chip copy of active VMCSs.

A region is: revision id (bits 30:0) and shadow-VMCS indicator (bit 31) at offset 0, the
VMX-abort indicator at 4, then implementation-specific data (SDM Vol. 3C §25.2): this model
keeps the launch state at 8 and the fields at the offsets of its `VmcsLayout`.  While a VMCS
is active its data may live in the processor (`VmcsData`); VMCLEAR writes it back (§25.11.1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nestvmx.arch.controls import PrimaryCtls
from nestvmx.arch.fields import Field as F
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.memory import PhysicalMemory

INVALID_POINTER = 0xFFFF_FFFF_FFFF_FFFF
SHADOW_VMCS_INDICATOR = 1 << 31
LAUNCH_STATE_OFFSET = 8
ABORT_INDICATOR_OFFSET = 4


class LaunchState(enum.IntEnum):
    CLEAR = 0
    LAUNCHED = 1
    # VMXOFF left this VMCS active: its data are not trustworthy and VMRESUME fails with
    # error 6 ("VMRESUME after VMXOFF", SDM Table 31-1).
    LAUNCHED_BEFORE_VMXOFF = 2


_LAUNCH_STATES = frozenset(LaunchState)


@dataclass
class VmcsData:
    """An active VMCS as the processor holds it."""

    address: int
    shadow: bool  # the shadow-VMCS indicator read when the VMCS was made active
    launch_state: LaunchState = LaunchState.CLEAR
    fields: dict[int, int] = field(default_factory=dict)  # FULL encoding -> value


def secondary_controls(fields: dict[int, int]) -> int:
    """The secondary processor-based controls in effect: none unless the primary controls'
    "activate secondary controls" is 1 (SDM §25.6.2)."""
    if fields[F.CPU_BASED_VM_EXEC_CONTROL] & PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS:
        return fields.get(F.SECONDARY_VM_EXEC_CONTROL, 0)
    return 0


def read_revision(memory: PhysicalMemory, address: int) -> int:
    """The first dword of a region (all ones where there is no memory, as on the bus)."""
    return memory.read_bus(address, 4)


def load_region(model: CpuModel, memory: PhysicalMemory, address: int) -> VmcsData:
    """Read a region into the processor (VMPTRLD, or VM entry activating a shadow VMCS)."""
    state = memory.read_bus(address + LAUNCH_STATE_OFFSET, 4)
    data = VmcsData(
        address=address,
        shadow=bool(read_revision(memory, address) & SHADOW_VMCS_INDICATOR),
        launch_state=LaunchState(state) if state in _LAUNCH_STATES else LaunchState.CLEAR,
    )
    for encoding, (offset, size) in model.layout.offsets.items():
        data.fields[encoding] = memory.read_bus(address + offset, size)
    return data


def store_region(model: CpuModel, memory: PhysicalMemory, data: VmcsData) -> None:
    """Write the processor's copy back to the region (VMCLEAR).  Never writes the revision id."""
    memory.write_bus(data.address + LAUNCH_STATE_OFFSET, 4, data.launch_state)
    for encoding, (offset, size) in model.layout.offsets.items():
        memory.write_bus(data.address + offset, size, data.fields.get(encoding, 0))


def clear_region(memory: PhysicalMemory, address: int) -> None:
    """Initialise a region that is not active: its launch state becomes clear."""
    memory.write_bus(address + LAUNCH_STATE_OFFSET, 4, LaunchState.CLEAR)
