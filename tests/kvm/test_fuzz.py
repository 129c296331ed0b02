"""Short runs of the fuzzers in benchmarks/ (the long campaigns are run by hand, see the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300
    )


def test_short_nested_fuzz_campaign_finds_nothing() -> None:
    result = _run("fuzz_campaign.py", "--seconds", "6", "--seed", "11")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert int(lines[0].split()[0]) >= 1  # programs executed
    assert "python exception" not in result.stdout
    assert lines[-1] == "0 failures", result.stdout


def test_short_decoder_fuzz_run_agrees_with_iced() -> None:
    result = _run("fuzz_decoder.py", "-runs=50000", "-seed=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Done 50000 runs" in result.stderr
