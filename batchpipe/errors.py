"""The one error tree of batchpipe.

::

    BatchpipeError
    ├── InputError                 bad user input: names file, line and field
    │   ├── ManifestError          a manifest row (CSV / JSONL)
    │   └── JobSpecError           a job spec (TOML)
    ├── ApiError                   talking to the OpenAI-compatible API
    │   ├── ApiConnectionError     no response (connect, read, protocol, cut stream)
    │   │   └── ApiTimeoutError
    │   ├── DownloadError          an output/error file that could not be read as its JSONL after retries
    │   └── ApiStatusError         a response with status >= 400 (status_code, request_id, body)
    │       ├── BadRequestError        400
    │       ├── AuthenticationError    401
    │       ├── PermissionDeniedError  403
    │       ├── NotFoundError          404
    │       ├── ConflictError          409
    │       ├── RateLimitError         429
    │       └── ServerError            >= 500
    ├── LedgerError                the results ledger
    │   └── TransitionError        a status change not allowed from the current status
    ├── IndeterminateSubmissionError   a submission intent whose remote outcome cannot be decided
    └── ProvenanceError            C2PA checking could not run (bad trust settings)

Messages never contain API keys: ``ApiStatusError`` keeps the response body (the service never echoes the
key) and the request method and URL, never headers.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ApiStatusError",
    "ApiTimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchpipeError",
    "ConflictError",
    "DownloadError",
    "IndeterminateSubmissionError",
    "InputError",
    "JobSpecError",
    "LedgerError",
    "ManifestError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProvenanceError",
    "RateLimitError",
    "ServerError",
    "TransitionError",
]


class BatchpipeError(Exception):
    """Base of every error batchpipe raises on purpose."""


class InputError(BatchpipeError):
    """Bad user input, located: ``file`` (path as given), ``line`` (1-based, or None), ``field`` (or None);
    ``problems``: the located problems behind it, listed under the message (strings or objects with ``str()``)."""

    def __init__(
        self,
        message: str,
        *,
        file: str,
        line: int | None = None,
        field: str | None = None,
        problems: Sequence[object] = (),
    ) -> None:
        self.problems: Sequence[object] = problems
        self.file = file
        self.line = line
        self.field = field
        self.reason = message
        where = file if line is None else f"{file}:{line}"
        if field:
            where = f"{where}: field '{field}'"
        super().__init__(f"{where}: {message}")


class ManifestError(InputError):
    """A manifest (CSV or JSONL) line that cannot become an item."""


class JobSpecError(InputError):
    """A job spec (TOML) that is malformed or inconsistent."""


class ApiError(BatchpipeError):
    """Base of errors talking to the API. ``method`` and ``url`` name the request (no headers, no key)."""

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        self.method = method
        self.url = url
        super().__init__(message)


class ApiConnectionError(ApiError):
    """No (complete) response: connection refused or reset, protocol error, stream cut partway."""


class ApiTimeoutError(ApiConnectionError):
    """The request timed out."""


class DownloadError(ApiError):
    """An output or error file whose download could not be verified as the JSONL it must be, after bounded
    retries: an error page served with 200, a body shorter than the file's ``bytes``, a line that is not JSON
    or names no ``custom_id``, a connection cut again and again. Nothing past ``offset`` was committed, no row
    was judged on it and the file is left on the service; running the same command again resumes there.

    ``batch_id``, ``file_id``, ``kind`` (``"output"`` | ``"error"``), ``offset`` (bytes of the file committed),
    ``reason`` (what was wrong, for people), ``attempts`` (downloads tried).
    """

    def __init__(self, *, batch_id: str, file_id: str, kind: str, offset: int, reason: str, attempts: int) -> None:
        self.batch_id = batch_id
        self.file_id = file_id
        self.kind = kind
        self.offset = offset
        self.reason = reason
        self.attempts = attempts
        super().__init__(
            f"batch {batch_id}: the {kind} file {file_id} could not be read as JSONL after {attempts} "
            f"download attempt(s): {reason}. Nothing was marked missing, resubmitted or deleted; "
            f"`batchpipe run` again resumes the download at byte {offset}",
            method="GET",
            url=f"/files/{file_id}/content",
        )


class ApiStatusError(ApiError):
    """A response with an error status.

    ``status_code`` (int), ``request_id`` (the ``x-request-id`` header or None), ``body`` (parsed JSON or
    text), ``code`` / ``type`` / ``param`` from the ``ErrorResponse`` body (SPEC ``Error``) when present,
    ``retry_after_s`` from the response headers when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str = "",
        url: str = "",
        request_id: str | None = None,
        body: object = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        self.body = body
        self.retry_after_s = retry_after_s
        error = body.get("error") if isinstance(body, dict) else None
        self.code: str | None = error.get("code") if isinstance(error, dict) else None
        self.type: str | None = error.get("type") if isinstance(error, dict) else None
        self.param: str | None = error.get("param") if isinstance(error, dict) else None
        super().__init__(message, method=method, url=url)


class BadRequestError(ApiStatusError):
    """HTTP 400."""


class AuthenticationError(ApiStatusError):
    """HTTP 401."""


class PermissionDeniedError(ApiStatusError):
    """HTTP 403."""


class NotFoundError(ApiStatusError):
    """HTTP 404."""


class ConflictError(ApiStatusError):
    """HTTP 409."""


class RateLimitError(ApiStatusError):
    """HTTP 429 (rate limit or quota; ``code == "insufficient_quota"`` must not be retried)."""


class ServerError(ApiStatusError):
    """HTTP 5xx."""


class LedgerError(BatchpipeError):
    """The results ledger refused or failed an operation."""


class TransitionError(LedgerError):
    """A status change that is not allowed from the row's current status (a guarded update hit zero rows)."""


class IndeterminateSubmissionError(BatchpipeError):
    """A submission intent whose remote outcome (was the file uploaded, the batch created?) cannot be decided.

    ``shard`` names the shard; ``resolve_command`` is the command that resolves it. The run stops rather than
    guess by submitting again.
    """

    def __init__(self, message: str, *, shard: str, resolve_command: str) -> None:
        self.shard = shard
        self.resolve_command = resolve_command
        super().__init__(f"{message} (shard {shard}); resolve with: {resolve_command}")


class ProvenanceError(BatchpipeError):
    """C2PA checking cannot run: unreadable trust list, unknown trust setting."""


class ApiProtocolError(ApiError):
    """The service answered, but not with what the API promises (no ``id`` on a Batch, a list page without
    ``data``, a file that is not the JSONL it must be): the run stops (exit 3) and a later run resumes it."""
