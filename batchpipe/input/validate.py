"""Validation before spending: manifest rows → checked :class:`batchpipe.domain.items.Item` objects, streamed.

:func:`make_items` yields an ``Item`` for every row the service would accept and one :class:`Problem`
per reason a row cannot become a request (a row with three problems yields three, and no item). It never
stops on a row error; whether to refuse the whole job (the default) or to record invalid rows and go on
(``[run] skip_invalid``) is the caller's decision. File-level manifest errors are raised as
``batchpipe.errors.ManifestError``.

Keys are checked (:func:`key_problem`) and de-duplicated per the spec's ``on_duplicate_key``: with
``"suffix"`` the 2nd occurrence of ``K`` becomes ``K~2`` (3rd ``K~3``...), reported as a warning naming
both lines and recorded in the item's metadata under ``"_batchpipe"``; with ``"error"`` it is a problem.
Keys are registered even for rows with other problems, so a row's key never depends on another row's
validity. Seen keys are kept in a ``dict`` (key → first line): about 105 bytes per key (the 1,000,000-row
``scripts/bench_build.py`` build peaks at ~211 MB RSS, under its 300 MB target).

Catalog rows also get a ``source_hash``: a digest of the columns the key and prompt templates read (and the
``skip_if_empty`` ones) under the part of the job spec that renders them (:func:`source_prefix`). A re-run that
gives :func:`make_items` an ``unchanged`` lookup reads each row's key and source hash, asks the ledger a chunk at
a time which items already succeeded from the same source, and yields :class:`Unchanged` for those rows instead
of rendering and checking them again (the nightly no-change re-run's cost); every other row goes the whole way.

Every mode (catalog rows with templates, plain JSONL item lines, a variant matrix) is a small strategy that
turns a row into drafts (the key, the ``Item`` it would become, its own problems, the service's checks); one loop
(:func:`_row_loop`) checks and de-duplicates the keys, checks the size of each request line against
``[run] max_shard_bytes`` and yields the ``Item`` or its problems, so every mode gets every check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import operator
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, Protocol, overload

import orjson
import structlog

from batchpipe import __version__
from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef, Item
from batchpipe.domain.problems import Problem
from batchpipe.errors import ManifestError
from batchpipe.input.jobspec import BODY_DEFAULT_FIELDS, JobSpec
from batchpipe.input.manifest import ManifestRow, iter_manifest
from batchpipe.input.matrix import MatrixStats, ProductRefs, Variant, VariantMatrix, build_request, resolve_all
from batchpipe.input.references import ReferenceResolver, Resolved, check_data_url

__all__ = [
    "MAX_KEY_CHARS",
    "PLAIN_ITEM_FIELDS",
    "SOURCE_HASH_VERSION",
    "ManifestItems",
    "Unchanged",
    "UnchangedLookup",
    "ValidationReport",
    "count_summary",
    "key_problem",
    "make_items",
    "source_prefix",
    "validate_job",
]

_log = structlog.get_logger(__name__)

#: Longest item key, in characters (after any ``~n`` suffix).
MAX_KEY_CHARS: Final = 512
#: Body fields of a plain JSONL item line, in the order request bodies are built (SPEC ``CreateImageRequest``,
#: ``EditImageBodyJsonParam``); ``model`` and ``prompt`` come first.
_BODY_ORDER: Final[tuple[str, ...]] = (
    "model",
    "prompt",
    *BODY_DEFAULT_FIELDS[1:],
    "images",
    "mask",
    "markup",
    "input_fidelity",
)
#: Every field a plain JSONL item line may have.
PLAIN_ITEM_FIELDS: Final[frozenset[str]] = frozenset({"key", "metadata", *_BODY_ORDER})
_GENERATIONS: Final = "/v1/images/generations"
_EDITS: Final = "/v1/images/edits"


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an item key, or ``None``.

    Rules: non-empty, at most ``MAX_KEY_CHARS``, no ``..`` anywhere, no leading ``/``, no empty path
    segment (``a//b``, trailing ``/``), no backslash, no NUL or other control character. ``/`` may group
    keys (``shoes/red-42``); the image store maps keys to paths safely.
    """
    if not key:
        return "key is empty"
    if len(key) > MAX_KEY_CHARS:
        return f"key is {len(key)} characters, over the {MAX_KEY_CHARS}-character limit"
    if ".." in key:
        return f"key {key!r} contains '..'"
    if key.startswith("/"):
        return f"key {key!r} starts with '/'"
    if "\\" in key:
        return f"key {key!r} contains a backslash"
    if "//" in key or key.endswith("/"):
        return f"key {key!r} has an empty path segment"
    if key.isprintable():  # every control character (Cc) is non-printable: the common case ends here
        return None
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            return f"key {key!r} contains the control character U+{ord(ch):04X}"
    return None


def _image_ref(ref: object) -> ImageRef | None:
    """The ledger's :class:`ImageRef` for a checked ``ImageRefParam`` (SPEC) object."""
    if not isinstance(ref, dict):
        return None
    file_id = ref.get("file_id")
    if isinstance(file_id, str):
        return ImageRef("file", file_id)
    url = ref.get("image_url")
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        mime = header[5:].split(";")[0]
        try:
            digest: str | None = hashlib.sha256(base64.b64decode(payload, validate=True)).hexdigest()
        except (binascii.Error, ValueError):
            digest = None
        return ImageRef("data", f"data:{mime};sha256={digest}" if digest else f"data:{mime}", digest)
    return ImageRef("url", url)


# ---------------------------------------------------------------------------------------- unchanged rows

#: Bumped whenever the same catalog row and job spec would render another request than before (a change to
#: rendering or to the checks): rows built under another version never match on their source hash, so a re-run
#: renders them and compares the request (:meth:`batchpipe.ports.Ledger.succeeded_with`) as before.
SOURCE_HASH_VERSION: Final = 1

#: Rows per ledger lookup of :func:`_skip_unchanged` (the build's chunk, ``runner._ROWS_PER_CHUNK``).
_UNCHANGED_CHUNK: Final = 1000
#: After this many chunks in a row without an unchanged row, :func:`_skip_unchanged` looks up only every
#: :data:`_PROBE_EVERY`-th chunk until one has some.
_DRY_CHUNKS: Final = 2
_PROBE_EVERY: Final = 32


class Unchanged(NamedTuple):
    """A manifest row :func:`make_items` did not render: the latest success of item ``key`` was built from the same
    row (``line``, 1-based) by the same job spec (the same ``source_hash``), so it would send the same request. A
    re-run counts it as skipped. (A named tuple: made once per row, at a third of a frozen dataclass's cost.)"""

    key: str
    line: int


#: ``lookup(pairs)`` starts finding which ``(item_key, source_hash)`` pairs name items whose latest success has
#: that source hash (:meth:`batchpipe.ports.Ledger.succeeded_with` with ``by="source_hash"``) and returns a
#: callable that waits for the answer: those keys. So the ledger looks one chunk up while the next is read.
UnchangedLookup = Callable[[list[tuple[str, str]]], Callable[[], set[str]]]


def source_prefix(spec: JobSpec) -> bytes | None:
    """What a catalog row's source hash covers besides the row (32 bytes, sha256), or None when the job's rows
    keep none (not catalog mode, or a model the job's model table does not know).

    Covered: :data:`SOURCE_HASH_VERSION` and the batchpipe version, the endpoint, ``[defaults]`` (the body every
    row shares, in order), the key and prompt templates, ``on_empty_field``, ``skip_if_empty``,
    ``max_shard_bytes`` (the line size check) and the model's row of the model table (what its checks read). Not
    covered (they do not change the request): metadata columns, paths, run options. A model with a lifecycle
    problem today turns the skipping off in :class:`_CatalogMode` (every row is checked and reported)."""
    if spec.key_template is None or spec.prompt_template is None or spec.matrix is not None:
        return None
    model = spec.defaults.get("model")
    facts = spec.models.get(model) if isinstance(model, str) else None
    if facts is None:
        return None
    try:
        defaults = orjson.dumps(spec.defaults)
    except orjson.JSONEncodeError:
        return None
    parts = [
        f"batchpipe source hash {SOURCE_HASH_VERSION} {__version__} {_GENERATIONS}".encode(),
        defaults,
        orjson.dumps([spec.key_template.source, spec.prompt_template.source, spec.on_empty_field]),
        orjson.dumps([list(spec.skip_if_empty), spec.run.max_shard_bytes]),
        facts.model_dump_json().encode(),
    ]
    return hashlib.sha256(b"\x00".join(parts)).digest()


#: A chunk :func:`_skip_unchanged` has read and not settled: its rows, the key of each row that is the first of
#: its chunk with it (by index), the source hash of every row that has one (by index), and the wait for its lookup
#: (None when it was not looked up).
_ReadChunk = tuple[list[ManifestRow | ManifestError], dict[int, str], dict[int, str], Callable[[], set[str]] | None]


def _skip_unchanged(
    rows: Iterator[ManifestRow | ManifestError],
    mode: _CatalogMode,
    lookup: UnchangedLookup,
    seen: dict[str, int],
) -> Iterator[ManifestRow | ManifestError | Unchanged]:
    """``rows`` in order, with :class:`Unchanged` in place of each row whose item already succeeded from the same
    source. A chunk of :data:`_UNCHANGED_CHUNK` rows is read (key and source hash of each, :meth:`_CatalogMode.
    fast_key`) and its lookup started; the chunk before it is then settled while the ledger answers. A row is
    :class:`Unchanged` only when it is the first of its chunk with its key, the lookup named the key, and no row
    before it in the manifest had the key (``seen``, which the row loop fills as it goes): a repeated key is renamed
    by the row loop as always. Its key is then registered in ``seen``. The other rows go on to the row loop, their
    source hash handed to the mode (:meth:`_CatalogMode.remember`) so it is not computed twice.

    Once :data:`_DRY_CHUNKS` chunks in a row found nothing unchanged (a first build, a catalog rewritten), only
    every :data:`_PROBE_EVERY`-th chunk is looked up (the others go straight to the row loop) until one finds
    something: a first build of 1,000,000 rows asks about 34 chunks, not 1,000."""

    def settle(
        chunk: list[ManifestRow | ManifestError], firsts: dict[int, str], hashes: dict[int, str], same: set[str]
    ) -> Iterator[ManifestRow | ManifestError | Unchanged]:
        for index, row in enumerate(chunk):
            key = firsts.get(index) if same else None  # only a ManifestRow has one
            if key is not None and key in same and key not in seen and isinstance(row, ManifestRow):
                seen[key] = row.line
                yield Unchanged(key, row.line)
                continue
            digest = hashes.get(index)
            if digest is not None and isinstance(row, ManifestRow):
                remember(row.line, digest)
            yield row

    waiting: _ReadChunk | None = None
    fast_key, remember = mode.fast_key, mode.remember
    dry = 0  # chunks in a row whose lookup found nothing unchanged
    for number in itertools.count():
        chunk = list(itertools.islice(rows, _UNCHANGED_CHUNK))
        if not chunk:
            break
        pairs: dict[str, str] = {}
        firsts: dict[int, str] = {}
        hashes: dict[int, str] = {}
        if dry < _DRY_CHUNKS or number % _PROBE_EVERY == 0:
            for index, row in enumerate(chunk):
                if isinstance(row, ManifestRow):
                    found = fast_key(row)
                    if found is not None:
                        hashes[index] = found[1]
                        if found[0] not in pairs:
                            pairs[found[0]] = found[1]
                            firsts[index] = found[0]
        answer = lookup(list(pairs.items())) if pairs else None
        if waiting is not None:
            before, before_firsts, before_hashes, asked = waiting
            same = asked() if asked is not None else set()
            if asked is not None:
                dry = 0 if same else dry + 1
            yield from settle(before, before_firsts, before_hashes, same)
        waiting = (chunk, firsts, hashes, answer)
    if waiting is not None:
        before, before_firsts, before_hashes, asked = waiting
        yield from settle(before, before_firsts, before_hashes, asked() if asked is not None else set())


# ------------------------------------------------------------------------------------------- the row loop


#: One request a mode made of a manifest row, before the row loop's own checks (:func:`_row_loop`), as the
#: tuple ``(line, key, item, problems, checks, note)``:
#:
#: ``line``: the row's 1-based physical line. ``key``: the item key as rendered or read (``None`` when it could
#: not be). ``item``: the :class:`Item` it becomes if every check passes (its ``key`` is ``""`` when ``key`` is
#: ``None``; the loop sets the final key, ``encoded`` and ``source``). ``problems``: the mode's own ``(field,
#: message)`` problems, in the order found. ``checks``: what the service would refuse in the body
#: (:func:`batchpipe.domain.spec.check_image_request` or its split form). ``note``: appended to every problem
#: message (``""``, or a matrix item's ``" (variant 'autumn')"``).
#:
#: A plain tuple, made once per row: a named tuple's ``__new__`` cost 0.29 µs more a row, a slotted class
#: 0.75 µs (``timeit``). The item is made by the mode, not copied from the draft by the loop: one object fewer.
_Draft = tuple[int, str | None, Item, list[tuple[str | None, str]], list[Problem], str]


class _Mode(Protocol):
    """How one kind of manifest turns a row into requests: :class:`_CatalogMode`, :class:`_PlainMode` or
    :class:`_MatrixMode` (the strategies :func:`_row_loop` is given)."""

    def drafts(self, row: ManifestRow) -> Sequence[_Draft]:
        """The requests ``row`` makes: one, none (a matrix row folded into its product) or one per variant."""
        ...


@overload
def make_items(
    spec: JobSpec,
    *,
    limit: int | None = None,
    on_warning: Callable[[Problem], None] | None = None,
    resolver: ReferenceResolver | None = None,
    stats: MatrixStats | None = None,
    unchanged: None = None,
) -> Iterator[Item | Problem]: ...


@overload
def make_items(
    spec: JobSpec,
    *,
    limit: int | None = None,
    on_warning: Callable[[Problem], None] | None = None,
    resolver: ReferenceResolver | None = None,
    stats: MatrixStats | None = None,
    unchanged: UnchangedLookup,
) -> Iterator[Item | Problem | Unchanged]: ...


def make_items(
    spec: JobSpec,
    *,
    limit: int | None = None,
    on_warning: Callable[[Problem], None] | None = None,
    resolver: ReferenceResolver | None = None,
    stats: MatrixStats | None = None,
    unchanged: UnchangedLookup | None = None,
) -> Iterator[Item | Problem | Unchanged]:
    r"""Stream ``spec``'s manifest as checked items and problems, in manifest order.

    ``limit``: read at most this many data rows (each row counts, valid or not). ``on_warning`` receives
    warnings (renamed duplicate keys); without it they are logged (structlog, event ``duplicate_key``).
    Each ``Item`` has the endpoint (``/v1/images/edits`` when the row has ``images``), the body with the
    defaults applied under the row's own fields and ``model`` always present, metadata (catalog mode: the
    spec's ``metadata_columns``; plain JSONL: the line's ``metadata``), ``source`` ``"file:line"`` and, for
    edits, ``inputs`` (the images, then the mask). Problems carry the param names of
    ``spec.check_image_request`` as ``field``. A request line (as the shard builder writes it) over
    ``spec.run.max_shard_bytes`` is a problem, named by the body field that takes the most bytes. Raises
    ``ManifestError`` for file-level manifest errors.

    A ``[matrix]`` job (:mod:`batchpipe.input.matrix`) yields one edit item per product x variant, with
    ``product_key``, ``variant`` and ``inputs`` set; ``resolver`` turns reference texts into request params
    (default: a checking resolver with placeholder ``file_id``\ s for local files, enough for validation);
    ``stats`` (optional) receives the matrix counts. ``limit`` then counts manifest rows read.

    ``unchanged`` (a build's ledger lookup, :data:`UnchangedLookup`): catalog items carry a ``source_hash`` (see the
    module docstring), and rows whose item already succeeded from the same source are yielded as
    :class:`Unchanged`, neither rendered nor checked. Without it (the default: validation, shard-only builds) items
    carry no source hash and no :class:`Unchanged` is yielded.
    """
    warn = on_warning or _log_warning
    mode: _Mode
    matrix_stats: MatrixStats | None = None
    if spec.matrix is not None:
        matrix_stats = stats if stats is not None else MatrixStats()
        opened = _MatrixMode.open(
            spec, spec.matrix, resolver or ReferenceResolver(spec.matrix.references), matrix_stats
        )
        if isinstance(opened, Problem):
            yield opened
            return
        mode = opened
    elif spec.prompt_template is not None:
        mode = _CatalogMode(spec, warn, source_hashes=unchanged is not None)
    else:
        mode = _PlainMode(spec)
    rows = iter_manifest(
        spec.manifest_path, fmt=spec.manifest_format, max_line_bytes=spec.max_line_bytes, csv_options=spec.csv_options
    )
    if limit is not None:
        rows = itertools.islice(rows, limit)
    results = _row_loop(spec, rows, mode, warn, unchanged)
    if matrix_stats is None:
        yield from results
        return
    for result in results:
        if isinstance(result, Item):
            matrix_stats.items += 1
        yield result


@dataclass(frozen=True)
class ManifestItems:
    """The items of ``spec``'s manifest as a build reads them: ``ManifestItems(spec)()`` is
    ``make_items(spec, limit=limit)``; a re-run's build calls it with its ledger's ``unchanged`` lookup
    (:data:`UnchangedLookup`) so rows already succeeded from the same source come as :class:`Unchanged`, unrendered.
    (Any other item source of a run is called with no argument.)"""

    spec: JobSpec
    limit: int | None = None

    def __call__(self, unchanged: UnchangedLookup | None = None) -> Iterator[Item | Problem | Unchanged]:
        """The items, problems and (with ``unchanged``) unchanged rows, in manifest order."""
        if unchanged is None:
            return make_items(self.spec, limit=self.limit)
        return make_items(self.spec, limit=self.limit, unchanged=unchanged)


def _row_loop(
    spec: JobSpec,
    rows: Iterator[ManifestRow | ManifestError],
    mode: _Mode,
    warn: Callable[[Problem], None],
    unchanged: UnchangedLookup | None = None,
) -> Iterator[Item | Problem | Unchanged]:
    """The one loop of every mode: rows → the mode's drafts → checked :class:`Item` or :class:`Problem`.

    Per draft, in this order: the mode's own problems; the key (:func:`key_problem`, then de-duplicated per
    ``spec.on_duplicate_key``, registered even when the draft has other problems); the service's checks of the
    body (those about a field already reported are dropped); the size of the request line against
    ``spec.run.max_shard_bytes`` (only for an otherwise valid draft). A draft with any problem yields them all
    (each with the draft's ``note``) and no item. Row errors of the manifest become problems. With ``unchanged``
    and a catalog mode that keeps source hashes, rows already succeeded from the same source pass through as
    :class:`Unchanged` (:func:`_skip_unchanged`).
    """
    file = str(spec.manifest_path)
    max_bytes = spec.run.max_shard_bytes
    seen: dict[str, int] = {}  # key → the line it was first seen on
    suffixes: dict[str, int] = {}  # repeated key → the last ~n suffix it was renamed with
    stream: Iterator[ManifestRow | ManifestError | Unchanged] = rows
    if unchanged is not None and isinstance(mode, _CatalogMode) and mode.keeps_source_hash:
        stream = _skip_unchanged(rows, mode, unchanged, seen)
    for row in stream:
        if isinstance(row, ManifestError):
            yield Problem.from_error(row)
            continue
        if isinstance(row, Unchanged):  # its key is registered in ``seen`` already
            yield row
            continue
        for line, key, item, problems, checks, note in mode.drafts(row):
            if key is not None:
                message = key_problem(key)
                if message is not None:
                    problems.append(("key", message))
                    key = None
                elif key not in seen:  # the common case: a new key
                    seen[key] = line
                else:
                    original = key
                    key, duplicate, first = _dedupe(spec, seen, key, line, file, warn, suffixes)
                    if duplicate is not None:
                        problems.append(("key", duplicate))
                    else:
                        item.key = key
                        item.metadata["_batchpipe"] = {"duplicate_of": {"key": original, "line": first}}
            if checks:
                reported = {name for name, _ in problems}
                problems += [
                    (p.field, p.message)
                    for p in checks
                    if p.field not in reported and _root(str(p.field)) not in reported
                ]
            if not problems and key is not None:
                encoded = orjson.dumps(item.body)
                size = _line_bytes(item.endpoint, encoded)
                if size > max_bytes:
                    problems.append(_size_problem(item.body, size, max_bytes))
                else:
                    item.encoded = encoded
                    item.source = f"{file}:{line}"
                    yield item
                    continue
            for name, message in problems:
                yield Problem(message + note, field=name, file=file, line=line, key=key)


def _root(param: str) -> str:
    """The body field a request param names: ``"images[2].image_url"`` → ``"images"``."""
    return param.split("[", 1)[0].split(".", 1)[0]


#: The longest ``custom_id`` a line can carry (``bp-`` + 20 hex + ``-a10``; ``[run] max_attempts`` <= 10).
_LONGEST_CUSTOM_ID: Final = "bp-" + "0" * 20 + "-a10"


def _line_bytes(endpoint: str, encoded_body: bytes) -> int:
    """Bytes of the batch input line a body serialized as ``encoded_body`` will take (the builder's
    serialization, :func:`batchpipe.stages.shard.request_line`, with the longest custom_id; newline included)."""
    overhead = _LINE_OVERHEAD.get(endpoint)
    if overhead is None:
        overhead = _LINE_OVERHEAD[endpoint] = (
            len(_LINE_HEAD) + len(orjson.dumps(endpoint)) + len(b',"body":') + len(b"}\n")
        )
    return overhead + len(encoded_body)


#: Bytes of a request line around its body, per endpoint (filled by :func:`_line_bytes`).
_LINE_OVERHEAD: Final[dict[str, int]] = {}


_LINE_HEAD: Final = b'{"custom_id":"' + _LONGEST_CUSTOM_ID.encode() + b'","method":"POST","url":'


def _size_problem(body: dict[str, object], size: int, max_bytes: int) -> tuple[str, str]:
    """``(field, message)`` for a request line of ``size`` bytes over ``max_bytes``.

    ``field`` is the body field that takes the most bytes (``prompt`` for a long prompt, ``images`` for data URLs).
    """
    name = max(body, key=lambda field_name: len(orjson.dumps(body[field_name])))
    message = f"the request line would be {size:,} bytes, over the {max_bytes:,}-byte shard limit"
    if name in ("images", "mask", "markup") and b'"data:' in orjson.dumps(body[name]):
        message += " (data URLs count in full: upload local files instead)"
    return name, message


# ---------------------------------------------------------------------------------------------- the modes


_EMPTY_FIELD_FIX: Final = (
    ' (put the text around it in {? ...}, skip such rows with [item] on_empty_field = "skip", or send them as '
    'they are with on_empty_field = "render")'
)


class _CatalogMode:
    """Catalog rows (CSV or JSONL) with ``[item]`` key and prompt templates: one generation request per row.

    The body is ``model``, the rendered prompt (single-spaced), then the other ``[defaults]`` fields; metadata
    is the spec's ``metadata_columns``. The ``[defaults]`` fields are checked once, here
    (:class:`batchpipe.domain.spec.ImageRequestCheck`); per row only the prompt is (same problems as checking
    each full body).
    """

    def __init__(
        self, spec: JobSpec, warn: Callable[[Problem], None] | None = None, *, source_hashes: bool = False
    ) -> None:
        assert spec.key_template is not None and spec.prompt_template is not None
        self._on_empty = spec.on_empty_field
        self._warn = warn
        self._file = str(spec.manifest_path)
        self._key = spec.key_template
        self._prompt = spec.prompt_template
        self._empty_prompt = f"the prompt renders empty (columns used: {', '.join(spec.prompt_template.fields)})"
        defaults = spec.defaults
        self._model = defaults["model"]
        self._shared = {name: defaults[name] for name in BODY_DEFAULT_FIELDS[1:] if name in defaults}
        #: every row's body in order (model, prompt, the shared fields): copied, then its prompt set
        self._body: dict[str, object] = {"model": self._model, "prompt": "", **self._shared}
        self._check = rules.ImageRequestCheck(_GENERATIONS, {"model": self._model, **self._shared}, advice=spec.policy)
        self._metadata_columns = spec.metadata_columns
        self._skip_if_empty = spec.skip_if_empty
        #: the source hash's fixed part (:func:`source_prefix`); None keeps none: every row is rendered and checked
        #: (a model with a problem today is reported for every row, as before). Only a build that keeps its rows in
        #: a ledger asks for them (``source_hashes``): 2 µs a row that validation and shard-only builds do not pay
        self._source_prefix = None if self._check.job_problems or not source_hashes else source_prefix(spec)
        #: the columns a row's request depends on: what its source hash reads
        self._source_columns = tuple(
            dict.fromkeys((*spec.key_template.fields, *spec.prompt_template.fields, *spec.skip_if_empty))
        )
        #: their values as a tuple, when every one is present (a CSV row: the header was checked at load)
        self._pick: Callable[[Mapping[str, object]], object] = _tuple_getter(self._source_columns)
        #: source hashes computed ahead (:meth:`remember`), by row line; each taken by its row's :meth:`drafts`
        self._known: dict[int, str] = {}

    def remember(self, line: int, digest: str) -> None:
        """Keep the source hash :meth:`fast_key` computed for the row at ``line``, for :meth:`drafts` to take (once)."""
        self._known[line] = digest

    @property
    def keeps_source_hash(self) -> bool:
        """True when rows get a source hash (and a re-run may skip them unrendered)."""
        return self._source_prefix is not None

    def source_hash(self, values: Mapping[str, object]) -> str | None:
        """The row's source hash: 32 hex characters of blake2b over :func:`source_prefix` and the values of the
        columns its request reads (None for a missing column, as rendering reads it); None when this mode keeps
        none or a value is not JSON (an integer over 64 bits)."""
        prefix = self._source_prefix
        if prefix is None:
            return None
        try:
            try:
                picked = self._pick(values)
            except KeyError:  # a JSONL row without some column: None, as rendering reads it
                picked = [values.get(column) for column in self._source_columns]
            encoded = orjson.dumps(picked)
        except orjson.JSONEncodeError:
            return None
        return hashlib.blake2b(prefix + encoded, digest_size=16).hexdigest()

    def _empty_column(self, values: Mapping[str, object]) -> str | None:
        """The first ``[item] skip_if_empty`` column that is missing or blank in ``values`` (the row is skipped), or
        None."""
        for column in self._skip_if_empty:
            value = values.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                return column
        return None

    def fast_key(self, row: ManifestRow) -> tuple[str, str] | None:
        """``(key, source hash)`` of a row that may be skipped unrendered, or None for a row that must go the
        whole way: one a ``skip_if_empty`` column skips (its warning is the row loop's), one whose key does not
        render, or one without a source hash. The key is not checked (:func:`key_problem`): a key the ledger has a
        success for under the same source hash (and so the same :data:`SOURCE_HASH_VERSION`) passed these checks
        then; any other key is never found unchanged and goes the whole way."""
        values = row.fields
        if self._skip_if_empty and self._empty_column(values) is not None:
            return None
        try:
            key = self._key.render(values).strip()
        except TypeError:
            return None
        digest = self.source_hash(values)
        return None if digest is None else (key, digest)

    def drafts(self, row: ManifestRow) -> tuple[_Draft, ...]:
        """One draft: the row's key and prompt rendered (a value that is a list or object is a problem); none
        for a row skipped by ``[item] skip_if_empty`` or ``on_empty_field = "skip"`` (a warning says so)."""
        values = row.fields
        known = self._known.pop(row.line, None) if self._known else None  # taken first: a skipped row's too
        if self._skip_if_empty and (column := self._empty_column(values)) is not None:
            if self._warn is not None:
                self._warn(
                    Problem(f"column {column!r} is empty; row skipped ([item] skip_if_empty)", field=column,
                            file=self._file, line=row.line, severity="warning")
                )  # fmt: skip
            return ()
        problems: list[tuple[str | None, str]] = []
        key: str | None
        try:
            key = self._key.render(values).strip()
        except TypeError as exc:
            problems.append(("key", str(exc)))
            key = None
        empty: list[str] | None = None if self._on_empty == "render" else []
        try:
            # runs of any whitespace become one space, none at either end. Measured and dropped: returning a prompt
            # that is already single-spaced as it is saved 4% of the validate stage (1.85 against 1.93 s CPU for
            # 200,000 catalog rows, 6 interleaved runs each), under the 10% a second code path must save
            prompt = " ".join(self._prompt.render_checked(values, empty=empty).split())
        except TypeError as exc:
            problems.append(("prompt", str(exc)))
            prompt = ""
        else:
            if not prompt:
                problems.append(("prompt", self._empty_prompt))
            elif empty:
                columns = ", ".join(repr(name) for name in empty)
                message = f"the prompt uses empty column(s) {columns} outside an optional {{? ...}} segment: {prompt!r}"
                if self._on_empty == "error":
                    problems.append(("prompt", message + _EMPTY_FIELD_FIX))
                else:
                    if self._warn is not None:
                        self._warn(
                            Problem(f"{message}; row skipped", field="prompt", file=self._file, line=row.line,
                                    severity="warning")
                        )  # fmt: skip
                    return ()
        body = self._body.copy()
        body["prompt"] = prompt
        metadata = {}
        for column in self._metadata_columns:  # a loop, not a comprehension: 0.30 against 0.46 µs (4 columns)
            metadata[column] = values.get(column)
        item = Item(key=key or "", endpoint=_GENERATIONS, body=body, metadata=metadata)
        if self._source_prefix is not None:
            item.source_hash = known or self.source_hash(values)
        return ((row.line, key, item, problems, self._check.check_prompt(prompt), ""),)


def _tuple_getter(columns: tuple[str, ...]) -> Callable[[Mapping[str, object]], tuple[object, ...]]:
    """``values -> tuple(values[c] for c in columns)`` at ``operator.itemgetter``'s speed, whatever the count
    (itemgetter gives a bare value for one column and refuses none). Raises ``KeyError`` for a missing column."""
    if not columns:
        return lambda values: ()
    if len(columns) == 1:
        one = operator.itemgetter(columns[0])
        return lambda values: (one(values),)
    return operator.itemgetter(*columns)


class _PlainMode:
    """Plain JSONL item lines: each line holds its ``key``, body fields and optional ``metadata`` object.

    Body fields the line leaves out come from ``[defaults]``, in ``_BODY_ORDER``; a line with ``images`` is
    an edit. The defaults are checked once (one :class:`batchpipe.domain.spec.ImageRequestCheck` per endpoint),
    each line's own fields over them.
    """

    def __init__(self, spec: JobSpec) -> None:
        self._defaults = spec.defaults
        shared = {name: spec.defaults[name] for name in _BODY_ORDER if spec.defaults.get(name) is not None}
        self._checks = {
            endpoint: rules.ImageRequestCheck(endpoint, shared, advice=spec.policy)
            for endpoint in (_GENERATIONS, _EDITS)
        }

    def drafts(self, row: ManifestRow) -> tuple[_Draft]:
        """One draft; unknown fields, a key that is not a string and metadata that is not an object are problems."""
        fields = row.fields
        endpoint: rules.Endpoint = _EDITS if fields.get("images") is not None else _GENERATIONS
        problems: list[tuple[str | None, str]] = []
        for name in fields:
            if name not in PLAIN_ITEM_FIELDS:
                problems.append((name, f"unknown field {name!r} (known: {', '.join(sorted(PLAIN_ITEM_FIELDS))})"))
        raw_key = fields.get("key")
        key: str | None = None
        if isinstance(raw_key, str):
            key = raw_key
        else:
            problems.append(
                ("key", "missing" if raw_key is None else f"must be a string, not {type(raw_key).__name__}")
            )
        raw_metadata = fields.get("metadata")
        metadata: dict[str, object] = {}
        if isinstance(raw_metadata, dict):
            metadata = dict(raw_metadata)
        elif raw_metadata is not None:
            problems.append(("metadata", f"must be an object, not {type(raw_metadata).__name__}"))
        body: dict[str, object] = {}
        own: dict[str, object] = {}
        for name in _BODY_ORDER:
            value = fields.get(name)
            if value is None:
                value = self._defaults.get(name)
            else:
                own[name] = value
            if value is not None:
                body[name] = value
        checks = self._checks[endpoint].check(own)
        inputs: tuple[ImageRef, ...] = ()
        if endpoint == _EDITS and not problems and not checks:
            problems += _data_url_problems(body)
            if not problems:
                refs = [*_as_list(body.get("images")), body.get("mask"), body.get("markup")]
                inputs = tuple(ref for ref in map(_image_ref, refs) if ref is not None)
        item = Item(key=key or "", endpoint=endpoint, body=body, metadata=metadata, inputs=inputs)
        return ((row.line, key, item, problems, checks, ""),)


def _data_url_problems(body: Mapping[str, object]) -> list[tuple[str | None, str]]:
    """``(param, message)`` for every data URL among an edit body's ``images``, ``mask`` and ``markup`` that
    the service would refuse (:func:`batchpipe.input.references.check_data_url`, as for matrix jobs)."""
    refs: list[tuple[str, object, Literal["image", "mask"]]] = [
        (f"images[{index}]", ref, "image") for index, ref in enumerate(_as_list(body.get("images")))
    ]
    refs += [("mask", body.get("mask"), "mask"), ("markup", body.get("markup"), "image")]
    problems: list[tuple[str | None, str]] = []
    for param, ref, role in refs:
        url = ref.get("image_url") if isinstance(ref, dict) else None
        if isinstance(url, str) and url.startswith("data:"):
            found = check_data_url(url, role=role)
            if isinstance(found, str):
                problems.append((f"{param}.image_url", found))
    return problems


def _template_field(template_fields: tuple[str, ...], fallback: str) -> str:
    """The manifest column a product-level template reads (its only field), else ``fallback``."""
    return template_fields[0] if len(template_fields) == 1 else fallback


class _MatrixMode:
    """A ``[matrix]`` job: products (the first row per product key; later rows of a product are folded into
    it) x variants, one edit request per pair. Build with :meth:`open`, which resolves the brand assets and
    each variant's references once."""

    def __init__(
        self,
        spec: JobSpec,
        matrix: VariantMatrix,
        resolver: ReferenceResolver,
        stats: MatrixStats,
        brand: list[Resolved],
        per_variant: list[tuple[list[Resolved], Resolved | None, list[tuple[str, str]]]],
    ) -> None:
        assert spec.key_template is not None and spec.prompt_template is not None
        self._spec = spec
        self._key = spec.key_template
        self._prompt = spec.prompt_template
        self._matrix = matrix
        self._resolver = resolver
        self._stats = stats
        self._brand = brand
        self._per_variant = per_variant
        self._product_field = _template_field(matrix.product.fields, "matrix.product")
        self._products: set[str] = set()

    @classmethod
    def open(
        cls, spec: JobSpec, matrix: VariantMatrix, resolver: ReferenceResolver, stats: MatrixStats
    ) -> _MatrixMode | Problem:
        """The mode, or the problem with a brand asset (checked at load: only a file changed since gets here)."""
        stats.variants = len(matrix.variants)
        brand: list[Resolved] = []
        for index, asset in enumerate(matrix.brand_assets):
            found = resolver.resolve(asset, base=matrix.spec_dir, role="image")
            if isinstance(found, str):
                return Problem(found, field=f"references.brand_assets[{index}]", file=spec.source_name)
            brand.append(found)
        per_variant: list[tuple[list[Resolved], Resolved | None, list[tuple[str, str]]]] = []
        for variant in matrix.variants:
            images, found_problems = resolve_all(resolver, variant.images, base=variant.base, field="variant images")
            mask: Resolved | None = None
            if variant.mask:
                found = resolver.resolve(variant.mask, base=variant.base, role="mask")
                if isinstance(found, str):
                    found_problems.append(("mask", f"variant {variant.name!r} mask: {found}"))
                else:
                    mask = found
            per_variant.append((images, mask, found_problems))
        return cls(spec, matrix, resolver, stats, brand, per_variant)

    def drafts(self, row: ManifestRow) -> Sequence[_Draft]:
        """One draft per variant for a new product; none for a folded row; one that is only a problem (no key)
        if the product key does not render."""
        matrix = self._matrix
        base_values: dict[str, object] = {**row.fields, **matrix.vars}
        try:
            product_key = matrix.product.render(base_values).strip()
        except TypeError as exc:
            return (self._product_problem(row, str(exc)),)
        if not product_key:
            return (self._product_problem(row, "the product key renders empty"),)
        if product_key in self._products:
            self._stats.folded_rows += 1  # e.g. a Shopify variant row of a Handle seen earlier: first row wins
            return []
        self._products.add(product_key)
        self._stats.products += 1
        product = _product_refs(matrix, self._resolver, base_values)
        return [
            self._draft(row, product_key, product, variant, images, mask, variant_problems)
            for variant, (images, mask, variant_problems) in zip(matrix.variants, self._per_variant, strict=True)
        ]

    def _product_problem(self, row: ManifestRow, message: str) -> _Draft:
        """A draft that only carries ``message`` about the product key column (no key, so no item)."""
        problems: list[tuple[str | None, str]] = [(self._product_field, message)]
        return (row.line, None, Item(key="", endpoint=_EDITS, body={}), problems, [], "")

    def _draft(
        self,
        row: ManifestRow,
        product_key: str,
        product: ProductRefs,
        variant: Variant,
        variant_images: list[Resolved],
        variant_mask: Resolved | None,
        variant_problems: list[tuple[str, str]],
    ) -> _Draft:
        values: dict[str, object] = {**row.fields, **variant.values, "variant": variant.name}
        problems: list[tuple[str | None, str]] = [*product.problems, *variant_problems]
        key: str | None = None
        try:
            key = self._key.render(values).strip()
        except TypeError as exc:
            problems.append(("key", str(exc)))
        try:
            prompt = " ".join(self._prompt.render(values).split())
        except TypeError as exc:
            problems.append(("prompt", str(exc)))
            prompt = ""
        else:
            if not prompt:
                problems.append(("prompt", "the prompt renders empty"))
        built = build_request(
            prompt=prompt,
            defaults=self._spec.defaults,
            variant=variant,
            product=product,
            variant_refs=variant_images,
            variant_mask=variant_mask,
            brand_refs=self._brand,
        )
        problems += built.problems
        metadata: dict[str, object] = {column: row.fields.get(column) for column in self._spec.metadata_columns}
        if built.mask_ref is not None:
            metadata["reference_mask"] = built.mask_ref.ref
        item = Item(
            key=key or "",
            endpoint=_EDITS,
            body=built.body,
            metadata=metadata,
            product_key=product_key,
            variant=variant.name,
            inputs=built.inputs,
        )
        checks = rules.check_image_request(_EDITS, built.body, advice=self._spec.policy)
        return (row.line, key, item, problems, checks, f" (variant {variant.name!r})")


def _product_refs(matrix: VariantMatrix, resolver: ReferenceResolver, values: Mapping[str, object]) -> ProductRefs:
    """Render and resolve a product row's reference images and mask (problems named by column). A local path
    must resolve inside ``matrix.row_roots`` (the manifest's folder, ``[references] allow_dirs``)."""
    out = ProductRefs()
    roots = matrix.row_roots
    for index, template in enumerate(matrix.image_templates):
        name = _template_field(template.fields, f"references.images[{index}]")
        try:
            text = template.render(values).strip()
        except TypeError as exc:
            out.problems.append((name, str(exc)))
            continue
        if not text:
            continue
        found = resolver.resolve(text, base=matrix.manifest_dir, role="image", within=roots)
        if isinstance(found, str):
            out.problems.append((name, f"reference image: {found}"))
        else:
            out.images.append(found)
    if matrix.mask_template is not None:
        name = _template_field(matrix.mask_template.fields, "references.mask")
        try:
            text = matrix.mask_template.render(values).strip()
        except TypeError as exc:
            out.problems.append((name, str(exc)))
            return out
        if text:
            found = resolver.resolve(text, base=matrix.manifest_dir, role="mask", within=roots)
            if isinstance(found, str):
                out.problems.append((name, f"mask: {found}"))
            else:
                out.mask = found
    return out


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _dedupe(
    spec: JobSpec,
    seen: dict[str, int],
    key: str,
    line: int,
    file: str,
    warn: Callable[[Problem], None],
    suffixes: dict[str, int],
) -> tuple[str, str | None, int]:
    """``(final key, problem or None, first line)`` for ``key`` seen again on ``line`` (``key`` is in ``seen``: the
    row loop registers a new key itself, the common case).

    ``seen`` maps each key registered so far to the line it was first seen on; the final key is added to it.
    A repeated key is renamed ``K~2``, ``K~3``... (the first free one; ``on_duplicate_key = "suffix"``, with a
    warning) or is a problem (``"error"``, or when the renamed key would be over ``MAX_KEY_CHARS``).
    ``suffixes`` remembers, per repeated key, the suffix its last renaming took: ``seen`` only grows, so the
    first free suffix never goes down and the search goes on from there. Renaming n repeats of one key is
    then O(n) in all, not O(n²) (20,000 rows sharing a key: milliseconds instead of minutes).
    """
    first = seen[key]
    if spec.on_duplicate_key == "error":
        return key, f"duplicate key {key!r} (first at line {first})", first
    suffix = suffixes.get(key, 1) + 1
    while f"{key}~{suffix}" in seen:
        suffix += 1
    suffixes[key] = suffix
    candidate = f"{key}~{suffix}"
    seen[candidate] = line
    if len(candidate) > MAX_KEY_CHARS:
        return (
            key,
            f"duplicate key {key!r} (first at line {first}) and {candidate!r} would be too long",
            first,
        )
    warn(
        Problem(
            f"duplicate key {key!r} (first at line {first}, again at line {line}): renamed to {candidate!r}",
            field="key",
            file=file,
            line=line,
            key=candidate,
            severity="warning",
        )
    )
    return candidate, None, first


def _log_warning(problem: Problem) -> None:
    _log.warning("duplicate_key", problem=str(problem), key=problem.key)


# --------------------------------------------------------------------------------------------- reports


@dataclass(slots=True)
class ValidationReport:
    """What :func:`validate_job` found. Counts are rows/items; ``input_tokens`` estimated (``spec``);
    ``cost_usd`` the estimated Batch-priced cost of the valid items (FACTS §6); ``problems`` and
    ``warnings`` hold the first ``max_listed`` of each, ``problem_count``/``warning_count`` all of them.
    ``groups`` counts items per ``(endpoint, model)``; ``matrix``: product x variant counts of a matrix job."""

    items: int = 0
    problem_count: int = 0
    warning_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    groups: dict[tuple[str, str], int] = field(default_factory=dict)
    input_tokens: int = 0
    cost_usd: float = 0.0
    matrix: MatrixStats | None = None

    @property
    def ok(self) -> bool:
        """True when no row has a problem."""
        return self.problem_count == 0


def validate_job(spec: JobSpec, *, limit: int | None = None, max_listed: int = 50) -> ValidationReport:
    """Run :func:`make_items` over the whole manifest, keeping counts and the first problems (no items)."""
    report = ValidationReport()

    def on_warning(problem: Problem) -> None:
        report.warning_count += 1
        if len(report.warnings) < max_listed:
            report.warnings.append(problem)

    if spec.matrix is not None:
        report.matrix = MatrixStats()
    for result in make_items(spec, limit=limit, on_warning=on_warning, stats=report.matrix):
        if isinstance(result, Problem):
            report.problem_count += 1
            if len(report.problems) < max_listed:
                report.problems.append(result)
            continue
        report.items += 1
        group = (result.endpoint, result.model)
        report.groups[group] = report.groups.get(group, 0) + 1
        report.input_tokens += rules.estimate_input_tokens(result.body, spec.models)
        cost = rules.request_cost_usd(result.model, rules.estimate_usage(result.body, spec.models), models=spec.models)
        report.cost_usd += cost or 0.0
    return report


def count_summary(report: ValidationReport) -> Mapping[str, object]:
    """The report's counts as ``name → value`` (items, problems, warnings, estimated input tokens and USD)."""
    return {
        "items": report.items,
        "problems": report.problem_count,
        "warnings": report.warning_count,
        "estimated_input_tokens": report.input_tokens,
        "estimated_cost_usd": round(report.cost_usd, 4),
    }
