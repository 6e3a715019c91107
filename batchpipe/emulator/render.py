"""Pure Pillow rendering for the emulator's image engine: no I/O, no asyncio, safe in worker threads.

What a rendered image looks like (all of it deterministic in ``seed``):

- a two-colour gradient background with a few flat shapes (``detail="fast"``), plus a cached, seeded
  noise layer over everything but the text bands for ``detail="realistic"`` (a 1024x1024 PNG is then
  about 1.5 MB);
- a dark banner along the top reading ``EMULATOR · <model>`` and, along the bottom, the first words of the
  prompt, drawn with Pillow's default font (``ImageFont.load_default(size=...)``);
- for an edit, the first input image scaled into the centre (about 60% of the short edge), its masked
  area (fully transparent mask pixels, FACTS §4.2) tinted magenta, and thumbnails of the other inputs in a
  row above the prompt text.

``transparent=True`` gives an RGBA image whose background is fully transparent (alpha 0) while the shapes,
banner, text and composed inputs stay opaque; otherwise the image is RGB.

Besides the raster formats (:func:`encode_image`: png, jpeg, webp) two preview formats of SDK 3.57.0
(``image_generate_params.py`` ``output_format``; M26 §2) are rendered:

- :func:`render_gif`: an animated GIF of ``frames`` frames: the raster image above, quantised to one palette,
  with a disc that moves left to right, a progress bar under the banner and a ``frame k/N`` counter, so every
  frame differs from the one before it; each frame lasts ``duration_ms`` (a multiple of 10: GIF89a delays are
  in 1/100 s), looping forever.
- :func:`render_svg`: an SVG 1.1/2 document of the same scene (gradient, the same shapes, banner and prompt
  band, edit inputs embedded as PNG data URLs) with the prompt, escaped, in ``<title>`` and the caption.

Errors: :class:`InputImageError` (``code`` is the API error code, ``invalid_image_file`` or ``invalid_mask``)
for input bytes that cannot be used. Everything else raising is a bug.
"""

from __future__ import annotations

import base64
import io
import random
import re
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final, Literal
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, ImageChops, ImageDraw, ImageFont

__all__ = [
    "ACCEPTED_INPUT_FORMATS",
    "Detail",
    "EditLayer",
    "InputImageError",
    "OutputFormat",
    "RasterFormat",
    "RenderSpec",
    "build_edit_layer",
    "decode_input",
    "decode_mask",
    "encode_image",
    "render_gif",
    "render_image",
    "render_svg",
]

Detail = Literal["fast", "realistic"]
#: Formats Pillow encodes from one rendered image (:func:`encode_image`).
RasterFormat = Literal["png", "jpeg", "webp"]
#: Every ``output_format`` the emulator renders (SDK 3.57.0 ``image_generate_params.py``).
OutputFormat = Literal["png", "jpeg", "webp", "gif", "svg"]

#: FACTS §4.2: input images for GPT image models are png, webp or jpg (Pillow format names).
ACCEPTED_INPUT_FORMATS: Final[frozenset[str]] = frozenset({"PNG", "JPEG", "WEBP"})
#: Half-width of the uniform noise added in ``realistic`` mode (pixel levels); tuned so a 1024x1024 PNG
#: at ``compress_level=1`` is about 1.5 MB.
_NOISE_HALF_WIDTH: Final = 3
_NOISE_SEED: Final = 0x5EED
_TINT: Final = (255, 0, 200)
_BAND_FILL: Final = (20, 20, 28)
_BANNER_INK: Final = (255, 220, 0)
_CAPTION_INK: Final = (255, 255, 255)
#: GIF: palette entries for the picture; the rest hold the animated marks (disc colours, bar, counter).
_GIF_PICTURE_COLOURS: Final = 248
_GIF_MARKS: Final = ((255, 255, 255), (255, 220, 0), (0, 230, 255), (255, 60, 60))
#: Characters XML 1.0 cannot hold even escaped (its ``Char`` production); dropped from SVG text.
_NOT_XML_CHAR: Final = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class InputImageError(Exception):
    """Input bytes the engine cannot use. ``code``: API error code; ``message``: a sentence for the client."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """What to draw: ``width``/``height`` in pixels, ``seed`` (bytes, any length) fixing every random
    choice, ``index`` the image's position among the request's ``n``, ``model``/``prompt`` for the marks."""

    width: int
    height: int
    model: str
    prompt: str
    seed: bytes
    index: int = 0
    transparent: bool = False
    detail: Detail = "fast"


@dataclass(frozen=True, slots=True)
class EditLayer:
    """The inputs of an edit, prepared once per request and composed into each of its ``n`` images.

    ``first``: the first input (RGBA) already scaled to its place; ``box`` its top-left corner (x, y) in
    pixels; ``thumbs``: thumbnails (RGBA) of the other inputs with their top-left corners.
    """

    first: Image.Image
    box: tuple[int, int]
    thumbs: tuple[tuple[Image.Image, tuple[int, int]], ...] = ()


_fonts = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The default font at ``size`` px, cached per thread (a FreeType face must not be shared by threads)."""
    cache: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] | None = getattr(_fonts, "cache", None)
    if cache is None:
        cache = {}
        _fonts.cache = cache
    font = cache.get(size)
    if font is None:
        font = ImageFont.load_default(size=size)
        cache[size] = font
    return font


def _open(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ACCEPTED_INPUT_FORMATS:
            raise InputImageError(
                "invalid_image_file",
                f"Invalid image file for {what}: format {image.format or 'unknown'} is not supported; "
                "use png, jpeg or webp.",
            )
        image.load()
    except InputImageError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, ValueError, DecompressionBombError...)
        raise InputImageError(
            "invalid_image_file",
            f"Invalid image file for {what}: the bytes could not be decoded as png, jpeg or webp.",
        ) from exc
    return image


def decode_input(data: bytes, what: str) -> Image.Image:
    """Decode one input image (``what`` names it in messages, e.g. ``"images[0]"``).

    Returns the loaded Pillow image (its ``format`` is PNG, JPEG or WEBP).
    Raises :class:`InputImageError` ``invalid_image_file`` if Pillow cannot decode it or the format is another
    one (FACTS §4.2 accepted formats, §5 obs error code).
    """
    return _open(data, what)


def decode_mask(data: bytes, first_size: tuple[int, int]) -> Image.Image:
    """Decode and check a mask against the first input's ``(width, height)``; returns it as mode ``"L"``
    holding the mask's alpha (0 = area to edit).

    Raises :class:`InputImageError`: ``invalid_image_file`` when undecodable; ``invalid_mask`` when it is not
    a PNG, has no alpha channel, or its size differs from the first image's (FACTS §4.2, G-IMG).
    """
    mask = _open(data, "mask")
    if mask.format != "PNG":
        raise InputImageError("invalid_mask", f"Invalid mask: it must be a PNG image, got {mask.format}.")
    has_alpha = mask.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in mask.info
    if not has_alpha:
        raise InputImageError("invalid_mask", "Invalid mask: it must have an alpha channel.")
    if mask.size != first_size:
        raise InputImageError(
            "invalid_mask",
            f"Invalid mask: its size {mask.size[0]}x{mask.size[1]} differs from the first image's "
            f"{first_size[0]}x{first_size[1]}.",
        )
    return mask.convert("RGBA").getchannel("A")


def build_edit_layer(
    first: Image.Image, extras: list[Image.Image], mask_alpha: Image.Image | None, size: tuple[int, int]
) -> EditLayer:
    """Place the inputs of an edit on a ``size`` (width, height) canvas.

    ``first`` is scaled (aspect kept) to fit 60% of the short edge and centred; where ``mask_alpha`` (same
    size as ``first``) is 0 it is tinted magenta. ``extras`` become thumbnails of 1/8 of the short edge in a
    row above the bottom text, left to right. Returns an :class:`EditLayer`.
    """
    width, height = size
    short = min(width, height)
    target = max(1, int(short * 0.6))
    scale = target / max(first.size)
    placed_size = (max(1, round(first.size[0] * scale)), max(1, round(first.size[1] * scale)))
    placed = first.convert("RGBA").resize(placed_size, Image.Resampling.BILINEAR)
    if mask_alpha is not None:
        edit_area = mask_alpha.resize(placed_size, Image.Resampling.NEAREST).point(lambda a: 255 if a == 0 else 0)
        tint = Image.new("RGBA", placed_size, (*_TINT, 255))
        tinted = Image.blend(placed, tint, 0.5)
        tinted.putalpha(placed.getchannel("A"))
        placed = Image.composite(tinted, placed, edit_area)
    box = ((width - placed_size[0]) // 2, (height - placed_size[1]) // 2)
    thumb_edge = max(8, short // 8)
    gap = max(2, thumb_edge // 8)
    y = height - _text_band(height) - thumb_edge - gap
    thumbs: list[tuple[Image.Image, tuple[int, int]]] = []
    x = gap
    for extra in extras:
        if x + thumb_edge > width:
            break
        thumb = extra.convert("RGBA")
        thumb.thumbnail((thumb_edge, thumb_edge), Image.Resampling.BILINEAR)
        thumbs.append((thumb, (x, y)))
        x += thumb_edge + gap
    return EditLayer(placed, box, tuple(thumbs))


def _text_band(height: int) -> int:
    """Height in pixels of the top banner and of the bottom prompt band."""
    return max(12, height // 14)


@lru_cache(maxsize=8)
def _gradient(width: int, height: int) -> Image.Image:
    """A cached diagonal 0..255 ``"L"`` gradient of ``(width, height)``; read-only, shared by threads."""
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height), Image.Resampling.BILINEAR)
    vertical = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    return Image.blend(horizontal, vertical, 0.5)


_noise_lock = threading.Lock()


@lru_cache(maxsize=4)
def _noise_cached(width: int, height: int) -> Image.Image:
    raw = random.Random(_NOISE_SEED).randbytes(width * height * 3)
    a = _NOISE_HALF_WIDTH
    lut = [128 - a + v * (2 * a + 1) // 256 for v in range(256)]
    return Image.frombytes("RGB", (width, height), raw).point(lut * 3)


def _noise(width: int, height: int) -> Image.Image:
    """A cached, fixed-seed RGB noise layer centred on 128 (add with offset -128)."""
    with _noise_lock:
        return _noise_cached(width, height)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _draw_background(spec: RenderSpec, rng: random.Random) -> Image.Image:
    width, height = spec.width, spec.height
    grad = _gradient(width, height)
    c0, c1 = _colour(rng), _colour(rng)
    channels = [grad.point([lo + (hi - lo) * v // 255 for v in range(256)]) for lo, hi in zip(c0, c1, strict=True)]
    image = Image.merge("RGB", channels)
    if spec.transparent:
        image.putalpha(0)
    return image


_Shape = tuple[Literal["ellipse", "rectangle"], tuple[int, int, int, int], tuple[int, int, int]]


def _shape_plan(spec: RenderSpec, rng: random.Random) -> list[_Shape]:
    """3-5 flat shapes ``(kind, (x0, y0, x1, y1), rgb)`` between the text bands (raster and SVG share them)."""
    width, height = spec.width, spec.height
    band = _text_band(height)
    shapes: list[_Shape] = []
    for _ in range(3 + rng.randrange(3)):
        w = rng.randrange(width // 8, width // 3)
        h = rng.randrange(height // 8, height // 3)
        x = rng.randrange(0, width - w)
        y = rng.randrange(band, height - band - h)
        fill = _colour(rng)
        kind: Literal["ellipse", "rectangle"] = "ellipse" if rng.random() < 0.5 else "rectangle"
        shapes.append((kind, (x, y, x + w, y + h), fill))
    return shapes


def _draw_shapes(draw: ImageDraw.ImageDraw, spec: RenderSpec, rng: random.Random) -> None:
    for kind, box, fill in _shape_plan(spec, rng):
        if kind == "ellipse":
            draw.ellipse(box, fill=(*fill, 255))
        else:
            draw.rectangle(box, fill=(*fill, 255))


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, room: int) -> str:
    """``text`` cut at a word boundary (with an ellipsis) so that it is at most ``room`` pixels wide."""
    if draw.textlength(text, font=font) <= room:
        return text
    words = text.split()
    while words and draw.textlength(" ".join(words) + " …", font=font) > room:
        words.pop()
    return " ".join(words) + " …" if words else ""


def _mark_texts(spec: RenderSpec, draw: ImageDraw.ImageDraw) -> tuple[int, int, str, str]:
    """``(band, font_px, banner, caption)``: the banner and prompt caption, each cut to fit the width."""
    band = _text_band(spec.height)
    font_px = max(8, band * 6 // 10)
    font = _font(font_px)
    room = spec.width - 2 * (band // 4)
    banner = _fit(draw, f"EMULATOR · {spec.model} · #{spec.index + 1}", font, room)
    caption = _fit(draw, " ".join(spec.prompt.split()[:12]), font, room)
    return band, font_px, banner, caption


def _draw_marks(draw: ImageDraw.ImageDraw, spec: RenderSpec) -> None:
    width, height = spec.width, spec.height
    band, font_px, banner, caption = _mark_texts(spec, draw)
    font = _font(font_px)
    margin = band // 4
    draw.rectangle((0, 0, width, band), fill=(*_BAND_FILL, 255))
    draw.text((margin, band // 2), banner, font=font, fill=(*_BANNER_INK, 255), anchor="lm")
    draw.rectangle((0, height - band, width, height), fill=(*_BAND_FILL, 255))
    draw.text((margin, height - band // 2), caption, font=font, fill=(*_CAPTION_INK, 255), anchor="lm")


def render_image(spec: RenderSpec, layer: EditLayer | None = None) -> Image.Image:
    """Draw one image for ``spec`` (composing ``layer`` for an edit): mode RGBA if ``spec.transparent``
    else RGB, size ``(spec.width, spec.height)``. Same ``spec`` and ``layer`` give identical pixels."""
    rng = random.Random(spec.seed + spec.index.to_bytes(4, "big"))
    image = _draw_background(spec, rng)
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, spec, rng)
    if layer is not None:
        image.paste(layer.first, layer.box, layer.first)
        for thumb, at in layer.thumbs:
            image.paste(thumb, at, thumb)
    if spec.detail == "realistic":
        image = _add_noise(image)
        draw = ImageDraw.Draw(image)
    _draw_marks(draw, spec)
    return image


def _add_noise(image: Image.Image) -> Image.Image:
    """``image`` with the cached noise layer added to its colour channels (alpha kept)."""
    noise = _noise(*image.size)
    if image.mode == "RGBA":
        noisy = ImageChops.add(image.convert("RGB"), noise, 1.0, -128)
        noisy.putalpha(image.getchannel("A"))
        return noisy
    return ImageChops.add(image, noise, 1.0, -128)


def encode_image(image: Image.Image, fmt: RasterFormat, compression: int | None) -> bytes:
    """Encode ``image`` as ``fmt``: PNG at ``compress_level=1`` (fast, lossless); JPEG and WebP with quality
    ``compression`` (SPEC ``output_compression`` 0..100, default 100). JPEG drops any alpha (RGB)."""
    out = io.BytesIO()
    quality = 100 if compression is None else compression
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.convert("RGB").save(out, "JPEG", quality=quality)
    else:
        image.save(out, "WEBP", quality=quality, method=0)
    return out.getvalue()


def render_gif(spec: RenderSpec, layer: EditLayer | None = None, *, frames: int = 9, duration_ms: int = 200) -> bytes:
    """An animated GIF (GIF89a, looping forever) of ``frames`` frames of ``spec.width`` x ``spec.height`` pixels.

    Every frame is :func:`render_image` of ``spec`` (opaque: GIF output takes no transparent background, SDK
    ``background``) quantised once to a 248-colour palette, plus what moves: a disc travelling left to right
    across the middle, a progress bar under the banner and a ``frame k/N`` counter; consecutive frames always
    differ (Pillow would merge identical ones). ``duration_ms``: delay of every frame in milliseconds, written
    in the GIF's 1/100 s units (pass a multiple of 10). Same arguments give identical bytes.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    base = render_image(replace(spec, transparent=False), layer)
    picture = base.quantize(colors=_GIF_PICTURE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = (picture.getpalette() or [])[: 3 * _GIF_PICTURE_COLOURS]
    palette += [0] * (3 * _GIF_PICTURE_COLOURS - len(palette))
    for colour in _GIF_MARKS:
        palette += list(colour)
    palette += list(_BAND_FILL) * (256 - _GIF_PICTURE_COLOURS - len(_GIF_MARKS))
    picture.putpalette(palette)
    white, yellow = _GIF_PICTURE_COLOURS, _GIF_PICTURE_COLOURS + 1
    dark = 255
    width, height = spec.width, spec.height
    band = _text_band(height)
    disc = max(8, min(width, height) // 5)
    travel = max(0, width - disc - 2 * band)
    font = _font(max(8, band * 6 // 10))
    images: list[Image.Image] = []
    for k in range(frames):
        frame = picture.copy()
        draw = ImageDraw.Draw(frame)
        x = band + (travel * k // (frames - 1) if frames > 1 else 0)
        y = (height - disc) // 2
        draw.ellipse((x, y, x + disc, y + disc), fill=_GIF_PICTURE_COLOURS + 2 + k % 2, outline=white, width=3)
        bar = max(1, band // 6)
        draw.rectangle((0, band, width, band + bar), fill=dark)
        draw.rectangle((0, band, width * (k + 1) // frames, band + bar), fill=yellow)
        counter = f"frame {k + 1}/{frames}"
        box = draw.textbbox((width - band // 4, height - band - bar), counter, font=font, anchor="rb")
        draw.rectangle((box[0] - 4, box[1] - 2, box[2] + 4, box[3] + 2), fill=dark)
        draw.text((width - band // 4, height - band - bar), counter, font=font, fill=white, anchor="rb")
        images.append(frame)
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False)
    return out.getvalue()


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _xml_text(text: str) -> str:
    """``text`` safe as XML character data: characters XML 1.0 cannot hold dropped, ``& < >`` escaped."""
    return escape(_NOT_XML_CHAR.sub("", text))


def _png_data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def render_svg(spec: RenderSpec, layer: EditLayer | None = None, *, author: str | None = None) -> bytes:
    """An SVG document (UTF-8 bytes) of the scene :func:`render_image` draws for ``spec``.

    Root ``<svg xmlns="http://www.w3.org/2000/svg" width="W" height="H" viewBox="0 0 W H">`` (user units =
    pixels) holding: ``<title>`` (the whole prompt), ``<desc>`` (model, image index, ``author``: the
    ``svg.model`` of the request, when given), a diagonal ``linearGradient`` background (transparent when
    ``spec.transparent``), the raster image's shapes (same seed, same geometry and colours), an edit's inputs
    as ``<image>`` elements with PNG data URLs, the banner and the prompt caption as ``<text>``. Every piece of
    text is escaped (``& < >``; characters XML 1.0 cannot hold are dropped), so the document is well-formed
    XML for any prompt.
    """
    width, height = spec.width, spec.height
    rng = random.Random(spec.seed + spec.index.to_bytes(4, "big"))
    c0, c1 = _colour(rng), _colour(rng)
    shapes = _shape_plan(spec, rng)
    band, font_px, banner, caption = _mark_texts(spec, ImageDraw.Draw(Image.new("L", (1, 1))))
    margin = band // 4
    about = f"EMULATOR · {spec.model} · #{spec.index + 1}" + (f" · SVG author {author}" if author else "")
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{_xml_text(spec.prompt)}</title>",
        f"<desc>{_xml_text(about)}</desc>",
        '<defs><linearGradient id="background" x1="0" y1="0" x2="1" y2="1">'
        f'<stop offset="0" stop-color="{_hex(c0)}"/><stop offset="1" stop-color="{_hex(c1)}"/></linearGradient></defs>',
    ]
    if not spec.transparent:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="url(#background)"/>')
    for kind, (x0, y0, x1, y1), fill in shapes:
        if kind == "ellipse":
            parts.append(
                f'<ellipse cx="{(x0 + x1) / 2:g}" cy="{(y0 + y1) / 2:g}" rx="{(x1 - x0) / 2:g}" '
                f'ry="{(y1 - y0) / 2:g}" fill="{_hex(fill)}"/>'
            )
        else:
            parts.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="{_hex(fill)}"/>')
    if layer is not None:
        placed = [(layer.first, layer.box), *layer.thumbs]
        for image, (x, y) in placed:
            parts.append(
                f'<image x="{x}" y="{y}" width="{image.size[0]}" height="{image.size[1]}" '
                f"href={quoteattr(_png_data_url(image))}/>"
            )
    font = f'font-family="sans-serif" font-size="{font_px}" dominant-baseline="middle"'

    def fit(text: str) -> str:
        """Cut a line the viewer's sans-serif would draw wider than the band (about 0.6 em a character)."""
        most = max(4, int((width - 2 * margin) / (font_px * 0.6)))
        return text if len(text) <= most else text[: most - 1].rstrip() + "…"

    parts += [
        f'<rect x="0" y="0" width="{width}" height="{band}" fill="{_hex(_BAND_FILL)}"/>',
        f'<text x="{margin}" y="{band // 2}" {font} fill="{_hex(_BANNER_INK)}">{_xml_text(fit(banner))}</text>',
        f'<rect x="0" y="{height - band}" width="{width}" height="{band}" fill="{_hex(_BAND_FILL)}"/>',
        f'<text x="{margin}" y="{height - band // 2}" {font} fill="{_hex(_CAPTION_INK)}">'
        f"{_xml_text(fit(caption))}</text>",
        "</svg>",
        "",
    ]
    return "\n".join(parts).encode("utf-8")
