"""Validation before spending: manifest rows → checked :class:`batchpipe.domain.items.Item` objects, streamed.

:func:`make_items` yields an ``Item`` for every row the service would accept and one :class:`ItemProblem`
per reason a row cannot become a request (a row with three problems yields three, and no item). It never
stops on a row error; whether to refuse the whole job (the default) or to record invalid rows and go on
(``[run] skip_invalid``) is the caller's decision. File-level manifest errors are raised as
``batchpipe.errors.ManifestError``.

Keys are checked (:func:`key_problem`) and de-duplicated per the spec's ``on_duplicate_key``: with
``"suffix"`` the 2nd occurrence of ``K`` becomes ``K~2`` (3rd ``K~3``...), reported as a warning naming
both lines and recorded in the item's metadata under ``"_batchpipe"``; with ``"error"`` it is a problem.
Keys are registered even for rows with other problems, so a row's key never depends on another row's
validity. Memory stays flat: seen keys are kept as 8-byte hashes (:class:`KeyIndex`), not strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import unicodedata
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import orjson
import structlog

from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef, Item
from batchpipe.errors import InputError, ManifestError
from batchpipe.input.jobspec import BODY_DEFAULT_FIELDS, JobSpec
from batchpipe.input.manifest import ManifestRow, iter_manifest
from batchpipe.input.matrix import MatrixStats, ProductRefs, VariantMatrix, build_request, resolve_all
from batchpipe.input.references import ReferenceResolver, Resolved

__all__ = [
    "MAX_KEY_CHARS",
    "PLAIN_ITEM_FIELDS",
    "ItemProblem",
    "KeyIndex",
    "ValidationReport",
    "count_summary",
    "key_problem",
    "make_items",
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


@dataclass(frozen=True, slots=True)
class ItemProblem:
    """Why one manifest row cannot become a request (``severity="error"``), or a warning about it.

    ``key``: the item key when known; ``file``/``line``: where the row is (1-based physical line);
    ``field``: the column, manifest field or request body param (``"size"``, ``"images[0].image_url"``).
    ``str()`` reads ``file:line: field 'size': message``.
    """

    key: str | None
    file: str
    line: int | None
    field: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            where = f"{where}: field '{self.field}'"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}"

    @classmethod
    def from_error(cls, error: InputError, *, key: str | None = None) -> ItemProblem:
        """The problem an ``InputError`` (e.g. a yielded ``ManifestError``) describes."""
        return cls(key, error.file, error.line, error.field, error.reason)


class KeyIndex:
    """A set of keys stored as 64-bit hashes, each with the line it was first seen on.

    The hash is Python's own ``hash()`` of the ``str`` (SipHash-1-3 keyed with a secret drawn at process
    start, PEP 456; 64 bits on 64-bit builds): fast, and keys cannot be crafted to collide. An index lives
    within one process only, so the per-process seed does not matter. Open addressing over ``array('q')``
    at most half full: about 24 bytes per key (1,000,000 keys ≈ 24 MB), against ~100 for a ``dict`` of
    strings. Two distinct keys share a hash with probability about ``n² / 2**65`` (≈ 3e-8 for a million
    keys); such a key would be treated as a duplicate.
    """

    __slots__ = ("_count", "_limit", "_lines", "_mask", "_slots")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < max(capacity, 8):
            size *= 2
        self._allocate(size)
        self._count = 0

    def _allocate(self, size: int) -> None:
        self._slots = array("q", bytes(8)) * size  # signed: hash() values as they come
        self._lines = array("I", bytes(4)) * size
        self._mask = size - 1
        self._limit = size // 2  # grow past half full

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def _hash(key: str) -> int:
        return hash(key) or 1  # 0 marks an empty slot (hash() is never -1)

    def _find(self, digest: int) -> int:
        slots, mask = self._slots, self._mask
        i = digest & mask
        while True:
            value = slots[i]
            if value == 0 or value == digest:
                return i
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._slots[self._find(self._hash(key))] != 0

    def add(self, key: str, line: int) -> int | None:
        """Add ``key`` first seen on ``line``; returns ``None`` if new, else the line it was first seen on."""
        digest = hash(key) or 1
        slots = self._slots
        mask = self._mask
        i = digest & mask
        value = slots[i]
        while value:  # _find, inlined: this runs once per manifest row
            if value == digest:
                return self._lines[i]
            i = (i + 1) & mask
            value = slots[i]
        slots[i] = digest
        self._lines[i] = line if 0 <= line <= 0xFFFFFFFF else min(max(line, 0), 0xFFFFFFFF)
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return None

    def _grow(self) -> None:
        old_slots, old_lines = self._slots, self._lines
        self._allocate(len(old_slots) * 2)
        slots, lines, mask = self._slots, self._lines, self._mask
        for digest, line in zip(old_slots, old_lines, strict=True):
            if digest:
                i = digest & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = digest
                lines[i] = line


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


@dataclass(slots=True)
class _Row:
    """A row turned into a request, before key de-duplication and the service's checks."""

    key: str | None
    endpoint: rules.Endpoint
    body: dict[str, object]
    metadata: dict[str, object]
    problems: list[tuple[str | None, str]] = field(default_factory=list)  # (field, message)


def _plain_row(spec: JobSpec, row: ManifestRow) -> tuple[_Row, dict[str, object]]:
    """The row as a request, and the body fields the row sets itself (the rest come from the defaults)."""
    fields = row.fields
    out = _Row(None, _EDITS if fields.get("images") is not None else _GENERATIONS, {}, {})
    for name in fields:
        if name not in PLAIN_ITEM_FIELDS:
            out.problems.append((name, f"unknown field {name!r} (known: {', '.join(sorted(PLAIN_ITEM_FIELDS))})"))
    key = fields.get("key")
    if isinstance(key, str):
        out.key = key
    else:
        out.problems.append(("key", "missing" if key is None else f"must be a string, not {type(key).__name__}"))
    metadata = fields.get("metadata")
    if isinstance(metadata, dict):
        out.metadata = dict(metadata)
    elif metadata is not None:
        out.problems.append(("metadata", f"must be an object, not {type(metadata).__name__}"))
    body: dict[str, object] = {}
    own: dict[str, object] = {}
    for name in _BODY_ORDER:
        value = fields.get(name)
        if value is None:
            value = spec.defaults.get(name)
        else:
            own[name] = value
        if value is not None:
            body[name] = value
    out.body = body
    return out, own


def make_items(
    spec: JobSpec,
    *,
    limit: int | None = None,
    on_warning: Callable[[ItemProblem], None] | None = None,
    resolver: ReferenceResolver | None = None,
    stats: MatrixStats | None = None,
) -> Iterator[Item | ItemProblem]:
    r"""Stream ``spec``'s manifest as checked items and problems, in manifest order.

    ``limit``: read at most this many data rows (each row counts, valid or not). ``on_warning`` receives
    warnings (renamed duplicate keys); without it they are logged (structlog, event ``duplicate_key``).
    Each ``Item`` has the endpoint (``/v1/images/edits`` when the row has ``images``), the body with the
    defaults applied under the row's own fields and ``model`` always present, metadata (catalog mode: the
    spec's ``metadata_columns``; plain JSONL: the line's ``metadata``), ``source`` ``"file:line"`` and, for
    edits, ``inputs`` (the images, then the mask). Problems carry the param names of
    ``spec.check_image_request`` as ``field``. Raises ``ManifestError`` for file-level manifest errors.

    A ``[matrix]`` job (:mod:`batchpipe.input.matrix`) yields one edit item per product x variant, with
    ``product_key``, ``variant`` and ``inputs`` set; ``resolver`` turns reference texts into request params
    (default: a checking resolver with placeholder ``file_id``\ s for local files, enough for validation);
    ``stats`` (optional) receives the matrix counts. ``limit`` then counts manifest rows read.
    """
    file = str(spec.manifest_path)
    warn = on_warning or _log_warning
    if spec.matrix is not None:
        yield from _matrix_items(
            spec,
            spec.matrix,
            limit=limit,
            warn=warn,
            resolver=resolver or ReferenceResolver(spec.matrix.references),
            stats=stats if stats is not None else MatrixStats(),
        )
        return
    rows = iter_manifest(spec.manifest_path, fmt=spec.manifest_format, max_line_bytes=spec.max_line_bytes)
    if limit is not None:
        rows = itertools.islice(rows, limit)
    if spec.prompt_template is not None:
        yield from _catalog_items(spec, rows, file, warn)
    else:
        yield from _plain_items(spec, rows, file, warn)


def _single_spaced(text: str) -> str:
    """``" ".join(text.split())``: runs of whitespace become one space, none at either end.

    Most prompts already are: when ``text`` is printable (so its only whitespace is U+0020: every other
    ``str.isspace`` character is non-printable), has no two spaces in a row and none at either end, it is
    returned as is, without splitting it into words and joining them again.
    """
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(text.split())


def _column_picker(columns: tuple[str, ...]) -> Callable[[Mapping[str, object]], dict[str, object]]:
    """A function doing ``{column: values.get(column) for column in columns}`` with one dict display.

    Generated once per job (no comprehension frame per row); column names enter the source only through
    ``repr()`` of a ``str``, so no manifest text is ever executed.
    """
    items = ", ".join(f"{column!r}: get({column!r})" for column in columns)
    source = f"def pick(values):\n    get = values.get\n    return {{{items}}}\n"
    namespace: dict[str, object] = {}
    exec(compile(source, "<batchpipe metadata columns>", "exec"), namespace)  # noqa: S102 - see docstring
    pick = namespace["pick"]
    assert callable(pick)
    return pick


def _catalog_items(
    spec: JobSpec, rows: Iterator[ManifestRow | ManifestError], file: str, warn: Callable[[ItemProblem], None]
) -> Iterator[Item | ItemProblem]:
    """:func:`make_items` in catalog mode: the hot loop of a big catalog, so everything per job is hoisted.

    The body fields from ``[defaults]`` are checked once (``spec.ImageRequestCheck``); per row only the
    prompt is (the rest of the body is the same on every row). Same results as checking each full body.
    """
    assert spec.key_template is not None and spec.prompt_template is not None
    render_key = spec.key_template.renderer
    render_prompt = spec.prompt_template.renderer
    empty_prompt = f"the prompt renders empty (columns used: {', '.join(spec.prompt_template.fields)})"
    defaults = spec.defaults
    model = defaults["model"]
    shared = {name: defaults[name] for name in BODY_DEFAULT_FIELDS[1:] if name in defaults}
    check = rules.ImageRequestCheck(_GENERATIONS, {"model": model, **shared}, advice=spec.policy)
    pick_metadata = _column_picker(spec.metadata_columns)
    index = KeyIndex()
    add_key = index.add
    for row in rows:
        if type(row) is not ManifestRow:
            assert isinstance(row, ManifestError)
            yield ItemProblem.from_error(row)
            continue
        line, values = row
        found: list[tuple[str | None, str]] = []  # (field, message)
        key: str | None
        try:
            key = render_key(values).strip()
        except TypeError as exc:
            found.append(("key", str(exc)))
            key = None
        try:
            prompt = _single_spaced(render_prompt(values))
        except TypeError as exc:
            found.append(("prompt", str(exc)))
            prompt = ""
        else:
            if not prompt:
                found.append(("prompt", empty_prompt))
        metadata = pick_metadata(values)
        if key is not None:
            message = key_problem(key)
            if message is not None:
                found.append(("key", message))
                key = None
            else:
                first = add_key(key, line)
                if first is not None:  # a repeated key (add_key registered nothing)
                    original = key
                    key, duplicate, first = _repeated_key(spec, index, key, first, line, file, warn)
                    if duplicate is not None:
                        found.append(("key", duplicate))
                    else:
                        metadata["_batchpipe"] = {"duplicate_of": {"key": original, "line": first}}
        checked = check.check_prompt(prompt)
        if found or checked or key is None:
            reported = {name for name, _ in found}
            yield from [ItemProblem(key, file, line, name, message) for name, message in found]
            yield from [ItemProblem(key, file, line, p.param, p.message) for p in checked if p.param not in reported]
            continue
        # positional (key, endpoint, body, metadata, source): a fifth cheaper than keywords, once per row
        yield Item(key, _GENERATIONS, {"model": model, "prompt": prompt, **shared}, metadata, f"{file}:{line}")


def _plain_items(
    spec: JobSpec, rows: Iterator[ManifestRow | ManifestError], file: str, warn: Callable[[ItemProblem], None]
) -> Iterator[Item | ItemProblem]:
    """:func:`make_items` for a plain JSONL item manifest (each line holds its key and body fields)."""
    defaults = spec.defaults
    shared = {name: defaults[name] for name in _BODY_ORDER if defaults.get(name) is not None}
    checks = {
        endpoint: rules.ImageRequestCheck(endpoint, shared, advice=spec.policy) for endpoint in (_GENERATIONS, _EDITS)
    }
    index = KeyIndex()
    for row in rows:
        if isinstance(row, ManifestError):
            yield ItemProblem.from_error(row)
            continue
        built, own = _plain_row(spec, row)
        key = built.key
        if key is not None:
            message = key_problem(key)
            if message is not None:
                built.problems.append(("key", message))
                key = None
        if key is not None:
            original = key
            key, duplicate, first = _dedupe(spec, index, key, row.line, file, warn)
            if duplicate is not None:
                built.problems.append(("key", duplicate))
            elif first is not None:
                built.metadata["_batchpipe"] = {"duplicate_of": {"key": original, "line": first}}
        reported = {name for name, _ in built.problems}
        problems = [ItemProblem(key, file, row.line, name, message) for name, message in built.problems]
        problems += [
            ItemProblem(key, file, row.line, p.param, p.message)
            for p in checks[built.endpoint].check(own)
            if p.param not in reported
        ]
        if problems or key is None:
            yield from problems
            continue
        inputs: tuple[ImageRef, ...] = ()
        if built.endpoint == _EDITS:
            refs = [*_as_list(built.body.get("images")), built.body.get("mask"), built.body.get("markup")]
            inputs = tuple(ref for ref in map(_image_ref, refs) if ref is not None)
        yield Item(
            key=key,
            endpoint=built.endpoint,
            body=built.body,
            metadata=built.metadata,
            source=f"{file}:{row.line}",
            inputs=inputs,
        )


#: The longest ``custom_id`` a line can carry (``bp-`` + 20 hex + ``-a10``; ``[run] max_attempts`` <= 10).
_LONGEST_CUSTOM_ID: Final = "bp-" + "0" * 20 + "-a10"


def _line_bytes(endpoint: str, body: dict[str, object]) -> int:
    """Bytes of the batch input line ``body`` will take (the builder's serialization, newline included)."""
    line = {"custom_id": _LONGEST_CUSTOM_ID, "method": "POST", "url": endpoint, "body": body}
    return len(orjson.dumps(line)) + 1


def _template_field(template_fields: tuple[str, ...], fallback: str) -> str:
    """The manifest column a product-level template reads (its only field), else ``fallback``."""
    return template_fields[0] if len(template_fields) == 1 else fallback


def _matrix_items(
    spec: JobSpec,
    matrix: VariantMatrix,
    *,
    limit: int | None,
    warn: Callable[[ItemProblem], None],
    resolver: ReferenceResolver,
    stats: MatrixStats,
) -> Iterator[Item | ItemProblem]:
    """:func:`make_items` for a ``[matrix]`` job: products (first row per product key) x variants."""
    assert spec.key_template is not None and spec.prompt_template is not None
    file = str(spec.manifest_path)
    spec_file = spec.source_name
    keys = KeyIndex()
    products = KeyIndex()
    stats.variants = len(matrix.variants)
    brand: list[Resolved] = []
    for index, asset in enumerate(matrix.brand_assets):
        found = resolver.resolve(asset, base=matrix.spec_dir, role="image")
        if isinstance(found, str):  # checked at load; only a file changed since then gets here
            yield ItemProblem(None, spec_file, None, f"references.brand_assets[{index}]", found)
            return
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
    read = 0
    rows = iter_manifest(spec.manifest_path, fmt=spec.manifest_format, max_line_bytes=spec.max_line_bytes)
    for row in rows:
        if limit is not None and read >= limit:
            break
        read += 1
        if isinstance(row, ManifestError):
            yield ItemProblem.from_error(row)
            continue
        base_values: dict[str, object] = {**row.fields, **matrix.vars}
        product_field = _template_field(matrix.product.fields, "matrix.product")
        try:
            product_key = matrix.product.render(base_values).strip()
        except TypeError as exc:
            yield ItemProblem(None, file, row.line, product_field, str(exc))
            continue
        if not product_key:
            yield ItemProblem(None, file, row.line, product_field, "the product key renders empty")
            continue
        if products.add(product_key, row.line) is not None:
            stats.folded_rows += 1  # e.g. a Shopify variant row of a Handle seen earlier: first row wins
            continue
        stats.products += 1
        product = _product_refs(matrix, resolver, base_values)
        for variant, (variant_images, variant_mask, variant_problems) in zip(matrix.variants, per_variant, strict=True):
            values: dict[str, object] = {**row.fields, **variant.values, "variant": variant.name}
            problems: list[tuple[str | None, str]] = [*product.problems, *variant_problems]
            key: str | None = None
            try:
                key = spec.key_template.render(values).strip()
            except TypeError as exc:
                problems.append(("key", str(exc)))
            try:
                prompt = _single_spaced(spec.prompt_template.render(values))
            except TypeError as exc:
                problems.append(("prompt", str(exc)))
                prompt = ""
            else:
                if not prompt:
                    problems.append(("prompt", "the prompt renders empty"))
            built = build_request(
                prompt=prompt,
                defaults=spec.defaults,
                variant=variant,
                product=product,
                variant_refs=variant_images,
                variant_mask=variant_mask,
                brand_refs=brand,
            )
            problems += built.problems
            if key is not None:
                message = key_problem(key)
                if message is not None:
                    problems.append(("key", message))
                    key = None
            original, first = key, None
            if key is not None:
                key, duplicate, first = _dedupe(spec, keys, key, row.line, file, warn)
                if duplicate is not None:
                    problems.append(("key", duplicate))
            reported = {name for name, _ in problems}
            problems += [
                (p.param, p.message)
                for p in rules.check_image_request(_EDITS, built.body, advice=spec.policy)
                if p.param not in reported and p.param.split("[")[0].split(".")[0] not in reported
            ]
            if not problems:
                size = _line_bytes(_EDITS, built.body)
                if size > spec.run.max_shard_bytes:
                    problems.append(
                        (
                            "images",
                            f"the request line would be {size:,} bytes, over the {spec.run.max_shard_bytes:,}-byte "
                            "shard limit (data URLs count in full: upload local files instead)",
                        )
                    )
            if problems or key is None:
                for name, message in problems:
                    yield ItemProblem(key, file, row.line, name, f"{message} (variant {variant.name!r})")
                continue
            metadata: dict[str, object] = {column: row.fields.get(column) for column in spec.metadata_columns}
            if built.mask_ref is not None:
                metadata["reference_mask"] = built.mask_ref.ref
            if first is not None:
                metadata["_batchpipe"] = {"duplicate_of": {"key": original, "line": first}}
            stats.items += 1
            yield Item(
                key=key,
                endpoint=_EDITS,
                body=built.body,
                metadata=metadata,
                source=f"{file}:{row.line}",
                product_key=product_key,
                variant=variant.name,
                inputs=built.inputs,
            )


def _product_refs(matrix: VariantMatrix, resolver: ReferenceResolver, values: Mapping[str, object]) -> ProductRefs:
    """Render and resolve a product row's reference images and mask (problems named by column)."""
    out = ProductRefs()
    for index, template in enumerate(matrix.image_templates):
        name = _template_field(template.fields, f"references.images[{index}]")
        try:
            text = template.render(values).strip()
        except TypeError as exc:
            out.problems.append((name, str(exc)))
            continue
        if not text:
            continue
        found = resolver.resolve(text, base=matrix.manifest_dir, role="image")
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
            found = resolver.resolve(text, base=matrix.manifest_dir, role="mask")
            if isinstance(found, str):
                out.problems.append((name, f"mask: {found}"))
            else:
                out.mask = found
    return out


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _dedupe(
    spec: JobSpec, index: KeyIndex, key: str, line: int, file: str, warn: Callable[[ItemProblem], None]
) -> tuple[str, str | None, int | None]:
    """``(final key, problem or None, first line if a duplicate)`` for ``key`` seen on ``line``.

    Registers the final key in ``index``.
    """
    first = index.add(key, line)
    if first is None:
        return key, None, None
    return _repeated_key(spec, index, key, first, line, file, warn)


def _repeated_key(
    spec: JobSpec, index: KeyIndex, key: str, first: int, line: int, file: str, warn: Callable[[ItemProblem], None]
) -> tuple[str, str | None, int]:
    """:func:`_dedupe` for ``key``, already in ``index`` since line ``first``: rename it, or a problem."""
    if spec.on_duplicate_key == "error":
        return key, f"duplicate key {key!r} (first at line {first})", first
    suffix = 2
    while True:
        candidate = f"{key}~{suffix}"
        if index.add(candidate, line) is None:
            break
        suffix += 1
    if len(candidate) > MAX_KEY_CHARS:
        return (
            key,
            f"duplicate key {key!r} (first at line {first}) and {candidate!r} would be too long",
            first,
        )
    warn(
        ItemProblem(
            candidate,
            file,
            line,
            "key",
            f"duplicate key {key!r} (first at line {first}, again at line {line}): renamed to {candidate!r}",
            "warning",
        )
    )
    return candidate, None, first


def _log_warning(problem: ItemProblem) -> None:
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
    problems: list[ItemProblem] = field(default_factory=list)
    warnings: list[ItemProblem] = field(default_factory=list)
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

    def on_warning(problem: ItemProblem) -> None:
        report.warning_count += 1
        if len(report.warnings) < max_listed:
            report.warnings.append(problem)

    if spec.matrix is not None:
        report.matrix = MatrixStats()
    for result in make_items(spec, limit=limit, on_warning=on_warning, stats=report.matrix):
        if isinstance(result, ItemProblem):
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
