"""docs/vmcs12.md documents the vmcs12 layout the code uses, field by field."""

from __future__ import annotations

import re
from pathlib import Path

from nestvmx.kvm.vmcs12 import VMCS12_OFFSETS

DOC = Path(__file__).resolve().parents[2] / "docs" / "vmcs12.md"


def test_documented_offsets_match_the_code() -> None:
    rows = re.findall(r"^\| (0x[0-9a-f]{4}) \| (\w+) \| (0x[0-9a-f]+) \| (\d) \|$", DOC.read_text(), re.M)
    documented = {int(enc, 16): (int(off, 16), int(size)) for enc, _, off, size in rows}
    assert documented == VMCS12_OFFSETS
