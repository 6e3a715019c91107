"""The ``batchpipe`` command line (:mod:`batchpipe.cli.main`); ``main`` is the console script's entry point."""

from batchpipe.cli.main import main

__all__ = ["main"]
