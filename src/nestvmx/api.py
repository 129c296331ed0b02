"""The Python API of the design's contract: Host -> VM -> run result.

The host plays the roles of the Linux host and its VMM (QEMU): it owns the processor model and
L0, loads the program into guest memory, provides the platform ports and collects statistics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nestvmx.hw.cpu_models import DEFAULT_CPU_MODEL, get_cpu_model
from nestvmx.kvm.loader import ProgramError, parse_program, read_program
from nestvmx.kvm.migration import (
    MigrationError,
    get_schedule_state,
    get_vcpu_state,
    set_schedule_state,
    set_vcpu_state,
)
from nestvmx.kvm.platform import build_platform, initial_rsp, initial_state
from nestvmx.kvm.stats import RunStats
from nestvmx.kvm.vm import MAX_VCPUS, Kvm, Schedule
from nestvmx.kvm.vmcs_shadow_fields import DEFAULT_SHADOW_FIELDS, SHADOW_FIELD_LISTS
from nestvmx.measure.cost_model import CostModel, default_cost_model
from nestvmx.snapshot import Snapshot, SnapshotError, read_snapshot, write_snapshot

MAX_MEMORY_MIB = 4096


@dataclass(frozen=True)
class RunResult:
    outcome: str  # "exit" | "crash" | "limit"
    status: int
    console: str  # the bytes written to port 0xE9, one character per byte (latin-1)
    message: str  # why a crash or limit ended the run ("" on a program exit)
    stats: dict


class Host:
    """A machine with one processor model; `shadow_vmcs` is L0's enable_shadow_vmcs and
    `shadow_fields` the KVM version whose shadow field lists L0 uses ("current", "linux-4.10");
    `costs` names the cost model (a built-in calibration era or a TOML file) that turns events
    into cycles."""

    def __init__(
        self,
        cpu: str = DEFAULT_CPU_MODEL,
        shadow_vmcs: bool | None = None,
        costs: str | Path | None = None,
        shadow_fields: str = DEFAULT_SHADOW_FIELDS,
    ) -> None:
        self.model = get_cpu_model(cpu)
        self.shadow_vmcs = self.model.has_vmcs_shadowing if shadow_vmcs is None else shadow_vmcs
        if shadow_fields not in SHADOW_FIELD_LISTS:
            raise ValueError(f"unknown shadow field lists {shadow_fields!r} (known: {', '.join(SHADOW_FIELD_LISTS)})")
        self.shadow_fields = shadow_fields
        self.cost_model = CostModel.load(costs or default_cost_model(cpu))

    def create_vm(self, memory_mib: int = 64, vcpus: int = 1, schedule: str = "rr") -> VM:
        """A VM of `vcpus` vCPUs that L0 interleaves by `schedule` (kvm/vm.py's Schedule)."""
        if not 1 <= memory_mib <= MAX_MEMORY_MIB:
            raise ValueError(f"memory must be 1 to {MAX_MEMORY_MIB} MiB, not {memory_mib}")
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus must be 1 to {MAX_VCPUS}, not {vcpus}")
        return VM(self, memory_mib << 20, vcpus, Schedule.parse(schedule))

    def restore(self, path: str | Path) -> VM:
        """A VM continued from a snapshot (KVM_SET_NESTED_STATE & co.) on this host's processor;
        SnapshotError if the file or the state in it is not valid (nothing is half-restored)."""
        snapshot = read_snapshot(path)
        header = snapshot.header
        size, states = header["memory_size"], header["vcpus"]
        if not isinstance(size, int) or size % (1 << 20) or not 1 <= size >> 20 <= MAX_MEMORY_MIB:
            raise SnapshotError(f"{path}: bad memory size {size!r}")
        if len(states) > MAX_VCPUS:
            raise SnapshotError(f"{path}: {len(states)} vCPUs (at most {MAX_VCPUS})")
        try:
            vm = VM(self, size, len(states), Schedule.parse(header.get("schedule", "rr")))
            vm._create_kvm()
            vm.kvm.memory.write(0, snapshot.memory)
            for vcpu, state, vmcs12 in zip(vm.kvm.vcpus, states, snapshot.vmcs12, strict=True):
                vcpu.setup(initial_state(0))  # vmcs01 for this processor; the state replaces L1's part
                set_vcpu_state(vcpu, state, vmcs12)
            set_schedule_state(vm.kvm, header.get("scheduler"))
        except (MigrationError, ValueError) as err:
            raise SnapshotError(f"{path}: {err}") from None
        return vm


class VM:
    def __init__(self, host: Host, memory_size: int, vcpus: int, schedule: Schedule) -> None:
        self.host = host
        self.memory_size = memory_size
        self.nr_vcpus = vcpus
        self.schedule = schedule
        self._console = bytearray()
        self.console_sink = None  # called with each console byte string as it is written
        self.kvm: Kvm | None = None
        self._trace_sink: Callable[[str], None] | None = None

    @property
    def trace_sink(self) -> Callable[[str], None] | None:
        """Called with one trace line per VM exit.  L0 reads the fields a line shows only while
        there is a sink (as KVM's kvm_exit tracepoint reads them only when enabled)."""
        return self._trace_sink

    @trace_sink.setter
    def trace_sink(self, sink: Callable[[str], None] | None) -> None:
        self._trace_sink = sink
        if self.kvm is not None:
            self.kvm.trace = sink

    def load(self, program: str | Path | bytes, address: int | None = None) -> None:
        """Load an ELF64 executable, a flat binary (at `address`, default 1 MiB) or a guest source."""
        if isinstance(program, bytes):
            data = program
        else:
            path = Path(program)
            if path.suffix in (".c", ".S", ".s"):
                from nestvmx.guests.build import build_guest

                path = build_guest([path])
            data = read_program(path)
        loaded = parse_program(data, address, self.memory_size)
        self._create_kvm()
        build_platform(self.kvm.memory, self.memory_size)
        for segment_address, blob in loaded.segments:
            self.kvm.memory.write(segment_address, blob)
        for vcpu in self.kvm.vcpus:
            vcpu.setup(initial_state(loaded.entry, initial_rsp(vcpu.vcpu_id)))

    def _create_kvm(self) -> None:
        self.kvm = Kvm(
            self.host.model,
            self.memory_size,
            self.nr_vcpus,
            self._write_console,
            self._trace_sink,
            self.host.shadow_vmcs,
            self.schedule,
            self.host.shadow_fields,
        )

    def save(self, path: str | Path) -> None:
        """Write a snapshot of the VM as it stands (after `run` returned at a VM-exit boundary)."""
        if self.kvm is None:
            raise ProgramError("nothing to save: load a program first")
        saved = [get_vcpu_state(vcpu) for vcpu in self.kvm.vcpus]
        header = {
            "memory_size": self.memory_size,
            "origin": {"cpu": self.host.model.name, "shadow_vmcs": self.kvm.enable_shadow_vmcs},
            "schedule": str(self.schedule),
            "scheduler": get_schedule_state(self.kvm),
            "vcpus": [state for state, _ in saved],
        }
        write_snapshot(path, Snapshot(header, self.l1_memory(), [vmcs12 for _, vmcs12 in saved]))

    def l1_memory(self) -> bytes:
        """A copy of the guest's physical memory."""
        assert self.kvm is not None
        return self.kvm.memory.read(0, self.memory_size)

    def _write_console(self, data: bytes) -> None:
        self._console += data
        if self.console_sink:
            self.console_sink(data)

    def run(self, max_exits: int | None = None, timeout: float | None = None) -> RunResult:
        if self.kvm is None:
            raise ProgramError("nothing to run: load a program first")
        start = time.monotonic()
        end = self.kvm.run(max_exits, start + timeout if timeout else None)
        wall = time.monotonic() - start
        cost_model = self.host.cost_model
        per_vcpu, all_events = [], Counter()
        instructions = [0, 0]
        for vcpu in self.kvm.vcpus:
            events = vcpu.cpu.events
            counts = vcpu.engine.instruction_counts()
            l1 = counts.pop(vcpu.eptp, 0)
            l2 = sum(counts.values())
            counters = vcpu.stats.as_dict(l1, l2, events)
            per_vcpu.append({"vcpu": vcpu.vcpu_id, **counters, "modeled_cycles": cost_model.cycles(counters)})
            all_events += events
            instructions[0] += l1
            instructions[1] += l2
        total = RunStats.merged([vcpu.stats for vcpu in self.kvm.vcpus]).as_dict(*instructions, all_events)
        stats = {"outcome": end.outcome, "status": end.status, **total}
        stats["modeled_cycles"] = cost_model.cycles(total)  # processor time, summed over the vCPUs
        stats["cost_model"] = cost_model.name
        stats["wall_seconds"] = round(wall, 6)
        stats["vcpus"] = per_vcpu
        return RunResult(end.outcome, end.status, self._console.decode("latin-1"), end.message, stats)
