"""The emulator's image engine: answers one Images API request body the way the service would.

:class:`ImageExecutor.execute` takes an endpoint (``/v1/images/generations`` or ``/v1/images/edits``, JSON
edit form SPEC ``EditImageBodyJsonParam``) and a body, and returns an :class:`ImageOutcome`: status 200 with
an ``ImagesResponse`` (SPEC), or an error status with an ``ErrorResponse`` (SPEC ``Error``:
``{"error": {"message", "type", "param", "code"}}``). It never raises for a bad request.

Checks, in order, and the errors they answer with (HTTP 400 unless stated; ``type`` / ``code`` / ``param``):

- ``model`` is a string the executor's model table does not hold, or names a model whose shutdown moment
  (00:00 UTC on its ``shutdown`` date) is at or before the executor's ``now``: HTTP **404**,
  ``invalid_request_error`` / ``model_not_found`` / null, message "The model 'X' does not exist or you do not
  have access to it." (what the API answers for an unknown model, M26 §1; the code for a shut-down model is
  unconfirmed there, so the emulator answers the same).
- ``spec.check_image_request`` (with the executor's table) finds a problem: ``invalid_request_error`` / the
  first problem's code / its param.
- the prompt contains ``EMULATOR_BLOCK`` in any case (FACTS §5 obs): ``image_generation_user_error`` /
  ``moderation_blocked`` / null; the message starts "Your request was rejected by the safety system."
- an http(s) ``image_url`` is unreachable, times out or answers non-2xx, or a data URL lacks
  ``;base64,`` or has bad base64: ``invalid_request_error`` / ``invalid_image_url`` /
  ``images[i].image_url`` or ``mask.image_url``; the message names the URL (http(s) only).
- ``open_file(file_id)`` returns None: ``invalid_request_error`` / ``invalid_file_id`` /
  ``images[i].file_id`` or ``mask.file_id``.
- an input is over 50 MiB (FACTS §4.2 "under 50 MB"): ``invalid_request_error`` / ``image_too_large`` /
  the reference's param.
- the bytes are not decodable or not png/jpeg/webp (FACTS §4.2, §5 obs): ``image_generation_user_error`` /
  ``invalid_image_file`` / ``images[i]`` or ``mask``.
- the mask is not a PNG, has no alpha channel, or differs in size from the first image (G-IMG via FACTS
  §4.2): ``invalid_request_error`` / ``invalid_mask`` / ``mask``.
- anything unexpected: HTTP 500, ``server_error`` / null / null (the exception is logged, not echoed).

The codes ``invalid_image_url``, ``invalid_file_id``, ``image_too_large`` and ``invalid_mask`` are this
emulator's choices: no source documents the service's codes for these cases.

Rendering (see :mod:`batchpipe.emulator.render`) is deterministic: the pixels depend only on the endpoint,
the canonical JSON of the body (``models.request_hash``) and the image's index. The size is the requested
``WxH`` exactly (``auto``: 1024x1024); ``output_format`` png/jpeg/webp (Pillow), gif (animated,
``frame_count`` frames, default 9, of ``frame_duration_ms`` each, default 200, rounded to the nearest 10 ms
and capped at 655,350 ms as SDK 3.57.0 ``image_generate_params.py`` says) or svg (an SVG document). Each file
is then signed with a C2PA manifest by ``batchpipe.provenance.sign.sign_media`` (imported lazily; c2pa-python
signs all five formats); ECDSA signatures make the signed bytes differ between runs even though the pixels do
not. Decoding, rendering, encoding and signing run in the executor's thread pool (Pillow and c2pa release
the GIL).

The ``ImagesResponse`` echoes what was rendered: ``size`` (``WxH``), ``output_format``, ``quality`` (``auto``
reports ``medium``; ``xhigh`` and ``max`` as asked), ``background``; plus, as SDK 3.57.0
``images_response.py`` adds them, ``safety_identifier`` (the request's non-empty ``safety_identifier``, else
its ``user``) when there is one, and for svg ``svg_usage`` (estimated: prompt tokens in, a token per 4 bytes of
SVG out, no reasoning tokens).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Literal

import httpx
import structlog
from PIL import Image

from batchpipe.domain import spec
from batchpipe.domain.items import request_hash
from batchpipe.domain.modeltable import ModelTable, shipped_table
from batchpipe.emulator.lineup import model_not_found_body
from batchpipe.emulator.lineup import serves as lineup_serves
from batchpipe.emulator.render import (
    EditLayer,
    InputImageError,
    OutputFormat,
    RenderSpec,
    build_edit_layer,
    decode_input,
    decode_mask,
    encode_image,
    render_gif,
    render_image,
    render_svg,
)

__all__ = [
    "GIF_DEFAULT_FRAMES",
    "GIF_DEFAULT_FRAME_MS",
    "MAX_INPUT_IMAGE_BYTES",
    "ImageExecutor",
    "ImageOutcome",
    "gif_frame_ms",
]

#: FACTS §4.2: each input image is "under 50 MB"; read as 50 MiB.
MAX_INPUT_IMAGE_BYTES: Final = 50 * 1024 * 1024
_BLOCK_WORD: Final = "emulator_block"
_MIME: Final[dict[str, str]] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "svg": "image/svg+xml",
}
#: ``quality`` values echoed as asked (SDK 3.57.0 ``images_response.py``); ``auto`` (or none) reports ``medium``.
_REPORTED_QUALITIES: Final = frozenset({"low", "medium", "high", "xhigh", "max"})
#: SDK 3.57.0 ``image_generate_params.py``: ``frame_count`` defaults to 9, ``frame_duration_ms`` to 200 (rounded
#: to the nearest 10 ms, the encoded delay capped at 655,350 ms).
GIF_DEFAULT_FRAMES: Final = 9
GIF_DEFAULT_FRAME_MS: Final = 200

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ImageOutcome:
    """The answer to one request.

    ``status_code``: 200, or the HTTP error status (400, 404 ``model_not_found``, 500). ``body``: an
    ``ImagesResponse`` (SPEC) on 200, an ``ErrorResponse`` ``{"error": {"message", "type", "param", "code"}}``
    (SPEC ``Error``) otherwise.
    """

    status_code: int
    body: dict[str, object]


class _Refusal(Exception):
    """Internal: a request refused with a 400 ``ErrorResponse``."""

    def __init__(self, message: str, *, type_: str, param: str | None, code: str | None) -> None:
        self.outcome = _error(400, message, type_=type_, param=param, code=code)
        super().__init__(message)


def _error(status: int, message: str, *, type_: str, param: str | None, code: str | None) -> ImageOutcome:
    return ImageOutcome(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})


class _NotFound(Exception):
    """Internal: the model is unknown or shut down (404 ``model_not_found``)."""

    def __init__(self, model: str) -> None:
        self.outcome = ImageOutcome(404, model_not_found_body(model))
        super().__init__(model)


def _sign(data: bytes, mime: str, model: str) -> bytes:
    """Sign through ``batchpipe.provenance.sign.sign_media``, imported on first use."""
    from batchpipe.provenance.sign import sign_media  # lazy: keeps the native c2pa import off module load

    return sign_media(data, mime, model=model)


def gif_frame_ms(requested: object) -> int:
    """The frame delay a GIF gets for ``frame_duration_ms`` (milliseconds; default 200): rounded to the nearest
    10 ms (halves up: GIF89a delays are in 1/100 s) and capped at 655,350 ms (SDK 3.57.0
    ``image_generate_params.py``)."""
    value = requested if isinstance(requested, int) and not isinstance(requested, bool) else GIF_DEFAULT_FRAME_MS
    return min(spec.GIF_MAX_FRAME_DURATION_MS, (value + 5) // 10 * 10)


@dataclass(frozen=True, slots=True)
class _Input:
    """One resolved reference: ``param`` names it (``images[0]``, ``mask``), ``data`` its bytes."""

    param: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Job:
    """Everything a worker thread needs to produce one request's images."""

    size: tuple[int, int]
    model: str
    prompt: str
    seed: bytes
    fmt: OutputFormat
    compression: int | None
    transparent: bool
    detail: Literal["fast", "realistic"]
    frames: int = GIF_DEFAULT_FRAMES
    frame_ms: int = GIF_DEFAULT_FRAME_MS
    svg_author: str | None = None


class ImageExecutor:
    """Executes Images API requests for the emulator (see the module docstring for the errors).

    ``detail``: ``"fast"`` (flat gradients and shapes) or ``"realistic"`` (adds noise so a 1024x1024 PNG is
    about 1.5 MB). ``max_workers``: threads rendering, encoding and signing. ``fetch_timeout_s``: timeout in
    seconds for fetching one http(s) ``image_url``. ``models``: the model table requests are checked against
    (default: the shipped one, :func:`batchpipe.domain.modeltable.shipped_table`). ``now``: the clock for lifecycle
    decisions, returning an aware ``datetime`` (default: real UTC time), read once per request. Call
    :meth:`aclose` when done.
    """

    def __init__(
        self,
        *,
        detail: Literal["fast", "realistic"] = "fast",
        max_workers: int = 2,
        fetch_timeout_s: float = 5.0,
        models: ModelTable | None = None,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._models = models if models is not None else shipped_table()
        self._now = now if now is not None else _utc_now
        self._detail: Literal["fast", "realistic"] = detail
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="emulator-images")
        self._fetch_timeout_s = fetch_timeout_s
        self._http: httpx.AsyncClient | None = None

    async def execute(
        self, endpoint: str, body: dict[str, object], *, open_file: Callable[[str], bytes | None]
    ) -> ImageOutcome:
        """Answer ``body`` sent to ``endpoint``; never raises (500 ``server_error`` for internal failures).

        ``open_file(file_id)`` returns the bytes of an uploaded file or ``None`` if unknown; it is called on
        the event loop thread, so it must be quick (e.g. an in-memory or local-disk lookup).
        """
        try:
            return await self._execute(endpoint, body, open_file)
        except (_Refusal, _NotFound) as refusal:
            return refusal.outcome
        except Exception as exc:
            _log.exception("emulator.images.internal_error", endpoint=endpoint, error_type=type(exc).__name__)
            return _error(
                500,
                "The server had an error while processing your request.",
                type_="server_error",
                param=None,
                code=None,
            )

    @property
    def models(self) -> ModelTable:
        """The model table requests are checked against."""
        return self._models

    def serves(self, model: str) -> bool:
        """True when ``model`` is in the table and not shut down at ``now`` (its shutdown moment, 00:00 UTC on
        the row's ``shutdown`` date, is still ahead)."""
        return lineup_serves(self._models, model, self._now())

    async def aclose(self) -> None:
        """Close the HTTP client and shut the thread pool down (waits for running renders)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def _execute(
        self, endpoint: str, body: dict[str, object], open_file: Callable[[str], bytes | None]
    ) -> ImageOutcome:
        model = body.get("model")
        if isinstance(model, str) and not self.serves(model):
            raise _NotFound(model)
        problems = spec.check_image_request(endpoint, body, models=self._models)
        if problems:
            first = problems[0]
            raise _Refusal(first.message, type_="invalid_request_error", param=first.field, code=first.code)
        prompt = str(body["prompt"])
        if _BLOCK_WORD in prompt.lower():
            raise _Refusal(
                "Your request was rejected by the safety system. If you believe this is an error, contact us "
                "and include the request ID. (Emulator: the prompt contains EMULATOR_BLOCK.)",
                type_="image_generation_user_error",
                param=None,
                code="moderation_blocked",
            )
        images: list[_Input] = []
        mask: _Input | None = None
        if endpoint == "/v1/images/edits":
            refs = body["images"]
            assert isinstance(refs, list)
            resolved = await asyncio.gather(
                *(self._resolve(ref, f"images[{i}]", open_file) for i, ref in enumerate(refs)),
                return_exceptions=True,
            )
            for item in resolved:  # report the first failing reference by index, not by finishing time
                if isinstance(item, BaseException):
                    raise item
                images.append(item)
            if body.get("mask") is not None:
                mask = await self._resolve(body["mask"], "mask", open_file)
        job = _make_job(endpoint, body, self._detail)
        loop = asyncio.get_running_loop()
        layer = await loop.run_in_executor(self._pool, _prepare_layer, images, mask, job.size) if images else None
        count = body.get("n")
        n = count if isinstance(count, int) else 1
        produced = await asyncio.gather(*(loop.run_in_executor(self._pool, _produce, job, layer, i) for i in range(n)))
        quality = body.get("quality")
        response: dict[str, object] = {
            "created": int(time.time()),
            "data": [{"b64_json": item} for item, _ in produced],
            "background": "transparent" if job.transparent else "opaque",
            "output_format": job.fmt,
            "size": f"{job.size[0]}x{job.size[1]}",
            "quality": quality if quality in _REPORTED_QUALITIES else "medium",
            "usage": spec.estimate_usage(body, self._models),
        }
        safety = body.get("safety_identifier") or body.get("user")
        if isinstance(safety, str) and safety:
            response["safety_identifier"] = safety
        if job.fmt == "svg":
            text_in = math.ceil(len(job.prompt) / 4)
            text_out = sum(math.ceil(length / 4) for _, length in produced)
            response["svg_usage"] = {
                "input_tokens": text_in,
                "model": job.svg_author or job.model,
                "output_tokens": text_out,
                "reasoning_tokens": 0,
                "total_tokens": text_in + text_out,
            }
        return ImageOutcome(200, response)

    async def _resolve(self, ref: object, param: str, open_file: Callable[[str], bytes | None]) -> _Input:
        """Bytes behind one ``ImageRefParam`` (already shape-checked by ``spec.check_image_request``)."""
        assert isinstance(ref, dict)
        if "file_id" in ref:
            file_id = str(ref["file_id"])
            data = open_file(file_id)
            if data is None:
                raise _Refusal(
                    f"Invalid file_id for '{param}': no such file: '{file_id}'.",
                    type_="invalid_request_error",
                    param=f"{param}.file_id",
                    code="invalid_file_id",
                )
            _check_size(len(data), f"{param}.file_id")
            return _Input(param, data)
        url = str(ref["image_url"])
        if url.startswith("data:"):
            return _Input(param, _decode_data_url(url, f"{param}.image_url"))
        return _Input(param, await self._fetch(url, f"{param}.image_url"))

    async def _fetch(self, url: str, param: str) -> bytes:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._fetch_timeout_s, follow_redirects=True)
        try:
            async with self._http.stream("GET", url) as response:
                if not response.is_success:
                    raise _Refusal(
                        f"Error while downloading {url}: the server answered HTTP {response.status_code}.",
                        type_="invalid_request_error",
                        param=param,
                        code="invalid_image_url",
                    )
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    _check_size(total, param)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise _Refusal(
                f"Error while downloading {url}: {type(exc).__name__}.",
                type_="invalid_request_error",
                param=param,
                code="invalid_image_url",
            ) from exc


def _check_size(size_bytes: int, param: str) -> None:
    if size_bytes > MAX_INPUT_IMAGE_BYTES:
        raise _Refusal(
            f"Image for '{param}' is larger than the {MAX_INPUT_IMAGE_BYTES} byte (50 MB) limit.",
            type_="invalid_request_error",
            param=param,
            code="image_too_large",
        )


def _decode_data_url(url: str, param: str) -> bytes:
    """``data:image/<type>;base64,<data>`` → bytes; a 400 ``invalid_image_url`` otherwise."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise _Refusal(
            f"Invalid data URL for '{param}': expected 'data:image/<type>;base64,<data>'.",
            type_="invalid_request_error",
            param=param,
            code="invalid_image_url",
        )
    _check_size(len(payload) * 3 // 4, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Refusal(
            f"Invalid data URL for '{param}': the payload is not valid base64.",
            type_="invalid_request_error",
            param=param,
            code="invalid_image_url",
        ) from exc


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_job(endpoint: str, body: dict[str, object], detail: Literal["fast", "realistic"]) -> _Job:
    size = body.get("size")
    fmt = body.get("output_format") or "png"
    assert fmt in ("png", "jpeg", "webp", "gif", "svg")  # checked by spec.check_image_request
    compression = body.get("output_compression")
    frames = body.get("frame_count")
    svg = body.get("svg")
    author = svg.get("model") if isinstance(svg, dict) else None
    return _Job(
        size=spec.resolve_size(size if isinstance(size, str) else None),
        model=str(body["model"]),
        prompt=str(body["prompt"]),
        seed=bytes.fromhex(request_hash(endpoint, body)),
        fmt=fmt,
        compression=compression if isinstance(compression, int) else None,
        transparent=body.get("background") == "transparent",
        detail=detail,
        frames=frames if isinstance(frames, int) else GIF_DEFAULT_FRAMES,
        frame_ms=gif_frame_ms(body.get("frame_duration_ms")),
        svg_author=author if isinstance(author, str) else None,
    )


def _prepare_layer(images: list[_Input], mask: _Input | None, size: tuple[int, int]) -> EditLayer:
    """Worker thread: decode and check the inputs of an edit and place them (400s as :class:`_Refusal`)."""
    decoded: list[Image.Image] = []
    for item in images:
        try:
            decoded.append(decode_input(item.data, item.param))
        except InputImageError as exc:
            raise _Refusal(exc.message, type_="image_generation_user_error", param=item.param, code=exc.code) from exc
    mask_alpha = None
    if mask is not None:
        try:
            mask_alpha = decode_mask(mask.data, decoded[0].size)
        except InputImageError as exc:
            type_ = "image_generation_user_error" if exc.code == "invalid_image_file" else "invalid_request_error"
            raise _Refusal(exc.message, type_=type_, param="mask", code=exc.code) from exc
    return build_edit_layer(decoded[0], decoded[1:], mask_alpha, size)


def _produce(job: _Job, layer: EditLayer | None, index: int) -> tuple[str, int]:
    """Worker thread: render, encode and sign image ``index``; returns its base64 text and the unsigned size in
    bytes. PNG (the common case) goes straight through Pillow's fast encoder."""
    render = RenderSpec(
        width=job.size[0],
        height=job.size[1],
        model=job.model,
        prompt=job.prompt,
        seed=job.seed,
        index=index,
        transparent=job.transparent,
        detail=job.detail,
    )
    fmt = job.fmt
    if fmt == "png" or fmt == "jpeg" or fmt == "webp":
        data = encode_image(render_image(render, layer), fmt, job.compression)
    elif fmt == "gif":
        data = render_gif(render, layer, frames=job.frames, duration_ms=job.frame_ms)
    else:
        data = render_svg(render, layer, author=job.svg_author)
    signed = _sign(data, _MIME[fmt], job.model)
    return base64.b64encode(signed).decode("ascii"), len(data)
