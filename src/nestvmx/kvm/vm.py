"""The VM (KVM's struct kvm): guest memory and L0's private memory, EPT01, the vCPUs, and the
scheduler that interleaves them.

Each vCPU has a logical processor of its own (as if pinned to a host CPU): its VMX operation,
current VMCS, registers and execution engine.  The host runs them one at a time, round-robin,
switching only at VM-exit boundaries, so a run is deterministic (docs/architecture.md, "SMP").
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.kvm.ept import EptTables
from nestvmx.kvm.vmcs_shadow_fields import DEFAULT_SHADOW_FIELDS
from nestvmx.kvm.vmx import L0Bug, RunEnd, VmxVcpu

MAX_VCPUS = 32  # their stacks (platform.initial_rsp) stay above the platform's tables
L0_AREA_PER_VCPU = 4 << 20  # L0's private host memory above the guest's: VMXON regions, VMCSs, EPT tables
DEFAULT_SLICE = 10_000  # guest instructions per turn
# A lone vCPU still gets the host's timer tick: every 3,000,000 guest instructions without an
# exit (1 ms at 3 GHz and one instruction a cycle, Linux's HZ=1000), so that limits such as
# --timeout also end a guest that never exits.
HOST_TICK = 3_000_000
# A VM and its Unicorn instances form reference cycles, and the cycle collector counts objects,
# not the megabytes behind them: past this many VMs not yet freed, creating one collects first.
_UNCOLLECTED_VMS = 4
_vms: weakref.WeakSet[Kvm] = weakref.WeakSet()


@dataclass(frozen=True)
class Schedule:
    """Round-robin over the runnable vCPUs, switching at VM-exit boundaries.

    `rr[:N]` (the default, N = 10,000): a turn ends at the vCPU's first VM exit once it has run
    N guest instructions in the turn.  `exit[:N]` (N = 1): a turn also ends after N VM exits,
    for the finest interleaving of L1's VMX instructions across vCPUs.  Either way a vCPU that
    runs a further N instructions without exiting (e.g. spinning on a lock) is preempted by the
    host's timer interrupt, an external-interrupt VM exit that L0 handles."""

    slice: int = DEFAULT_SLICE
    exits: int | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        policy, _, count = text.partition(":")
        if policy not in ("rr", "exit") or (count and (not count.isdigit() or int(count) == 0)):
            raise ValueError(f"unknown schedule {text!r}: use rr[:INSTRUCTIONS] or exit[:EXITS]")
        if policy == "rr":
            return cls(slice=int(count) if count else DEFAULT_SLICE)
        return cls(exits=int(count) if count else 1)

    def __str__(self) -> str:
        return f"exit:{self.exits}" if self.exits is not None else f"rr:{self.slice}"


class Kvm:
    """One VM: its memory, EPT01 (shared by the vCPUs, as KVM's TDP MMU is) and its vCPUs."""

    def __init__(
        self,
        model: CpuModel,
        guest_size: int,
        vcpus: int,
        console: Callable[[bytes], None],
        trace: Callable[[str], None] | None = None,
        enable_shadow_vmcs: bool = True,
        schedule: Schedule = Schedule(),
        shadow_fields: str = DEFAULT_SHADOW_FIELDS,
    ) -> None:
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"a VM has 1 to {MAX_VCPUS} vCPUs, not {vcpus}")
        if len(_vms) >= _UNCOLLECTED_VMS:
            gc.collect()
        _vms.add(self)
        self.model = model
        # KVM's module parameter, honoured only where the processor can shadow (cpu_has_vmx_shadow_vmcs:
        # secondary control bit 14 and IA32_VMX_MISC bit 29, to VMWRITE the exit fields into the shadow).
        self.enable_shadow_vmcs = enable_shadow_vmcs and model.has_vmcs_shadowing and model.vmwrite_any_field
        self.shadow_fields = shadow_fields  # which KVM's shadow field lists (vmcs_shadow_fields.SHADOW_FIELD_LISTS)
        self.guest_size = guest_size
        self.memory = PhysicalMemory(guest_size + L0_AREA_PER_VCPU * vcpus)
        self.console = console
        self.trace = trace
        self.schedule = schedule
        self._next_page = guest_size
        self._free_pages: list[int] = []
        self.eptp = self._build_ept01()
        self.vcpus = [VmxVcpu(self, i) for i in range(vcpus)]
        self.current = 0  # the vCPU whose turn it is
        self.turn_instructions = 0  # guest instructions it has run in this turn
        self.turn_exits = 0

    def alloc_page(self) -> int:
        """A zeroed page of L0's private memory."""
        if self._free_pages:
            page = self._free_pages.pop()
        else:
            page = self._next_page
            self._next_page += 0x1000
            if self._next_page > self.memory.size:
                raise L0Bug("L0's private memory is exhausted")
        self.memory.write(page, bytes(0x1000))
        return page

    def free_pages(self, pages: list[int]) -> None:
        self._free_pages.extend(pages)

    def _build_ept01(self) -> int:
        """Identity EPT for guest memory with 2 MiB pages, read/write/execute, write-back."""
        ept01 = EptTables(self.memory, self.alloc_page)
        for gpa in range(0, self.guest_size, 1 << 21):
            ept01.map(gpa, gpa, 1 << 21, 7)
        return ept01.eptp

    def total_exits(self) -> int:
        return sum(v.stats.exits for v in self.vcpus)

    def run(self, max_exits: int | None = None, deadline: float | None = None) -> RunEnd:
        """Run the vCPUs until one ends the run (port 0xF4, a crash), all have halted, or a limit is hit."""
        smp = len(self.vcpus) > 1
        while True:
            if max_exits is not None and self.total_exits() >= max_exits:
                return RunEnd("limit", 0, f"stopped after {max_exits} exits (--max-exits)")
            if deadline is not None and time.monotonic() > deadline:
                return RunEnd("limit", 0, "stopped at the time limit")
            vcpu = self.vcpus[self.current]
            before = vcpu.engine.executed
            end = vcpu.run_once(max(1, 2 * self.schedule.slice - self.turn_instructions) if smp else HOST_TICK)
            if end is not None:
                if end.halted and any(not v.halted for v in self.vcpus if v is not vcpu):
                    vcpu.halted = True  # KVM_MP_STATE_HALTED: nothing will wake it, the others go on
                    self._next_turn()
                    continue
                if smp and end.message:
                    return RunEnd(end.outcome, end.status, f"vCPU {vcpu.vcpu_id}: {end.message}")
                return end
            if smp:
                self.turn_instructions += vcpu.engine.executed - before
                self.turn_exits += 1
                if self.turn_instructions >= self.schedule.slice or self.turn_exits == self.schedule.exits:
                    self._next_turn()

    def _next_turn(self) -> None:
        n = len(self.vcpus)
        self.current = next(
            i for i in ((self.current + step) % n for step in range(1, n + 1)) if not self.vcpus[i].halted
        )
        self.turn_instructions = self.turn_exits = 0
