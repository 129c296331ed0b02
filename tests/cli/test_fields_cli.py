"""`nestvmx fields` on the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nestvmx.arch.fields import VMCS_FIELDS
from nestvmx.cli.main import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_json_lists_the_whole_catalogue() -> None:
    result = run("fields", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == len(VMCS_FIELDS)
    assert {"name": "GUEST_RIP", "encoding": 0x681E, "width": "natural", "type": "guest"} in rows
    assert {"name": "VM_EXIT_REASON", "encoding": 0x4402, "width": 32, "type": "read-only"} in rows
    assert all(set(r) == {"name", "encoding", "width", "type"} for r in rows)
    assert {r["width"] for r in rows} == {16, 32, 64, "natural"}
    assert {r["type"] for r in rows} == {"control", "read-only", "guest", "host"}


@pytest.mark.parametrize("query", ["GUEST_RIP", "guest_rip", "0x681e", "681e", "681Eh"])
def test_one_field_by_name_or_encoding(query: str) -> None:
    rows = json.loads(run("fields", query, "--json").output)
    assert rows == [{"name": "GUEST_RIP", "encoding": 0x681E, "width": "natural", "type": "guest"}]


def test_high_encoding_names_the_64_bit_field() -> None:
    result = run("fields", "0x2801")
    assert result.exit_code == 0
    assert "VMCS_LINK_POINTER" in result.output and "HIGH" in result.output
    assert "0x2801" in run("fields", "vmcs_link_pointer_high").output


def test_substring_lists_matches() -> None:
    rows = json.loads(run("fields", "pdptr", "--json").output)
    assert [r["name"] for r in rows] == [f"GUEST_PDPTR{i}" for i in range(4)]


def test_table_output_has_the_columns() -> None:
    result = run("fields")
    assert result.exit_code == 0
    for text in ("encoding", "HIGH", "GUEST_RIP", "0x681e", "natural", "read-only"):
        assert text in result.output


def test_filters_and_cpu_model() -> None:
    host16 = json.loads(run("fields", "--type", "host", "--width", "16", "--json").output)
    assert len(host16) == 7 and all(r["name"].startswith("HOST_") for r in host16)
    snb = {r["name"] for r in json.loads(run("fields", "--cpu", "sandybridge", "--json").output)}
    hsw = {r["name"] for r in json.loads(run("fields", "--cpu", "haswell", "--json").output)}
    assert "VMREAD_BITMAP" in hsw and "VMREAD_BITMAP" not in snb


def test_unknown_name_is_a_one_line_error_with_a_suggestion() -> None:
    result = run("fields", "guest_rp")
    assert result.exit_code == 1
    assert "did you mean" in result.output and "GUEST_RIP" in result.output
    assert "Traceback" not in result.output


def test_unknown_encoding_is_decoded_in_the_error() -> None:
    result = run("fields", "0x4401")
    assert result.exit_code == 1
    assert "0x4401" in result.output and "HIGH access" in result.output


def test_bad_option_is_a_usage_error() -> None:
    assert run("fields", "--type", "bogus").exit_code == 2
