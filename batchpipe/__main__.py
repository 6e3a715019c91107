"""``python -m batchpipe``: the same as the ``batchpipe`` command."""

from batchpipe.cli.main import main

main()
