"""External facts about the OpenAI Files, Batches and Images API, in one place.

Both sides of the wire read this module: the pipeline's validation (before spending) and the emulator
(behaving like the service). Every constant names its source:

- ``SPEC``: ``openai-openapi.yaml`` @ f85dbe2 (shared/reference), by schema name.
- ``FACTS §n``: ``openai-batch-images-facts.md`` section n (shared/reference).
- ``M26 §n``: ``openai-image-models-2026-11.md`` section n (shared/reference; wins over FACTS where they differ).

What each *model* accepts and costs is not here: it is the model table (:mod:`batchpipe.domain.modeltable`, data in
``batchpipe/data/image-models.toml``), which every check below reads.

Where the sources conflict, the choice made here is stated next to the constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, Protocol

from batchpipe.domain.api import lenient_count
from batchpipe.domain.modeltable import Endpoint, ModelFacts, ModelTable, shipped_table
from batchpipe.domain.problems import Problem

__all__ = [
    "BATCH_DISCOUNT",
    "BATCH_ENDPOINTS",
    "COMPLETION_WINDOW",
    "COMPLETION_WINDOW_S",
    "EMULATOR_MAX_BATCH_FILE_BYTES",
    "FILE_EXPIRY_MAX_S",
    "FILE_EXPIRY_MIN_S",
    "IMAGE_ENDPOINTS",
    "MAX_BATCH_FILE_BYTES",
    "MAX_EDIT_IMAGES",
    "MAX_IMAGE_URL_CHARS",
    "MAX_PLAUSIBLE_TOKENS",
    "MAX_PROMPT_CHARS",
    "MAX_REQUESTS_PER_BATCH",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_PAIRS",
    "METADATA_MAX_VALUE_CHARS",
    "REQUEST_OPTION_FIELDS",
    "STANDARD_SIZES",
    "Endpoint",
    "ImageRequestCheck",
    "ModelAdvice",
    "check_image_request",
    "estimate_input_tokens",
    "estimate_usage",
    "model_rules",
    "parse_size",
    "request_cost_usd",
    "request_problem",
    "resolve_size",
]

IMAGE_ENDPOINTS: Final[tuple[Endpoint, ...]] = ("/v1/images/generations", "/v1/images/edits")

#: SPEC ``CreateBatchRequest.endpoint`` enum.
BATCH_ENDPOINTS: Final[frozenset[str]] = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    }
)
#: SPEC ``CreateBatchRequest.completion_window``: only ``24h``.
COMPLETION_WINDOW: Final = "24h"
COMPLETION_WINDOW_S: Final = 86_400
#: FACTS §3.1 / SPEC: 50,000 requests per input file.
MAX_REQUESTS_PER_BATCH: Final = 50_000
#: FACTS §3.1 and gotchas #5: the builder's ceiling is the decimal 200,000,000 bytes (safe side of 200 MiB).
MAX_BATCH_FILE_BYTES: Final = 200_000_000
#: FACTS §3.1 (obs): the service's rejection text names 209,715,200 bytes; the emulator enforces this.
EMULATOR_MAX_BATCH_FILE_BYTES: Final = 209_715_200
#: SPEC ``Metadata``: 16 pairs, keys <= 64 chars, values <= 512 chars.
METADATA_MAX_PAIRS: Final = 16
METADATA_MAX_KEY_CHARS: Final = 64
METADATA_MAX_VALUE_CHARS: Final = 512
#: SPEC ``FileExpirationAfter`` / ``BatchFileExpirationAfter``: 3600..2592000 seconds.
FILE_EXPIRY_MIN_S: Final = 3_600
FILE_EXPIRY_MAX_S: Final = 2_592_000
#: SPEC ``CreateImageRequest.prompt`` / ``EditImageBodyJsonParam.prompt``: 32,000 chars for GPT image models.
MAX_PROMPT_CHARS: Final = 32_000
#: SPEC ``EditImageBodyJsonParam.images``: 1..16.
MAX_EDIT_IMAGES: Final = 16
#: SPEC ``ImageRefParam.image_url.maxLength``.
MAX_IMAGE_URL_CHARS: Final = 20_971_520
#: FACTS §6: the Batch API costs 50% of the synchronous price.
BATCH_DISCOUNT: Final = 0.5

#: The request options of SPEC ``CreateImageRequest`` a job can set, in the order bodies are built (the JSON edit
#: form, ``EditImageBodyJsonParam``, adds ``input_fidelity``). The fields after ``moderation`` come from SDK 3.57.0
#: ``image_generate_params.py`` (M26 §2): ``complexity``, ``safety_identifier`` (``user`` is its deprecated
#: predecessor), ``frame_count`` / ``frame_duration_ms`` (GIF output) and ``svg`` (SVG output).
REQUEST_OPTION_FIELDS: Final[tuple[str, ...]] = (
    "model",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "n",
    "moderation",
    "complexity",
    "safety_identifier",
    "user",
    "frame_count",
    "frame_duration_ms",
    "svg",
)
#: SPEC ``CreateImageRequest.size`` / ``EditImageBodyJsonParam.size`` standard values for GPT image models.
STANDARD_SIZES: Final[frozenset[str]] = frozenset({"1024x1024", "1536x1024", "1024x1536"})
#: Every value any model takes (SDK 3.57.0 ``image_generate_params.py``); which model takes which is in the table.
QUALITIES: Final[frozenset[str]] = frozenset({"low", "medium", "high", "xhigh", "max", "auto"})
BACKGROUNDS: Final[frozenset[str]] = frozenset({"transparent", "opaque", "auto"})
OUTPUT_FORMATS: Final[frozenset[str]] = frozenset({"png", "jpeg", "webp", "gif", "svg"})
MODERATIONS: Final[frozenset[str]] = frozenset({"auto", "low"})
INPUT_FIDELITIES: Final[frozenset[str]] = frozenset({"high", "low"})
COMPLEXITIES: Final[frozenset[str]] = frozenset({"low", "medium", "high"})
#: SDK ``SvgReasoning.effort``.
SVG_EFFORTS: Final[frozenset[str]] = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
#: SDK ``frame_count``: 2..16 (default 9); ``frame_duration_ms``: the encoded delay is capped at 655,350 ms.
GIF_FRAME_COUNT: Final = (2, 16)
GIF_MAX_FRAME_DURATION_MS: Final = 655_350
#: SPEC ``CreateImageRequest.safety_identifier`` / ``user``: maxLength 64.
MAX_SAFETY_IDENTIFIER_CHARS: Final = 64
#: Formats that take ``background = "transparent"`` (SDK ``background``: "set the output format to png or webp").
TRANSPARENT_FORMATS: Final[frozenset[str]] = frozenset({"png", "webp"})
#: Formats that refuse ``output_compression`` (SDK ``frame_count`` and ``svg``: "no custom output compression").
UNCOMPRESSED_FORMATS: Final[frozenset[str]] = frozenset({"gif", "svg"})


class ModelAdvice(Protocol):
    """What the request checks ask beyond a model's capabilities (:class:`batchpipe.domain.lifecycle.ModelPolicy`).

    ``table``: the model table in force. ``model_problem(model)``: a lifecycle refusal for a model in the table
    (shut down before a batch could finish, unknown to the service), or ``None``. ``warn(key, message)``:
    report a warning once per ``key`` (a model near its shutdown, unconfirmed Batch support, a preview setting,
    the deprecated ``user`` field).
    """

    @property
    def table(self) -> ModelTable: ...

    def model_problem(self, model: str) -> Problem | None: ...

    def warn(self, key: str, message: str) -> None: ...


def shipped_models() -> ModelTable:
    """The model table shipped in the package (:func:`batchpipe.domain.modeltable.shipped_table`)."""
    return shipped_table()


def model_rules(model: str, models: ModelTable | None = None) -> ModelFacts | None:
    """The table row of ``model`` (a family, alias or dated snapshot), or ``None`` if the table does not know it.

    ``models``: the table in force (default: the shipped one).
    """
    return (models or shipped_table()).get(model)


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1536x1024"`` → ``(1536, 1024)`` (width, height in pixels); ``None`` if not of the form ``WxH``."""
    w, sep, h = size.partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        return None
    return int(w), int(h)


def resolve_size(size: str | None) -> tuple[int, int]:
    """The pixel size an image will have: ``auto``/``None`` resolves to 1024x1024 (the emulator's choice)."""
    if size is None or size == "auto":
        return 1024, 1024
    parsed = parse_size(size)
    if parsed is None:
        raise ValueError(f"not a size: {size!r}")
    return parsed


def request_problem(param: str, code: str, message: str) -> Problem:
    """A :class:`~batchpipe.domain.problems.Problem` with a request body: ``param`` the body field (``"size"``,
    ``"images[2].image_url"``), ``code`` the API error code the service answers with (FACTS §5:
    ``invalid_value``, ``unsupported_value``...), ``message`` a sentence."""
    return Problem(message, field=param, code=code)


def _enum_problem(body: Mapping[str, object], field: str, allowed: frozenset[str]) -> Problem | None:
    value = body.get(field)
    if value is None or (isinstance(value, str) and value in allowed):
        return None
    return request_problem(
        field,
        "invalid_value",
        f"Invalid value: {value!r}. Supported values are: {', '.join(sorted(repr(a) for a in allowed))}.",
    )


def _image_ref_problems(ref: object, param: str) -> list[Problem]:
    """SPEC ``ImageRefParam``: an object with exactly one of ``image_url`` or ``file_id``, nothing else."""
    if not isinstance(ref, dict):
        return [request_problem(param, "invalid_type", f"Invalid type for '{param}': expected an object.")]
    keys = set(ref)
    if keys - {"image_url", "file_id"}:
        extra = sorted(keys - {"image_url", "file_id"})[0]
        return [request_problem(f"{param}.{extra}", "unknown_parameter", f"Unknown parameter: '{param}.{extra}'.")]
    if len(keys) != 1:
        return [
            request_problem(param, "invalid_value", f"'{param}' must have exactly one of 'image_url' or 'file_id'.")
        ]
    (key,) = keys
    value = ref[key]
    if not isinstance(value, str) or not value:
        return [request_problem(f"{param}.{key}", "invalid_type", f"'{param}.{key}' must be a non-empty string.")]
    if key == "image_url":
        if len(value) > MAX_IMAGE_URL_CHARS:
            return [
                request_problem(
                    f"{param}.image_url",
                    "string_above_max_length",
                    f"'{param}.image_url' is longer than {MAX_IMAGE_URL_CHARS} characters.",
                )
            ]
        if not value.startswith(("http://", "https://", "data:image/")):
            return [
                request_problem(
                    f"{param}.image_url",
                    "invalid_value",
                    f"'{param}.image_url' must be an http(s) URL or a base64 data URL.",
                )
            ]
    return []


def check_image_request(
    endpoint: str,
    body: Mapping[str, object],
    *,
    models: ModelTable | None = None,
    advice: ModelAdvice | None = None,
) -> list[Problem]:
    """Every reason the service would refuse ``body`` on ``endpoint``; ``[]`` if it would accept it.

    Rules (SPEC ``CreateImageRequest`` and ``EditImageBodyJsonParam``; SDK 3.57.0 ``image_generate_params.py``
    and ``image_edit_params.py``; FACTS §4.1-4.3; M26 §2), each read from the model's table row: a model the
    table knows that serves ``endpoint``, prompt 1..32,000 chars, ``n`` 1..10 (1 for svg), the model's
    qualities, complexity, backgrounds, output formats and sizes (fixed, or its ``WxH`` rule), transparent
    backgrounds only as png or webp, ``output_compression`` 0..100 (not for gif or svg), ``frame_count`` /
    ``frame_duration_ms`` only with gif, ``svg`` only with svg, ``safety_identifier`` / ``user`` strings of at
    most 64 chars, ``input_fidelity`` values the model takes, and for edits 1..16 ``images`` plus an optional
    ``mask`` or ``markup`` (never both), each an ``ImageRefParam``. Checking the bytes behind a reference is not
    done here. ``models``: the table (default: the shipped one, or ``advice.table``). ``advice``: lifecycle
    refusals and warnings (:class:`ModelAdvice`); without it only capabilities are checked.
    Problems come in this order: ``model``, ``prompt``, then every other field (:class:`ImageRequestCheck`
    relies on it: only the ``prompt`` check reads the prompt, and no other check reads it).
    """
    table = advice.table if advice is not None else (models or shipped_table())
    problems, model, rules = _model_problems(endpoint, body, table, advice)
    prompt_problem = _prompt_problem(body.get("prompt"))
    if prompt_problem is not None:
        problems.append(prompt_problem)
    problems.extend(_other_problems(endpoint, body, model, rules, advice))
    return problems


class ImageRequestCheck:
    """:func:`check_image_request` split into a job-level part (checked once) and a row-level part.

    ``ImageRequestCheck(endpoint, fixed, models=..., advice=...)``: ``fixed`` holds the body fields every row
    shares (a job's ``[defaults]``, ``model`` included); everything but the prompt is checked here, once. Then
    :meth:`check` (the fields a row sets itself) and :meth:`check_prompt` (a row that sets only its prompt)
    return exactly ``check_image_request(endpoint, {**fixed, **row}, ...)``, same problems in the same order:
    when the row sets nothing but ``prompt`` only the prompt is checked per row (the other checks never
    read it), otherwise the whole merged body is checked. Holds no per-row state.
    """

    __slots__ = ("_advice", "_after", "_before", "_fixed", "_fixed_prompt", "_job", "_models", "endpoint")

    def __init__(
        self,
        endpoint: str,
        fixed: Mapping[str, object],
        *,
        models: ModelTable | None = None,
        advice: ModelAdvice | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._models = advice.table if advice is not None else (models or shipped_table())
        self._advice = advice
        self._fixed: dict[str, object] = dict(fixed)
        self._fixed_prompt = self._fixed.get("prompt")
        before, model, rules = _model_problems(endpoint, self._fixed, self._models, advice)
        self._before: tuple[Problem, ...] = tuple(before)
        self._after: tuple[Problem, ...] = tuple(_other_problems(endpoint, self._fixed, model, rules, advice))
        self._job = self._before + self._after

    @property
    def job_problems(self) -> tuple[Problem, ...]:
        """The problems of the shared fields alone (every row has them), prompt aside."""
        return self._job

    def check_prompt(self, prompt: object) -> list[Problem]:
        """``check_image_request(endpoint, {**fixed, "prompt": prompt})``, at the cost of a prompt check.

        Measured and dropped: checking a good prompt inline, before calling :func:`_prompt_problem`, saved nothing
        measurable of the validate stage (1.98-2.07 against 2.00-2.09 s CPU for 200,000 catalog rows, 6 interleaved
        runs each)."""
        problem = _prompt_problem(prompt)
        if problem is None:
            return [*self._job]
        return [*self._before, problem, *self._after]

    def check(self, row: Mapping[str, object]) -> list[Problem]:
        """``check_image_request(endpoint, {**fixed, **row})``: the row's own fields over the shared ones."""
        if not row:
            return self.check_prompt(self._fixed_prompt)
        if len(row) == 1 and "prompt" in row:
            return self.check_prompt(row["prompt"])
        return check_image_request(self.endpoint, {**self._fixed, **row}, models=self._models, advice=self._advice)


def _model_problems(
    endpoint: str, body: Mapping[str, object], table: ModelTable, advice: ModelAdvice | None
) -> tuple[list[Problem], object, ModelFacts | None]:
    """``([model problem] or [], the model value, its row or None)``: the first check of a request.

    A model the table does not know, or one that does not serve ``endpoint``, is refused here; so is, with
    ``advice``, a model its lifecycle rules out (the row is still returned so the other fields are checked).
    """
    model = body.get("model")
    rules = table.get(model) if isinstance(model, str) else None
    if rules is None:
        return (
            [
                request_problem(
                    "model",
                    "invalid_value",
                    f"Invalid value for 'model': {model!r}. Supported GPT image models: "
                    + ", ".join(sorted(f.name for f in table if endpoint in f.endpoints))
                    + ".",
                )
            ],
            model,
            None,
        )
    assert isinstance(model, str)
    problems: list[Problem] = []
    if advice is not None:
        lifecycle = advice.model_problem(model)
        if lifecycle is not None:
            problems.append(lifecycle)
    if endpoint in IMAGE_ENDPOINTS and endpoint not in rules.endpoints and not problems:
        problems.append(request_problem("model", "invalid_value", f"The model '{model}' does not serve {endpoint}."))
    return problems, model, rules


def _prompt_problem(prompt: object) -> Problem | None:
    """SPEC ``CreateImageRequest.prompt``: a non-blank string of at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(prompt, str):
        return request_problem("prompt", "invalid_value", "'prompt' must be a non-empty string.")
    if not prompt or prompt.isspace():  # the same as ``not prompt.strip()``, without the copy
        return request_problem("prompt", "invalid_value", "'prompt' must be a non-empty string.")
    if len(prompt) > MAX_PROMPT_CHARS:
        return request_problem(
            "prompt",
            "string_above_max_length",
            f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT_CHARS}, "
            f"but got a string with length {len(prompt)} instead.",
        )
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Request field → the model table column listing its values.
_TABLE_FIELD: Final = {"quality": "qualities", "background": "backgrounds", "output_format": "output_formats"}


def _model_enum_problem(
    body: Mapping[str, object], field: str, every: frozenset[str], rules: ModelFacts | None, model: object
) -> Problem | None:
    """``field`` must be one of ``every`` (any model) and, when the model is known, one of its own values."""
    problem = _enum_problem(body, field, every)
    if problem is not None or rules is None:
        return problem
    value = body.get(field)
    if value is None:
        return None
    allowed: tuple[str, ...] = getattr(rules, _TABLE_FIELD[field])
    if not allowed:
        return request_problem(
            field, "unsupported_parameter", f"The model '{model}' does not support the '{field}' parameter."
        )
    if value not in allowed:
        return request_problem(
            field,
            "invalid_value",
            f"Invalid value: {value!r}. Supported values for {model} are: {', '.join(repr(a) for a in allowed)}.",
        )
    return None


def _warn_preview(
    advice: ModelAdvice | None, rules: ModelFacts | None, model: object, body: Mapping[str, object]
) -> None:
    if advice is None or rules is None or not rules.preview:
        return
    for setting in rules.preview:
        field, _, value = setting.partition("=")
        if body.get(field) == value:
            advice.warn(
                f"preview:{model}:{setting}",
                f"{model}: {field} = {value!r} is in preview or not confirmed for this model "
                f"({rules.source}); the service may refuse it (needs access).",
            )


def _other_problems(
    endpoint: str,
    body: Mapping[str, object],
    model: object,
    rules: ModelFacts | None,
    advice: ModelAdvice | None = None,
) -> list[Problem]:
    """Every check of :func:`check_image_request` after ``model`` and ``prompt`` (none reads the prompt)."""
    problems: list[Problem] = []
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= 10):  # type: ignore[operator]
        problems.append(request_problem("n", "integer_out_of_range", f"Invalid 'n': {n!r}. Expected 1..10."))
    for field, every in (
        ("quality", QUALITIES),
        ("background", BACKGROUNDS),
        ("output_format", OUTPUT_FORMATS),
    ):
        problem = _model_enum_problem(body, field, every, rules, model)
        if problem:
            problems.append(problem)
    problem = _enum_problem(body, "moderation", MODERATIONS)
    if problem:
        problems.append(problem)
    problem = _enum_problem(body, "input_fidelity", INPUT_FIDELITIES)
    if problem:
        problems.append(problem)
    complexity = body.get("complexity")
    if complexity is not None:
        problem = _enum_problem(body, "complexity", COMPLEXITIES)
        if problem is None and rules is not None and complexity not in rules.complexity:
            problem = request_problem(
                "complexity",
                "unsupported_parameter",
                f"The model '{model}' does not support the 'complexity' parameter.",
            )
        if problem:
            problems.append(problem)
    compression = body.get("output_compression")
    fmt = body.get("output_format") or "png"
    if compression is not None:
        if not _is_int(compression) or not 0 <= compression <= 100:  # type: ignore[operator]
            problems.append(
                request_problem(
                    "output_compression", "integer_out_of_range", f"Invalid 'output_compression': {compression!r}."
                )
            )
        elif fmt in UNCOMPRESSED_FORMATS:
            problems.append(
                request_problem(
                    "output_compression",
                    "invalid_value",
                    f"'output_compression' is not supported with output_format {fmt!r}.",
                )
            )
    if body.get("background") == "transparent" and fmt not in TRANSPARENT_FORMATS and fmt in OUTPUT_FORMATS:
        problems.append(
            request_problem(
                "background",
                "invalid_value",
                "Transparent background is only supported with output_format 'png' or 'webp'.",
            )
        )
    problems.extend(_format_option_problems(body, fmt, n))
    for field in ("safety_identifier", "user"):
        value = body.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_SAFETY_IDENTIFIER_CHARS):
            problems.append(
                request_problem(
                    field,
                    "invalid_value",
                    f"'{field}' must be a string of at most {MAX_SAFETY_IDENTIFIER_CHARS} characters.",
                )
            )
    if body.get("user") is not None and advice is not None:
        advice.warn(
            "field:user",
            "'user' is deprecated: use 'safety_identifier' (a stable hashed end-user id); the service still "
            "reads 'user' when 'safety_identifier' is empty (SDK 3.57.0 image_generate_params.py).",
        )
    problems.extend(_size_problems(endpoint, body.get("size"), model, rules, advice))
    fidelity = body.get("input_fidelity")
    if fidelity is not None and rules is not None and fidelity in INPUT_FIDELITIES:
        if not rules.input_fidelity:
            problems.append(
                request_problem(
                    "input_fidelity",
                    "unsupported_parameter",
                    f"The model '{model}' does not support the 'input_fidelity' parameter.",
                )
            )
        elif fidelity not in rules.input_fidelity:
            problems.append(
                request_problem(
                    "input_fidelity",
                    "invalid_value",
                    f"Invalid value: {fidelity!r}. Supported values for {model} are: "
                    + ", ".join(repr(v) for v in rules.input_fidelity)
                    + ".",
                )
            )
    if endpoint == "/v1/images/edits":
        images = body.get("images")
        if not isinstance(images, list) or not 1 <= len(images) <= MAX_EDIT_IMAGES:
            problems.append(
                request_problem("images", "invalid_value", f"'images' must be a list of 1..{MAX_EDIT_IMAGES} images.")
            )
        else:
            for index, ref in enumerate(images):
                problems.extend(_image_ref_problems(ref, f"images[{index}]"))
        for field in ("mask", "markup"):
            if body.get(field) is None:
                continue
            problems.extend(_image_ref_problems(body[field], field))
            if rules is not None and not getattr(rules, field):
                problems.append(
                    request_problem(
                        field, "unsupported_parameter", f"The model '{model}' does not support the '{field}' parameter."
                    )
                )
        if body.get("mask") is not None and body.get("markup") is not None:
            problems.append(request_problem("markup", "invalid_value", "'markup' cannot be combined with 'mask'."))
        if body.get("mask") is not None and fmt == "gif":
            problems.append(request_problem("mask", "invalid_value", "GIF output does not support masks."))
    elif endpoint == "/v1/images/generations":
        for field in ("images", "mask", "markup", "input_fidelity"):
            if field in body:
                problems.append(
                    request_problem(field, "unknown_parameter", f"Unknown parameter: '{field}' on {endpoint}.")
                )
    else:
        problems.append(request_problem("url", "invalid_value", f"Unsupported endpoint: {endpoint!r}."))
    _warn_preview(advice, rules, model, body)
    return problems


def _format_option_problems(body: Mapping[str, object], fmt: object, n: object) -> list[Problem]:
    """GIF options (``frame_count``, ``frame_duration_ms``) and SVG options (``svg``, ``n = 1``), SDK 3.57.0."""
    problems: list[Problem] = []
    frames = body.get("frame_count")
    if frames is not None:
        low, high = GIF_FRAME_COUNT
        if not _is_int(frames) or not low <= frames <= high:  # type: ignore[operator]
            problems.append(
                request_problem(
                    "frame_count", "integer_out_of_range", f"Invalid 'frame_count': {frames!r}. Expected {low}..{high}."
                )
            )
        elif fmt != "gif":
            problems.append(
                request_problem(
                    "frame_count", "invalid_value", "'frame_count' is only supported with output_format 'gif'."
                )
            )
    duration = body.get("frame_duration_ms")
    if duration is not None:
        if not _is_int(duration) or not 1 <= duration <= GIF_MAX_FRAME_DURATION_MS:  # type: ignore[operator]
            problems.append(
                request_problem(
                    "frame_duration_ms",
                    "integer_out_of_range",
                    f"Invalid 'frame_duration_ms': {duration!r}. Expected 1..{GIF_MAX_FRAME_DURATION_MS}.",
                )
            )
        elif fmt != "gif":
            problems.append(
                request_problem(
                    "frame_duration_ms",
                    "invalid_value",
                    "'frame_duration_ms' is only supported with output_format 'gif'.",
                )
            )
    svg = body.get("svg")
    if svg is not None:
        if fmt != "svg":
            problems.append(
                request_problem("svg", "invalid_value", "'svg' is only supported with output_format 'svg'.")
            )
        elif not isinstance(svg, dict) or set(svg) - {"model", "reasoning"}:
            problems.append(
                request_problem(
                    "svg", "invalid_value", "'svg' must be an object with 'model' and optional 'reasoning'."
                )
            )
        else:
            author = svg.get("model")
            if not isinstance(author, str) or not author:
                problems.append(
                    request_problem("svg.model", "invalid_value", "'svg.model' must be a non-empty string.")
                )
            reasoning = svg.get("reasoning")
            if reasoning is not None:
                effort = reasoning.get("effort") if isinstance(reasoning, dict) else reasoning
                if (
                    not isinstance(reasoning, dict)
                    or set(reasoning) - {"effort"}
                    or (effort is not None and effort not in SVG_EFFORTS)
                ):
                    problems.append(
                        request_problem(
                            "svg.reasoning",
                            "invalid_value",
                            "'svg.reasoning' must be {effort: one of "
                            + ", ".join(repr(e) for e in sorted(SVG_EFFORTS))
                            + "}.",
                        )
                    )
    if fmt == "svg" and n is not None and n != 1:
        problems.append(request_problem("n", "invalid_value", "SVG output requires n = 1."))
    return problems


def _size_problems(
    endpoint: str, size: object, model: object, rules: ModelFacts | None, advice: ModelAdvice | None
) -> list[Problem]:
    """The model's fixed sizes, or its ``WxH`` rule where it has one for ``endpoint`` (SDK ``size``)."""
    if size is None:
        return []
    if not isinstance(size, str) or (size != "auto" and parse_size(size) is None):
        return [request_problem("size", "invalid_value", f"Invalid value for 'size': {size!r}.")]
    if rules is None or size in rules.sizes:
        return []
    rule = rules.custom_size
    parsed = parse_size(size)
    if rule is None or endpoint not in rule.endpoints or parsed is None:
        return [
            request_problem(
                "size",
                "invalid_value",
                f"Invalid value: '{size}'. Supported values are: "
                + ", ".join(f"'{s}'" for s in rules.sizes)
                + f" for {model} on {endpoint}.",
            )
        ]
    reason = rule.problem(*parsed)
    if reason:
        return [request_problem("size", "invalid_value", f"Invalid size '{size}': {reason}.")]
    if advice is not None and rule.experimental(*parsed):
        advice.warn(
            f"size:{model}:{size}",
            f"{model}: size {size} is above {rule.experimental_above_pixels:,} pixels, which the service calls "
            "experimental (SDK image_generate_params.py size).",
        )
    return []


def _text_tokens(prompt: str) -> int:
    """About four characters a token (an estimate used for budgets and the emulator's usage)."""
    return max(1, math.ceil(len(prompt) / 4))


def _output_tokens(rules: ModelFacts | None, body: Mapping[str, object]) -> int:
    """Estimated output image tokens for one image: the table's ``output_tokens`` for the quality (``auto`` and
    unknown qualities count as ``medium``), by shape, or scaled with the pixel count (``output_tokens_scale``)."""
    size = body.get("size")
    try:
        w, h = resolve_size(size if isinstance(size, str) else None)
    except ValueError:
        w, h = 1024, 1024
    quality = body.get("quality")
    tokens = rules.output_tokens if rules is not None and rules.output_tokens else _FALLBACK_OUTPUT_TOKENS
    triple = tokens.get(quality) if isinstance(quality, str) else None
    if triple is None:
        triple = tokens.get("medium") or next(iter(tokens.values()))
    square, portrait, landscape = triple
    if rules is not None and rules.output_tokens_scale == "pixels":
        return max(16, round(square * (w * h) / (1024 * 1024)))
    return square if w == h else (portrait if h > w else landscape)


#: For a model without ``output_tokens`` in the table: FACTS §6 token counts of the models before gpt-image-2.
_FALLBACK_OUTPUT_TOKENS: Final[dict[str, tuple[int, int, int]]] = {
    "low": (272, 408, 400),
    "medium": (1056, 1584, 1568),
    "high": (4160, 6240, 6208),
}
#: Input image tokens per reference image (an order-of-magnitude estimate; FACTS §6 gives no table).
_IMAGE_IN_TOKENS: Final[dict[str, int]] = {"low": 323, "high": 4160}


def _image_input_count(body: Mapping[str, object]) -> int:
    images = body.get("images")
    count = len(images) if isinstance(images, list) else 0
    return count + (1 if body.get("mask") is not None else 0) + (1 if body.get("markup") is not None else 0)


def estimate_input_tokens(body: Mapping[str, object], models: ModelTable | None = None) -> int:
    """Estimated input tokens of one request body: prompt text plus reference images.

    This is what counts against the enqueued-token limit (FACTS §3.1: "every pending batch's input tokens
    count"; how image requests are counted is unconfirmed, so this is our estimate). Input tokens are paid once
    per request, not per image of ``n``. A model that takes no ``input_fidelity`` always reads at high fidelity
    (SDK ``image_edit_params.py``: "For gpt-image-2, omit").
    """
    prompt = body.get("prompt")
    # _text_tokens, inlined (once per line); ``or 1`` rather than ``max(1, ...)``, a call that cost half the function
    text = ((len(prompt) + 3) // 4 or 1) if isinstance(prompt, str) else 0
    get = body.get
    if get("images") is None and get("mask") is None and get("markup") is None:  # the common case: no images
        return text
    images = _image_input_count(body)
    if not images:
        return text
    model = body.get("model")
    rules = model_rules(model, models) if isinstance(model, str) else None
    always_high = rules is not None and not rules.input_fidelity
    fidelity = "high" if always_high or body.get("input_fidelity") == "high" else "low"
    return text + images * _IMAGE_IN_TOKENS[fidelity]


def estimate_usage(body: Mapping[str, object], models: ModelTable | None = None) -> dict[str, object]:
    """An ``ImageGenUsage`` object (SPEC) for ``body``: text and image input tokens, image output tokens × n."""
    prompt = body.get("prompt")
    text = _text_tokens(prompt) if isinstance(prompt, str) else 0
    image_in = estimate_input_tokens(body, models) - text
    model = body.get("model")
    n = body.get("n")
    count = n if _is_int(n) and n > 0 else 1  # type: ignore[operator]
    rules = model_rules(model, models) if isinstance(model, str) else None
    out = _output_tokens(rules, body) * count  # type: ignore[operator]
    return {
        "input_tokens": text + image_in,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens": out,
        "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
        "total_tokens": text + image_in + out,
    }


#: More tokens than one image request can use (input with 16 reference images and the largest output stay far
#: below); a usage beyond it is the server's error, and its cost is recorded as unknown.
MAX_PLAUSIBLE_TOKENS: Final = 10_000_000


def request_cost_usd(
    model: str, usage: Mapping[str, object], *, batch: bool = True, models: ModelTable | None = None
) -> float | None:
    """Cost in USD of one request from its ``usage`` (SPEC ``ImageGenUsage``) and the table's token prices.

    Text input at the text price, image input at the image price, all output tokens at the image output
    price (FACTS §6); halved when ``batch`` (FACTS §6 "Batch = 50%"). ``None`` when the table has no prices
    for the model, or when the usage cannot be true: a token count that is not a non-negative integer, or more
    than :data:`MAX_PLAUSIBLE_TOKENS` in one request (a server's absurd usage is recorded as an unknown cost,
    never as 10^14 dollars).
    """
    rules = model_rules(model, models)
    if rules is None or rules.prices is None:
        return None
    prices = rules.prices
    details = usage.get("input_tokens_details")
    if isinstance(details, dict):
        counts = [details.get("text_tokens") or 0, details.get("image_tokens") or 0]
    else:
        counts = [usage.get("input_tokens") or 0, 0]
    counts.append(usage.get("output_tokens") or 0)
    parsed = [lenient_count(value) for value in counts]
    if any(n is None or n > MAX_PLAUSIBLE_TOKENS for n in parsed):
        return None
    text_in, image_in, out = (int(n or 0) for n in parsed)
    cost: float = (text_in * prices.text_in + image_in * prices.image_in + out * prices.image_out) / 1e6
    return cost * (BATCH_DISCOUNT if batch else 1.0)
