"""The GPT Image model table: every model batchpipe knows, as data (``batchpipe/data/image-models.toml``).

Validation (``spec.check_image_request``), cost estimates (``spec.estimate_usage``, ``spec.request_cost_usd``),
lifecycle checks (:mod:`batchpipe.domain.lifecycle`) and the emulator all read one :class:`ModelTable`; no other module
names a model. The shipped file is validated by :class:`ModelFacts` when loaded. A job adds or overrides rows with
a ``[models]`` table in its spec, any command with ``--models FILE`` (:func:`load_overrides`); both use the same
fields, and a row may set only what it changes.

Sources of the shipped rows: the official ``openai`` SDK 3.57.0 types (``image_model.py``,
``image_generate_params.py``, ``image_edit_params.py``, ``model.py``), OpenAI's deprecations and model pages
(``shared/reference/openai-image-models-2026-11.md`` §1-2) and the fact sheet (§4.3, §6). Each row names its own.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchpipe.domain.localfiles import read_capped

__all__ = [
    "SHIPPED_TABLE_RESOURCE",
    "BatchSupport",
    "Endpoint",
    "ModelFacts",
    "ModelTable",
    "ModelTableError",
    "Prices",
    "SizeRule",
    "load_overrides",
    "shipped_table",
]

Endpoint = Literal["/v1/images/generations", "/v1/images/edits"]
BatchSupport = Literal["yes", "no", "unconfirmed"]
#: The data file inside the package.
SHIPPED_TABLE_RESOURCE: Final = "data/image-models.toml"


class ModelTableError(ValueError):
    """A model table (shipped, ``[models]`` in a job spec, or ``--models FILE``) that does not hold together.

    ``file`` and ``field`` (``models.<name>.<field>``) say where; the message says what.
    """

    def __init__(self, message: str, *, file: str, field: str | None = None) -> None:
        self.file = file
        self.field = field
        super().__init__(f"{file}: {field + ': ' if field else ''}{message}")
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeRule(_Strict):
    """The ``WxH`` rule of models that take arbitrary sizes (SDK ``image_generate_params.py`` ``size``).

    Both edges divisible by ``multiple_of``; long:short edge ratio at most ``max_ratio`` (3.0 = 1:3..3:1); the
    long edge at most ``max_long_edge`` pixels; ``min_pixels``..``max_pixels`` in total (3840x2160 =
    8,294,400); above ``experimental_above_pixels`` (2560x1440 = 3,686,400) the size is experimental (accepted,
    warned). ``endpoints``: where the rule applies (the JSON edit form takes only the fixed sizes, SPEC
    ``EditImageBodyJsonParam.size``).
    """

    multiple_of: Annotated[int, Field(ge=1)] = 16
    max_ratio: Annotated[float, Field(ge=1.0)] = 3.0
    max_long_edge: Annotated[int, Field(ge=1)] = 3840
    min_pixels: Annotated[int, Field(ge=0)] = 0
    max_pixels: Annotated[int, Field(ge=1)] = 8_294_400
    experimental_above_pixels: Annotated[int, Field(ge=0)] | None = None
    endpoints: tuple[Endpoint, ...] = ("/v1/images/generations",)

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width`` x ``height`` (pixels) breaks the rule, or ``None`` if it fits."""
        if width % self.multiple_of or height % self.multiple_of:
            return f"both edges must be multiples of {self.multiple_of}"
        if max(width, height) > self.max_long_edge:
            return f"the longest edge must be at most {self.max_long_edge}"
        if max(width, height) > self.max_ratio * min(width, height):
            return f"the long:short edge ratio must be at most {self.max_ratio:g}:1"
        if not self.min_pixels <= width * height <= self.max_pixels:
            return f"the total pixel count must be between {self.min_pixels:,} and {self.max_pixels:,}"
        return None

    def experimental(self, width: int, height: int) -> bool:
        """True when the size is above the experimental threshold (accepted, but the service may refuse it)."""
        return self.experimental_above_pixels is not None and width * height > self.experimental_above_pixels


class Prices(_Strict):
    """USD per 1,000,000 tokens at the standard (synchronous) tier; the Batch API charges half (FACTS §6)."""

    text_in: Annotated[float, Field(ge=0)]
    text_in_cached: Annotated[float, Field(ge=0)] | None = None
    image_in: Annotated[float, Field(ge=0)]
    image_in_cached: Annotated[float, Field(ge=0)] | None = None
    image_out: Annotated[float, Field(ge=0)]


_Triple = tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]
_TokenTriple = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]


class ModelFacts(_Strict):
    """One row of the table: what one model name accepts, costs, and how long it lives.

    - ``name``: the ``model`` value of a request; ``family``: the model it belongs to (for people).
    - ``alias_of``: for an alias, the model name it points to today (its facts are that row's);
      ``like``: a template row whose facts this one starts from (no alias meaning).
    - ``endpoints``: Images API endpoints the model serves. ``sizes``: the fixed ``size`` values (``auto``
      included where allowed); ``custom_size``: the ``WxH`` rule, or ``None``.
    - ``qualities``, ``complexity``, ``backgrounds``, ``output_formats``, ``input_fidelity``: accepted values
      (an empty list: the parameter is refused). ``mask`` / ``markup``: whether edits may carry them.
    - ``preview``: ``"field=value"`` settings accepted with a warning (in preview, needs access, or not
      confirmed for this model).
    - ``batch``: runs in the Batch API: ``yes`` / ``no`` / ``unconfirmed``.
    - ``prices``: token prices (:class:`Prices`), ``None`` when unknown; ``per_image``: quality → USD per image at
      1024x1024 / 1024x1536 / 1536x1024 (standard tier), where published; ``output_tokens``: quality → estimated
      output image tokens for square / portrait / landscape; ``output_tokens_scale``: ``shape`` (use the
      triple) or ``pixels`` (scale the square count by the pixel count).
    - ``launched``, ``shutdown`` (the announced shutdown date: no request works from 00:00 UTC that day),
      ``replacement`` (named by OpenAI, best first), ``lifecycle_source``.
    - ``source``, ``checked``: where the row's facts come from and the date they were checked; ``notes``.
    """

    name: str
    family: str | None = None
    alias_of: str | None = None
    like: str | None = None
    endpoints: tuple[Endpoint, ...] = ("/v1/images/generations", "/v1/images/edits")
    sizes: tuple[str, ...] = ("auto", "1024x1024", "1536x1024", "1024x1536")
    custom_size: SizeRule | None = None
    qualities: tuple[str, ...] = ("auto", "low", "medium", "high")
    complexity: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ("auto", "opaque", "transparent")
    output_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    input_fidelity: tuple[str, ...] = ()
    mask: bool = True
    markup: bool = False
    preview: tuple[str, ...] = ()
    batch: BatchSupport = "unconfirmed"
    prices: Prices | None = None
    per_image: dict[str, _Triple] = Field(default_factory=dict)
    output_tokens: dict[str, _TokenTriple] = Field(default_factory=dict)
    output_tokens_scale: Literal["shape", "pixels"] = "shape"
    launched: dt.date | None = None
    shutdown: dt.date | None = None
    replacement: tuple[str, ...] = ()
    lifecycle_source: str | None = None
    notes: str | None = None
    source: Annotated[str, Field(min_length=1)]
    checked: dt.date

    def is_preview(self, field: str, value: object) -> bool:
        """True when ``field=value`` is accepted only with a warning (``preview``)."""
        return f"{field}={value}" in self.preview

    def shutdown_at(self) -> dt.datetime | None:
        """The moment the model stops serving requests: 00:00 UTC on ``shutdown``, or ``None``."""
        if self.shutdown is None:
            return None
        return dt.datetime.combine(self.shutdown, dt.time(), tzinfo=dt.UTC)


#: Fields a row never takes from its ``alias_of`` / ``like`` row.
_OWN_FIELDS: Final = frozenset({"name", "family", "alias_of", "like", "source", "checked", "notes", "launched"})


class ModelTable:
    """Every known model name → its resolved :class:`ModelFacts` (aliases and templates already applied).

    Build with :func:`shipped_table` or :meth:`from_rows`; :meth:`with_overrides` returns a new table with a
    job's or a file's rows merged in. ``origin`` names the files the rows came from (for messages).
    """

    __slots__ = ("_raw", "_rows", "origin")

    def __init__(self, rows: Mapping[str, ModelFacts], *, origin: str, raw: Mapping[str, Any] | None = None) -> None:
        self._rows: dict[str, ModelFacts] = dict(rows)
        self._raw: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (raw or {}).items()}
        self.origin = origin

    def get(self, name: str) -> ModelFacts | None:
        """The facts of ``name`` (a family, alias or dated snapshot), or ``None`` if it is not in the table."""
        return self._rows.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[ModelFacts]:
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def names(self) -> list[str]:
        """Every model name, sorted."""
        return sorted(self._rows)

    def live_names(self, at: dt.datetime) -> list[str]:
        """Model names still serving at ``at`` (no shutdown, or a shutdown after it), sorted."""
        live = []
        for facts in self:
            end = facts.shutdown_at()
            if end is None or end > at:
                live.append(facts.name)
        return sorted(live)

    def confirmed_for_batch(self, at: dt.datetime) -> list[str]:
        """Live model names whose Batch support is ``yes``, aliases first (the names a job should use); a dated
        snapshot is left out when its alias is listed."""
        live = set(self.live_names(at))
        names = [f.name for f in self if f.batch == "yes" and f.name in live]
        aliased = {self._rows[n].alias_of for n in names}
        names = [n for n in names if n not in aliased]
        return sorted(names, key=lambda n: (self._rows[n].alias_of is None, n))

    @classmethod
    def from_rows(cls, raw: Mapping[str, Any], *, origin: str) -> ModelTable:
        """Resolve raw rows (TOML tables by model name: ``{"gpt-image-2": {"alias_of": ...}, ...}``) into a table.

        A row with ``alias_of`` or ``like`` starts from that row's facts (``name``, ``family``, ``source``,
        ``checked``, ``notes`` and ``launched`` excepted) and overrides what it sets. Raises
        :class:`ModelTableError` (file ``origin``, field ``models.<name>[.<field>]``) for an unknown field, a bad
        value, a missing ``source``/``checked``, a reference to a row that does not exist, or a cycle.
        """
        rows: dict[str, dict[str, Any]] = {}
        for name, row in raw.items():
            if not isinstance(row, Mapping):
                raise ModelTableError("must be a table of model facts", file=origin, field=f"models.{name}")
            rows[str(name)] = dict(row)
        resolved: dict[str, ModelFacts] = {}

        def resolve(name: str, chain: tuple[str, ...]) -> ModelFacts:
            if name in resolved:
                return resolved[name]
            if name in chain:
                raise ModelTableError(
                    f"alias_of/like form a cycle: {' -> '.join((*chain, name))}", file=origin, field=f"models.{name}"
                )
            row = rows[name]
            start: dict[str, Any] = {}
            for which in ("alias_of", "like"):
                parent_name = row.get(which)
                if parent_name is None:
                    continue
                if not isinstance(parent_name, str) or parent_name not in rows:
                    raise ModelTableError(
                        f"names no model in the table: {parent_name!r}", file=origin, field=f"models.{name}.{which}"
                    )
                parent = resolve(parent_name, (*chain, name))
                start = {k: v for k, v in parent.model_dump().items() if k not in _OWN_FIELDS}
                break
            merged = {**start, **row, "name": name}
            if merged.get("custom_size") == {}:
                merged["custom_size"] = None  # an empty table removes an inherited WxH rule
            try:
                resolved[name] = ModelFacts.model_validate(merged)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ModelTableError(first["msg"], file=origin, field=f"models.{name}.{loc}") from exc
            return resolved[name]

        for name in rows:
            resolve(name, ())
        for facts in resolved.values():
            for other in facts.replacement:
                if other not in resolved:
                    raise ModelTableError(
                        f"replacement names no model in the table: {other!r}",
                        file=origin,
                        field=f"models.{facts.name}.replacement",
                    )
        return cls(resolved, origin=origin, raw=rows)

    def with_file(self, path: Path | None) -> ModelTable:
        """This table with the rows of a ``--models FILE`` merged in (itself when ``path`` is None). Raises
        :class:`ModelTableError` naming the file (and ``models.<name>.<field>``) for a file that does not load."""
        if path is None:
            return self
        return self.with_overrides(load_overrides(path), origin=str(path))

    def with_overrides(self, raw: Mapping[str, Any], *, origin: str) -> ModelTable:
        """A new table: this one with ``raw`` rows (``[models."NAME"]`` tables) added or merged over it.

        A row for a model already in the table changes only the fields it sets (an alias of it follows); its
        ``source`` gains ``"; overridden in <origin>"`` unless the row gives its own. A new row needs
        ``source`` and ``checked`` (or takes them from nothing: it is refused without). Raises
        :class:`ModelTableError` as :meth:`from_rows`.
        """
        if not raw:
            return self
        merged = {k: dict(v) for k, v in self._raw.items()}
        for name, row in raw.items():
            if not isinstance(row, Mapping):
                raise ModelTableError("must be a table of model facts", file=origin, field=f"models.{name}")
            name = str(name)
            if name in merged:
                before = merged[name]
                update = dict(row)
                if "source" not in update:
                    update["source"] = f"{before.get('source', '')}; overridden in {origin}"
                merged[name] = {**before, **update}
            else:
                merged[name] = dict(row)
        try:
            return ModelTable.from_rows(merged, origin=f"{self.origin} + {origin}")
        except ModelTableError as exc:  # the rows just added are the ones to fix: name their file
            raise ModelTableError(exc.message, file=origin, field=exc.field) from exc


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelTableError(f"not valid TOML: {exc}", file=origin) from exc


@cache
def shipped_table() -> ModelTable:
    """The table shipped in the package (``batchpipe/data/image-models.toml``), loaded and checked once.

    Raises :class:`ModelTableError` if the shipped file is broken (a packaging bug, caught by the tests).
    """
    origin = "batchpipe/" + SHIPPED_TABLE_RESOURCE
    text = resources.files("batchpipe").joinpath(SHIPPED_TABLE_RESOURCE).read_text(encoding="utf-8")
    data = _read_toml(text, origin)
    return ModelTable.from_rows(data.get("models", {}), origin=origin)


def load_overrides(path: Path) -> dict[str, Any]:
    """The raw ``[models."NAME"]`` rows of a ``--models FILE`` (TOML), to pass to :meth:`ModelTable.with_overrides`.

    Raises :class:`ModelTableError` naming the file for an unreadable file, bad TOML, or no ``[models]`` table.
    """
    origin = str(path)
    try:
        text = read_capped(path, what="model table").decode("utf-8")
    except OSError as exc:  # also a FIFO, a device or a file over MAX_CONFIG_BYTES (domain.localfiles)
        raise ModelTableError(f"cannot read the model table: {exc.strerror or exc}", file=origin) from exc
    except UnicodeDecodeError as exc:
        raise ModelTableError(f"the model table is not UTF-8: {exc.reason}", file=origin) from exc
    data = _read_toml(text, origin)
    rows = data.get("models")
    extra = sorted(set(data) - {"models", "schema_version"})
    if extra:
        raise ModelTableError(f'unknown top-level key {extra[0]!r} (expected [models."NAME"] tables)', file=origin)
    if not isinstance(rows, dict) or not rows:
        raise ModelTableError('holds no [models."NAME"] rows', file=origin, field="models")
    return rows
