"""The ``batchpipe`` command line. Subcommands are defined next to the stage they drive and attached here."""

from __future__ import annotations

import click

from batchpipe import __version__


@click.group()
@click.version_option(__version__, prog_name="batchpipe")
def main() -> None:
    """Turn product catalogs into OpenAI Batch API image jobs, and account for every image."""
