"""Job specs: a TOML file naming the manifest, how rows become requests, and how the run behaves.

Format (every section optional except ``[job]`` and ``[manifest]``; unknown keys are errors)::

    [job]
    name = "catalog-nightly"              # 1..64 chars of A-Z a-z 0-9 . _ -
    [manifest]
    path = "data/catalog.csv"             # relative to the spec file
    format = "csv"                        # "csv" | "jsonl"; default from the extension
    max_line_bytes = 67108864             # cap on one manifest line, bytes
    [item]                                # catalog mode (required for CSV): requests built from templates
    key = "{pid}"
    prompt = "Studio product photo of {product_name}{? by {brand}}."
    on_duplicate_key = "suffix"           # "suffix" (K, K~2, K~3...) | "error"
    metadata = ["uniq_id", "pid"]         # columns copied to item metadata; default: the template columns
    skip_if_empty = ["Image Src"]         # rows where any of these columns is blank are skipped (warned)
    [defaults]                            # Images API body fields applied to every request
    model = "gpt-image-2"                 # also: size, quality, background, output_format,
    size = "1024x1024"                    #   output_compression, n, moderation
    [output]
    dir = "out/catalog-nightly"           # relative to the working directory unless absolute
    [c2pa]
    trust = "default"
    [run]
    max_attempts = 3
    skip_invalid = false
    max_requests_per_shard = 50000
    max_shard_bytes = 200000000
    max_input_tokens_per_shard = 1000000  # optional
    [run.enqueued_token_budget]           # per model, input tokens
    "gpt-image-2" = 2000000

A *variant matrix* job (brand variants through ``/v1/images/edits``, see :mod:`batchpipe.input.matrix` and
:mod:`batchpipe.input.references`) adds::

    [matrix]
    product = "{Handle}"                  # one product per distinct value; later rows with it are folded
    variants_file = "data/variants.csv"   # OR [[matrix.variant]] tables (exactly one of the two)
    [matrix.vars]                         # template constants; variants may override them
    brand_font = "a bold sans-serif"
    [[matrix.variant]]
    name = "autumn-en"                    # {variant}; the key template must use it
    slogan = "Fall into comfort"          # any other text key: a template value
    mask = "masks/band.png"               # optional; images = [...] optional extra references
    [matrix.variant.request]              # body overrides: size quality output_format background
    size = "1536x1024"                    #   output_compression n moderation input_fidelity model
    [references]
    images = ["{Image Src}"]              # per-product reference templates (URL, data URL, file_id:ID, path)
    brand_assets = ["brand/logo.png"]     # added to every item (relative to the spec)
    mask = "{Mask}"                       # optional per-row mask template
    local_files = "upload"                # | "data_url"
    upload_purpose = "vision"
    upload_expires_after_s = 2592000
    reuse_margin_s = 86400
    delete_unused = false
    mirror_port = 0
    allow_dirs = ["../photos"]            # folders (relative to the spec) besides the manifest's that a
                                          #   local path in a manifest row may resolve into (after symlinks)
    [references.mirror]
    "https://cdn.example.com/photos/" = "photos/"

and ``[defaults] input_fidelity``. Every check (variants, overrides against the model's edit rules, brand
assets and variant masks) runs at load time; per-row references are checked by
:func:`batchpipe.input.validate.make_items`.

Without ``[item]`` the manifest must be a *plain JSONL* item file: one object per line with ``key``, any
Images API body fields and ``metadata`` (see :mod:`batchpipe.input.validate`).

Templates (:class:`Template`) do plain field substitution only: ``{column}`` inserts a manifest column's
value verbatim (column names may contain spaces), ``{{`` and ``}}`` are literal braces, and ``{? ...}`` is an
optional segment, dropped when any field inside it renders empty. Nothing else: no attribute or index
access, conversions, format specs or expressions, and inserted values are never expanded again.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchpipe.domain import spec
from batchpipe.domain.lifecycle import DEFAULT_WARN_DAYS, Clock, ModelPolicy, clock_from_env
from batchpipe.domain.localfiles import read_capped
from batchpipe.domain.modeltable import ModelTable, ModelTableError, shipped_table
from batchpipe.errors import InputError, JobSpecError, ManifestError
from batchpipe.input.manifest import (
    DEFAULT_CSV,
    DEFAULT_MAX_LINE_BYTES,
    CsvOptionError,
    CsvOptions,
    ManifestFormat,
    detect_format,
    read_columns,
)
from batchpipe.input.matrix import Variant, VariantMatrix, variants_from_csv, variants_from_tables
from batchpipe.input.references import DEFAULT_UPLOAD_PURPOSE, ReferenceOptions, ReferenceResolver
from batchpipe.input.templates import SUSPICIOUS_FIELD_CHARS, Template, TemplateSyntaxError

__all__ = [
    "BODY_DEFAULT_FIELDS",
    "MAX_COLLECT_CONCURRENCY",
    "MAX_COLLECT_WORKERS",
    "DuplicatePolicy",
    "JobSpec",
    "RunSection",
]

DuplicatePolicy = Literal["suffix", "error"]
#: What a catalog row whose prompt uses an empty column (outside ``{? ...}``) becomes: a located problem (``error``,
#: the default: exit 2, or ``invalid`` with ``--skip-invalid``), a warning and no item (``skip``), or an item with
#: the prompt as rendered (``render``).
EmptyFieldPolicy = Literal["error", "skip", "render"]

#: The request body fields a spec may default (SPEC ``CreateImageRequest``), in the order bodies are built.
BODY_DEFAULT_FIELDS: Final[tuple[str, ...]] = spec.REQUEST_OPTION_FIELDS
#: Upper bounds of ``[run] collect_workers`` (threads per output file) and ``collect_concurrency`` (files at once).
MAX_COLLECT_WORKERS: Final = 64
MAX_COLLECT_CONCURRENCY: Final = 16


# --------------------------------------------------------------------------------------------- the file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_JobName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class _JobSection(_Strict):
    name: _JobName
    description: str = ""


class _ManifestSection(_Strict):
    path: Annotated[str, Field(min_length=1)]
    format: ManifestFormat | None = None
    max_line_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_LINE_BYTES
    delimiter: str | None = None  # CSV only: one character (default ",")
    encoding: str | None = None  # CSV only: a Python codec name (default "utf-8")


class _ItemSection(_Strict):
    key: str | None = None
    prompt: str | None = None
    on_duplicate_key: DuplicatePolicy = "suffix"
    on_empty_field: EmptyFieldPolicy = "error"
    metadata: list[str] | None = None
    skip_if_empty: list[str] = []


class _Defaults(_Strict):
    model: str | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    n: int | None = None
    moderation: str | None = None
    complexity: str | None = None
    safety_identifier: str | None = None
    user: str | None = None  # deprecated: safety_identifier (warned)
    frame_count: int | None = None
    frame_duration_ms: int | None = None
    svg: dict[str, Any] | None = None
    input_fidelity: str | None = None  # edits only: matrix jobs


class _MatrixSection(_Strict):
    product: Annotated[str, Field(min_length=1)]
    variants_file: str | None = None
    vars: dict[str, str] = Field(default_factory=dict)
    variant: list[dict[str, object]] | None = None


_UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


class _ReferencesSection(_Strict):
    images: list[str] = Field(default_factory=list)
    brand_assets: list[str] = Field(default_factory=list)
    mask: str | None = None
    local_files: Literal["upload", "data_url"] = "upload"
    upload_purpose: _UploadPurpose = DEFAULT_UPLOAD_PURPOSE
    upload_expires_after_s: Annotated[int, Field(ge=spec.FILE_EXPIRY_MIN_S, le=spec.FILE_EXPIRY_MAX_S)] = (
        spec.FILE_EXPIRY_MAX_S
    )
    reuse_margin_s: Annotated[int, Field(ge=0)] = 86_400
    delete_unused: bool = False
    mirror: dict[str, str] = Field(default_factory=dict)
    mirror_port: Annotated[int, Field(ge=0, le=65535)] = 0
    allow_dirs: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class _OutputSection(_Strict):
    dir: str | None = None


class _C2paSection(_Strict):
    trust: Annotated[str, Field(min_length=1)] = "default"


class RunSection(_Strict):
    """The job spec's ``[run]`` section (the run's settings are :class:`batchpipe.runtime.settings.RunOptions`).

    ``max_attempts`` per item (1..10); ``skip_invalid``: record invalid rows and go on instead of refusing the
    job; ``enqueued_token_budget``: model → input tokens allowed in flight (FACTS §3.1 enqueued tokens);
    shard limits ``max_requests_per_shard`` (≤ 50,000, FACTS §3.1), ``max_shard_bytes`` (bytes, ≤
    ``spec.MAX_BATCH_FILE_BYTES``) and ``max_input_tokens_per_shard`` (estimated input tokens, optional);
    ``delete_input_files`` / ``delete_output_files``: delete batch input files from the Files API once their
    batch ends, and output/error files once collected, so storage does not fill up over months of nightly runs
    (gotchas #6; input files otherwise expire after 30 days, FACTS §1); ``retry_error_codes``: error codes
    resubmitted automatically besides the retryable ones (e.g. ``invalid_image_url``; moderation blocks and
    invalid requests are otherwise final); ``model_shutdown_warning_days``: warn when a model shuts down within
    this many days (:mod:`batchpipe.domain.lifecycle`); ``collect_workers``: worker threads per output file that
    decode, write and C2PA-check images (about twice the cores: fsync waits release them); ``collect_concurrency``:
    output files collected at once. The command line's ``--collect-workers`` overrides ``collect_workers``.
    ``max_cost_usd``: a run whose estimated cost (USD, Batch prices) is above it submits nothing
    (:mod:`batchpipe.runtime.costguard`; ``--max-cost`` overrides it).
    """

    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    skip_invalid: bool = False
    enqueued_token_budget: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    max_requests_per_shard: Annotated[int, Field(ge=1, le=spec.MAX_REQUESTS_PER_BATCH)] = spec.MAX_REQUESTS_PER_BATCH
    max_shard_bytes: Annotated[int, Field(ge=1024, le=spec.MAX_BATCH_FILE_BYTES)] = spec.MAX_BATCH_FILE_BYTES
    max_input_tokens_per_shard: Annotated[int, Field(ge=1)] | None = None
    delete_input_files: bool = True
    delete_output_files: bool = True
    retry_error_codes: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    model_shutdown_warning_days: Annotated[int, Field(ge=0, le=3650)] = DEFAULT_WARN_DAYS
    collect_workers: Annotated[int, Field(ge=1, le=MAX_COLLECT_WORKERS)] = 4
    collect_concurrency: Annotated[int, Field(ge=1, le=MAX_COLLECT_CONCURRENCY)] = 2
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None


class _SpecFile(_Strict):
    job: _JobSection
    manifest: _ManifestSection
    item: _ItemSection = Field(default_factory=_ItemSection)
    defaults: _Defaults = Field(default_factory=_Defaults)
    output: _OutputSection = Field(default_factory=_OutputSection)
    c2pa: _C2paSection = Field(default_factory=_C2paSection)
    run: RunSection = Field(default_factory=RunSection)
    matrix: _MatrixSection | None = None
    references: _ReferencesSection | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)


_TOML_LINE: Final = re.compile(r"at line (\d+)")
#: Builds the error for a message and a location in the spec (section, key...).
_Fail = Callable[[str, tuple[str, ...]], JobSpecError]


def _locate(text: str, loc: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of the TOML key at ``loc`` (``tomllib`` gives no positions for values).

    Tries the full location, then its parents (a missing key is reported at its table's header).
    """
    lines = text.splitlines()
    parts = [str(p) for p in loc]
    for depth in range(len(parts) - 1, -1, -1):
        line = _find_key(lines, parts[:depth], parts[depth])
        if line is not None:
            return line
    return None


def _header_re(names: list[str]) -> re.Pattern[str]:
    quoted = (r"[\"']?" + re.escape(name) + r"[\"']?" for name in names)
    return re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(quoted) + r"\s*\]")


def _find_key(lines: list[str], section: list[str], key: str) -> int | None:
    start = 0
    if section:
        header = _header_re(section)
        found = next((i for i, raw in enumerate(lines) if header.match(raw)), None)
        if found is None:
            return None
        start = found + 1
    key_re = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    for index in range(start, len(lines)):
        if lines[index].lstrip().startswith("["):
            break
        if key_re.match(lines[index]):
            return index + 1
    table = _header_re([*section, key])
    return next((i + 1 for i, raw in enumerate(lines) if table.match(raw)), None)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A loaded, checked job spec with every path resolved.

    ``name``: job name. ``spec_path``: the TOML file (``None`` for :meth:`for_manifest`). ``manifest_path``,
    ``manifest_format``, ``max_line_bytes`` (bytes): the manifest. ``key_template``/``prompt_template``: set
    together in catalog mode, both ``None`` for a plain JSONL item manifest. ``metadata_columns``: columns
    copied to each item's metadata (catalog mode). ``skip_if_empty``: columns whose blank value skips a row
    (catalog mode). ``csv_options``: delimiter and encoding of a CSV manifest. ``defaults``: body fields
    applied under each row's own (only those set). ``output_dir``: absolute. ``c2pa_trust``: trust setting
    name. ``run``: run options.
    ``columns``: the manifest's columns as read at load time (catalog mode), else ``None``. ``matrix``: the
    variant matrix and reference settings of a ``[matrix]`` job (:mod:`batchpipe.input.matrix`), else ``None``.
    ``policy``: the model lifecycle policy (:class:`~batchpipe.domain.lifecycle.ModelPolicy`) over the job's model table
    (``models``), which validation and the build consult for every item. ``model_line``: the spec line of
    ``[defaults] model`` (for lifecycle messages), else ``None``.
    """

    name: str
    manifest_path: Path
    manifest_format: ManifestFormat
    output_dir: Path
    spec_path: Path | None = None
    key_template: Template | None = None
    prompt_template: Template | None = None
    on_duplicate_key: DuplicatePolicy = "suffix"
    on_empty_field: EmptyFieldPolicy = "error"
    metadata_columns: tuple[str, ...] = ()
    skip_if_empty: tuple[str, ...] = ()
    defaults: dict[str, object] = field(default_factory=dict)
    c2pa_trust: str = "default"
    run: RunSection = field(default_factory=RunSection)
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    csv_options: CsvOptions = DEFAULT_CSV
    columns: tuple[str, ...] | None = None
    matrix: VariantMatrix | None = None
    policy: ModelPolicy = field(default_factory=lambda: ModelPolicy(shipped_table(), clock=clock_from_env()))
    model_line: int | None = None

    @property
    def models(self) -> ModelTable:
        """The model table in force for this job: shipped rows, the spec's ``[models]``, then ``--models FILE``."""
        return self.policy.table

    @property
    def source_name(self) -> str:
        """The file problems with the spec itself are reported against (the spec, else the manifest)."""
        return str(self.spec_path if self.spec_path is not None else self.manifest_path)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        workdir: Path | None = None,
        models_file: Path | None = None,
        clock: Clock | None = None,
        on_warning: Callable[[str], None] | None = None,
        defer_lifecycle: bool = False,
    ) -> JobSpec:
        """Read and check the TOML spec at ``path``; ``workdir`` (default: the current directory) anchors a
        relative ``[output] dir``. ``models_file``: a ``--models FILE`` of model table rows, applied over the
        spec's ``[models]``; ``clock`` (default: ``BATCHPIPE_NOW`` if set, else the system clock) and
        ``on_warning`` feed the lifecycle policy. ``defer_lifecycle``: check only the capabilities of the spec's
        models here and leave their lifecycle to the caller (``run`` first asks the service, whose
        ``shutdown_date`` wins over the table; see :attr:`model_line`).

        Checks: TOML syntax, the schema (unknown keys, types, ranges), the manifest (exists, format, header),
        template syntax and that every template field names a manifest column, the ``[defaults]`` against
        ``spec.check_image_request``, and token-budget model names. Raises ``JobSpecError`` naming the spec
        file, the line when known, and the field (pydantic location joined with dots).
        """
        name = str(path)
        try:  # a FIFO, a device or an endless file is refused, never waited on (domain.localfiles)
            text = read_capped(path, what="job spec").decode("utf-8")
        except OSError as exc:
            raise JobSpecError(f"cannot read job spec: {exc.strerror or exc}", file=name) from exc
        except UnicodeDecodeError as exc:
            raise JobSpecError(f"job spec is not UTF-8: {exc.reason}", file=name) from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = _TOML_LINE.search(str(exc))
            raise JobSpecError(
                f"not valid TOML: {exc}", file=name, line=int(match.group(1)) if match else None
            ) from exc
        try:
            parsed = _SpecFile.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            loc = tuple(first["loc"])
            more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
            raise JobSpecError(
                f"{first['msg']}{more}",
                file=name,
                line=_locate(text, loc),
                field=".".join(str(p) for p in loc),
            ) from exc

        def fail(message: str, loc: tuple[str, ...]) -> JobSpecError:
            return JobSpecError(message, file=name, line=_locate(text, loc), field=".".join(loc))

        manifest_path = as_named(path.parent / parsed.manifest.path)
        fmt = parsed.manifest.format or detect_format(manifest_path)
        if fmt is None:
            raise fail(
                f"cannot tell the format of {parsed.manifest.path!r} from its extension: set format",
                ("manifest", "format"),
            )
        problem = _not_a_file(manifest_path)
        if problem:
            raise fail(problem, ("manifest", "path"))
        csv_options = _csv_options(parsed.manifest, fmt, fail)

        policy = _policy(
            parsed.models,
            name,
            text,
            models_file,
            clock=clock,
            on_warning=on_warning,
            warn_days=parsed.run.model_shutdown_warning_days,
        )
        defaults = {k: v for k, v in parsed.defaults.model_dump().items() if v is not None}
        if parsed.matrix is None:
            if "input_fidelity" in defaults:
                raise fail("input_fidelity applies to edits: it needs a [matrix] job", ("defaults", "input_fidelity"))
            if parsed.references is not None:
                raise fail("[references] needs a [matrix] section (products x variants)", ("references",))
        _check_defaults(defaults, fail, policy, edits=parsed.matrix is not None, lifecycle=not defer_lifecycle)
        for model in parsed.run.enqueued_token_budget:
            facts = policy.table.get(model)
            if facts is None or facts.batch == "no":
                batch_models = [f.name for f in policy.table if f.batch != "no"]
                raise fail(
                    f"not a GPT Image model that runs in the Batch API: {model!r} (known: {', '.join(batch_models)})",
                    ("run", "enqueued_token_budget", model),
                )

        item = parsed.item
        key_template = prompt_template = None
        matrix: VariantMatrix | None = None
        columns: tuple[str, ...] | None = None
        metadata_columns: tuple[str, ...] = ()
        if item.key is not None or item.prompt is not None or fmt == "csv":
            if item.key is None or item.prompt is None:
                missing = "key" if item.key is None else "prompt"
                raise fail(
                    f"catalog manifests need both [item] key and prompt templates ({missing} is missing)",
                    ("item", missing),
                )
            if "model" not in defaults:
                raise fail("catalog jobs need a default model in [defaults]", ("defaults", "model"))
            key_template = _parse_template(item.key, ("item", "key"), fail)
            prompt_template = _parse_template(item.prompt, ("item", "prompt"), fail)
            try:
                columns = tuple(
                    read_columns(
                        manifest_path, fmt=fmt, max_line_bytes=parsed.manifest.max_line_bytes, csv_options=csv_options
                    )
                )
            except ManifestError as exc:
                raise JobSpecError(
                    f"cannot read the manifest's columns: {exc}",
                    file=name,
                    line=_locate(text, ("manifest", "path")),
                    field="manifest.path",
                ) from exc
            known = set(columns)
            if parsed.matrix is not None:
                matrix = _load_matrix(
                    parsed,
                    path,
                    text,
                    manifest_path,
                    columns,
                    defaults,
                    fail,
                    policy,
                    lifecycle=not defer_lifecycle,
                    delimiter=csv_options.delimiter if fmt == "csv" else None,
                )
                known |= matrix.variant_fields
                if "variant" not in key_template.fields:
                    raise fail(
                        "a matrix job's key template must use {variant} (one key per product x variant pair)",
                        ("item", "key"),
                    )
                for variant in matrix.variants:
                    for loc, template in ((("item", "key"), key_template), (("item", "prompt"), prompt_template)):
                        for name_ in template.fields:
                            if name_ in matrix.variant_fields and name_ != "variant" and name_ not in variant.values:
                                raise fail(
                                    f"variant {variant.name!r} ({variant.source}) has no value for template field "
                                    f"'{{{name_}}}' (give it one, or a default in [matrix.vars])",
                                    loc,
                                )
            for loc, template in ((("item", "key"), key_template), (("item", "prompt"), prompt_template)):
                for column in template.fields:
                    if column not in known:
                        delimiter = csv_options.delimiter if fmt == "csv" else None
                        raise fail(_unknown_column(column, columns, delimiter), loc)
            metadata_columns = tuple(
                item.metadata
                if item.metadata is not None
                else (c for c in dict.fromkeys((*key_template.fields, *prompt_template.fields)) if c in columns)
            )
            for column in metadata_columns:
                if column not in known:
                    raise fail(f"[item] metadata names no manifest column {column!r}", ("item", "metadata"))
            for column in item.skip_if_empty:
                if column not in columns:
                    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
                    raise fail(f"names no manifest column {column!r}; columns: {shown}", ("item", "skip_if_empty"))
            if item.skip_if_empty and matrix is not None:
                raise fail("[item] skip_if_empty applies to catalog jobs, not [matrix] jobs", ("item", "skip_if_empty"))
        elif item.metadata is not None:
            raise fail("[item] metadata columns need catalog mode (key and prompt templates)", ("item", "metadata"))
        elif item.skip_if_empty:
            raise fail("[item] skip_if_empty needs catalog mode (key and prompt templates)", ("item", "skip_if_empty"))

        out = Path(parsed.output.dir) if parsed.output.dir else Path("out") / parsed.job.name
        base = workdir if workdir is not None else Path.cwd()
        return cls(
            name=parsed.job.name,
            spec_path=path,
            manifest_path=manifest_path,
            manifest_format=fmt,
            output_dir=(out if out.is_absolute() else base / out).resolve(),
            key_template=key_template,
            prompt_template=prompt_template,
            on_duplicate_key=item.on_duplicate_key,
            on_empty_field=item.on_empty_field,
            metadata_columns=metadata_columns,
            skip_if_empty=tuple(item.skip_if_empty),
            defaults=defaults,
            c2pa_trust=parsed.c2pa.trust,
            run=parsed.run,
            max_line_bytes=parsed.manifest.max_line_bytes,
            csv_options=csv_options,
            columns=columns,
            matrix=matrix,
            policy=policy,
            model_line=_locate(text, ("defaults", "model")) if "model" in defaults else None,
        )

    @classmethod
    def for_manifest(
        cls,
        path: Path,
        job_name: str,
        *,
        defaults: Mapping[str, object] | None = None,
        output_dir: Path | None = None,
        run: RunSection | None = None,
        workdir: Path | None = None,
        on_duplicate_key: DuplicatePolicy = "error",
        models_file: Path | None = None,
        clock: Clock | None = None,
        on_warning: Callable[[str], None] | None = None,
        defer_lifecycle: bool = False,
    ) -> JobSpec:
        """A spec for running a plain JSONL item manifest directly (no TOML file).

        A plain manifest's keys are declared unique, so ``on_duplicate_key`` defaults to ``"error"``.

        ``defaults`` as in ``[defaults]``; ``output_dir`` defaults to ``out/<job_name>`` under ``workdir``
        (default: the current directory); ``models_file``, ``clock``, ``on_warning``, ``defer_lifecycle`` as in
        :meth:`load`. Raises
        ``JobSpecError`` for a bad job name or defaults, and for a manifest that is missing or not JSONL.
        """
        name = str(path)

        def fail(message: str, loc: tuple[str, ...]) -> JobSpecError:
            return JobSpecError(message, file=name, field=".".join(loc))

        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", job_name):
            raise fail(f"job name {job_name!r} must be 1..64 chars of A-Z a-z 0-9 . _ -", ("job", "name"))
        fmt = detect_format(path)
        if fmt != "jsonl":
            raise fail("a manifest run without a job spec must be a .jsonl item file", ("manifest", "format"))
        problem = _not_a_file(path)
        if problem:
            raise fail(problem, ("manifest", "path"))
        try:
            checked = _Defaults.model_validate(dict(defaults or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise fail(first["msg"], ("defaults", *(str(p) for p in first["loc"]))) from exc
        clean = {k: v for k, v in checked.model_dump().items() if v is not None}
        run = run or RunSection()
        policy = _policy(
            {}, name, "", models_file, clock=clock, on_warning=on_warning, warn_days=run.model_shutdown_warning_days
        )
        _check_defaults(clean, fail, policy, lifecycle=not defer_lifecycle)
        base = workdir if workdir is not None else Path.cwd()
        out = output_dir if output_dir is not None else Path("out") / job_name
        return cls(
            name=job_name,
            manifest_path=as_named(path),
            manifest_format="jsonl",
            output_dir=(out if out.is_absolute() else base / out).resolve(),
            defaults=clean,
            run=run,
            on_duplicate_key=on_duplicate_key,
            policy=policy,
        )


def as_named(path: Path) -> Path:
    """``path`` made absolute with its folders' symlinks resolved but its own name kept: a symlinked manifest
    is judged by the name it was given (its extension, hence its format; its folder, hence where relative
    reference paths start), not by the name of the file it points to. Opening it still follows the link."""
    if path.name in ("", ".", ".."):
        return path.resolve()
    return Path(os.path.realpath(path.parent)) / path.name


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a manifest (missing, a folder, a FIFO, a device...), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"no such manifest file: {path}"
    except OSError as exc:
        return f"cannot read the manifest {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"the manifest {path} is not a regular file (a FIFO, a device or a folder cannot be read as one)"
    return None


#: A stand-in reference image for checking edit bodies without their real references.
_PROBE_IMAGES: Final = [{"image_url": "https://example.com/probe.png"}]


def _policy(
    rows: Mapping[str, Any],
    spec_file: str,
    text: str,
    models_file: Path | None,
    *,
    clock: Clock | None,
    on_warning: Callable[[str], None] | None,
    warn_days: int,
) -> ModelPolicy:
    """The job's lifecycle policy over the shipped table, the spec's ``[models]`` rows and ``--models FILE``.

    Raises ``JobSpecError`` naming the spec (with the line of the row) or the models file, and the field.
    """
    table = shipped_table()
    try:
        table = table.with_overrides(rows, origin=spec_file)
    except ModelTableError as exc:
        parts = tuple((exc.field or "models").split("."))
        raise JobSpecError(exc.message, file=spec_file, line=_locate(text, parts[:3]), field=exc.field) from exc
    try:
        table = table.with_file(models_file)
    except ModelTableError as exc:
        raise JobSpecError(exc.message, file=exc.file, field=exc.field) from exc
    return ModelPolicy(table, clock=clock or clock_from_env(), warn_days=warn_days, on_warning=on_warning)


def _check_defaults(
    defaults: dict[str, object], fail: _Fail, policy: ModelPolicy, *, edits: bool = False, lifecycle: bool = True
) -> None:
    """Check the defaults alone with the service's rules and (``lifecycle``) the model's lifecycle (a stand-in
    prompt; the lenient generation rules, or for ``edits`` the edit rules with a stand-in image)."""
    probe = {**defaults, "prompt": "x"}
    endpoint = "/v1/images/generations"
    if edits:
        probe["images"] = _PROBE_IMAGES
        endpoint = "/v1/images/edits"
    advice = policy if lifecycle else None
    for problem in spec.check_image_request(endpoint, probe, models=policy.table, advice=advice):
        if problem.field == "model" and "model" not in defaults:
            continue  # plain JSONL lines may each name their model
        raise fail(problem.message, ("defaults", str(problem.field).split("[")[0].split(".")[0]))


def _parse_template(text: str, loc: tuple[str, ...], fail: _Fail) -> Template:
    try:
        return Template.parse(text)
    except TemplateSyntaxError as exc:
        raise fail(f"bad template: {exc}", loc) from exc


#: Separators a CSV export may use instead of the configured one, with their names and TOML spellings.
_OTHER_DELIMITERS: Final = (
    (";", "semicolon", '";"'),
    ("\t", "tab", '"\\t"'),
    ("|", "pipe", '"|"'),
    (",", "comma", '","'),
)


def _unknown_column(column: str, columns: tuple[str, ...], delimiter: str | None = None) -> str:
    """The message for template field ``column`` missing from the manifest's ``columns``, with a hint when the
    cause is likely: a field written as an expression, a column spelt with another case or surrounding spaces, or
    (``delimiter``: the CSV delimiter in use; None for JSONL) a header read as one column because the file is
    separated by another character (a European spreadsheet's ``;``, a tab)."""
    hint = ""
    near = [c for c in columns if c.strip().casefold() == column.strip().casefold()]
    if SUSPICIOUS_FIELD_CHARS.search(column):
        hint = " (templates substitute plain fields only: no attribute/index access, conversions, format specs)"
    elif near:
        hint = f" (did you mean {near[0]!r}? column names are matched exactly, case and spaces included)"
    elif delimiter is not None and len(columns) == 1:
        for char, name, toml in _OTHER_DELIMITERS:
            if char != delimiter and char in columns[0]:
                hint = (
                    f" (the header reads as one column: if the file is {name}-separated, set [manifest] "
                    f"delimiter = {toml})"
                )
                break
    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
    return f"template field '{{{column}}}' names no manifest column{hint}; columns: {shown}"


# --------------------------------------------------------------------------------------------- matrix jobs


def _array_table_line(text: str, path: tuple[str, ...], index: int, key: str | None) -> int | None:
    """1-based line of ``key`` in the ``index``-th ``[[a.b]]`` table of ``text``: ``key`` may be dotted
    (``request.size``: the ``size`` key of the ``[a.b.request]`` sub-table). Falls back to the nearest
    enclosing header; ``None`` if there is no such table."""
    lines = text.splitlines()
    array = re.compile(r"^\s*\[\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in path) + r"\s*\]\]")
    headers = [i for i, raw in enumerate(lines) if array.match(raw)]
    if index >= len(headers):
        return None
    start = headers[index]
    end = next((h for h in headers if h > start), len(lines))
    if key is None:
        return start + 1
    *tables, leaf = key.split(".")
    header = start
    if tables:
        sub = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in (*path, *tables)) + r"\s*\]")
        found = next((i for i in range(start + 1, end) if sub.match(lines[i])), None)
        if found is None:
            return start + 1
        header = found
    key_re = re.compile(r"^\s*[\"']?" + re.escape(leaf) + r"[\"']?\s*=")
    leaf_table = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in (*path, *tables, leaf)) + r"\s*\]")
    for i in range(header + 1, end):
        if leaf_table.match(lines[i]):
            return i + 1
        if lines[i].lstrip().startswith("["):
            break
        if key_re.match(lines[i]):
            return i + 1
    return header + 1


def _load_matrix(
    parsed: _SpecFile,
    path: Path,
    text: str,
    manifest_path: Path,
    columns: tuple[str, ...],
    defaults: dict[str, object],
    fail: _Fail,
    policy: ModelPolicy,
    *,
    lifecycle: bool = True,
    delimiter: str | None = None,
) -> VariantMatrix:
    """Check ``[matrix]`` and ``[references]`` and build the :class:`VariantMatrix` (raises ``JobSpecError``,
    or ``ManifestError`` for a variants CSV, naming file, line and field). ``delimiter``: the manifest's CSV
    delimiter (None for JSONL), for the hint of an unknown column."""
    assert parsed.matrix is not None
    section = parsed.matrix
    refs = parsed.references or _ReferencesSection()
    name = str(path)
    spec_dir = path.parent.resolve()
    known = set(columns)
    for var in section.vars:
        if var in known:
            raise fail(f"[matrix.vars] {var!r} has the name of a manifest column", ("matrix", "vars", var))
    if (section.variant is None) == (section.variants_file is None):
        raise fail(
            "give the variants either as [[matrix.variant]] tables or as variants_file (a CSV), exactly one",
            ("matrix", "variants_file" if section.variants_file else "variant"),
        )
    variants: tuple[Variant, ...]
    source = name
    if section.variant is not None:
        if not section.variant:
            raise fail("the matrix has no variants", ("matrix", "variant"))
        variants = variants_from_tables(
            section.variant,
            base=spec_dir,
            vars=section.vars,
            spec_file=name,
            locate=lambda i, key: _array_table_line(text, ("matrix", "variant"), i, key),
        )
    else:
        assert section.variants_file is not None
        csv_path = (spec_dir / section.variants_file).resolve()
        if not csv_path.is_file():
            raise fail(f"no such variants file: {csv_path}", ("matrix", "variants_file"))
        variants = variants_from_csv(csv_path, vars=section.vars, max_line_bytes=parsed.manifest.max_line_bytes)
        source = str(csv_path)
    for variant in variants:
        for value_name in variant.values:
            if value_name in known:
                raise _variant_error(
                    variant, text, f"variant value {value_name!r} has the name of a manifest column", value_name
                )
        probe = {**defaults, **variant.request, "prompt": "x", "images": _PROBE_IMAGES}
        advice = policy if lifecycle else None
        for problem in spec.check_image_request("/v1/images/edits", probe, models=policy.table, advice=advice):
            field_name = str(problem.field).split("[")[0].split(".")[0]
            origin = "request" if field_name in variant.request else "defaults"
            raise _variant_error(
                variant, text, f"{problem.message} (variant {variant.name!r}, from {origin})", f"request.{field_name}"
            )
    product = _parse_template(section.product, ("matrix", "product"), fail)
    image_templates = tuple(_parse_template(t, ("references", "images"), fail) for t in refs.images if t.strip())
    mask_template = _parse_template(refs.mask, ("references", "mask"), fail) if refs.mask else None
    row_fields = known | set(section.vars)
    for loc, template in (
        (("matrix", "product"), product),
        *((("references", "images"), t) for t in image_templates),
        *(((("references", "mask"), mask_template),) if mask_template else ()),
    ):
        for column in template.fields:
            if column not in row_fields:
                message = _unknown_column(column, columns, delimiter)
                raise fail(message + " (product-level templates see columns and vars)", loc)
    mirror: list[tuple[str, Path]] = []
    for prefix, directory in refs.mirror.items():
        if not prefix.startswith(("http://", "https://")):
            raise fail(f"mirror prefix {prefix!r} must be an http(s) URL prefix", ("references", "mirror"))
        local = (spec_dir / directory).resolve()
        if not local.is_dir():
            raise fail(f"mirror directory for {prefix!r} does not exist: {local}", ("references", "mirror"))
        mirror.append((prefix, local))
    options = ReferenceOptions(
        local_files=refs.local_files,
        upload_purpose=refs.upload_purpose,
        upload_expires_after_s=refs.upload_expires_after_s,
        reuse_margin_s=refs.reuse_margin_s,
        delete_unused=refs.delete_unused,
        mirror=tuple(sorted(mirror, key=lambda m: -len(m[0]))),  # the longest prefix wins
        mirror_port=refs.mirror_port,
    )
    # spec-level references are checked now: a bad brand asset or variant mask stops the job at load time
    checker = ReferenceResolver(options)
    for index, asset in enumerate(refs.brand_assets):
        found = checker.resolve(asset, base=spec_dir, role="image")
        if isinstance(found, str):
            raise JobSpecError(
                f"brand asset: {found}",
                file=name,
                line=_locate(text, ("references", "brand_assets")),
                field=f"references.brand_assets[{index}]",
            )
    if len(refs.brand_assets) >= spec.MAX_EDIT_IMAGES:
        raise fail(
            f"{len(refs.brand_assets)} brand assets leave no room for the product image (at most "
            f"{spec.MAX_EDIT_IMAGES} images per request)",
            ("references", "brand_assets"),
        )
    for variant in variants:
        if variant.mask:
            found = checker.resolve(variant.mask, base=variant.base, role="mask")
            if isinstance(found, str):
                raise _variant_error(variant, text, f"mask: {found}", "mask")
        for index, image in enumerate(variant.images):
            found = checker.resolve(image, base=variant.base, role="image")
            if isinstance(found, str):
                raise _variant_error(variant, text, f"image: {found}", f"images[{index}]")
    row_dirs = [manifest_path.parent.resolve()]
    for index, directory in enumerate(refs.allow_dirs):
        allowed = (spec_dir / directory).resolve()
        if not allowed.is_dir():
            raise JobSpecError(
                f"allowed folder does not exist: {allowed}",
                file=name,
                line=_locate(text, ("references", "allow_dirs")),
                field=f"references.allow_dirs[{index}]",
            )
        row_dirs.append(allowed)
    return VariantMatrix(
        row_dirs=tuple(row_dirs),
        vars=dict(section.vars),
        product=product,
        variants=variants,
        image_templates=image_templates,
        mask_template=mask_template,
        brand_assets=tuple(refs.brand_assets),
        spec_dir=spec_dir,
        manifest_dir=manifest_path.parent,
        references=options,
        variants_source=source,
    )


def _variant_error(variant: Variant, text: str, message: str, key: str) -> InputError:
    """A located error about ``variant``: in the spec (``matrix.variant[i].key``) or in its CSV row."""
    file, _, line = variant.source.rpartition(":")
    if variant.field:  # a [[matrix.variant]] table
        index = int(variant.field.split("[")[1].rstrip("]"))
        return JobSpecError(
            message,
            file=file or variant.source,
            line=_array_table_line(text, ("matrix", "variant"), index, key.split("[")[0]),
            field=f"{variant.field}.{key}",
        )
    return ManifestError(message, file=file, line=int(line) if line.isdigit() else None, field=key)


def _csv_options(section: _ManifestSection, fmt: ManifestFormat, fail: _Fail) -> CsvOptions:
    """``[manifest] delimiter`` / ``encoding`` as checked :class:`CsvOptions`; raises the spec's located
    ``JobSpecError`` for a bad value, or for either one on a JSONL manifest (JSON text is UTF-8, RFC 8259 §8.1)."""
    for name in ("delimiter", "encoding"):
        if getattr(section, name) is not None and fmt != "csv":
            raise fail(f"{name} applies to CSV manifests; this one is {fmt}", ("manifest", name))
    try:
        return CsvOptions.checked(section.delimiter or ",", section.encoding or "utf-8")
    except CsvOptionError as exc:
        raise fail(str(exc), ("manifest", exc.option)) from None
