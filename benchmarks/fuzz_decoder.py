"""Coverage-guided fuzzing (atheris) of the VMX instruction decoder against iced-x86.

For any bytes: decode_vmx never raises, and it finds a VMX instruction exactly when iced-x86
decodes one (64-bit mode), with the same instruction and length. Prints executions and stops at
the first disagreement (atheris reports it with the input).

Usage: .venv/bin/pip install atheris==2.3.0
       .venv/bin/python benchmarks/fuzz_decoder.py -max_total_time=300 [other libFuzzer options]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import iced_x86

    from nestvmx.engine.vmx_decode import decode_vmx
    from nestvmx.hw.instruction import VmxOp

_VMX = {getattr(iced_x86.Mnemonic, op.name): op for op in VmxOp}
_INVALID = iced_x86.Code.INVALID


def check(data: bytes) -> None:
    ours = decode_vmx(data)
    theirs = iced_x86.Decoder(64, data).decode()
    expected = _VMX.get(theirs.mnemonic) if theirs.code != _INVALID else None
    if expected is None:
        assert ours is None, f"{data[:15].hex()}: decoded {ours}, iced-x86 sees {theirs}"
        return
    assert ours is not None, f"{data[:15].hex()}: not decoded, iced-x86 sees {theirs}"
    assert (ours.op, ours.length) == (expected, theirs.len), f"{data[:15].hex()}: {ours} vs {theirs}"


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
