"""`nestvmx bench`: each workload native, single-level, nested and nested with VMCS shadowing.

Per-exit figures come from two runs of each configuration, with N and with 2N iterations: their
difference is N iterations without the set-up (VMXON, building the VMCS and EPT) and without
the summary the L1 prints (the same number of digits for N and 2N in the usual sizes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nestvmx.api import DEFAULT_SHADOW_FIELDS, Host
from nestvmx.guests.build import build_minivisor, build_workload
from nestvmx.guests.footprints import DEFAULT_FOOTPRINT
from nestvmx.measure.cost_model import CostModel

CONFIGS = ("native", "single", "nested", "nested-shadow")
# Workload exits per iteration (the msr workload writes then reads an MSR).
EXITS_PER_ITERATION = {"cpuid": 1, "vmcall": 1, "io": 1, "msr": 2, "pagetouch": 1, "mix": 1}


@dataclass
class BenchRow:
    workload: str
    config: str
    footprint: str
    cost_model: str
    stats: dict
    l2_exits: int
    l0_exits_per_l2_exit: float
    cycles_per_l2_exit: float
    breakdown_per_l2_exit: dict[str, float]

    def as_json(self) -> dict:
        return {
            "workload": self.workload,
            "config": self.config,
            "footprint": self.footprint,
            "cost_model": self.cost_model,
            "stats": self.stats,
        }


def _run(
    workload: str,
    config: str,
    iterations: int,
    cpu: str,
    costs: str | None,
    footprint: str,
    vcpus: int,
    shadow_fields: str,
) -> dict:
    nested = config.startswith("nested")
    host = Host(cpu, shadow_vmcs=config == "nested-shadow", costs=costs, shadow_fields=shadow_fields)
    vm = host.create_vm(vcpus=vcpus)
    vm.load(
        build_minivisor(workload, iterations, footprint, vcpus)
        if nested
        else build_workload(workload, iterations, vcpus)
    )
    result = vm.run()
    if result.outcome != "exit" or result.status != 0:
        raise RuntimeError(f"{workload}/{config}: {result.outcome} {result.status} {result.message}")
    return result.stats


def _native(stats: dict, model: CostModel) -> dict:
    """The workload on the bare processor: its instructions and no exits (modeled, not run)."""
    native = {**stats, "l0_exits": {"total": 0, "from_l1": 0, "from_l2": 0, "by_reason": {}}, "events": {}}
    native["modeled_cycles"] = round((stats["instructions"]["l1"] + stats["instructions"]["l2"]) * model.cpi)
    return native


def run_bench(
    workloads: list[str],
    iterations: int,
    cpu: str,
    costs: str | None,
    footprint: str = DEFAULT_FOOTPRINT,
    progress: Callable[[str], None] = lambda _: None,
    vcpus: int = 1,
    shadow_fields: str = DEFAULT_SHADOW_FIELDS,
) -> list[BenchRow]:
    """The table's rows; with `vcpus` > 1 every vCPU runs the workload (one L2 each, nested);
    `shadow_fields` names L0's shadow field lists (Host)."""
    model = CostModel.load(costs) if costs else Host(cpu).cost_model
    rows = []
    configs = [c for c in CONFIGS if c != "nested-shadow" or Host(cpu).shadow_vmcs]
    for workload in workloads:
        exits = EXITS_PER_ITERATION[workload] * iterations * vcpus
        for config in configs:
            progress(f"{workload} / {config}")
            base, full = (
                _run(
                    workload, "single" if config == "native" else config, n, cpu, costs, footprint, vcpus, shadow_fields
                )
                for n in (iterations, 2 * iterations)
            )
            if config == "native":
                base, full = _native(base, model), _native(full, model)
            parts = {k: (v - model.breakdown(base)[k]) / exits for k, v in model.breakdown(full).items()}
            if config == "native":
                parts = {k: (v if k in ("l1", "l2") else 0.0) for k, v in parts.items()}
            if not config.startswith("nested"):  # the workload runs as the L1 program: it is the "L2" work
                parts["l2"], parts["l1"] = parts["l2"] + parts["l1"], 0.0
            rows.append(
                BenchRow(
                    workload,
                    config,
                    footprint if config.startswith("nested") else "-",
                    model.name,
                    full,
                    exits,
                    (full["l0_exits"]["total"] - base["l0_exits"]["total"]) / exits,
                    (full["modeled_cycles"] - base["modeled_cycles"]) / exits,
                    parts,
                )
            )
    return rows


def shadow_share(rows: list[BenchRow], workload: str) -> float | None:
    """The share of nested overhead (cycles over single-level) that VMCS shadowing removes."""
    by = {r.config: r.cycles_per_l2_exit for r in rows if r.workload == workload}
    if "nested-shadow" not in by or by["nested"] == by["single"]:
        return None
    return (by["nested"] - by["nested-shadow"]) / (by["nested"] - by["single"])
