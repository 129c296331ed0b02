"""The conformance programs on Bochs' own VMX (a second implementation): they must pass there
too, so that they test the architecture and not nestvmx.  Skipped where Bochs is not installed
(apt-get install bochs bochsbios vgabios bochs-sdl)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nestvmx.guests.build import build_guest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT.parent / "shared" / "bochs" / "run-bochs.sh"
CONFORMANCE = ROOT / "tests" / "guests" / "conformance"

pytestmark = pytest.mark.skipif(shutil.which("bochs") is None or not RUNNER.exists(), reason="Bochs not installed")


@pytest.mark.parametrize("model", ["corei7_haswell_4770", "corei7_sandy_bridge_2600k"])
@pytest.mark.parametrize("program", sorted(p.name for p in CONFORMANCE.glob("*.c")))
def test_conformance_on_bochs(program: str, model: str, tmp_path: Path) -> None:
    flat = tmp_path / "payload.bin"
    subprocess.run(["objcopy", "-O", "binary", str(build_guest([CONFORMANCE / program])), str(flat)], check=True)
    proc = subprocess.run(["bash", str(RUNNER), "-t", "120", "-m", model, str(flat)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok 1 - " in proc.stdout and "not ok" not in proc.stdout
