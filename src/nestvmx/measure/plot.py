"""The bench plot: modeled cycles per L2 exit, by component, for each configuration of each workload."""

from __future__ import annotations

from pathlib import Path

from nestvmx.measure.bench import BenchRow

COMPONENTS = (
    ("l2", "L2 guest"),
    ("l1", "L1 guest code"),
    ("l1_handler", "L1 exit handler"),
    ("hardware", "VM exits/entries"),
    ("l0", "L0 exit handling"),
    ("shadow_sync", "shadow VMCS syncs"),
)


def plot_breakdown(rows: list[BenchRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    workloads = sorted({r.workload for r in rows})
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.2 * len(workloads), 4.2), squeeze=False, sharey=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        mine = [r for r in rows if r.workload == workload]
        bottom = [0.0] * len(mine)
        for key, label in COMPONENTS:
            values = [max(0.0, r.breakdown_per_l2_exit.get(key, 0.0)) for r in mine]
            ax.bar([r.config for r in mine], values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(workload)
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylabel("modeled cycles per L2 exit")
    axes[0][0].legend(fontsize="small", loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
