"""The `nestvmx` command."""

from __future__ import annotations

import click

from nestvmx import __version__
from nestvmx.cli.fields import fields


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nestvmx")
def main() -> None:
    """nestvmx: an executable model of Intel VMX nested virtualization with VMCS shadowing.

    \b
    Exit status: 0 success, 1 the thing asked for does not exist, 2 bad usage.
    """


main.add_command(fields)
