"""The cost model: data files with a source for every number, and cycles from counted events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nestvmx.api import Host
from nestvmx.cli.main import main
from nestvmx.guests.build import build_minivisor
from nestvmx.measure.cost_model import COSTS_DIR, CostModel, CostModelError


@pytest.mark.parametrize("name", ["turtles2010", "haswell"])
def test_builtin_models_load_and_every_number_has_a_provenance(name: str) -> None:
    model = CostModel.load(name)
    assert model.name == name and model.hardware["vmexit"] > 0 and model.l0_software["simple_exit"] > 0
    text = (COSTS_DIR / f"{name}.toml").read_text()
    for line in text.splitlines():
        if "= {" in line:
            assert any(p in line for p in ("source =", "estimate =", "calibrated =")), line


def test_a_number_without_source_is_rejected(tmp_path: Path) -> None:
    text = (
        (COSTS_DIR / "haswell.toml")
        .read_text()
        .replace('vmexit = { cycles = 240, source = "vmlatency', 'vmexit = { cycles = 240, note = "vmlatency')
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(CostModelError, match="vmexit has no source"):
        CostModel.load(bad)


@pytest.mark.parametrize("text, message", [("name = 1", "needs a `name`"), ("[[", "not valid TOML")])
def test_malformed_cost_files(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(CostModelError, match=message):
        CostModel.load(bad)


def test_unknown_model_name() -> None:
    with pytest.raises(CostModelError, match="unknown cost model 'nope'.*haswell"):
        CostModel.load("nope")


def test_cycles_are_the_sum_of_the_breakdown_and_follow_the_events() -> None:
    vm = Host("haswell", shadow_vmcs=False, costs="turtles2010").create_vm()
    vm.load(build_minivisor("cpuid", 20))
    stats = vm.run().stats
    model = CostModel.load("turtles2010")
    parts = model.breakdown(stats)
    assert stats["cost_model"] == "turtles2010" and stats["modeled_cycles"] == round(sum(parts.values()))
    assert parts["hardware"] == stats["events"]["vmexit"] * 500 + stats["events"]["vmentry"] * 500
    counts = model.handler_counts(stats)
    assert counts["emulated_vmread"] == stats["l0_exits"]["by_reason"]["VMREAD"]
    assert counts["nested_vmexit"] == stats["nested"]["vmexits"] == 21
    assert sum(v for k, v in counts.items() if k != "shadow_sync_field") == stats["l0_exits"]["total"]


def test_bench_prints_the_table_and_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(main, ["bench", "--workload", "cpuid", "--iterations", "20", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "nested-shadow" in result.output and "L0 exits / L2 exit" in result.output
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == ["native", "single", "nested", "nested-shadow"]
    for r in rows:
        assert set(r) == {"workload", "config", "footprint", "cost_model", "stats"}
        assert {"outcome", "l0_exits", "nested", "shadow", "modeled_cycles", "cost_model"} <= set(r["stats"])
    nested, shadowed = rows[2]["stats"], rows[3]["stats"]
    assert shadowed["l0_exits"]["total"] < nested["l0_exits"]["total"] and shadowed["shadow"]["enabled"]


def test_bench_rejects_a_bad_cost_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    result = CliRunner().invoke(main, ["bench", "--workload", "cpuid", "--iterations", "5", "--costs", str(bad)])
    assert result.exit_code == 126


def test_turtles_reproduction_rows() -> None:
    from nestvmx.measure.reproduce import reproduce_turtles

    rows = {c.quantity: c for c in reproduce_turtles(iterations=20)}
    assert round(rows["L0 exits per nested CPUID"].model) == 13
    assert round(rows["L0 exits per nested CPUID, exit-less VMREAD/VMWRITE"].model) == 4
    assert abs(rows["nested CPUID, cycles"].error) < 0.05  # calibrated on this figure
    assert {c.kind for c in rows.values()} == {"calibration", "validation"}


def test_bench_plot_and_reproduce_cli(tmp_path: Path) -> None:
    png = tmp_path / "b.png"
    result = CliRunner().invoke(main, ["bench", "--workload", "vmcall", "--iterations", "10", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    result = CliRunner().invoke(main, ["bench", "--reproduce", "neve", "--iterations", "10"])
    assert result.exit_code == 0 and "NEVE Table 7" in result.output and "validation" in result.output


def test_bench_with_linux_4_10_shadow_fields() -> None:
    """`--footprint kvm2017 --shadow-fields linux-4.10`: NEVE's software, 4 L0 exits per nested hypercall
    with shadowing (13 without)."""
    args = ["--workload", "vmcall", "--iterations", "20", "--footprint", "kvm2017", "--shadow-fields", "linux-4.10"]
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 0, result.output
    rows = [line.split("│") for line in result.output.splitlines() if line.startswith("│ vmcall")]
    per_l2_exit = {row[2].strip(): row[5].strip() for row in rows}
    assert per_l2_exit == {"native": "0.00", "single": "1.00", "nested": "13.00", "nested-shadow": "4.00"}
