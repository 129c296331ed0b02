"""vmcs12: the software-defined VMCS format L0 offers L1 (KVM's arch/x86/kvm/vmx/vmcs12.[ch]).

A vmcs12 region in L1 memory is: revision id (VMCS12_REVISION) at 0, VMX-abort indicator at 4,
launch state at 8, then every field at a fixed offset, in natural size, in the order of the
architecture's field catalogue.  The layout does not depend on the host processor, so L1 (and
a saved vmcs12) stays valid on any host.  L0 keeps the current vmcs12 cached (KVM's
cached_vmcs12) and writes it back only when the architecture lets L1 see it change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nestvmx.arch.fields import VMCS_FIELDS, VMWRITE_MASKS, Access, VmcsField

VMCS12_REVISION = 0x11E57ED0  # KVM's VMCS12_REVISION
VMCS12_SIZE = 0x1000
REVISION_OFFSET, ABORT_OFFSET, LAUNCH_STATE_OFFSET = 0, 4, 8
FIELDS_OFFSET = 0x10


def _layout() -> dict[int, tuple[int, int]]:
    offsets, pos = {}, FIELDS_OFFSET
    for f in VMCS_FIELDS:
        size = f.width.bytes
        pos = (pos + size - 1) // size * size
        offsets[f.encoding] = (pos, size)
        pos += size
    assert pos <= VMCS12_SIZE
    return offsets


# FULL encoding -> (offset, size): the one table of the vmcs12 format (docs/vmcs12.md).
VMCS12_OFFSETS: dict[int, tuple[int, int]] = _layout()


@dataclass
class Vmcs12:
    """The cached copy of one vmcs12 (field values by FULL encoding)."""

    address: int
    launched: bool = False
    abort: int = 0
    fields: dict[int, int] = field(default_factory=dict)

    def read(self, f: VmcsField, access: Access) -> int:
        """vmcs12_read_any: the value VMREAD returns for a 64-bit operand."""
        value = self.fields.get(f.encoding, 0)
        return value >> 32 if access is Access.HIGH else value

    def write(self, f: VmcsField, access: Access, value: int) -> None:
        """vmcs12_write_any: the write path of emulated VMWRITE (see write_full for the shadow copy)."""
        if access is Access.HIGH:
            self.fields[f.encoding] = (self.fields.get(f.encoding, 0) & 0xFFFF_FFFF) | (value & 0xFFFF_FFFF) << 32
        else:
            self.write_full(((f.encoding, value),))

    def write_full(self, writes: Iterable[tuple[int, int]]) -> None:
        """vmcs12_write_any of FULL accesses, (encoding, value) in turn."""
        fields = self.fields
        for encoding, value in writes:
            fields[encoding] = value & VMWRITE_MASKS[encoding]

    def __getitem__(self, encoding: int) -> int:
        return self.fields.get(encoding, 0)

    def __setitem__(self, encoding: int, value: int) -> None:
        self.fields[encoding] = value

    def to_bytes(self) -> bytes:
        blob = bytearray(VMCS12_SIZE)
        blob[0:4] = VMCS12_REVISION.to_bytes(4, "little")
        blob[ABORT_OFFSET : ABORT_OFFSET + 4] = self.abort.to_bytes(4, "little")
        blob[LAUNCH_STATE_OFFSET : LAUNCH_STATE_OFFSET + 4] = int(self.launched).to_bytes(4, "little")
        for encoding, (offset, size) in VMCS12_OFFSETS.items():
            blob[offset : offset + size] = self.fields.get(encoding, 0).to_bytes(size, "little")
        return bytes(blob)

    @classmethod
    def from_bytes(cls, address: int, blob: bytes) -> Vmcs12:
        fields = {enc: int.from_bytes(blob[off : off + size], "little") for enc, (off, size) in VMCS12_OFFSETS.items()}
        launched = int.from_bytes(blob[LAUNCH_STATE_OFFSET : LAUNCH_STATE_OFFSET + 4], "little") == 1
        abort = int.from_bytes(blob[ABORT_OFFSET : ABORT_OFFSET + 4], "little")
        return cls(address, launched, abort, fields)
