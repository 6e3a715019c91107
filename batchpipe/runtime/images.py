"""Reading back the images a ledger describes, wherever they were stored, and checking them against it.

The ledger addresses each image by URI (:mod:`batchpipe.domain.locations`): ``file:///abs/path.png`` (or, in
ledgers written before URIs, a plain absolute path) on the machine that collected it, ``s3://bucket/key`` in
object storage. :class:`ImageReader` reads either; ``batchpipe ledger verify`` and ``batchpipe report`` use it so
that a run collected into a bucket by several workers can be audited and looked at from any machine with the
bucket's ``AWS_*`` variables. :func:`check_rows` is the audit: every recorded image is read back, its sha256 and
size compared with the ledger's, and its C2PA manifest verified again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from batchpipe.domain.locations import file_uri, local_path
from batchpipe.domain.records import ItemRow
from batchpipe.errors import InputError
from batchpipe.ports import Verifier

if TYPE_CHECKING:  # the S3 adapter (obstore) is imported only when an s3:// image is read
    from batchpipe.adapters.s3_store import S3ImageStore

__all__ = ["LINK_EXPIRES_S", "ImageCheck", "ImageReader", "VerifySummary", "check_rows"]

#: How long a presigned link to an image in object storage stays valid (seconds; S3 allows at most 7 days).
LINK_EXPIRES_S: Final = 7 * 24 * 3600


class ImageReader:
    """Reads ledger image URIs: local files directly, ``s3://`` objects through one S3 image store per bucket
    (opened on first use, endpoint and credentials from the ``AWS_*`` variables in ``environ``, as
    ``--store s3://...`` does). Thread-safe for reads (obstore stores are; local reads share nothing).

    Raises :class:`~batchpipe.errors.InputError` for a URI of another scheme, or an ``s3://`` URI when the
    ``cluster`` extra (obstore) is not installed; ``FileNotFoundError`` for an image that is not there.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        self._buckets: dict[str, S3ImageStore] = {}

    def _bucket_store(self, uri: str) -> S3ImageStore:
        try:
            from batchpipe.adapters.s3_store import open_s3_store, split_s3_url
        except ImportError as exc:
            raise InputError(
                f"reading s3:// images needs obstore: pip install 'batchpipe[cluster]' ({exc})", file=uri
            ) from exc
        bucket, _ = split_s3_url(uri)
        store = self._buckets.get(bucket)
        if store is None:
            store = self._buckets[bucket] = open_s3_store(f"s3://{bucket}", self._environ)
        return store

    def read(self, uri: str) -> bytes:
        """The bytes stored at ``uri``. Raises ``FileNotFoundError`` when nothing is there, ``InputError`` for an
        unsupported URI."""
        path = local_path(uri)
        if path is not None:
            return path.read_bytes()
        if uri.startswith("s3://"):
            return self._bucket_store(uri).read(uri)
        raise InputError(
            "cannot read this image location: only file:// and s3:// locations are readable here", file=uri
        )

    def link(self, uri: str, *, expires_s: int = LINK_EXPIRES_S) -> str | None:
        """A URL a browser on this machine can open for ``uri``: the ``file://`` URI of a local image, a presigned
        HTTP(S) ``GET`` URL (valid ``expires_s`` seconds) for an ``s3://`` object, else None."""
        path = local_path(uri)
        if path is not None:
            return file_uri(path.resolve())
        if not uri.startswith("s3://"):
            return None
        return self._bucket_store(uri).presigned_get(uri, expires_s)


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """One recorded image read back: ``problem`` is None when its bytes match the ledger's sha256 and size,
    else a sentence (missing, other bytes, unreadable). ``c2pa_state`` is the state verified now (None when not
    verified), ``recorded_state`` what the ledger holds."""

    custom_id: str
    key: str
    uri: str
    problem: str | None
    c2pa_state: str | None
    recorded_state: str | None


@dataclass(slots=True)
class VerifySummary:
    """What :func:`check_rows` found: ``checked`` images, ``matched`` (sha256 and size as recorded),
    ``problems`` (the checks that did not match, in ledger order), C2PA states now (``c2pa``), and
    ``changed_state`` (checks whose C2PA state differs from the recorded one)."""

    checked: int = 0
    matched: int = 0
    problems: list[ImageCheck] = field(default_factory=list)
    c2pa: Counter[str] = field(default_factory=Counter)
    changed_state: list[ImageCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every image is there with the recorded bytes, and its C2PA state is the recorded one."""
        return not self.problems and not self.changed_state


def check_rows(
    rows: Iterable[ItemRow],
    read: Callable[[str], bytes],
    verifier: Verifier | None,
    *,
    on_check: Callable[[ImageCheck], None] | None = None,
) -> VerifySummary:
    """Read back the image of every row that records one (``output_uri`` or ``output_path``), compare its sha256
    and size (bytes) with the row's, and verify its C2PA manifest with ``verifier`` (skipped when None).
    ``on_check`` sees each check as it is made. Rows without an image (not succeeded) are passed over. Never
    raises for a missing or unreadable image: that is a problem in the summary."""
    summary = VerifySummary()
    for row in rows:
        uri = row.output_uri or (str(row.output_path) if row.output_path else None)
        if not uri:
            continue
        summary.checked += 1
        problem: str | None = None
        state: str | None = None
        try:
            data = read(uri)
        except FileNotFoundError:
            problem = "missing: nothing is stored there"
            data = None
        except (OSError, InputError) as exc:
            problem = f"unreadable: {exc}"
            data = None
        if data is not None:
            digest = hashlib.sha256(data).hexdigest()
            if row.sha256 and digest != row.sha256:
                problem = f"other bytes: sha256 {digest[:16]}... ({len(data):,} bytes), recorded {row.sha256[:16]}..."
            elif row.bytes is not None and len(data) != row.bytes:
                problem = f"other size: {len(data):,} bytes, recorded {row.bytes:,}"
            if verifier is not None:
                state = verifier.verify_bytes(data).state
                summary.c2pa[state] += 1
        check = ImageCheck(row.custom_id, row.item_key, uri, problem, state, row.c2pa_state)
        if problem is None:
            summary.matched += 1
        else:
            summary.problems.append(check)
        if state is not None and row.c2pa_state and state != row.c2pa_state:
            summary.changed_state.append(check)
        if on_check is not None:
            on_check(check)
    return summary
