"""Short runs of the fuzzers in benchmarks/ (the long campaigns are run by hand, see the README)."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300
    )


def test_short_nested_fuzz_campaign_finds_nothing() -> None:
    result = _run("fuzz_campaign.py", "--seconds", "4", "--seed", "11")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert int(lines[0].split()[0]) >= 2  # programs executed: a VMX program and random L2 code
    assert "python exception" not in result.stdout
    assert lines[-1] == "0 failures", result.stdout


def test_short_decoder_fuzz_run_agrees_with_iced() -> None:
    result = _run("fuzz_decoder.py", "-runs=50000", "-seed=1", "-rss_limit_mb=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Done 50000 runs" in result.stderr


def _campaign():
    spec = importlib.util.spec_from_file_location("fuzz_campaign", ROOT / "benchmarks" / "fuzz_campaign.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_random_l2_code_is_handled_alike_everywhere(rng) -> None:
    """Random L2 code (random bytes and exiting instructions, the campaign's generator driven by
    hypothesis): a documented outcome, the same console, status and L1 memory with shadowing on,
    off and on sandybridge, and after a migration; shadow VMCSs and EPT02 bounded."""
    campaign = _campaign()
    code = campaign.random_l2_code(rng)
    outcome, failures, _ = campaign.check(_random_l2_program(), len(code).to_bytes(8, "little") + code, rng)
    assert not failures, (code.hex(), outcome, failures)


@functools.cache
def _random_l2_program():
    from nestvmx.guests.build import build_guest

    return build_guest([ROOT / "tests" / "guests" / "random_l2.c"])


def test_short_vmcs12_fuzz_run_finds_nothing() -> None:
    # A child inherits pytest's peak RSS (ru_maxrss survives fork and exec), which libFuzzer would
    # take for its own: its RSS limit is left out here.
    result = _run("fuzz_vmcs12.py", "-runs=150", "-seed=1", "-rss_limit_mb=0")
    assert result.returncode == 0 and "Done 150 runs" in result.stderr, result.stderr[-3000:]
