"""`nestvmx bench --reproduce turtles|neve`: the published experiments as closely as the model
allows, model beside paper.  Which numbers the costs were calibrated on and which are validation
is said per row (docs/evaluation.md has the discussion)."""

from __future__ import annotations

from dataclasses import dataclass

from nestvmx.measure.bench import run_bench


@dataclass(frozen=True)
class Comparison:
    quantity: str
    model: float
    paper: float
    source: str
    kind: str  # "calibration" (a cost was fitted to it) or "validation"

    @property
    def error(self) -> float:
        return (self.model - self.paper) / self.paper


def _row(rows, config):
    return next(r for r in rows if r.config == config)


def reproduce_turtles(iterations: int = 100) -> list[Comparison]:
    """Turtles (OSDI 2010) §4.3 / Fig. 10: nested CPUID with KVM (kvm-87) as L1, no VMCS shadowing;
    its "DRW" variant makes every VMREAD/VMWRITE exit-less, which here is VMCS shadowing with
    KVM's field list (TPR_THRESHOLD and HOST_CR0 writes still exit)."""
    rows = run_bench(["cpuid"], iterations, "haswell", "turtles2010", "kvm2010")
    single, nested, shadow = _row(rows, "single"), _row(rows, "nested"), _row(rows, "nested-shadow")
    return [
        Comparison("L0 exits per nested CPUID", nested.l0_exits_per_l2_exit, 13, "Turtles §4.3", "validation"),
        Comparison(
            "L0 exits per nested CPUID, exit-less VMREAD/VMWRITE",
            shadow.l0_exits_per_l2_exit,
            2,
            "Turtles §4.1 (DRW)",
            "validation",
        ),
        Comparison(
            "single-level CPUID, cycles", single.cycles_per_l2_exit, 2502, "Turtles Fig. 10 col 1", "calibration"
        ),
        Comparison("nested CPUID, cycles", nested.cycles_per_l2_exit, 58501, "Turtles Fig. 10 col 2", "calibration"),
        Comparison(
            "nested CPUID, exit-less VMREAD/VMWRITE, cycles",
            shadow.cycles_per_l2_exit,
            28200,
            "Turtles Fig. 10 col 3 (DRW)",
            "validation",
        ),
        *_kernbench(iterations),
    ]


def _kernbench(iterations: int) -> list[Comparison]:
    """The `mix` macro workload stands in for kernbench (its guest work is calibrated so that L0 takes
    ~2.28 % of the single-level cycles, as Turtles reports for kernbench)."""
    rows = run_bench(["mix"], iterations, "haswell", "turtles2010", "kvm2010")
    single, nested, shadow = _row(rows, "single"), _row(rows, "nested"), _row(rows, "nested-shadow")
    l0_share = (single.cycles_per_l2_exit - _row(rows, "native").cycles_per_l2_exit) / single.cycles_per_l2_exit
    return [
        Comparison(
            "kernbench-like: L0 share of single-level cycles, %", 100 * l0_share, 2.28, "Turtles §4.2", "calibration"
        ),
        Comparison(
            "kernbench-like: nested overhead vs. single-level, %",
            100 * (nested.cycles_per_l2_exit / single.cycles_per_l2_exit - 1),
            14.5,
            "Turtles Table 2",
            "validation",
        ),
        Comparison(
            "kernbench-like: same with exit-less VMREAD/VMWRITE, %",
            100 * (shadow.cycles_per_l2_exit / single.cycles_per_l2_exit - 1),
            10.3,
            "Turtles Table 2",
            "validation",
        ),
    ]


def reproduce_neve(iterations: int = 100) -> list[Comparison]:
    """NEVE (SOSP 2017) Tables 1, 6, 7: hypercall in a VM and in a nested VM, Linux 4.10 KVM on
    Linux 4.10 KVM on Haswell-EP with VMCS shadowing: the kvm2017 footprint in L1, L0 with 4.10's
    shadow field lists."""
    rows = run_bench(["vmcall"], iterations, "haswell", "haswell", "kvm2017", shadow_fields="linux-4.10")
    single, shadow = _row(rows, "single"), _row(rows, "nested-shadow")
    return [
        Comparison("hypercall in a VM, cycles", single.cycles_per_l2_exit, 1188, "NEVE Table 1", "calibration"),
        Comparison("hypercall in a nested VM, cycles", shadow.cycles_per_l2_exit, 36345, "NEVE Table 6", "validation"),
        Comparison("L0 traps per nested hypercall", shadow.l0_exits_per_l2_exit, 5, "NEVE Table 7", "validation"),
    ]


EXPERIMENTS = {"turtles": reproduce_turtles, "neve": reproduce_neve}
