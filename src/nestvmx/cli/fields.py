"""`nestvmx fields`: look up VMCS field encodings."""

from __future__ import annotations

import difflib
import json
import string

import click
from rich.console import Console
from rich.table import Table

from nestvmx.arch.fields import VMCS_FIELDS, Access, FieldWidth, VmcsField, decode_encoding, lookup
from nestvmx.hw.cpu_models import CPU_MODELS, get_cpu_model

_TYPES = ("control", "read-only", "guest", "host")
_WIDTHS = ("16", "32", "64", "natural")


def field_json(field: VmcsField) -> dict[str, object]:
    return {"name": field.name, "encoding": field.encoding, "width": field.width.label, "type": field.type.label}


def _parse_encoding(text: str) -> int | None:
    """'0x4402', '4402h' or a bare hex number (encodings are always written in hex)."""
    t = text.lower().removeprefix("0x").removesuffix("h")
    if t and all(c in string.hexdigits for c in t) and len(t) <= 16:
        return int(t, 16)
    return None


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def _table(rows: list[VmcsField], title: str, model_name: str | None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("encoding", style="cyan", no_wrap=True)
    table.add_column("HIGH", style="cyan", no_wrap=True)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("width", justify="right")
    table.add_column("type")
    table.add_column("index", justify="right")
    table.add_column("exists when the processor allows", style="dim")
    for f in rows:
        high = f"{f.encoding | 1:#06x}" if f.width is FieldWidth.W64 else ""
        table.add_row(
            f"{f.encoding:#06x}",
            high,
            f.name,
            str(f.width.label),
            f.type.label,
            str(f.index),
            f.requires.replace("_", " ") if f.requires else "always",
        )
    if model_name:
        table.caption = f"fields of the {model_name} model"
    return table


def _describe_encoding(encoding: int) -> str:
    d = decode_encoding(encoding)
    parts = [f"access={d.access.name.lower()}", f"index={d.index}", f"type={d.type.label}", f"width={d.width.label}"]
    if d.reserved_bits:
        parts.append(f"reserved bits set: {d.reserved_bits:#x}")
    if d.access is Access.HIGH and d.width is not FieldWidth.W64:
        parts.append("HIGH access of a field that is not 64-bit")
    return ", ".join(parts)


@click.command()
@click.argument("query", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, encoding, width, type}.")
@click.option("--type", "type_", type=click.Choice(_TYPES), help="Only fields of this type.")
@click.option("--width", type=click.Choice(_WIDTHS), help="Only fields of this width.")
@click.option("--cpu", type=click.Choice(sorted(CPU_MODELS)), help="Only fields this processor model has.")
def fields(query: str | None, as_json: bool, type_: str | None, width: str | None, cpu: str | None) -> None:
    """Look up VMCS field encodings, widths and types (the SDM's Appendix B).

    \b
    QUERY is a field name (GUEST_RIP; case does not matter), part of one
    (pdptr), or an encoding in hex (0x681e, 681e, 0x2801 for a HIGH access).
    With no QUERY, the whole catalogue is printed.

    \b
    Examples:
      nestvmx fields                      # the catalogue
      nestvmx fields exit_qualification   # one field
      nestvmx fields 0x4402               # what is this encoding?
      nestvmx fields --type read-only --json
    """
    rows = list(VMCS_FIELDS)
    if type_:
        rows = [f for f in rows if f.type.label == type_]
    if width:
        rows = [f for f in rows if str(f.width.label) == width]
    if cpu:
        rows = [f for f in rows if get_cpu_model(cpu).supports_field(f)]
    title = "VMCS fields"
    if query:
        rows, title = _select(rows, query)
    if as_json:
        click.echo(json.dumps([field_json(f) for f in rows], indent=2))
        return
    _console().print(_table(rows, title, cpu))


def _select(rows: list[VmcsField], query: str) -> tuple[list[VmcsField], str]:
    name = query.strip().upper()
    for f in rows:
        if f.name == name:
            return [f], f.name
        if f.width is FieldWidth.W64 and f.name + "_HIGH" == name:
            return [f], f"{name} = {f.encoding | 1:#06x} (HIGH access: bits 63:32)"
    encoding = _parse_encoding(query.strip())
    if encoding is not None and (found := lookup(encoding)) and found[0] in rows:
        field, access = found
        suffix = " (HIGH access: bits 63:32)" if access is Access.HIGH else ""
        return [field], f"{encoding:#06x} = {field.name}{suffix}"
    matches = [f for f in rows if name in f.name]
    if matches:
        return matches, f"VMCS fields matching {query!r}"
    if encoding is not None:
        raise click.ClickException(f"no VMCS field has encoding {encoding:#x} ({_describe_encoding(encoding)})")
    close = difflib.get_close_matches(name, [f.name for f in rows], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise click.ClickException(f"no VMCS field matches {query!r}{hint}")
