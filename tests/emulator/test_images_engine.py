"""Tests of the emulator's image engine (batchpipe.emulator.images / render): real Pillow, real C2PA signing,
real loopback HTTP for image_url inputs."""

from __future__ import annotations

import base64
import datetime as dt
import io
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import c2pa
import pytest
from PIL import Image

from batchpipe.domain import spec
from batchpipe.emulator import images as engine
from batchpipe.emulator.images import ImageExecutor, ImageOutcome
from batchpipe.emulator.render import build_edit_layer

GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"
GREEN = (0, 200, 0)
BLUE = (0, 0, 230)


def _png(size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def _encoded(size: tuple[int, int], colour: tuple[int, int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _no_files(file_id: str) -> bytes | None:
    return None


def _images(outcome: ImageOutcome) -> list[Image.Image]:
    assert outcome.status_code == 200, outcome.body
    data = outcome.body["data"]
    assert isinstance(data, list)
    result: list[Image.Image] = []
    for item in data:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        image.load()
        result.append(image)
    return result


def _error(outcome: ImageOutcome) -> dict[str, object]:
    error = outcome.body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _body(**fields: object) -> dict[str, object]:
    return {"model": "gpt-image-2", "prompt": "A red running shoe on a white table", **fields}


#: Before gpt-image-1's shutdown (2026-10-23): every GPT image model of the table still serves requests.
BEFORE_SHUTDOWNS = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


@pytest.fixture
async def executor() -> AsyncIterator[ImageExecutor]:
    ex = ImageExecutor(fetch_timeout_s=2.0)
    yield ex
    await ex.aclose()


@pytest.fixture
async def executor_before_shutdowns() -> AsyncIterator[ImageExecutor]:
    """An executor whose lifecycle clock is pinned at :data:`BEFORE_SHUTDOWNS`, for the older models' rules."""
    ex = ImageExecutor(fetch_timeout_s=2.0, now=lambda: BEFORE_SHUTDOWNS)
    yield ex
    await ex.aclose()


# --- a loopback HTTP server for image_url inputs ---

_SERVED = {"/green.png": _png((300, 200), GREEN), "/text.txt": b"not an image"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = _SERVED.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


# --- generations: what was asked is what comes back ---


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        ("gpt-image-1.5", "1024x1024", (1024, 1024)),
        ("gpt-image-1", "1536x1024", (1536, 1024)),
        ("gpt-image-1-mini", "1024x1536", (1024, 1536)),
        ("gpt-image-1.5", "auto", (1024, 1024)),
        ("gpt-image-2", "1280x720", (1280, 720)),
    ],
)
async def test_sizes(
    executor_before_shutdowns: ImageExecutor, model: str, size: str, expected: tuple[int, int]
) -> None:
    executor = executor_before_shutdowns
    outcome = await executor.execute(GEN, _body(model=model, size=size, quality="low"), open_file=_no_files)
    (image,) = _images(outcome)
    assert image.size == expected
    assert outcome.body["size"] == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize(
    ("fmt", "background", "pil_format", "mode"),
    [
        ("png", "opaque", "PNG", "RGB"),
        ("png", "auto", "PNG", "RGB"),
        ("png", "transparent", "PNG", "RGBA"),
        ("webp", "transparent", "WEBP", "RGBA"),
        ("webp", "opaque", "WEBP", "RGB"),
        ("jpeg", "opaque", "JPEG", "RGB"),
    ],
)
async def test_formats_and_backgrounds(
    executor: ImageExecutor, fmt: str, background: str, pil_format: str, mode: str
) -> None:
    outcome = await executor.execute(GEN, _body(output_format=fmt, background=background), open_file=_no_files)
    (image,) = _images(outcome)
    assert image.format == pil_format
    assert image.mode == mode
    assert outcome.body["output_format"] == fmt
    assert outcome.body["background"] == ("transparent" if background == "transparent" else "opaque")
    if mode == "RGBA":
        alpha = image.getchannel("A")
        histogram = alpha.histogram()
        total = image.size[0] * image.size[1]
        assert histogram[0] > total * 0.2  # the background is see-through
        assert histogram[255] > total * 0.05  # banner, shapes and text are not


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
async def test_output_compression_changes_quality(executor: ImageExecutor, fmt: str) -> None:
    sizes = []
    for compression in (5, 95):
        outcome = await executor.execute(
            GEN, _body(output_format=fmt, output_compression=compression), open_file=_no_files
        )
        _images(outcome)
        data = outcome.body["data"]
        assert isinstance(data, list)
        sizes.append(len(base64.b64decode(data[0]["b64_json"])))
    assert sizes[0] < sizes[1]


async def test_response_fields_follow_the_spec(executor: ImageExecutor) -> None:
    body = _body(n=3, quality="high", size="1536x1024")
    outcome = await executor.execute(GEN, body, open_file=_no_files)
    images = _images(outcome)
    assert len(images) == 3
    assert isinstance(outcome.body["created"], int)
    assert outcome.body["quality"] == "high"
    assert outcome.body["usage"] == spec.estimate_usage(body)
    # the n images of one request differ from each other
    assert len({image.tobytes() for image in images}) == 3


async def test_quality_auto_is_reported_as_medium(executor: ImageExecutor) -> None:
    outcome = await executor.execute(GEN, _body(quality="auto"), open_file=_no_files)
    assert outcome.status_code == 200
    assert outcome.body["quality"] == "medium"


async def test_pixels_are_deterministic(executor: ImageExecutor) -> None:
    body = _body(n=2, output_format="png")
    first = _images(await executor.execute(GEN, body, open_file=_no_files))
    again = _images(await executor.execute(GEN, dict(reversed(body.items())), open_file=_no_files))
    other = _images(await executor.execute(GEN, _body(n=2, prompt="A blue sandal"), open_file=_no_files))
    assert [i.tobytes() for i in first] == [i.tobytes() for i in again]
    assert first[0].tobytes() != other[0].tobytes()


async def test_realistic_detail_is_heavier() -> None:
    fast = ImageExecutor(detail="fast")
    realistic = ImageExecutor(detail="realistic")
    try:
        sizes = []
        for ex in (fast, realistic):
            outcome = await ex.execute(GEN, _body(), open_file=_no_files)
            _images(outcome)
            data = outcome.body["data"]
            assert isinstance(data, list)
            sizes.append(len(base64.b64decode(data[0]["b64_json"])))
        assert sizes[1] > 1_000_000  # about 1.5 MB for 1024x1024
        assert sizes[1] > 5 * sizes[0]
        # the noise layer is seeded too: realistic pixels are deterministic
        again = [_images(await ex.execute(GEN, _body(), open_file=_no_files))[0] for ex in (realistic, fast)]
        first = _images(await realistic.execute(GEN, _body(), open_file=_no_files))[0]
        assert first.tobytes() == again[0].tobytes()
        assert first.tobytes() != again[1].tobytes()
    finally:
        await fast.aclose()
        await realistic.aclose()


# --- C2PA ---


@pytest.mark.parametrize(("fmt", "mime"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
async def test_images_carry_a_valid_c2pa_manifest(executor: ImageExecutor, fmt: str, mime: str) -> None:
    outcome = await executor.execute(GEN, _body(output_format=fmt), open_file=_no_files)
    _images(outcome)
    data = outcome.body["data"]
    assert isinstance(data, list)
    raw = base64.b64decode(data[0]["b64_json"])
    context = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})
    with c2pa.Reader(mime, io.BytesIO(raw), context=context) as reader:
        assert reader.get_validation_state() in ("Valid", "Trusted")
        manifest = reader.get_active_manifest()
    actions = [
        action
        for assertion in manifest["assertions"]
        if assertion["label"].startswith("c2pa.actions")
        for action in assertion["data"]["actions"]
    ]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"].endswith("trainedAlgorithmicMedia")


# --- edits ---


async def test_edit_composes_its_input_in_the_centre(executor: ImageExecutor) -> None:
    body = _body(images=[{"image_url": _data_url(_png((300, 200), GREEN))}])
    (image,) = _images(await executor.execute(EDIT, body, open_file=_no_files))
    r, g, b = image.convert("RGB").getpixel((512, 512))  # type: ignore[misc]
    assert abs(r - GREEN[0]) < 12
    assert abs(g - GREEN[1]) < 12
    assert abs(b - GREEN[2]) < 12


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
async def test_edit_accepts_jpeg_and_webp_by_file_id(executor: ImageExecutor, fmt: str) -> None:
    files = {"file-in": _encoded((256, 256), BLUE, fmt)}
    body = _body(images=[{"file_id": "file-in"}])
    (image,) = _images(await executor.execute(EDIT, body, open_file=files.get))
    r, g, b = image.convert("RGB").getpixel((512, 512))  # type: ignore[misc]
    assert max(r, g) < 30
    assert b > 190


async def test_edit_tints_the_masked_area_and_shows_thumbnails(executor: ImageExecutor) -> None:
    first = _png((400, 400), GREEN)
    mask = Image.new("RGBA", (400, 400), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 200, 400))  # left half fully transparent = the area to edit
    mask_bytes = io.BytesIO()
    mask.save(mask_bytes, "PNG")
    files = {"file-first": first, "file-brand": _png((100, 100), BLUE), "file-mask": mask_bytes.getvalue()}
    body = _body(
        images=[{"file_id": "file-first"}, {"file_id": "file-brand"}],
        mask={"file_id": "file-mask"},
    )
    (image,) = _images(await executor.execute(EDIT, body, open_file=files.get))
    rgb = image.convert("RGB")
    layer = build_edit_layer(Image.new("RGB", (400, 400)), [Image.new("RGB", (100, 100))], None, (1024, 1024))
    x0, y0 = layer.box
    edge = layer.first.size[0]
    masked = rgb.getpixel((x0 + edge // 4, y0 + edge // 2))
    kept = rgb.getpixel((x0 + 3 * edge // 4, y0 + edge // 2))
    assert isinstance(masked, tuple)
    assert isinstance(kept, tuple)
    assert abs(kept[1] - GREEN[1]) < 12
    assert kept[0] < 12
    assert min(masked[0], masked[2]) > 80  # tinted towards magenta
    (thumb, (tx, ty)), *_ = layer.thumbs
    tr, tg, tb = rgb.getpixel((tx + thumb.size[0] // 2, ty + thumb.size[1] // 2))  # type: ignore[misc]
    assert max(tr, tg) < 30
    assert tb > 190


async def test_edit_fetches_image_url_over_http(executor: ImageExecutor, http_base: str) -> None:
    body = _body(images=[{"image_url": f"{http_base}/green.png"}])
    (image,) = _images(await executor.execute(EDIT, body, open_file=_no_files))
    r, g, _ = image.convert("RGB").getpixel((512, 512))  # type: ignore[misc]
    assert g > 180
    assert r < 20


# --- errors ---


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "code"),
    [
        # dall-e-3 (retired 2026-05-12) now answers 404 model_not_found: test_models_not_served_answer_404
        (GEN, _body(model=42), "model", "invalid_value"),
        (GEN, _body(n=11), "n", "integer_out_of_range"),
        (GEN, _body(background="transparent", output_format="jpeg"), "background", "invalid_value"),
        (GEN, _body(model="gpt-image-1.5", size="1280x720"), "size", "invalid_value"),
        (GEN, _body(size="1000x1000"), "size", "invalid_value"),  # gpt-image-2: WxH edges must be multiples of 16
        (GEN, _body(prompt=""), "prompt", "invalid_value"),
        (EDIT, _body(), "images", "invalid_value"),
        (EDIT, _body(images=[{"url": "x"}]), "images[0].url", "unknown_parameter"),
    ],
)
async def test_spec_problems_answer_400(
    executor_before_shutdowns: ImageExecutor, endpoint: str, body: dict[str, object], param: str, code: str
) -> None:
    outcome = await executor_before_shutdowns.execute(endpoint, body, open_file=_no_files)
    assert outcome.status_code == 400
    error = _error(outcome)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


@pytest.mark.parametrize(
    ("model", "now"),
    [
        ("dall-e-3", None),  # retired 2026-05-12
        ("gpt-image-1", None),  # shut down 2026-10-23
        ("gpt-image-1.5", dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),  # 00:00 UTC on its shutdown date
        ("gpt-image-9-imaginary", None),  # not in the table
    ],
)
async def test_models_not_served_answer_404(model: str, now: dt.datetime | None) -> None:
    ex = ImageExecutor(now=(lambda: now) if now is not None else None)
    try:
        outcome = await ex.execute(GEN, _body(model=model), open_file=_no_files)
    finally:
        await ex.aclose()
    assert outcome.status_code == 404
    assert outcome.body == {
        "error": {
            "message": f"The model '{model}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize("prompt", ["a shoe EMULATOR_BLOCK", "Emulator_Block please"])
async def test_moderation_trigger(executor: ImageExecutor, prompt: str) -> None:
    outcome = await executor.execute(GEN, _body(prompt=prompt), open_file=_no_files)
    assert outcome.status_code == 400
    error = _error(outcome)
    assert (error["type"], error["param"], error["code"]) == (
        "image_generation_user_error",
        None,
        "moderation_blocked",
    )
    assert str(error["message"]).startswith("Your request was rejected by the safety system.")


GOOD = {"file_id": "file-good"}


def _mask_png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    return _png(size, (0, 0, 0, 0) if mode == "RGBA" else (0, 0, 0), mode)


@pytest.mark.parametrize(
    ("images", "mask", "status", "type_", "param", "code"),
    [
        (
            [{"file_id": "file-missing"}],
            None,
            400,
            "invalid_request_error",
            "images[0].file_id",
            "invalid_file_id",
        ),
        (
            [GOOD, {"file_id": "file-text"}],
            None,
            400,
            "image_generation_user_error",
            "images[1]",
            "invalid_image_file",
        ),
        (
            [{"file_id": "file-gif"}],
            None,
            400,
            "image_generation_user_error",
            "images[0]",
            "invalid_image_file",
        ),
        (
            [{"image_url": "data:image/png;base64,@@not-base64@@"}],
            None,
            400,
            "invalid_request_error",
            "images[0].image_url",
            "invalid_image_url",
        ),
        (
            [{"image_url": "data:image/png,plain"}],
            None,
            400,
            "invalid_request_error",
            "images[0].image_url",
            "invalid_image_url",
        ),
        ([GOOD], {"file_id": "file-mask-small"}, 400, "invalid_request_error", "mask", "invalid_mask"),
        ([GOOD], {"file_id": "file-mask-rgb"}, 400, "invalid_request_error", "mask", "invalid_mask"),
        ([GOOD], {"file_id": "file-mask-jpeg"}, 400, "invalid_request_error", "mask", "invalid_mask"),
        ([GOOD], {"file_id": "file-text"}, 400, "image_generation_user_error", "mask", "invalid_image_file"),
        ([GOOD], {"file_id": "file-nope"}, 400, "invalid_request_error", "mask.file_id", "invalid_file_id"),
        ([GOOD], {"file_id": "file-mask-ok"}, 200, None, None, None),
    ],
)
async def test_input_errors(
    executor: ImageExecutor,
    images: list[dict[str, str]],
    mask: dict[str, str] | None,
    status: int,
    type_: str | None,
    param: str | None,
    code: str | None,
) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, "GIF")
    files = {
        "file-good": _png((64, 48), GREEN),
        "file-text": b"hello, not an image",
        "file-gif": gif.getvalue(),
        "file-mask-ok": _mask_png((64, 48)),
        "file-mask-small": _mask_png((32, 24)),
        "file-mask-rgb": _mask_png((64, 48), "RGB"),
        "file-mask-jpeg": _encoded((64, 48), (0, 0, 0), "JPEG"),
    }
    body = _body(images=images, **({"mask": mask} if mask else {}))
    outcome = await executor.execute(EDIT, body, open_file=files.get)
    assert outcome.status_code == status, outcome.body
    if status != 200:
        error = _error(outcome)
        assert (error["type"], error["param"], error["code"]) == (type_, param, code)


async def test_image_url_not_found_is_400(executor: ImageExecutor, http_base: str) -> None:
    url = f"{http_base}/missing.png"
    files = {"file-good": _png((64, 48), GREEN)}
    outcome = await executor.execute(
        EDIT, _body(images=[{"image_url": url}, GOOD, {"image_url": url}]), open_file=files.get
    )
    error = _error(outcome)
    assert outcome.status_code == 400
    assert (error["param"], error["code"]) == ("images[0].image_url", "invalid_image_url")
    assert url in str(error["message"])


async def test_image_url_served_but_not_an_image(executor: ImageExecutor, http_base: str) -> None:
    outcome = await executor.execute(EDIT, _body(images=[{"image_url": f"{http_base}/text.txt"}]), open_file=_no_files)
    assert outcome.status_code == 400
    assert _error(outcome)["code"] == "invalid_image_file"


async def test_unreachable_image_url_is_400(executor: ImageExecutor) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x.png"
    outcome = await executor.execute(EDIT, _body(images=[{"image_url": url}]), open_file=_no_files)
    assert outcome.status_code == 400
    error = _error(outcome)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "images[0].image_url",
        "invalid_image_url",
    )
    assert url in str(error["message"])


async def test_oversized_input_is_rejected(executor: ImageExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_INPUT_IMAGE_BYTES", 100)
    files = {"file-big": _png((64, 64), GREEN) + b"\0" * 200}
    outcome = await executor.execute(EDIT, _body(images=[{"file_id": "file-big"}]), open_file=files.get)
    assert outcome.status_code == 400
    assert (_error(outcome)["param"], _error(outcome)["code"]) == ("images[0].file_id", "image_too_large")


async def test_internal_failure_is_a_500_not_an_exception(
    executor: ImageExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_sign(data: bytes, mime: str, model: str) -> bytes:
        raise RuntimeError("signer exploded")

    monkeypatch.setattr(engine, "_sign", broken_sign)
    outcome = await executor.execute(GEN, _body(), open_file=_no_files)
    assert outcome.status_code == 500
    error = _error(outcome)
    assert (error["type"], error["code"], error["param"]) == ("server_error", None, None)
    assert "exploded" not in str(error["message"])


async def test_image_url_that_never_answers_times_out_as_400() -> None:
    silent = socket.socket()  # listens (the kernel accepts the connection) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    ex = ImageExecutor(fetch_timeout_s=0.3)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.png"
        outcome = await ex.execute(EDIT, _body(images=[{"image_url": url}]), open_file=_no_files)
        assert outcome.status_code == 400
        error = _error(outcome)
        assert (error["param"], error["code"]) == ("images[0].image_url", "invalid_image_url")
        assert "Timeout" in str(error["message"])
    finally:
        await ex.aclose()
        silent.close()
