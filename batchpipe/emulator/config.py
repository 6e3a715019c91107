"""Settings of the emulator: speed, limits and faults, as read-only (frozen) pydantic models.

Everything is off or generous by default: an ``EmulatorConfig()`` behaves like a fast, healthy service that
knows the shipped model table (``batchpipe/data/image-models.toml``) and runs on the real UTC clock.
Times are in seconds (``_s``) unless the name says ``_ms``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchpipe.domain.modeltable import ModelTable, shipped_table

__all__ = [
    "AMBIGUOUS_CREATE_MODES",
    "BAD_DOWNLOAD_KINDS",
    "ROUTES",
    "EmulatorConfig",
    "FaultConfig",
    "RouteFaults",
    "SpeedConfig",
]

#: Route names used by faults, logs and rate limits (one per operation).
ROUTES: tuple[str, ...] = (
    "files.create",
    "files.list",
    "files.retrieve",
    "files.content",
    "files.delete",
    "batches.create",
    "batches.list",
    "batches.retrieve",
    "batches.cancel",
    "images.generations",
    "images.edits",
    "models.list",
    "models.retrieve",
)

#: How an ambiguous create answers (``FaultConfig.ambiguous_create_mode``): ``"500"`` a ``server_error`` body;
#: ``"504"`` a gateway-timeout body; ``"drop"`` the status line and headers of a 200 whose body never comes
#: (the connection closes: the client sees a transport error).
AmbiguousCreateMode = Literal["500", "504", "drop"]
AMBIGUOUS_CREATE_MODES: tuple[AmbiguousCreateMode, ...] = get_args(AmbiguousCreateMode)

#: What an unreadable download serves instead of a batch result file (``FaultConfig.bad_download_kinds``):
#: ``html`` a CDN error page with 200; ``json_error`` an ``ErrorResponse`` body with 200; ``short`` the first half
#: of the body, cut mid-line, as a complete 200 whose Content-Length is that shorter length; ``short_no_length``
#: the same without Content-Length (chunked, properly ended); ``cut_no_length`` the same without Content-Length,
#: then the connection closes without ending the body; ``garbled_line`` the whole file (same length) with the
#: first byte of one line (the line after the middle byte, else the first) replaced by ``~``, so it is not JSON.
BadDownloadKind = Literal["html", "json_error", "short", "short_no_length", "cut_no_length", "garbled_line"]
BAD_DOWNLOAD_KINDS: tuple[BadDownloadKind, ...] = get_args(BadDownloadKind)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class RouteFaults(BaseModel):
    """HTTP faults for one route (or ``"*"``, every route).

    ``share_429`` / ``share_5xx``: probability (0..1, seeded RNG) that a request is answered 429
    (``rate_limit_exceeded``) or 500/503 (``server_error``) instead of being handled.
    ``first_n_429`` / ``first_n_5xx``: the first N requests on the route are answered so, deterministically
    (the 429 counter is consumed before the 5xx one).
    """

    model_config = _FROZEN

    share_429: float = Field(default=0.0, ge=0.0, le=1.0)
    share_5xx: float = Field(default=0.0, ge=0.0, le=1.0)
    first_n_429: int = Field(default=0, ge=0)
    first_n_5xx: int = Field(default=0, ge=0)


class FaultConfig(BaseModel):
    """Faults on demand. Probabilities use one RNG seeded with ``seed``; counters ("first N") are
    deterministic and count from server start (they are not persisted across restarts, but a batch's
    own fault plan is decided at creation and persisted with it).

    - ``routes``: per-route HTTP 429 / 5xx faults, keyed by a name from ``ROUTES`` or ``"*"``.
    - ``latency_ms`` (added to every response, after ``latency_share`` probability; default every one).
    - ``cut_download_after_bytes``: cut the connection of ``GET /v1/files/{id}/content`` after this many
      bytes of body, for the first ``cut_download_first_n`` downloads and/or a ``cut_download_share`` of them.
    - ``null_output_file_s``: a ``completed`` batch shows null ``output_file_id``/``error_file_id`` this long.
    - ``shuffle_output``: output and error lines are published in a shuffled order (seeded).
    - ``drop_rows``: this many result rows (seeded choice) appear in neither output nor error file, for the
      first ``drop_rows_first_n_batches`` batches (0 with ``drop_rows`` > 0 means every batch).
    - ``expire_after_lines``: the batch expires mid-run after this many lines finished, for the first
      ``expire_first_n_batches`` batches and/or an ``expire_share`` of batches.
    - ``stuck_finalizing_s``: the batch stays in ``finalizing`` this long before completing.
    - ``ambiguous_create_first_n`` / ``ambiguous_create_share``: a ``POST /v1/batches`` that succeeded (the batch
      exists and runs) is answered as if it failed, for the first N successful creates and/or a share of them
      (seeded), so the client cannot know it happened; ``ambiguous_create_mode`` says how (see
      ``AMBIGUOUS_CREATE_MODES``: 500, 504, or a dropped connection) and ``ambiguous_create_delay_s`` waits this
      long before answering (a gateway timing out).
    - ``list_lag_s``: a batch created less than this many seconds ago is absent from ``GET /v1/batches`` pages
      (the list is eventually consistent); ``GET /v1/batches/{id}`` finds it at once. The moment a batch becomes
      listable is stored with it.
    - ``bad_download_first_n`` / ``bad_download_share``: a ``GET /v1/files/{id}/content`` of a batch output or error
      file (purpose ``batch_output``; ``Range`` requests included, on the requested part) serves something that
      is not the file, for the first N such downloads and/or a share of them; the kind is taken in turn from
      ``bad_download_kinds`` for the first N, at random (seeded) for the share (see ``BAD_DOWNLOAD_KINDS``).
      Only downloads of result files are counted. A download chosen here is never also cut by
      ``cut_download_*``.
    """

    model_config = _FROZEN

    seed: int = 0
    routes: dict[str, RouteFaults] = Field(default_factory=dict)
    latency_ms: int = Field(default=0, ge=0)
    latency_share: float = Field(default=1.0, ge=0.0, le=1.0)
    cut_download_after_bytes: int | None = Field(default=None, ge=0)
    cut_download_first_n: int = Field(default=0, ge=0)
    cut_download_share: float = Field(default=0.0, ge=0.0, le=1.0)
    null_output_file_s: float = Field(default=0.0, ge=0.0)
    shuffle_output: bool = False
    drop_rows: int = Field(default=0, ge=0)
    drop_rows_first_n_batches: int = Field(default=0, ge=0)
    expire_after_lines: int | None = Field(default=None, ge=0)
    expire_first_n_batches: int = Field(default=0, ge=0)
    expire_share: float = Field(default=0.0, ge=0.0, le=1.0)
    stuck_finalizing_s: float = Field(default=0.0, ge=0.0)
    ambiguous_create_first_n: int = Field(default=0, ge=0)
    ambiguous_create_share: float = Field(default=0.0, ge=0.0, le=1.0)
    ambiguous_create_mode: AmbiguousCreateMode = "500"
    ambiguous_create_delay_s: float = Field(default=0.0, ge=0.0)
    list_lag_s: float = Field(default=0.0, ge=0.0)
    bad_download_first_n: int = Field(default=0, ge=0)
    bad_download_share: float = Field(default=0.0, ge=0.0, le=1.0)
    bad_download_kinds: tuple[BadDownloadKind, ...] = Field(default=BAD_DOWNLOAD_KINDS, min_length=1)


class SpeedConfig(BaseModel):
    """Timing of the batch lifecycle.

    ``mode="instant"``: lines run as fast as the CPU allows and every phase delay is zero, so a
    1,000-request batch completes in seconds. ``mode="realistic"``: the phase delays below apply
    (defaults chosen for drills: seconds, not hours). ``completion_window_s`` is how long a batch may
    run before it expires (the real service: 86,400 s for ``"24h"``; ``expires_at`` reports it).
    """

    model_config = _FROZEN

    mode: Literal["instant", "realistic"] = "instant"
    validating_s: float = Field(default=2.0, ge=0.0)
    per_request_s: float = Field(default=0.5, ge=0.0)
    finalizing_s: float = Field(default=2.0, ge=0.0)
    cancelling_s: float = Field(default=3.0, ge=0.0)
    completion_window_s: int = Field(default=86_400, ge=1)

    def delay(self, phase: Literal["validating", "per_request", "finalizing", "cancelling"]) -> float:
        """The delay in seconds for ``phase``: 0 in instant mode, the configured value otherwise."""
        if self.mode == "instant":
            return 0.0
        return float(getattr(self, f"{phase}_s"))


class EmulatorConfig(BaseModel):
    """The whole emulator configuration (read-only once built).

    ``state_dir``: files on disk and ``state.sqlite3`` metadata; ``None`` lets ``EmbeddedEmulator`` use a
    temporary directory. ``concurrency``: lines of one batch executed at once. ``image_detail``: passed to
    ``ImageExecutor`` (``"fast"`` keeps images small). ``rpm_limit``: requests per minute over all routes
    (fixed 60 s window; ``rate_window_s`` shortens it, off by default, only so a benchmark can show pacing in
    seconds); ``tpm_limit``: only reported in the ``x-ratelimit-*-tokens`` headers (image routes
    count estimated input tokens; never answered 429). ``enqueued_token_limit``: per-model cap on estimated
    input tokens of non-terminal batches (FACTS §3.1); ``None`` means unlimited. ``org``: the organisation
    name used in error messages.

    ``models``: the model table the emulator serves (:class:`~batchpipe.domain.modeltable.ModelTable`; default the
    shipped one): it lists them on ``GET /v1/models``, validates every image request and batch line against
    it (``spec.check_image_request``) and estimates usage from it. ``now``: the emulator's clock for lifecycle
    decisions (a model whose shutdown moment, 00:00 UTC on its ``shutdown`` date, is at or before now answers
    404 ``model_not_found``): ``None`` for the real UTC time, a ``datetime`` to pin it (naive means UTC; an ISO
    8601 string is parsed), or a zero-argument callable returning a ``datetime``. It does not move the
    ``created_at``/``expires_at`` timestamps of files and batches, which stay on the real clock.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    state_dir: Path | None = None
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    concurrency: int = Field(default=4, ge=1, le=256)
    image_detail: Literal["fast", "realistic"] = "fast"
    image_workers: int = Field(default=2, ge=1)
    fetch_timeout_s: float = Field(default=5.0, gt=0.0)
    rpm_limit: int = Field(default=10_000, ge=1)
    rate_window_s: float = Field(default=60.0, gt=0.0)
    tpm_limit: int = Field(default=10_000_000, ge=1)
    enqueued_token_limit: dict[str, int] | int | None = None
    org: str = "org-emulator"
    models: ModelTable = Field(default_factory=shipped_table)
    now: dt.datetime | Callable[[], dt.datetime] | None = None

    @field_validator("now")
    @classmethod
    def _utc(cls, value: object) -> object:
        """A naive pinned datetime is read as UTC."""
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value

    def lifecycle_now(self) -> dt.datetime:
        """The emulator's "now" for lifecycle decisions: an aware UTC-comparable ``datetime`` (see ``now``)."""
        now = self.now
        if now is None:
            return dt.datetime.now(dt.UTC)
        current = now if isinstance(now, dt.datetime) else now()
        return current if current.tzinfo is not None else current.replace(tzinfo=dt.UTC)

    def enqueued_limit_for(self, model: str) -> int | None:
        """The enqueued-token limit for ``model`` (a dict is looked up by model, ``"*"`` as fallback)."""
        limit = self.enqueued_token_limit
        if isinstance(limit, dict):
            return limit.get(model, limit.get("*"))
        return limit
