"""`nestvmx run`: run a program as the L1 guest of the L0 hypervisor."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nestvmx.api import VM, Host, RunResult
from nestvmx.guests.build import L2_WORKLOADS, build_minivisor
from nestvmx.guests.footprints import DEFAULT_FOOTPRINT, FOOTPRINTS
from nestvmx.hw.cpu_models import CPU_MODELS, DEFAULT_CPU_MODEL
from nestvmx.hw.native import BuildError
from nestvmx.kvm.loader import ProgramError
from nestvmx.kvm.vm import MAX_VCPUS, Schedule
from nestvmx.kvm.vmcs_shadow_fields import DEFAULT_SHADOW_FIELDS, SHADOW_FIELD_LISTS
from nestvmx.kvm.vmx import L0Bug
from nestvmx.measure.cost_model import CostModelError
from nestvmx.snapshot import SnapshotError

STATUS_LIMIT = 124
STATUS_CRASH = 125
STATUS_CANNOT_RUN = 126
STATUS_INTERNAL = 127


def _address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an address (e.g. 0x100000)") from None


def _schedule(text: str) -> str:
    try:
        Schedule.parse(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return text


def _options(*options: Callable) -> Callable:
    """Several click options as one decorator (shared by `run` and `resume`)."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


vcpus_option = click.option(
    "--vcpus",
    type=click.IntRange(1, MAX_VCPUS),
    default=1,
    show_default=True,
    help="vCPUs of the VM (vCPU i: APIC ID i, RSP 0x100000-16-i*0x4000); the built-in workloads run on every "
    "vCPU, nested with one L2 each.",
)
shadow_fields_option = click.option(
    "--shadow-fields",
    type=click.Choice(sorted(SHADOW_FIELD_LISTS)),
    default=DEFAULT_SHADOW_FIELDS,
    show_default=True,
    help="Whose VMCS shadow field lists L0 uses: today's KVM, or Linux 4.10's (the NEVE paper's L0).",
)
_host_options = _options(
    click.option(
        "--cpu",
        type=click.Choice(sorted(CPU_MODELS)),
        default=DEFAULT_CPU_MODEL,
        show_default=True,
        help="Processor model.",
    ),
    click.option(
        "--shadow-vmcs/--no-shadow-vmcs",
        default=None,
        help="L0's enable_shadow_vmcs (default: on where the CPU model supports it).",
    ),
    shadow_fields_option,
    click.option("--costs", help="Cost model: turtles2010, haswell, or a TOML file (default: the CPU model's era)."),
)
_run_options = _options(
    click.option("--max-exits", type=click.IntRange(1), help="Stop after this many L0 exits (outcome 'limit')."),
    click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Stop after this many seconds."),
    click.option("--stats-json", type=click.Path(dir_okay=False, path_type=Path), help="Write the statistics here."),
    click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Write one line per VM exit here."),
    click.option(
        "--save",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write a snapshot here when the run stops after --save-after-exits (see `nestvmx resume`).",
    ),
    click.option("--save-after-exits", type=click.IntRange(1), help="Stop after this many L0 exits and --save."),
)


_STATUSES = f"""\b
Exit status:
  0-123  the program's own status: the low 8 bits written to port 0xF4
  {STATUS_LIMIT}    a limit ended the run (--max-exits, --timeout)
  {STATUS_CRASH}    the guest crashed (exception without an IDT, triple fault, ...)
  {STATUS_CANNOT_RUN}    the program could not be built or loaded
  {STATUS_INTERNAL}    an internal error of nestvmx
  2      bad usage"""


@click.command(epilog=_STATUSES)
@click.argument("program", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--l1", type=click.Choice(["minivisor"]), help="Run a built-in L1 hypervisor instead of PROGRAM.")
@click.option(
    "--l2",
    type=click.Choice(sorted(L2_WORKLOADS)),
    default="cpuid",
    show_default=True,
    help="The L2 workload of the built-in L1.",
)
@click.option(
    "--iterations",
    type=click.IntRange(1, 10**7),
    default=1000,
    show_default=True,
    help="Iterations of the L2 workload.",
)
@click.option(
    "--footprint",
    type=click.Choice(sorted(FOOTPRINTS)),
    default=DEFAULT_FOOTPRINT,
    show_default=True,
    help="Whose VMREAD/VMWRITE traffic the built-in L1 reproduces on each exit.",
)
@click.option("--load-address", default="0x100000", show_default=True, help="Where a flat binary is loaded.")
@click.option(
    "--memory", "memory_mib", type=click.IntRange(1, 4096), default=64, show_default=True, help="Guest memory in MiB."
)
@vcpus_option
@click.option(
    "--schedule",
    default="rr",
    show_default=True,
    callback=lambda _ctx, _param, value: _schedule(value),
    help="How L0 interleaves the vCPUs, switching at VM exits: rr[:N] at the first exit after N guest "
    "instructions (10000), exit[:N] also after N exits (1); the host timer preempts a vCPU that runs N more "
    "instructions without exiting.",
)
@_host_options
@_run_options
def run(
    program: Path | None,
    l1: str | None,
    l2: str,
    iterations: int,
    footprint: str,
    load_address: str,
    memory_mib: int,
    vcpus: int,
    schedule: str,
    cpu: str,
    shadow_vmcs: bool | None,
    shadow_fields: str,
    costs: str | None,
    **run_options: Any,
) -> None:
    """Run PROGRAM as the L1 guest of the L0 hypervisor.

    PROGRAM is an ELF64 executable, a flat binary (loaded at --load-address and started at its
    first byte) or a C / assembler source file, which is built for the platform first.  What the
    program writes to port 0xE9 appears on standard output.

    \b
    With --l1 minivisor, the built-in L1 hypervisor runs an L2 guest doing
    --iterations of the --l2 workload (cpuid, vmcall, io, msr, pagetouch), handling
    each exit with the VMCS accesses of --footprint (kvm, kvm2010, kvm2017, minimal), e.g.
      nestvmx run --l1 minivisor --l2 cpuid --iterations 1000 --stats-json s.json
    """
    if (program is None) == (l1 is None):
        raise click.UsageError("give either PROGRAM or --l1 minivisor")
    address = _address(load_address)

    def create() -> VM:
        vm = Host(cpu, shadow_vmcs, costs, shadow_fields).create_vm(
            memory_mib=memory_mib, vcpus=vcpus, schedule=schedule
        )
        vm.load(build_minivisor(l2, iterations, footprint, vcpus) if l1 else program, address)
        return vm

    _run_vm(create, **run_options)


@click.command(epilog=_STATUSES)
@click.argument("snapshot", type=click.Path(dir_okay=False, path_type=Path))
@_host_options
@_run_options
def resume(
    snapshot: Path, cpu: str, shadow_vmcs: bool | None, shadow_fields: str, costs: str | None, **run_options: Any
) -> None:
    """Continue a VM saved by `nestvmx run --save` on any CPU model and shadowing setting.

    The statistics count from the resume; the console shows what the guest writes from then on.
    """
    _run_vm(lambda: Host(cpu, shadow_vmcs, costs, shadow_fields).restore(snapshot), **run_options)


def _run_vm(
    create: Callable[[], VM],
    max_exits: int | None,
    timeout: float | None,
    stats_json: Path | None,
    trace: Path | None,
    save: Path | None,
    save_after_exits: int | None,
) -> None:
    if (save is None) != (save_after_exits is None):
        raise click.UsageError("--save and --save-after-exits go together")
    if save_after_exits is not None and max_exits is not None:
        raise click.UsageError("--save-after-exits already sets where the run stops: drop --max-exits")
    trace_file = None
    try:
        vm = create()
        if trace:
            trace_file = trace.open("w")
            vm.trace_sink = lambda line: trace_file.write(line + "\n")
        vm.console_sink = _write_console
        result = vm.run(max_exits=save_after_exits or max_exits, timeout=timeout)
        if save and result.outcome == "limit":
            vm.save(save)
    except (ProgramError, BuildError, CostModelError, SnapshotError, ValueError) as err:
        _fail(STATUS_CANNOT_RUN, str(err))
    except OSError as err:
        _fail(STATUS_CANNOT_RUN, f"{err.filename or ''}: {err.strerror}".strip(": "))
    except L0Bug as err:
        _fail(STATUS_INTERNAL, f"internal error: {err}")
    finally:
        if trace_file:
            trace_file.close()
    if stats_json:
        _write_stats(stats_json, result)
    if save and result.outcome == "limit":
        exits = result.stats["l0_exits"]["total"]
        click.echo(f"nestvmx: stopped after {exits} L0 exits; snapshot saved to {save}", err=True)
        sys.exit(0)
    sys.exit(_status(result))


def _write_console(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the reader went away (e.g. `| head`): keep running, stop printing
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends


def _write_stats(path: Path, result: RunResult) -> None:
    try:
        path.write_text(json.dumps(result.stats, indent=2) + "\n")
    except OSError as err:
        _fail(STATUS_CANNOT_RUN, f"cannot write {path}: {err.strerror}")


def _status(result: RunResult) -> int:
    if result.outcome == "exit":
        return result.status
    click.echo(result.message, err=True)
    return STATUS_LIMIT if result.outcome == "limit" else STATUS_CRASH


def _fail(status: int, message: str) -> None:
    click.echo(f"nestvmx: {message}", err=True)
    sys.exit(status)
