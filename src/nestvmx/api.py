"""The Python API of the design's contract: Host -> VM -> run result.

The host plays the roles of the Linux host and its VMM (QEMU): it owns the processor model and
L0, loads the program into guest memory, provides the platform ports and collects statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from nestvmx.hw.cpu_models import DEFAULT_CPU_MODEL, get_cpu_model
from nestvmx.kvm.loader import ProgramError, parse_program, read_program
from nestvmx.kvm.migration import MigrationError, get_vcpu_state, set_vcpu_state
from nestvmx.kvm.platform import INITIAL_RSP, build_platform, initial_state
from nestvmx.kvm.vmx import VmxVcpu
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
    """A machine with one processor model; `shadow_vmcs` is L0's enable_shadow_vmcs; `costs` names
    the cost model (a built-in calibration era or a TOML file) that turns events into cycles."""

    def __init__(
        self, cpu: str = DEFAULT_CPU_MODEL, shadow_vmcs: bool | None = None, costs: str | Path | None = None
    ) -> None:
        self.model = get_cpu_model(cpu)
        self.shadow_vmcs = self.model.has_vmcs_shadowing if shadow_vmcs is None else shadow_vmcs
        self.cost_model = CostModel.load(costs or default_cost_model(cpu))

    def create_vm(self, memory_mib: int = 64, vcpus: int = 1) -> VM:
        if not 1 <= memory_mib <= MAX_MEMORY_MIB:
            raise ValueError(f"memory must be 1 to {MAX_MEMORY_MIB} MiB, not {memory_mib}")
        if vcpus != 1:
            raise ValueError("only one vCPU is supported so far")
        return VM(self, memory_mib << 20)

    def restore(self, path: str | Path) -> VM:
        """A VM continued from a snapshot (KVM_SET_NESTED_STATE & co.) on this host's processor;
        SnapshotError if the file or the state in it is not valid (nothing is half-restored)."""
        snapshot = read_snapshot(path)
        size = snapshot.header["memory_size"]
        if not isinstance(size, int) or size % (1 << 20) or not 1 <= size >> 20 <= MAX_MEMORY_MIB:
            raise SnapshotError(f"{path}: bad memory size {size!r}")
        if len(snapshot.header["vcpus"]) != 1:
            raise SnapshotError(f"{path}: only one vCPU is supported so far")
        vm = VM(self, size)
        vm._create_vcpu()
        vm.vcpu.memory.write(0, snapshot.memory)
        vm.vcpu.setup(initial_state(0))  # vmcs01 for this processor; the state below replaces L1's part
        try:
            set_vcpu_state(vm.vcpu, snapshot.header["vcpus"][0], snapshot.vmcs12[0])
        except MigrationError as err:
            raise SnapshotError(f"{path}: {err}") from None
        return vm


class VM:
    def __init__(self, host: Host, memory_size: int) -> None:
        self.host = host
        self.memory_size = memory_size
        self._console = bytearray()
        self.console_sink = None  # called with each console byte string as it is written
        self.trace_sink = None  # called with one trace line per VM exit
        self.vcpu: VmxVcpu | None = None

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
        self._create_vcpu()
        build_platform(self.vcpu.memory, self.memory_size)
        for segment_address, blob in loaded.segments:
            self.vcpu.memory.write(segment_address, blob)
        self.vcpu.setup(initial_state(loaded.entry, INITIAL_RSP))

    def _create_vcpu(self) -> None:
        self.vcpu = VmxVcpu(
            self.host.model,
            self.memory_size,
            self._write_console,
            lambda line: self.trace_sink and self.trace_sink(line),
            self.host.shadow_vmcs,
        )

    def save(self, path: str | Path) -> None:
        """Write a snapshot of the VM as it stands (after `run` returned at a VM-exit boundary)."""
        if self.vcpu is None:
            raise ProgramError("nothing to save: load a program first")
        state, vmcs12 = get_vcpu_state(self.vcpu)
        header = {
            "memory_size": self.memory_size,
            "origin": {"cpu": self.host.model.name, "shadow_vmcs": self.vcpu.enable_shadow_vmcs},
            "vcpus": [state],
        }
        write_snapshot(path, Snapshot(header, self.l1_memory(), [vmcs12]))

    def l1_memory(self) -> bytes:
        """A copy of the guest's physical memory."""
        assert self.vcpu is not None
        return self.vcpu.memory.read(0, self.memory_size)

    def _write_console(self, data: bytes) -> None:
        self._console += data
        if self.console_sink:
            self.console_sink(data)

    def run(self, max_exits: int | None = None, timeout: float | None = None) -> RunResult:
        if self.vcpu is None:
            raise ProgramError("nothing to run: load a program first")
        start = time.monotonic()
        end = self.vcpu.run(max_exits, start + timeout if timeout else None)
        wall = time.monotonic() - start
        vcpu = self.vcpu
        events = vcpu.cpu.events
        vcpu.stats.shadow_vmread, vcpu.stats.shadow_vmwrite = events["shadow_vmread"], events["shadow_vmwrite"]
        counts = vcpu.engine.instruction_counts()
        l1 = counts.pop(vcpu.eptp, 0)
        stats = vcpu.stats.as_dict(end.outcome, end.status, l1, sum(counts.values()), wall, events)
        stats["modeled_cycles"] = self.host.cost_model.cycles(stats)
        stats["cost_model"] = self.host.cost_model.name
        return RunResult(end.outcome, end.status, self._console.decode("latin-1"), end.message, stats)
