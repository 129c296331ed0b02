"""Where the shared reference facts are (../shared/reference beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REFERENCE = Path(os.environ.get("NESTVMX_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


def reference_file(name: str) -> Path:
    """A file of the shared reference; under CI (CI set) it must exist, elsewhere its absence skips."""
    path = REFERENCE / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"reference file {path} is missing")
        pytest.skip(f"reference file {path} is not here")
    return path
