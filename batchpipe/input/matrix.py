"""Variant matrices: manifest products × a list of variants → one edit request per pair.

A job spec with a ``[matrix]`` section (see :mod:`batchpipe.input.jobspec`) turns each *product* (a manifest row,
one per distinct ``[matrix] product`` value: the first row wins, later rows with the same value, e.g. Shopify
variant rows of a Handle, are folded into it) into one item per *variant*. A variant has a ``name``
(rendered as ``{variant}`` in templates), free text values used by the templates (``{background}``,
``{slogan}``...), optional body overrides (``request``: size, quality, output_format, background, ...),
an optional ``mask`` and optional extra reference ``images``. Variants come from ``[[matrix.variant]]``
tables in the spec or from a CSV file (``[matrix] variants_file``; columns ``name``, optional ``mask``,
``request.<field>`` for overrides, every other column a template value).

Every item goes to ``/v1/images/edits`` (SPEC ``EditImageBodyJsonParam``) with ``images`` = the product's
reference images, then the variant's, then the brand assets (at most ``spec.MAX_EDIT_IMAGES``), and ``mask``
= the variant's mask, else the product row's (``[references] mask`` template), if any.

This module holds the variant model and its loaders; :func:`batchpipe.input.validate.make_items` does the
expansion (keys, de-duplication, problems), with :func:`build_request` building each pair's request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef
from batchpipe.errors import InputError, JobSpecError, ManifestError
from batchpipe.input.manifest import iter_manifest, read_columns
from batchpipe.input.references import ReferenceOptions, ReferenceResolver, Resolved
from batchpipe.input.templates import Template

__all__ = [
    "REQUEST_FIELDS",
    "BuiltRequest",
    "MatrixStats",
    "ProductRefs",
    "Variant",
    "VariantMatrix",
    "build_request",
    "variants_from_csv",
    "variants_from_tables",
]

#: Body fields a variant may override (SPEC ``EditImageBodyJsonParam``); ``n`` and ``output_compression`` are ints.
REQUEST_FIELDS: Final[tuple[str, ...]] = (*rules.REQUEST_OPTION_FIELDS, "input_fidelity")
_INT_FIELDS: Final = frozenset({"n", "output_compression"})
#: Keys of a ``[[matrix.variant]]`` table that are not template values.
_RESERVED: Final = frozenset({"name", "mask", "images", "request"})
_NAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Variant:
    """One column of the matrix.

    ``name``: 1..64 chars of ``A-Z a-z 0-9 . _ -`` (``{variant}`` in templates, the ledger's ``variant``).
    ``values``: template values (``[matrix.vars]`` merged under the variant's own). ``request``: body
    overrides (keys of :data:`REQUEST_FIELDS`). ``mask`` / ``images``: reference texts, relative to ``base``.
    ``source``: where it was defined, ``file:line`` (for messages); ``field``: its location for messages
    (``matrix.variant[2]`` or ``variants.csv`` row fields).
    """

    name: str
    values: Mapping[str, str]
    request: Mapping[str, object] = field(default_factory=dict)
    mask: str | None = None
    images: tuple[str, ...] = ()
    base: Path = Path(".")
    source: str = ""
    field: str = ""


@dataclass(frozen=True, slots=True)
class VariantMatrix:
    """The ``[matrix]`` and ``[references]`` settings of a job spec, checked and resolved.

    ``product``: template of the product key (one product per distinct value, first row wins). ``variants``:
    in order. ``image_templates``: per-product reference images (rendered over the row; empty renders
    dropped), relative to ``manifest_dir``. ``mask_template``: per-row mask (optional). ``brand_assets``:
    references added to every item, relative to ``spec_dir``. ``references``: how they are sent. ``vars``:
    ``[matrix.vars]`` constants (product-level templates see them too). ``variants_source``: the file the
    variants came from. ``row_dirs``: the folders (absolute, symlinks resolved) a local path named by a manifest
    row may resolve into: the manifest's folder, then ``[references] allow_dirs``; empty means the manifest's
    folder alone.
    """

    product: Template
    variants: tuple[Variant, ...]
    image_templates: tuple[Template, ...]
    mask_template: Template | None
    brand_assets: tuple[str, ...]
    spec_dir: Path
    manifest_dir: Path
    references: ReferenceOptions
    vars: Mapping[str, str] = field(default_factory=dict)
    variants_source: str = ""
    row_dirs: tuple[Path, ...] = ()

    @property
    def row_roots(self) -> tuple[Path, ...]:
        """:attr:`row_dirs`, or the manifest's folder (symlinks resolved) when none are set."""
        return self.row_dirs or (self.manifest_dir.resolve(),)

    @property
    def variant_fields(self) -> frozenset[str]:
        """Every template value name some variant defines, plus ``variant``."""
        names = {"variant"}
        for variant in self.variants:
            names.update(variant.values)
        return frozenset(names)


@dataclass(slots=True)
class MatrixStats:
    """Counts from one pass over a matrix job: ``products`` (distinct product keys seen), ``folded_rows``
    (rows folded into an earlier row's product), ``variants`` (per product), ``items`` (requests built)."""

    products: int = 0
    folded_rows: int = 0
    variants: int = 0
    items: int = 0

    def line(self) -> str:
        """``matrix: 20 products x 4 variants = 80 items`` (plus folded rows and the shortfall, if any)."""
        text = f"matrix: {self.products} products x {self.variants} variants = {self.products * self.variants} items"
        notes = []
        if self.folded_rows:
            notes.append(f"{self.folded_rows} row(s) folded into their product")
        if self.items != self.products * self.variants:
            notes.append(f"{self.items} valid")
        return f"{text} ({'; '.join(notes)})" if notes else text


# --------------------------------------------------------------------------------------------- loaders

_Fail = Callable[[str, int | None, str], JobSpecError]


def _request_overrides(
    raw: Mapping[str, object], where: str, fail: Callable[[str, str], InputError]
) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in raw.items():
        if name not in REQUEST_FIELDS:
            raise fail(f"unknown request field {name!r} (known: {', '.join(REQUEST_FIELDS)})", f"{where}.{name}")
        if name in _INT_FIELDS:
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise fail(f"{name} must be a whole number, not {value!r}", f"{where}.{name}") from None
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail(f"{name} must be a whole number", f"{where}.{name}")
        elif not isinstance(value, str):
            raise fail(f"{name} must be a string", f"{where}.{name}")
        out[name] = value
    return out


def variants_from_tables(
    tables: Sequence[Mapping[str, object]],
    *,
    base: Path,
    vars: Mapping[str, str],
    spec_file: str,
    locate: Callable[[int, str | None], int | None],
) -> tuple[Variant, ...]:
    """Variants from ``[[matrix.variant]]`` tables (relative paths against ``base``, the spec's directory).

    ``locate(index, key)`` gives the spec line of table ``index``'s (dotted) ``key``, or of the table. Raises
    ``JobSpecError`` (spec file, line, field ``matrix.variant[i].<key>``) for a missing or bad name, a
    repeated name, a non-string value, or a bad request override.
    """
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        where = f"matrix.variant[{index}]"

        def fail(message: str, at: str, index: int = index) -> JobSpecError:
            key = ".".join(at.split(".")[2:]) or None  # "matrix.variant[1].request.size" -> "request.size"
            return JobSpecError(message, file=spec_file, line=locate(index, key), field=at)

        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail("each variant needs a name of 1..64 chars of A-Z a-z 0-9 . _ -", f"{where}.name")
        if name in seen:
            raise fail(f"variant name {name!r} repeats (first in matrix.variant[{seen[name]}])", f"{where}.name")
        seen[name] = index
        values = dict(vars)
        for key, value in table.items():
            if key in _RESERVED:
                continue
            if not isinstance(value, str):
                raise fail(f"variant values are text; {key!r} is {type(value).__name__}", f"{where}.{key}")
            values[key] = value
        mask = table.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise fail("mask must be a string (a path, URL or data URL)", f"{where}.mask")
        images = table.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise fail("images must be a list of strings (paths, URLs or data URLs)", f"{where}.images")
        request = table.get("request", {})
        if not isinstance(request, dict):
            raise fail("request must be a table of body fields", f"{where}.request")
        variants.append(
            Variant(
                name=name,
                values=values,
                request=_request_overrides(request, f"{where}.request", fail),
                mask=mask or None,
                images=tuple(images),
                base=base,
                source=f"{spec_file}:{locate(index, None) or ''}".rstrip(":"),
                field=where,
            )
        )
    return tuple(variants)


def variants_from_csv(path: Path, *, vars: Mapping[str, str], max_line_bytes: int) -> tuple[Variant, ...]:
    """Variants from a CSV file: column ``name`` (required), ``mask`` (optional, relative to the CSV's
    directory), ``request.<field>`` (overrides; empty cells are not set), any other column a template value.

    Raises ``ManifestError`` naming the CSV file, line and column for unreadable files, a missing ``name``
    column, bad or repeated names and bad overrides.
    """
    file = str(path)
    columns = read_columns(path, fmt="csv", max_line_bytes=max_line_bytes)
    if "name" not in columns:
        raise ManifestError("a variants file needs a 'name' column", file=file, line=1, field="name")
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for row in iter_manifest(path, fmt="csv", max_line_bytes=max_line_bytes):
        if isinstance(row, ManifestError):
            raise row

        def fail(message: str, at: str, line: int = row.line) -> InputError:
            return ManifestError(message, file=file, line=line, field=at)

        fields = {k: ("" if v is None else str(v)) for k, v in row.fields.items()}
        name = fields.get("name", "").strip()
        if not _NAME.match(name):
            raise fail("a variant name is 1..64 chars of A-Z a-z 0-9 . _ -", "name")
        if name in seen:
            raise fail(f"variant name {name!r} repeats (first at line {seen[name]})", "name")
        seen[name] = row.line
        values = dict(vars)
        request: dict[str, object] = {}
        for key, value in fields.items():
            if key.startswith("request."):
                if value.strip():
                    request[key.removeprefix("request.")] = value.strip()
            elif key not in ("name", "mask"):
                values[key] = value
        variants.append(
            Variant(
                name=name,
                values=values,
                request=_request_overrides(request, "request", lambda m, at: fail(m, at)),
                mask=fields.get("mask", "").strip() or None,
                base=path.parent,
                source=f"{file}:{row.line}",
                field="",
            )
        )
    if not variants:
        raise ManifestError("the variants file has no variants", file=file, line=1)
    return tuple(variants)


# --------------------------------------------------------------------------------------------- one pair


@dataclass(slots=True)
class ProductRefs:
    """A product row's resolved references: ``images`` (in order) and ``mask`` (or None); ``problems`` are
    ``(field, message)`` pairs (field: the manifest column the template reads, or ``references.images``)."""

    images: list[Resolved] = field(default_factory=list)
    mask: Resolved | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class BuiltRequest:
    """One product × variant request before key checks: ``body`` (edits JSON body), ``inputs`` (ledger
    references: images, then the mask), ``mask_ref`` (the mask's ledger reference), ``problems``."""

    body: dict[str, object]
    inputs: tuple[ImageRef, ...]
    mask_ref: ImageRef | None
    problems: list[tuple[str, str]]


def build_request(
    *,
    prompt: str,
    defaults: Mapping[str, object],
    variant: Variant,
    product: ProductRefs,
    variant_refs: Sequence[Resolved],
    variant_mask: Resolved | None,
    brand_refs: Sequence[Resolved],
) -> BuiltRequest:
    """The edits body for one pair: defaults, then the variant's overrides, ``images`` = product images +
    variant images + brand assets, ``mask`` = the variant's, else the product's.

    Problems (field, message): more than ``spec.MAX_EDIT_IMAGES`` images; a mask whose size differs from the
    first image's (both known locally); no image at all.
    """
    problems: list[tuple[str, str]] = []
    body: dict[str, object] = {"model": defaults.get("model"), "prompt": prompt}
    for name in REQUEST_FIELDS[1:]:
        if name in variant.request:
            body[name] = variant.request[name]
        elif name in defaults:
            body[name] = defaults[name]
    if "model" in variant.request:
        body["model"] = variant.request["model"]
    refs = [*product.images, *variant_refs, *brand_refs]
    if not refs:
        problems.append(
            ("images", "no reference image: the product's image columns are empty and there are no brand assets")
        )
    elif len(refs) > rules.MAX_EDIT_IMAGES:
        problems.append(
            (
                "images",
                f"{len(refs)} images ({len(product.images)} product, {len(variant_refs)} variant, "
                f"{len(brand_refs)} brand assets) for variant {variant.name!r}: at most {rules.MAX_EDIT_IMAGES}",
            )
        )
    body["images"] = [dict(r.param) for r in refs]
    mask = variant_mask if variant_mask is not None else product.mask
    if mask is not None:
        body["mask"] = dict(mask.param)
        first = refs[0].image if refs else None
        if first is not None and mask.image is not None and first.size != mask.image.size:
            problems.append(
                (
                    "mask",
                    f"mask {mask.image.size[0]}x{mask.image.size[1]} for variant {variant.name!r} differs from the "
                    f"first image's {first.size[0]}x{first.size[1]} (they must be the same size)",
                )
            )
    inputs = tuple(r.ref for r in refs) + ((mask.ref,) if mask is not None else ())
    return BuiltRequest(body, inputs, mask.ref if mask is not None else None, problems)


def resolve_all(
    resolver: ReferenceResolver, texts: Sequence[str], *, base: Path, field: str
) -> tuple[list[Resolved], list[tuple[str, str]]]:
    """Resolve image references; returns (resolved, problems as (field, message))."""
    resolved: list[Resolved] = []
    problems: list[tuple[str, str]] = []
    for index, text in enumerate(texts):
        found = resolver.resolve(text, base=base, role="image")
        if isinstance(found, str):
            problems.append((f"{field}[{index}]" if len(texts) > 1 else field, found))
        else:
            resolved.append(found)
    return resolved, problems
