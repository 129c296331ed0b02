"""The `nestvmx` command."""

from __future__ import annotations

import click

from nestvmx import __version__
from nestvmx.cli.bench import bench
from nestvmx.cli.fields import fields
from nestvmx.cli.run import resume, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nestvmx")
def main() -> None:
    """nestvmx: an executable model of Intel VMX nested virtualization with VMCS shadowing.

    \b
    Commands exit with 0 on success and 2 on bad usage; `nestvmx run --help`
    lists the statuses of a run.
    """


main.add_command(bench)
main.add_command(fields)
main.add_command(resume)
main.add_command(run)
