"""The one place where errors become exit codes and messages, for every command.

Exit codes: ``0`` every item succeeded (or nothing was wrong); ``1`` the run finished but some items did not
succeed; ``2`` bad input or usage (``validate`` found item problems too), nothing was submitted; ``3`` the run
stopped before finishing (API unusable, an undecidable submission, Ctrl-C): the same command again resumes it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Final, NoReturn

from batchpipe.domain.redact import redact
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
    """The lines to print for ``exc`` (its located problems listed, at most :data:`MAX_LISTED_PROBLEMS`); the
    error's text is redacted (:func:`batchpipe.domain.redact.redact`): a server may have echoed a key in it."""
    if isinstance(exc, IndeterminateSubmissionError):
        return [f"stopped: {redact(str(exc))}"]
    if isinstance(exc, ApiError):
        return [f"stopped: the API is not usable right now: {redact(str(exc))}. Run the same command again to resume."]
    text = redact(str(exc))
    lines = [f"error: {text}"]
    # a problem whose message the error already says (a lifecycle refusal) is not listed twice
    problems = [p for p in getattr(exc, "problems", []) if not getattr(p, "message", None) or p.message not in text]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return lines


def guarded(action: Callable[[], int], *, echo: Callable[[str], None], resume: str | None = None) -> NoReturn:
    """Run ``action()`` (it returns an exit code) and exit with it; a batchpipe error or a bad option value is
    printed through ``echo`` and exits with :func:`exit_code`. Ctrl-C (``KeyboardInterrupt``) exits
    :data:`EXIT_STOPPED` with ``resume``, the command that resumes (default: this command line again). Anything
    else is a bug and propagates."""
    try:
        code = action()
    except KeyboardInterrupt:
        command = resume or shlex.join(["batchpipe", *sys.argv[1:]])
        echo(f"stopped: interrupted (Ctrl-C). Nothing is lost; to resume, run: {command}")
        sys.exit(EXIT_STOPPED)
    except (BatchpipeError, ValueError) as exc:
        for line in messages(exc):
            echo(line)
        sys.exit(exit_code(exc))
    sys.exit(code)
