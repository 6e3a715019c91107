"""The one problem type: why a request body, a manifest row or a job spec setting cannot be used (or a warning).

A check of a request body (:func:`batchpipe.domain.spec.check_image_request`) makes problems that name the body
``field`` and the API error ``code`` the service would answer with (FACTS §5); validation then locates them
(:meth:`Problem.at`: the manifest ``file``, 1-based ``line`` and item ``key``). An
:class:`~batchpipe.errors.InputError` carries the located problems behind it, and the CLI lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from batchpipe.errors import InputError

__all__ = ["Problem"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (``severity="error"``) or worth a warning.

    ``message``: a sentence. ``field``: the request body param (``"size"``, ``"images[2].image_url"``), the manifest
    column or the job spec setting; ``code``: the API error code the service would answer with (``invalid_value``,
    ``unsupported_value``, ``model_shut_down``...) when the problem is with a request; ``file`` / ``line``: where
    (the path as given, a 1-based physical line); ``key``: the item key when known. ``str()`` reads
    ``file:line: field 'size': message`` (the parts that are known).
    """

    message: str
    field: str | None = None
    code: str | None = None
    file: str | None = None
    line: int | None = None
    key: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = "" if self.file is None else self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            where = f"{where}: field '{self.field}'" if where else f"field '{self.field}'"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}" if where else f"{prefix}{self.message}"

    def at(self, *, file: str, line: int | None = None, key: str | None = None, message: str | None = None) -> Problem:
        """This problem located in ``file`` at ``line`` for item ``key`` (and ``message`` if given)."""
        return replace(self, file=file, line=line, key=key, message=self.message if message is None else message)

    @classmethod
    def from_error(cls, error: InputError, *, key: str | None = None) -> Problem:
        """The problem an :class:`~batchpipe.errors.InputError` (e.g. a yielded ``ManifestError``) describes."""
        return cls(error.reason, field=error.field, file=error.file, line=error.line, key=key)
