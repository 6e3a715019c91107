"""The one place where errors become exit codes and messages, for every command.

Exit codes: ``0`` every item succeeded (or nothing was wrong); ``1`` the run finished but some items did not
succeed, or ``validate`` found item problems; ``2`` bad input or usage, nothing was submitted; ``3`` the run
stopped before finishing (API unusable, an undecidable submission): the same command again resumes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final, NoReturn

from batchpipe.errors import ApiError, BatchpipeError, IndeterminateSubmissionError, InputError

__all__ = ["EXIT_INCOMPLETE", "EXIT_INPUT", "EXIT_OK", "EXIT_STOPPED", "exit_code", "guarded", "messages"]

EXIT_OK: Final = 0
EXIT_INCOMPLETE: Final = 1
EXIT_INPUT: Final = 2
EXIT_STOPPED: Final = 3
#: At most this many of an error's located problems are listed.
MAX_LISTED_PROBLEMS: Final = 50


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc``: 2 for bad input (``InputError``, ``ValueError`` from an option's value), 3 for
    everything that stops a run (``ApiError``, ``IndeterminateSubmissionError``, other ``BatchpipeError``)."""
    if isinstance(exc, InputError | ValueError):
        return EXIT_INPUT
    return EXIT_STOPPED


def messages(exc: BaseException) -> list[str]:
    """The lines to print for ``exc`` (its located problems listed, at most :data:`MAX_LISTED_PROBLEMS`)."""
    if isinstance(exc, IndeterminateSubmissionError):
        return [f"stopped: {exc}"]
    if isinstance(exc, ApiError):
        return [f"stopped: the API is not usable right now: {exc}. Run the same command again to resume."]
    text = str(exc)
    lines = [f"error: {text}"]
    # a problem whose message the error already says (a lifecycle refusal) is not listed twice
    problems = [p for p in getattr(exc, "problems", []) if not getattr(p, "message", None) or p.message not in text]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return lines


def guarded(action: Callable[[], int], *, echo: Callable[[str], None]) -> NoReturn:
    """Run ``action()`` (it returns an exit code) and exit with it; a batchpipe error or a bad option value is
    printed through ``echo`` and exits with :func:`exit_code`. Anything else is a bug and propagates."""
    try:
        code = action()
    except (BatchpipeError, ValueError) as exc:
        for line in messages(exc):
            echo(line)
        sys.exit(exit_code(exc))
    sys.exit(code)
