"""The emulator's image engine: answers one Images API request body the way the service would.

:class:`ImageExecutor.execute` takes an endpoint (``/v1/images/generations`` or ``/v1/images/edits``, JSON
edit form SPEC ``EditImageBodyJsonParam``) and a body, and returns an :class:`ImageOutcome`: status 200 with
an ``ImagesResponse`` (SPEC), or an error status with an ``ErrorResponse`` (SPEC ``Error``:
``{"error": {"message", "type", "param", "code"}}``). It never raises for a bad request.

Checks, in order, and the errors they answer with (HTTP 400 unless stated; ``type`` / ``code`` / ``param``):

- ``spec.check_image_request`` finds a problem: ``invalid_request_error`` / the first problem's code /
  its param.
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
the canonical JSON of the body (``models.request_hash``) and the image's index. Each image is then signed
with a C2PA manifest by ``batchpipe.provenance.sign.sign_image`` (imported lazily); ECDSA signatures make
the signed bytes differ between runs even though the pixels do not. Decoding, rendering, encoding and
signing run in the executor's thread pool (Pillow and c2pa release the GIL).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Literal

import httpx
import structlog
from PIL import Image

from batchpipe import spec
from batchpipe.emulator.render import (
    EditLayer,
    InputImageError,
    OutputFormat,
    RenderSpec,
    build_edit_layer,
    decode_input,
    decode_mask,
    encode_image,
    render_image,
)
from batchpipe.models import request_hash

__all__ = ["MAX_INPUT_IMAGE_BYTES", "ImageExecutor", "ImageOutcome"]

#: FACTS §4.2: each input image is "under 50 MB"; read as 50 MiB.
MAX_INPUT_IMAGE_BYTES: Final = 50 * 1024 * 1024
_BLOCK_WORD: Final = "emulator_block"
_MIME: Final[dict[str, str]] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ImageOutcome:
    """The answer to one request.

    ``status_code``: 200, or the HTTP error status (400, 500). ``body``: an ``ImagesResponse`` (SPEC) on 200,
    an ``ErrorResponse`` ``{"error": {"message", "type", "param", "code"}}`` (SPEC ``Error``) otherwise.
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


def _sign(data: bytes, mime: str, model: str) -> bytes:
    """Sign through ``batchpipe.provenance.sign.sign_image``, imported on first use."""
    from batchpipe.provenance.sign import sign_image  # lazy: keeps the native c2pa import off module load

    return sign_image(data, mime, model=model)


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


class ImageExecutor:
    """Executes Images API requests for the emulator (see the module docstring for the errors).

    ``detail``: ``"fast"`` (flat gradients and shapes) or ``"realistic"`` (adds noise so a 1024x1024 PNG is
    about 1.5 MB). ``max_workers``: threads rendering, encoding and signing. ``fetch_timeout_s``: timeout in
    seconds for fetching one http(s) ``image_url``. Call :meth:`aclose` when done.
    """

    def __init__(
        self,
        *,
        detail: Literal["fast", "realistic"] = "fast",
        max_workers: int = 2,
        fetch_timeout_s: float = 5.0,
    ) -> None:
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
        except _Refusal as refusal:
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

    async def aclose(self) -> None:
        """Close the HTTP client and shut the thread pool down (waits for running renders)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def _execute(
        self, endpoint: str, body: dict[str, object], open_file: Callable[[str], bytes | None]
    ) -> ImageOutcome:
        problems = spec.check_image_request(endpoint, body)
        if problems:
            first = problems[0]
            raise _Refusal(first.message, type_="invalid_request_error", param=first.param, code=first.code)
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
        b64 = await asyncio.gather(*(loop.run_in_executor(self._pool, _produce, job, layer, i) for i in range(n)))
        quality = body.get("quality")
        return ImageOutcome(
            200,
            {
                "created": int(time.time()),
                "data": [{"b64_json": item} for item in b64],
                "background": "transparent" if job.transparent else "opaque",
                "output_format": job.fmt,
                "size": f"{job.size[0]}x{job.size[1]}",
                "quality": quality if quality in ("low", "medium", "high") else "medium",
                "usage": spec.estimate_usage(body),
            },
        )

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


def _make_job(endpoint: str, body: dict[str, object], detail: Literal["fast", "realistic"]) -> _Job:
    size = body.get("size")
    fmt = body.get("output_format") or "png"
    assert fmt in ("png", "jpeg", "webp")
    compression = body.get("output_compression")
    return _Job(
        size=spec.resolve_size(size if isinstance(size, str) else None),
        model=str(body["model"]),
        prompt=str(body["prompt"]),
        seed=bytes.fromhex(request_hash(endpoint, body)),
        fmt=fmt,
        compression=compression if isinstance(compression, int) else None,
        transparent=body.get("background") == "transparent",
        detail=detail,
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


def _produce(job: _Job, layer: EditLayer | None, index: int) -> str:
    """Worker thread: render, encode and sign image ``index``; returns its base64 text."""
    image = render_image(
        RenderSpec(
            width=job.size[0],
            height=job.size[1],
            model=job.model,
            prompt=job.prompt,
            seed=job.seed,
            index=index,
            transparent=job.transparent,
            detail=job.detail,
        ),
        layer,
    )
    data = encode_image(image, job.fmt, job.compression)
    signed = _sign(data, _MIME[job.fmt], job.model)
    return base64.b64encode(signed).decode("ascii")
