"""External facts about the OpenAI Files, Batches and Images API, in one place.

Both sides of the wire read this module: the pipeline's validation (before spending) and the emulator
(behaving like the service). Every constant names its source:

- ``SPEC``: ``openai-openapi.yaml`` @ f85dbe2 (shared/reference), by schema name.
- ``FACTS §n``: ``openai-batch-images-facts.md`` section n (shared/reference).

Where the sources conflict, the choice made here is stated next to the constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

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
    "MAX_PROMPT_CHARS",
    "MAX_REQUESTS_PER_BATCH",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_PAIRS",
    "METADATA_MAX_VALUE_CHARS",
    "MODELS",
    "REQUEST_OPTION_FIELDS",
    "STANDARD_SIZES",
    "Endpoint",
    "ImageRequestCheck",
    "ModelRules",
    "RequestProblem",
    "check_image_request",
    "estimate_input_tokens",
    "estimate_usage",
    "model_rules",
    "parse_size",
    "request_cost_usd",
    "resolve_size",
]

Endpoint = Literal["/v1/images/generations", "/v1/images/edits"]
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
#: form, ``EditImageBodyJsonParam``, adds ``input_fidelity``).
REQUEST_OPTION_FIELDS: Final[tuple[str, ...]] = (
    "model",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "n",
    "moderation",
)
#: SPEC ``CreateImageRequest.size`` / ``EditImageBodyJsonParam.size`` standard values for GPT image models.
STANDARD_SIZES: Final[frozenset[str]] = frozenset({"1024x1024", "1536x1024", "1024x1536"})
QUALITIES: Final[frozenset[str]] = frozenset({"low", "medium", "high", "auto"})
BACKGROUNDS: Final[frozenset[str]] = frozenset({"transparent", "opaque", "auto"})
OUTPUT_FORMATS: Final[frozenset[str]] = frozenset({"png", "jpeg", "webp"})
MODERATIONS: Final[frozenset[str]] = frozenset({"auto", "low"})
INPUT_FIDELITIES: Final[frozenset[str]] = frozenset({"high", "low"})


@dataclass(frozen=True, slots=True)
class ModelRules:
    """What one GPT Image model accepts and costs (FACTS §4.3, §6).

    Prices are USD per 1,000,000 tokens at the standard (synchronous) tier; apply ``BATCH_DISCOUNT``.
    ``input_fidelity``: ``"yes"`` accepted, ``"no"`` rejected (gpt-image-1-mini, SPEC ``InputFidelity``),
    ``"omit"`` rejected because the model is always high fidelity (gpt-image-2, FACTS §4.2 obs 400).
    """

    name: str
    custom_sizes: bool
    transparent: bool
    input_fidelity: Literal["yes", "no", "omit"]
    text_in_per_m: float
    image_in_per_m: float
    image_out_per_m: float


# gpt-image-2 transparent backgrounds: SPEC says "preview", G-IMG says unsupported and the service is observed
# to answer 400 "Transparent background is not supported for this model" (FACTS §4.3, §8.1). We follow the
# observed 400: reject before spending.
MODELS: Final[dict[str, ModelRules]] = {
    "gpt-image-2": ModelRules("gpt-image-2", True, False, "omit", 5.0, 8.0, 30.0),
    "gpt-image-1.5": ModelRules("gpt-image-1.5", False, True, "yes", 5.0, 8.0, 32.0),
    "gpt-image-1": ModelRules("gpt-image-1", False, True, "yes", 5.0, 10.0, 40.0),
    "gpt-image-1-mini": ModelRules("gpt-image-1-mini", False, True, "no", 2.0, 2.5, 8.0),
    # chatgpt-image-latest: prices are third-party and unconfirmed (FACTS §6); standard sizes only (obs, §4.3).
    "chatgpt-image-latest": ModelRules("chatgpt-image-latest", False, True, "yes", 5.0, 8.0, 32.0),
}
#: Dated snapshots resolve to their family (FACTS §4.3).
_SNAPSHOTS: Final[dict[str, str]] = {
    "gpt-image-2-2026-04-21": "gpt-image-2",
    "gpt-image-1.5-2025-12-16": "gpt-image-1.5",
}


def model_rules(model: str) -> ModelRules | None:
    """Rules for ``model`` (a family name or a dated snapshot), or ``None`` if it is not a GPT Image model."""
    return MODELS.get(_SNAPSHOTS.get(model, model))


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


def _gpt_image_2_size_problem(w: int, h: int) -> str | None:
    """FACTS §4.3: edges multiples of 16, max edge 3840, ratio <= 3:1, 655,360..8,294,400 pixels."""
    if w % 16 or h % 16:
        return "both edges must be multiples of 16"
    if max(w, h) > 3840:
        return "the longest edge must be at most 3840"
    if max(w, h) > 3 * min(w, h):
        return "the long:short edge ratio must be at most 3:1"
    if not 655_360 <= w * h <= 8_294_400:
        return "the total pixel count must be between 655,360 and 8,294,400"
    return None


@dataclass(frozen=True, slots=True)
class RequestProblem:
    """One reason the service would refuse an image request body.

    ``param`` is the body field (``"size"``, ``"images[2].image_url"``), ``code`` the API error code the
    service answers with (FACTS §5: ``invalid_value``, ``unsupported_value``...), ``message`` a sentence.
    """

    param: str
    code: str
    message: str


def _enum_problem(body: Mapping[str, object], field: str, allowed: frozenset[str]) -> RequestProblem | None:
    value = body.get(field)
    if value is None or (isinstance(value, str) and value in allowed):
        return None
    return RequestProblem(
        field,
        "invalid_value",
        f"Invalid value: {value!r}. Supported values are: {', '.join(sorted(repr(a) for a in allowed))}.",
    )


def _image_ref_problems(ref: object, param: str) -> list[RequestProblem]:
    """SPEC ``ImageRefParam``: an object with exactly one of ``image_url`` or ``file_id``, nothing else."""
    if not isinstance(ref, dict):
        return [RequestProblem(param, "invalid_type", f"Invalid type for '{param}': expected an object.")]
    keys = set(ref)
    if keys - {"image_url", "file_id"}:
        extra = sorted(keys - {"image_url", "file_id"})[0]
        return [RequestProblem(f"{param}.{extra}", "unknown_parameter", f"Unknown parameter: '{param}.{extra}'.")]
    if len(keys) != 1:
        return [RequestProblem(param, "invalid_value", f"'{param}' must have exactly one of 'image_url' or 'file_id'.")]
    (key,) = keys
    value = ref[key]
    if not isinstance(value, str) or not value:
        return [RequestProblem(f"{param}.{key}", "invalid_type", f"'{param}.{key}' must be a non-empty string.")]
    if key == "image_url":
        if len(value) > MAX_IMAGE_URL_CHARS:
            return [
                RequestProblem(
                    f"{param}.image_url",
                    "string_above_max_length",
                    f"'{param}.image_url' is longer than {MAX_IMAGE_URL_CHARS} characters.",
                )
            ]
        if not value.startswith(("http://", "https://", "data:image/")):
            return [
                RequestProblem(
                    f"{param}.image_url",
                    "invalid_value",
                    f"'{param}.image_url' must be an http(s) URL or a base64 data URL.",
                )
            ]
    return []


def check_image_request(endpoint: str, body: dict[str, object]) -> list[RequestProblem]:
    """Every reason the service would refuse ``body`` on ``endpoint``; ``[]`` if it would accept it.

    Rules (SPEC ``CreateImageRequest`` and ``EditImageBodyJsonParam``; FACTS §4.1-4.3): a known GPT image
    model, prompt 1..32,000 chars, ``n`` 1..10, enum fields, ``output_compression`` 0..100, transparent
    background needs png or webp and a model that supports it, the model's sizes (the JSON edit form allows
    only the standard sizes, SPEC ``EditImageBodyJsonParam.size``), ``input_fidelity`` only where the model
    takes it, and for edits 1..16 ``images`` plus an optional ``mask``, each an ``ImageRefParam``.
    Checking the bytes behind a reference (reachability, format, dimensions) is not done here.
    Problems come in this order: ``model``, ``prompt``, then every other field (:class:`ImageRequestCheck`
    relies on it: only the ``prompt`` check reads the prompt, and no other check reads it).
    """
    problems, model, rules = _model_problems(body)
    prompt_problem = _prompt_problem(body.get("prompt"))
    if prompt_problem is not None:
        problems.append(prompt_problem)
    problems.extend(_other_problems(endpoint, body, model, rules))
    return problems


class ImageRequestCheck:
    """:func:`check_image_request` split into a job-level part (checked once) and a row-level part.

    ``ImageRequestCheck(endpoint, fixed)``: ``fixed`` holds the body fields every row shares (a job's
    ``[defaults]``, ``model`` included); everything but the prompt is checked here, once. Then
    :meth:`check` (the fields a row sets itself) and :meth:`check_prompt` (a row that sets only its prompt)
    return exactly ``check_image_request(endpoint, {**fixed, **row})``, same problems in the same order:
    when the row sets nothing but ``prompt`` only the prompt is checked per row (the other checks never
    read it), otherwise the whole merged body is checked. Holds no per-row state.
    """

    __slots__ = ("_after", "_before", "_fixed", "_fixed_prompt", "_job", "endpoint")

    def __init__(self, endpoint: str, fixed: Mapping[str, object]) -> None:
        self.endpoint = endpoint
        self._fixed: dict[str, object] = dict(fixed)
        self._fixed_prompt = self._fixed.get("prompt")
        before, model, rules = _model_problems(self._fixed)
        self._before: tuple[RequestProblem, ...] = tuple(before)
        self._after: tuple[RequestProblem, ...] = tuple(_other_problems(endpoint, self._fixed, model, rules))
        self._job = self._before + self._after

    @property
    def job_problems(self) -> tuple[RequestProblem, ...]:
        """The problems of the shared fields alone (every row has them), prompt aside."""
        return self._job

    def check_prompt(self, prompt: object) -> list[RequestProblem]:
        """``check_image_request(endpoint, {**fixed, "prompt": prompt})``, at the cost of a prompt check."""
        if prompt.__class__ is str and 0 < len(prompt) <= MAX_PROMPT_CHARS and not prompt.isspace():
            return [*self._job]  # a good prompt (see _prompt_problem), checked inline: once per row
        problem = _prompt_problem(prompt)
        if problem is None:
            return [*self._before, *self._after]
        return [*self._before, problem, *self._after]

    def check(self, row: Mapping[str, object]) -> list[RequestProblem]:
        """``check_image_request(endpoint, {**fixed, **row})``: the row's own fields over the shared ones."""
        if not row:
            return self.check_prompt(self._fixed_prompt)
        if len(row) == 1 and "prompt" in row:
            return self.check_prompt(row["prompt"])
        return check_image_request(self.endpoint, {**self._fixed, **row})


def _model_problems(body: Mapping[str, object]) -> tuple[list[RequestProblem], object, ModelRules | None]:
    """``([model problem] or [], the model value, its rules or None)``: the first check of a request."""
    model = body.get("model")
    rules = model_rules(model) if isinstance(model, str) else None
    if rules is not None:
        return [], model, rules
    return (
        [
            RequestProblem(
                "model",
                "invalid_value",
                f"Invalid value for 'model': {model!r}. Supported GPT image models: {', '.join(sorted(MODELS))}.",
            )
        ],
        model,
        None,
    )


def _prompt_problem(prompt: object) -> RequestProblem | None:
    """SPEC ``CreateImageRequest.prompt``: a non-blank string of at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(prompt, str):
        return RequestProblem("prompt", "invalid_value", "'prompt' must be a non-empty string.")
    if not prompt or prompt.isspace():  # the same as ``not prompt.strip()``, without the copy
        return RequestProblem("prompt", "invalid_value", "'prompt' must be a non-empty string.")
    if len(prompt) > MAX_PROMPT_CHARS:
        return RequestProblem(
            "prompt",
            "string_above_max_length",
            f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT_CHARS}, "
            f"but got a string with length {len(prompt)} instead.",
        )
    return None


def _other_problems(
    endpoint: str, body: Mapping[str, object], model: object, rules: ModelRules | None
) -> list[RequestProblem]:
    """Every check of :func:`check_image_request` after ``model`` and ``prompt`` (none reads the prompt)."""
    problems: list[RequestProblem] = []
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10):
        problems.append(RequestProblem("n", "integer_out_of_range", f"Invalid 'n': {n!r}. Expected 1..10."))
    for field, allowed in (
        ("quality", QUALITIES),
        ("background", BACKGROUNDS),
        ("output_format", OUTPUT_FORMATS),
        ("moderation", MODERATIONS),
        ("input_fidelity", INPUT_FIDELITIES),
    ):
        problem = _enum_problem(body, field, allowed)
        if problem:
            problems.append(problem)
    compression = body.get("output_compression")
    if compression is not None and (
        not isinstance(compression, int) or isinstance(compression, bool) or not 0 <= compression <= 100
    ):
        problems.append(
            RequestProblem(
                "output_compression", "integer_out_of_range", f"Invalid 'output_compression': {compression!r}."
            )
        )
    fmt = body.get("output_format") or "png"
    if body.get("background") == "transparent":
        if fmt == "jpeg":
            problems.append(
                RequestProblem(
                    "background",
                    "invalid_value",
                    "Transparent background is only supported with output_format 'png' or 'webp'.",
                )
            )
        if rules is not None and not rules.transparent:
            problems.append(
                RequestProblem("background", "invalid_value", "Transparent background is not supported for this model.")
            )
    size = body.get("size")
    if size is not None and size != "auto":
        if not isinstance(size, str) or parse_size(size) is None:
            problems.append(RequestProblem("size", "invalid_value", f"Invalid value for 'size': {size!r}."))
        elif size not in STANDARD_SIZES and rules is not None:
            if endpoint == "/v1/images/edits" or not rules.custom_sizes:
                problems.append(
                    RequestProblem(
                        "size",
                        "invalid_value",
                        f"Invalid value: '{size}'. Supported values are: 'auto', "
                        + ", ".join(f"'{s}'" for s in sorted(STANDARD_SIZES))
                        + f" for {model} on {endpoint}.",
                    )
                )
            else:
                w, h = parse_size(size) or (0, 0)
                reason = _gpt_image_2_size_problem(w, h)
                if reason:
                    problems.append(RequestProblem("size", "invalid_value", f"Invalid size '{size}': {reason}."))
    if body.get("input_fidelity") is not None and rules is not None and rules.input_fidelity != "yes":
        problems.append(
            RequestProblem(
                "input_fidelity",
                "unsupported_parameter",
                f"The model '{model}' does not support the 'input_fidelity' parameter.",
            )
        )
    if endpoint == "/v1/images/edits":
        images = body.get("images")
        if not isinstance(images, list) or not 1 <= len(images) <= MAX_EDIT_IMAGES:
            problems.append(
                RequestProblem("images", "invalid_value", f"'images' must be a list of 1..{MAX_EDIT_IMAGES} images.")
            )
        else:
            for index, ref in enumerate(images):
                problems.extend(_image_ref_problems(ref, f"images[{index}]"))
        if body.get("mask") is not None:
            problems.extend(_image_ref_problems(body["mask"], "mask"))
    elif endpoint == "/v1/images/generations":
        for field in ("images", "mask", "input_fidelity"):
            if field in body:
                problems.append(
                    RequestProblem(field, "unknown_parameter", f"Unknown parameter: '{field}' on {endpoint}.")
                )
    else:
        problems.append(RequestProblem("url", "invalid_value", f"Unsupported endpoint: {endpoint!r}."))
    return problems


# Output image tokens per image for the models before gpt-image-2 (FACTS §6, G-IMG): square / portrait / landscape.
_OUTPUT_TOKENS: Final[dict[str, tuple[int, int, int]]] = {
    "low": (272, 408, 400),
    "medium": (1056, 1584, 1568),
    "high": (4160, 6240, 6208),
}
# gpt-image-2 per-image prices at 1024x1024 (FACTS §6) divided by its $30/1M output price give its token
# counts for a square image; other sizes scale with the pixel count (an estimate: G-IMG says it varies).
_GPT_IMAGE_2_SQUARE_TOKENS: Final[dict[str, int]] = {"low": 200, "medium": 1767, "high": 7033}
#: Input image tokens per reference image (an order-of-magnitude estimate; FACTS §6 gives no table).
_IMAGE_IN_TOKENS: Final[dict[str, int]] = {"low": 323, "high": 4160}


def _text_tokens(prompt: str) -> int:
    """About four characters a token (an estimate used for budgets and the emulator's usage)."""
    return max(1, math.ceil(len(prompt) / 4))


def _quality(body: dict[str, object]) -> str:
    quality = body.get("quality")
    return quality if isinstance(quality, str) and quality in _OUTPUT_TOKENS else "medium"


def _output_tokens(model: str, body: dict[str, object]) -> int:
    size = body.get("size")
    w, h = resolve_size(size if isinstance(size, str) else None)
    quality = _quality(body)
    rules = model_rules(model)
    if rules is not None and rules.name == "gpt-image-2":
        return max(16, round(_GPT_IMAGE_2_SQUARE_TOKENS[quality] * (w * h) / (1024 * 1024)))
    square, portrait, landscape = _OUTPUT_TOKENS[quality]
    return square if w == h else (portrait if h > w else landscape)


def _image_input_count(body: dict[str, object]) -> int:
    images = body.get("images")
    count = len(images) if isinstance(images, list) else 0
    return count + (1 if body.get("mask") is not None else 0)


def estimate_input_tokens(body: dict[str, object]) -> int:
    """Estimated input tokens of one request body: prompt text plus reference images.

    This is what counts against the enqueued-token limit (FACTS §3.1: "every pending batch's input tokens
    count"; how image requests are counted is unconfirmed, so this is our estimate). Multiply by ``n``? No:
    input tokens are paid once per request.
    """
    prompt = body.get("prompt")
    text = _text_tokens(prompt) if isinstance(prompt, str) else 0
    images = _image_input_count(body)
    if not images:  # the common case; the shard builder calls this once per line
        return text
    model = body.get("model")
    rules = model_rules(model) if isinstance(model, str) else None
    fidelity = "high" if (rules and rules.name == "gpt-image-2") or body.get("input_fidelity") == "high" else "low"
    return text + images * _IMAGE_IN_TOKENS[fidelity]


def estimate_usage(body: dict[str, object]) -> dict[str, object]:
    """An ``ImageGenUsage`` object (SPEC) for ``body``: text and image input tokens, image output tokens × n."""
    prompt = body.get("prompt")
    text = _text_tokens(prompt) if isinstance(prompt, str) else 0
    image_in = estimate_input_tokens(body) - text
    model = body.get("model")
    n = body.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    out = _output_tokens(model if isinstance(model, str) else "", body) * count
    return {
        "input_tokens": text + image_in,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens": out,
        "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
        "total_tokens": text + image_in + out,
    }


def request_cost_usd(model: str, usage: dict[str, object], *, batch: bool = True) -> float | None:
    """Cost in USD of one request from its ``usage`` (SPEC ``ImageGenUsage``) and FACTS §6 token prices.

    Text input at the text price, image input at the image price, all output tokens at the image output
    price; halved when ``batch`` (FACTS §6 "Batch = 50%"). ``None`` when the model has no known prices.
    """
    rules = model_rules(model)
    if rules is None:
        return None
    details = usage.get("input_tokens_details")
    text_in = image_in = 0
    if isinstance(details, dict):
        text_in = int(details.get("text_tokens") or 0)
        image_in = int(details.get("image_tokens") or 0)
    else:
        text_in = int(usage.get("input_tokens") or 0)  # type: ignore[call-overload]
    out = int(usage.get("output_tokens") or 0)  # type: ignore[call-overload]
    cost: float = (text_in * rules.text_in_per_m + image_in * rules.image_in_per_m + out * rules.image_out_per_m) / 1e6
    return cost * (BATCH_DISCOUNT if batch else 1.0)
