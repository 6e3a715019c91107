"""``python -m batchpipe``: the same as the ``batchpipe`` command."""

from batchpipe.cli import main

main()
