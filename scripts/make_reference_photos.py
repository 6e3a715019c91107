"""Draw stand-in product photos and a brand kit for jobs/brand-variants*.toml (nothing is downloaded).

The Shopify sample catalogs name their photos by URL (``https://burst.shopifycdn.com/photos/<name>.jpg``), a
host this network cannot reach. This script draws one simple, product-like JPEG per URL, named after the URL's
file name, into ``jobs/data/photos/`` (the job's ``[references.mirror]`` serves them on loopback), plus:

- ``jobs/data/brand/logo.png``: an RGBA logo on a transparent background (a brand asset on every item);
- ``jobs/data/brand/palette.png``: a palette card (a second brand asset);
- ``jobs/data/masks/headline-band.png``: a mask the size of the photos whose fully transparent lower band
  marks the area to edit (FACTS §4.2: the mask's transparent pixels are edited; the product stays as is).

Deterministic: the same catalogs give the same bytes. Usage: ``python scripts/make_reference_photos.py
[--out jobs/data]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import urllib.parse
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

REPO: Final = Path(__file__).resolve().parents[1]
CATALOGS: Final = ("shopify-apparel.csv", "shopify-home-and-garden.csv")
#: Photo size in pixels (width, height); the mask has the same size (FACTS §4.2).
PHOTO_SIZE: Final = (480, 600)
BRAND_NAVY: Final = (27, 42, 74)
BRAND_CORAL: Final = (255, 111, 97)
BRAND_SAND: Final = (240, 226, 200)

_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "blue": (48, 99, 180),
    "navy": (30, 45, 90),
    "red": (190, 40, 45),
    "yellow": (235, 190, 40),
    "white": (235, 235, 230),
    "cream": (236, 224, 196),
    "black": (30, 30, 32),
    "grey": (128, 128, 132),
    "green": (90, 120, 60),
    "olive": (110, 115, 55),
    "pink": (230, 150, 170),
    "brown": (120, 80, 50),
    "copper": (184, 115, 51),
    "clay": (176, 96, 64),
    "wooden": (150, 105, 60),
    "denim": (60, 80, 120),
    "leather": (70, 45, 35),
    "floral": (240, 200, 210),
    "vanilla": (243, 229, 171),
}
_SHAPES: Final[dict[str, str]] = {
    "shirt": "top",
    "top": "top",
    "tee": "top",
    "jumper": "top",
    "blouse": "top",
    "jacket": "top",
    "tuxedo": "top",
    "bag": "bag",
    "tops": "shoe",
    "pot": "pot",
    "pots": "pot",
    "can": "pot",
    "candle": "pot",
    "sofa": "sofa",
    "armchair": "sofa",
    "beanbag": "sofa",
    "pillows": "sofa",
    "bed": "sofa",
    "light": "lamp",
    "table": "table",
    "drawers": "table",
    "slats": "table",
    "fence": "table",
    "trowel": "bag",
}


def catalog_photos(data_dir: Path) -> dict[str, str]:
    """Photo file name → product title, for every ``Image Src`` of the Shopify catalogs (first title wins)."""
    photos: dict[str, str] = {}
    for name in CATALOGS:
        with (data_dir / name).open(newline="", encoding="utf-8") as handle:
            title = ""
            for row in csv.DictReader(handle):
                title = row.get("Title") or title  # variant rows leave Title empty
                url = (row.get("Image Src") or "").strip()
                if url:
                    file_name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
                    photos.setdefault(file_name, title)
    return photos


def _colour(title: str) -> tuple[int, int, int]:
    for word in title.lower().split():
        if word in _COLOURS:
            return _COLOURS[word]
    digest = hashlib.sha256(title.encode()).digest()
    return (60 + digest[0] % 160, 60 + digest[1] % 160, 60 + digest[2] % 160)


def _shape(title: str) -> str:
    for word in reversed(title.lower().split()):
        if word in _SHAPES:
            return _SHAPES[word]
    return "box"


def draw_photo(title: str, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """A studio-like picture of a product called ``title``: soft backdrop, floor shadow, a silhouette in the
    product's colour, and the title as a caption."""
    width, height = size
    image = Image.new("RGB", size, (226, 226, 222))
    draw = ImageDraw.Draw(image)
    for y in range(height):  # backdrop gradient
        shade = 236 - int(30 * y / height)
        draw.line([(0, y), (width, y)], fill=(shade, shade, shade - 4))
    colour = _colour(title)
    dark = tuple(max(0, c - 50) for c in colour)
    cx, cy = width // 2, int(height * 0.45)
    draw.ellipse([cx - 150, cy + 150, cx + 150, cy + 185], fill=(185, 185, 180))
    shape = _shape(title)
    if shape == "top":
        body = [(cx - 95, cy - 120), (cx - 40, cy - 140), (cx + 40, cy - 140), (cx + 95, cy - 120),
                (cx + 160, cy - 40), (cx + 120, cy - 10), (cx + 90, cy - 50), (cx + 90, cy + 160),
                (cx - 90, cy + 160), (cx - 90, cy - 50), (cx - 120, cy - 10), (cx - 160, cy - 40)]  # fmt: skip
        draw.polygon(body, fill=colour, outline=dark)
        draw.arc([cx - 40, cy - 165, cx + 40, cy - 110], 20, 160, fill=dark, width=5)
    elif shape == "bag":
        draw.rounded_rectangle([cx - 120, cy - 60, cx + 120, cy + 150], 24, fill=colour, outline=dark, width=4)
        draw.arc([cx - 80, cy - 150, cx + 80, cy + 10], 180, 360, fill=dark, width=12)
    elif shape == "shoe":
        sole = [(cx - 150, cy + 40), (cx - 150, cy - 60), (cx - 40, cy - 70), (cx + 20, cy),
                (cx + 150, cy + 30), (cx + 150, cy + 90), (cx - 150, cy + 90)]  # fmt: skip
        draw.polygon(sole, fill=colour, outline=dark)
        draw.rectangle([cx - 150, cy + 80, cx + 150, cy + 100], fill=(245, 245, 245))
    elif shape == "pot":
        draw.polygon([(cx - 100, cy - 40), (cx + 100, cy - 40), (cx + 75, cy + 150), (cx - 75, cy + 150)], fill=colour)
        draw.rectangle([cx - 110, cy - 60, cx + 110, cy - 35], fill=dark)
        draw.ellipse([cx - 30, cy - 150, cx + 30, cy - 60], fill=(70, 140, 70))
    elif shape == "sofa":
        draw.rounded_rectangle([cx - 170, cy - 60, cx + 170, cy + 110], 30, fill=colour, outline=dark, width=4)
        draw.rounded_rectangle([cx - 150, cy - 120, cx + 150, cy], 30, fill=dark)
        draw.rectangle([cx - 160, cy + 110, cx - 140, cy + 150], fill=(60, 40, 30))
        draw.rectangle([cx + 140, cy + 110, cx + 160, cy + 150], fill=(60, 40, 30))
    elif shape == "lamp":
        draw.line([(cx, cy - 200), (cx, cy - 60)], fill=(40, 40, 40), width=4)
        draw.chord([cx - 110, cy - 120, cx + 110, cy + 100], 180, 360, fill=colour, outline=dark)
        draw.ellipse([cx - 25, cy - 20, cx + 25, cy + 20], fill=(255, 240, 180))
    elif shape == "table":
        draw.rectangle([cx - 160, cy - 30, cx + 160, cy], fill=colour, outline=dark)
        for x in (cx - 140, cx + 120):
            draw.rectangle([x, cy, x + 20, cy + 160], fill=dark)
    else:
        draw.rectangle([cx - 110, cy - 110, cx + 110, cy + 150], fill=colour, outline=dark, width=4)
    font = ImageFont.load_default(size=26)
    text = title or "product"
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - (right - left)) // 2, height - 70), text, fill=(40, 40, 40), font=font)
    return image


def draw_logo() -> Image.Image:
    """The example brand's logo: a coral disc with a navy monogram on a transparent background (RGBA)."""
    logo = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.ellipse([8, 8, 248, 248], fill=(*BRAND_CORAL, 255))
    draw.ellipse([40, 40, 216, 216], outline=(*BRAND_NAVY, 255), width=12)
    font = ImageFont.load_default(size=96)
    draw.text((128, 128), "BP", fill=(*BRAND_NAVY, 255), font=font, anchor="mm")
    return logo


def draw_palette() -> Image.Image:
    """A palette card: the brand's three colours as swatches."""
    card = Image.new("RGB", (360, 120), (255, 255, 255))
    draw = ImageDraw.Draw(card)
    for index, colour in enumerate((BRAND_NAVY, BRAND_CORAL, BRAND_SAND)):
        draw.rectangle([10 + index * 115, 10, 115 + index * 115, 110], fill=colour)
    return card


def draw_headline_mask(size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """An RGBA mask the size of the photos: opaque (kept) everywhere but a fully transparent lower band."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle([0, int(size[1] * 0.78), size[0], size[1]], fill=(0, 0, 0, 0))
    return mask


def main() -> None:
    """Write the photos, the brand kit and the mask under ``--out`` (default ``jobs/data``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "jobs" / "data")
    parser.add_argument("--catalogs", type=Path, default=REPO / "jobs" / "data", help="where the Shopify CSVs are")
    args = parser.parse_args()
    out: Path = args.out
    for sub in ("photos", "brand", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    photos = catalog_photos(args.catalogs)
    for file_name, title in sorted(photos.items()):
        draw_photo(title).save(out / "photos" / file_name, "JPEG", quality=70, optimize=True)
    draw_logo().save(out / "brand" / "logo.png", optimize=True)
    draw_palette().save(out / "brand" / "palette.png", optimize=True)
    draw_headline_mask().save(out / "masks" / "headline-band.png", optimize=True)
    print(f"{len(photos)} photos, logo, palette and mask written under {out}")


if __name__ == "__main__":
    main()
