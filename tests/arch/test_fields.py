"""The VMCS field catalogue against the shared reference table and the SDM encoding rules."""

from __future__ import annotations

import csv

import pytest

from nestvmx.arch import fields as arch_fields
from nestvmx.arch.controls import FIELD_CAPABILITY
from nestvmx.arch.fields import VMCS_FIELDS, Access, Field, FieldType, FieldWidth, decode_encoding, lookup
from tests.conftest import reference_file


def _reference_rows() -> dict[int, dict[str, str]]:
    with reference_file("vmcs-fields.csv").open() as fh:
        return {int(row["encoding"], 16): row for row in csv.DictReader(fh)}


def test_catalogue_matches_reference_table_field_by_field() -> None:
    """Every reference row is in the catalogue with the same name, width and type, and nothing else is."""
    reference = _reference_rows()
    ours = {f.encoding: f for f in VMCS_FIELDS}
    missing = sorted(set(reference) - set(ours))
    extra = sorted(set(ours) - set(reference))
    assert not missing, f"fields missing from the catalogue: {[hex(e) for e in missing]}"
    assert not extra, f"fields not in the reference: {[hex(e) for e in extra]}"
    differing = []
    for encoding, row in reference.items():
        f = ours[encoding]
        got = (f.name, str(f.width.label), f.type.label, "full")
        want = (row["name"], row["width"], row["type"], row["access"])
        if got != want:
            differing.append((hex(encoding), got, want))
    assert not differing


def test_catalogue_has_no_duplicates_and_only_full_encodings() -> None:
    assert len({f.encoding for f in VMCS_FIELDS}) == len(VMCS_FIELDS)
    assert len({f.name for f in VMCS_FIELDS}) == len(VMCS_FIELDS)
    assert all(decode_encoding(f.encoding).well_formed and f.encoding & 1 == 0 for f in VMCS_FIELDS)


def test_every_capability_named_by_a_field_is_defined() -> None:
    assert {f.requires for f in VMCS_FIELDS if f.requires} <= set(FIELD_CAPABILITY)


@pytest.mark.parametrize(
    "encoding, access, index, type_, width",
    [
        (0x681E, Access.FULL, 15, FieldType.GUEST, FieldWidth.NATURAL),  # GUEST_RIP
        (0x2801, Access.HIGH, 0, FieldType.GUEST, FieldWidth.W64),  # VMCS_LINK_POINTER_HIGH
        (0x4402, Access.FULL, 1, FieldType.READ_ONLY, FieldWidth.W32),  # VM_EXIT_REASON
        (0x0C0C, Access.FULL, 6, FieldType.HOST, FieldWidth.W16),  # HOST_TR_SELECTOR
        (0x2026, Access.FULL, 19, FieldType.CONTROL, FieldWidth.W64),  # VMREAD_BITMAP
    ],
)
def test_decode_encoding_splits_the_bit_fields(encoding, access, index, type_, width) -> None:
    """SDM Vol. 3C §25.11.2, Table 25-21: bit 0 access, 9:1 index, 11:10 type, 14:13 width."""
    d = decode_encoding(encoding)
    assert (d.access, d.index, d.type, d.width) == (access, index, type_, width)
    assert d.reserved_bits == 0 and d.well_formed


@pytest.mark.parametrize(
    "encoding, reserved",
    [
        (0x1000, 0x1000),
        (0x8000, 0x8000),
        (0xFFFF_0000_0000_681E, 0xFFFF_0000_0000_0000),
        (0x1_0000_681E, 0x1_0000_0000),
    ],
)
def test_decode_encoding_reports_reserved_bits(encoding: int, reserved: int) -> None:
    """Bits 12 and 63:15 of an encoding are reserved."""
    d = decode_encoding(encoding)
    assert d.reserved_bits == reserved and not d.well_formed


def test_high_access_of_a_32_bit_field_is_not_well_formed() -> None:
    assert not decode_encoding(0x4403).well_formed
    assert lookup(0x4403) is None


def test_lookup_full_and_high() -> None:
    link = arch_fields.FIELD_BY_NAME["VMCS_LINK_POINTER"]
    assert lookup(0x2800) == (link, Access.FULL)
    assert lookup(0x2801) == (link, Access.HIGH)
    assert lookup(0x6C16)[0].name == "HOST_RIP"
    assert lookup(0x6C17) is None  # natural-width fields have no HIGH access
    assert lookup(0x7FFE) is None


def test_field_namespace_names_every_encoding() -> None:
    assert Field.GUEST_RIP == 0x681E and Field.VMCS_LINK_POINTER == 0x2800
    assert all(getattr(Field, f.name) == f.encoding for f in VMCS_FIELDS)
    assert type(Field.GUEST_RIP) is int  # plain ints: no enum attribute lookup on the hot path


def test_counts_per_width_and_type_match_the_sdm_appendix() -> None:
    """Counts by (width, type) as tallied in the reference notes, section 1.1."""
    counts: dict[tuple[str, str], int] = {}
    for f in VMCS_FIELDS:
        key = (str(f.width.label), f.type.label)
        counts[key] = counts.get(key, 0) + 1
    assert counts == {
        ("16", "control"): 5,
        ("16", "guest"): 11,
        ("16", "host"): 7,
        ("64", "control"): 38,
        ("64", "read-only"): 2,
        ("64", "guest"): 21,
        ("64", "host"): 12,
        ("32", "control"): 19,
        ("32", "read-only"): 8,
        ("32", "guest"): 23,
        ("32", "host"): 1,
        ("natural", "control"): 8,
        ("natural", "read-only"): 6,
        ("natural", "guest"): 23,
        ("natural", "host"): 15,
    }
