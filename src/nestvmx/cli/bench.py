"""`nestvmx bench`: the project's main job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from nestvmx.cli.run import shadow_fields_option, vcpus_option
from nestvmx.guests.build import L2_WORKLOADS
from nestvmx.guests.footprints import DEFAULT_FOOTPRINT, FOOTPRINTS
from nestvmx.hw.cpu_models import CPU_MODELS, DEFAULT_CPU_MODEL
from nestvmx.measure.bench import BenchRow, run_bench, shadow_share
from nestvmx.measure.cost_model import CostModelError
from nestvmx.measure.plot import plot_breakdown
from nestvmx.measure.reproduce import EXPERIMENTS


@click.command()
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(sorted(L2_WORKLOADS)),
    help="Run only this workload (repeatable). Default: all.",
)
@click.option(
    "--iterations",
    type=click.IntRange(1, 10**6),
    default=100,
    show_default=True,
    help="N: each configuration runs N and 2N iterations; figures are per exit of the difference.",
)
@click.option("--cpu", type=click.Choice(sorted(CPU_MODELS)), default=DEFAULT_CPU_MODEL, show_default=True)
@click.option(
    "--footprint",
    type=click.Choice(sorted(FOOTPRINTS)),
    default=DEFAULT_FOOTPRINT,
    show_default=True,
    help="Whose VMREAD/VMWRITE traffic the built-in L1 reproduces.",
)
@click.option("--costs", help="Cost model: turtles2010, haswell, or a TOML file (default: the CPU model's era).")
@vcpus_option
@shadow_fields_option
@click.option(
    "--reproduce", type=click.Choice(sorted(EXPERIMENTS)), help="Set up a published experiment; print model vs. paper."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw cycles per L2 exit by component (PNG) here.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the rows {workload, config, footprint, cost_model, stats} here.",
)
def bench(
    workloads: tuple[str, ...],
    iterations: int,
    cpu: str,
    footprint: str,
    costs: str | None,
    vcpus: int,
    shadow_fields: str,
    reproduce: str | None,
    plot_path: Path | None,
    json_path: Path | None,
) -> None:
    """Run each workload native, single-level, nested, and nested with VMCS shadowing; print
    L0 exits and modeled cycles per L2 exit, the overhead over single-level and the share of the
    nested overhead that shadowing removes."""
    if reproduce:
        _print_reproduction(reproduce, iterations)
        return
    chosen = list(workloads) or sorted(L2_WORKLOADS)
    console = Console(stderr=True)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("bench", total=len(chosen) * 4)
            rows = run_bench(
                chosen,
                iterations,
                cpu,
                costs,
                footprint,
                lambda what: progress.update(task, advance=1, description=what),
                vcpus,
                shadow_fields,
            )
    except CostModelError as err:
        click.echo(f"nestvmx: {err}", err=True)
        sys.exit(126)
    out = Console(width=200) if not Console().is_terminal else Console()
    out.print(_table(rows, cpu, iterations, vcpus))
    if json_path:
        json_path.write_text(json.dumps([r.as_json() for r in rows], indent=2) + "\n")
    if plot_path:
        plot_breakdown(rows, plot_path, f"cpu {cpu}, costs {rows[0].cost_model}, footprint {footprint}")


def _print_reproduction(name: str, iterations: int) -> None:
    comparisons = EXPERIMENTS[name](iterations)
    table = Table(title=f"reproduction of {name}: model vs. paper", title_justify="left", header_style="bold")
    for column, justify in (
        ("quantity", "left"),
        ("model", "right"),
        ("paper", "right"),
        ("error", "right"),
        ("kind", "left"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)
    for c in comparisons:
        table.add_row(c.quantity, f"{c.model:,.1f}", f"{c.paper:,g}", f"{c.error:+.1%}", c.kind, c.source)
    Console(width=200).print(table)


def _table(rows: list[BenchRow], cpu: str, iterations: int, vcpus: int) -> Table:
    cost_model = rows[0].cost_model if rows else "-"
    footprint = next((r.footprint for r in rows if r.footprint != "-"), "-")
    size = f"{iterations} iterations" + (f" on each of {vcpus} vCPUs" if vcpus > 1 else "")
    table = Table(
        title=f"nestvmx bench — cpu {cpu}, cost model {cost_model}, L1 footprint {footprint}, {size}",
        title_justify="left",
        header_style="bold",
    )
    for name, justify in (
        ("workload", "left"),
        ("config", "left"),
        ("L2 exits", "right"),
        ("L0 exits", "right"),
        ("L0 exits / L2 exit", "right"),
        ("cycles / L2 exit", "right"),
        ("overhead vs single", "right"),
        ("nested overhead removed", "right"),
    ):
        table.add_column(name, justify=justify)
    # A workload that does not exit single-level (pagetouch) has no meaningful overhead ratio.
    single = {r.workload: r.cycles_per_l2_exit for r in rows if r.config == "single" and r.l0_exits_per_l2_exit}
    for r in rows:
        overhead = f"{r.cycles_per_l2_exit / single[r.workload]:.1f}x" if single.get(r.workload) else "-"
        share = shadow_share(rows, r.workload) if r.config == "nested-shadow" else None
        table.add_row(
            r.workload,
            r.config,
            str(r.l2_exits),
            str(r.stats["l0_exits"]["total"]),
            f"{r.l0_exits_per_l2_exit:.2f}",
            f"{r.cycles_per_l2_exit:,.0f}",
            overhead,
            f"{share:.0%}" if share is not None else "",
        )
    return table
