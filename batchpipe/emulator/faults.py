"""Fault decisions: pure functions of a ``FaultConfig``, a seeded RNG and counters.

The ``FaultInjector`` only *decides* (which status, how many bytes, which plan); the HTTP layer and the
batch processor carry the decision out. All counters are per server run and thread-safe.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass

from batchpipe.emulator.config import FaultConfig

__all__ = ["BatchFaultPlan", "FaultInjector", "server_error_body"]


@dataclass(frozen=True, slots=True)
class BatchFaultPlan:
    """The faults one batch will show, decided when it is created and stored with it.

    ``expire_after_lines``: expire once this many lines finished (None: no forced expiry).
    ``drop_rows``: result rows published in neither file. ``shuffle``: shuffle published lines.
    ``null_output_file_s``: seconds ``completed`` shows null file ids. ``stuck_finalizing_s``: extra
    seconds in ``finalizing``. ``seed``: the seed for the batch's own choices (which rows, which order).
    """

    expire_after_lines: int | None = None
    drop_rows: int = 0
    shuffle: bool = False
    null_output_file_s: float = 0.0
    stuck_finalizing_s: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (persisted in the batch row)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BatchFaultPlan:
        """Inverse of ``to_dict``."""
        expire = data.get("expire_after_lines")
        return cls(
            expire_after_lines=int(expire) if isinstance(expire, int) else None,
            drop_rows=int(data.get("drop_rows", 0)),  # type: ignore[call-overload]
            shuffle=bool(data.get("shuffle", False)),
            null_output_file_s=float(data.get("null_output_file_s", 0.0)),  # type: ignore[arg-type]
            stuck_finalizing_s=float(data.get("stuck_finalizing_s", 0.0)),  # type: ignore[arg-type]
            seed=int(data.get("seed", 0)),  # type: ignore[call-overload]
        )


def server_error_body(status: int) -> dict[str, object]:
    """The ``ErrorResponse`` body of an injected 500 or 503 (G-ERR wording)."""
    if status == 503:
        message = "The server is overloaded or not ready yet."
    else:
        message = "The server had an error while processing your request. Sorry about that!"
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class FaultInjector:
    """Decides faults from ``config`` (seeded RNG plus deterministic counters)."""

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._route_counts: Counter[str] = Counter()
        self._downloads = 0
        self._batches = 0
        self._creates = 0
        self._result_downloads = 0

    @property
    def config(self) -> FaultConfig:
        """The (frozen) fault configuration."""
        return self._config

    def http_status(self, route: str) -> int | None:
        """The injected status (429, 500 or 503) for this request on ``route``, or None to handle it.

        The route's own entry wins over ``"*"``. Counters count every request seen on the route.
        """
        faults = self._config.routes.get(route) or self._config.routes.get("*")
        if faults is None:
            return None
        with self._lock:
            self._route_counts[route] += 1
            seen = self._route_counts[route]
            if seen <= faults.first_n_429:
                return 429
            if seen <= faults.first_n_429 + faults.first_n_5xx:
                return self._rng.choice((500, 503))
            if faults.share_429 and self._rng.random() < faults.share_429:
                return 429
            if faults.share_5xx and self._rng.random() < faults.share_5xx:
                return self._rng.choice((500, 503))
        return None

    def latency_s(self) -> float:
        """Seconds to add to this response (0 when no latency is configured)."""
        if not self._config.latency_ms:
            return 0.0
        with self._lock:
            if self._config.latency_share >= 1.0 or self._rng.random() < self._config.latency_share:
                return self._config.latency_ms / 1000
        return 0.0

    def download_cut_after(self) -> int | None:
        """For one file download: cut the body after this many bytes, or None for a full download."""
        limit = self._config.cut_download_after_bytes
        if limit is None:
            return None
        with self._lock:
            self._downloads += 1
            if self._downloads <= self._config.cut_download_first_n:
                return limit
            if self._config.cut_download_share and self._rng.random() < self._config.cut_download_share:
                return limit
        return None

    def ambiguous_create(self) -> str | None:
        """For one ``POST /v1/batches`` that created a batch: the mode (``"500"``, ``"504"`` or ``"drop"``) in
        which to hide that it succeeded, or None to answer it normally. Counts successful creates."""
        cfg = self._config
        if not cfg.ambiguous_create_first_n and not cfg.ambiguous_create_share:
            return None
        with self._lock:
            self._creates += 1
            if self._creates <= cfg.ambiguous_create_first_n or (
                cfg.ambiguous_create_share and self._rng.random() < cfg.ambiguous_create_share
            ):
                return cfg.ambiguous_create_mode
        return None

    def bad_download(self) -> str | None:
        """For one download of a batch result file: the kind of unreadable body to serve instead
        (``config.BAD_DOWNLOAD_KINDS``), or None to serve the file. The first N take the configured kinds in
        turn; the share draws one at random. Counts result-file downloads only."""
        cfg = self._config
        if not cfg.bad_download_first_n and not cfg.bad_download_share:
            return None
        with self._lock:
            self._result_downloads += 1
            index = self._result_downloads
            if index <= cfg.bad_download_first_n:
                return cfg.bad_download_kinds[(index - 1) % len(cfg.bad_download_kinds)]
            if cfg.bad_download_share and self._rng.random() < cfg.bad_download_share:
                return self._rng.choice(cfg.bad_download_kinds)
        return None

    def batch_plan(self) -> BatchFaultPlan:
        """The fault plan of the next created batch (counts batches for the "first N" settings)."""
        cfg = self._config
        with self._lock:
            self._batches += 1
            index = self._batches
            expire: int | None = None
            if cfg.expire_after_lines is not None and (
                index <= cfg.expire_first_n_batches or (cfg.expire_share and self._rng.random() < cfg.expire_share)
            ):
                expire = cfg.expire_after_lines
            drop = 0
            if cfg.drop_rows and (cfg.drop_rows_first_n_batches == 0 or index <= cfg.drop_rows_first_n_batches):
                drop = cfg.drop_rows
            seed = self._rng.randrange(2**31)
        return BatchFaultPlan(
            expire_after_lines=expire,
            drop_rows=drop,
            shuffle=cfg.shuffle_output,
            null_output_file_s=cfg.null_output_file_s,
            stuck_finalizing_s=cfg.stuck_finalizing_s,
            seed=seed,
        )
