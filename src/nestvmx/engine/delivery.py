"""Delivery of exceptions and interrupts through the guest's IDT in IA-32e mode (SDM Vol. 3A
§6.14), which Unicorn does not do: 64-bit interrupt and trap gates, IST and privilege stack
switches, error codes, and the double-fault / triple-fault escalation (§6.15, Table 6-5)."""

from __future__ import annotations

from dataclasses import dataclass

from nestvmx.arch.controls import (
    INSTRUCTION_EVENT_TYPES,
    INTR_INFO_DELIVER_ERROR_CODE,
    INTR_INFO_VALID,
    InterruptionType,
)
from nestvmx.hw.exceptions import Vector, X86Exception, double_fault_class
from nestvmx.hw.paging import LinearMemory
from nestvmx.hw.state import RFLAGS_IF, RFLAGS_TF, RFLAGS_VM, CpuState, Seg, Segment

_RFLAGS_NT, _RFLAGS_RF = 1 << 14, 1 << 16


class TripleFault(Exception):
    """An exception while delivering a double fault: the processor shuts down."""


@dataclass(frozen=True)
class Event:
    vector: int
    error_code: int | None = None
    kind: int = InterruptionType.HARDWARE_EXCEPTION  # the VMCS interruption type (SDM Table 25-17)

    @property
    def software(self) -> bool:
        """INT n, INT3, INTO: the gate's DPL is checked and error codes of faults have EXT = 0
        (INT1, a privileged software exception, is neither, §6.13)."""
        return self.kind in (InterruptionType.SOFTWARE_INTERRUPT, InterruptionType.SOFTWARE_EXCEPTION)

    @property
    def from_instruction(self) -> bool:
        return self.kind in INSTRUCTION_EVENT_TYPES

    @property
    def info(self) -> int:
        """As the VM-exit interruption-information and IDT-vectoring information fields hold it."""
        info = self.vector | self.kind << 8 | INTR_INFO_VALID
        return info | INTR_INFO_DELIVER_ERROR_CODE if self.error_code is not None else info


def escalate(current: Event, fault: Event) -> Event:
    """What to deliver after `fault`, not intercepted, interrupted the delivery of `current`
    (SDM §6.15): #DF for two contributory or page-fault exceptions, a triple fault after #DF,
    else `fault` itself.  Interrupts and software events (INT n, INT3, INT1) are benign."""
    exception = current.kind == InterruptionType.HARDWARE_EXCEPTION
    if exception and current.vector == Vector.DF:
        raise TripleFault
    if exception and double_fault_class(current.vector, fault.vector):
        return Event(Vector.DF, 0)
    return fault


def _read_u(memory: LinearMemory, address: int, size: int) -> int:
    return int.from_bytes(memory.read(address, size), "little")


def deliver(state: CpuState, memory: LinearMemory, event: Event, descriptor_reader) -> None:
    """Deliver `event` through the IDT; raises X86Exception if that faults (see escalate).

    `descriptor_reader(selector)` returns the Segment a code-segment selector loads.
    """
    ext = 0 if event.software else 1
    vector = event.vector
    if vector * 16 + 15 > state.idtr_limit:
        raise X86Exception(Vector.GP, vector * 8 + 2 + ext)
    gate = int.from_bytes(memory.read(state.idtr_base + vector * 16, 16), "little")
    gate_type, dpl, present = (gate >> 40) & 0xF, (gate >> 45) & 3, (gate >> 47) & 1
    if gate_type not in (0xE, 0xF):
        raise X86Exception(Vector.GP, vector * 8 + 2 + ext)
    if event.software and dpl < state.cpl:
        raise X86Exception(Vector.GP, vector * 8 + 2)
    if not present:
        raise X86Exception(Vector.NP, vector * 8 + 2 + ext)
    selector = (gate >> 16) & 0xFFFF
    offset = (gate & 0xFFFF) | ((gate >> 48) & 0xFFFF) << 16 | ((gate >> 64) & 0xFFFF_FFFF) << 32
    ist = (gate >> 32) & 7
    code = descriptor_reader(selector)
    if code is None or code.unusable or not code.ar & 0x8 or not code.ar & 0x80:
        raise X86Exception(Vector.GP, (selector & ~3) + ext)
    new_cpl = code.dpl if not code.ar & 0x4 else state.cpl  # conforming code keeps the CPL
    old_ss, old_rsp, old_cpl = state.segs[Seg.SS].selector, state.rsp, state.cpl
    tss = state.segs[Seg.TR].base
    if ist:
        rsp = _read_u(memory, tss + 0x24 + 8 * (ist - 1), 8)
    elif new_cpl < old_cpl:
        rsp = _read_u(memory, tss + 4 + 8 * new_cpl, 8)
    else:
        rsp = old_rsp
    rsp &= ~0xF
    frame = [old_ss, old_rsp, state.rflags, state.cs.selector, state.rip]
    if event.error_code is not None:
        frame.append(event.error_code)
    for value in frame:
        rsp -= 8
        memory.write(rsp, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))
    if new_cpl != old_cpl:
        state.segs[Seg.SS] = Segment(new_cpl, 0, 0, 0x10000 | (new_cpl << 5))  # null SS with RPL = CPL
    state.segs[Seg.CS] = Segment((selector & ~3) | new_cpl, code.base, code.limit, code.ar)
    state.rsp = rsp
    state.rip = offset
    state.rflags &= ~(RFLAGS_TF | _RFLAGS_NT | _RFLAGS_RF | RFLAGS_VM)
    if gate_type == 0xE:
        state.rflags &= ~RFLAGS_IF
