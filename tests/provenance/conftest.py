"""Shared fixtures for the provenance tests: paths, verifiers per trust setting, emulator-signed images."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from batchpipe.provenance import C2paVerifier, TrustConfig, sign_image

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "c2pa"
TEST_ROOTS_PEM = FIXTURES / "c2pa-rs" / "certs" / "test_cert_root_bundle.pem"
REAL_OPENAI_PNG = FIXTURES / "openai" / "openai-gpt-image-2_circuit-panel.png"

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
"""MIME type -> Pillow format name."""


def make_picture(size: int = 192) -> Image.Image:
    """A synthetic RGB picture (gradients plus noise) so that every format has real pixel data."""
    return Image.merge(
        "RGB",
        [
            Image.linear_gradient("L").resize((size, size)),
            Image.effect_noise((size, size), 40),
            Image.radial_gradient("L").resize((size, size)),
        ],
    )


def encode(img: Image.Image, mime: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, FORMATS[mime])
    return buf.getvalue()


@pytest.fixture(scope="session")
def verifiers() -> dict[str, C2paVerifier]:
    """One verifier per named trust setting plus "test_roots" (column B of the fixtures README)."""
    out = {name: C2paVerifier(TrustConfig.from_setting(name)) for name in ("default", "emulator", "none")}
    out["test_roots"] = C2paVerifier(TrustConfig.from_setting(str(TEST_ROOTS_PEM)))
    return out


@pytest.fixture(scope="session")
def unsigned_images() -> dict[str, bytes]:
    """A fresh picture encoded in each signable format (mime -> bytes)."""
    img = make_picture()
    return {mime: encode(img, mime) for mime in FORMATS}


@pytest.fixture(scope="session")
def signed_images(unsigned_images: dict[str, bytes]) -> dict[str, bytes]:
    """The pictures above signed by the emulator signer as model "gpt-image-1.5" (mime -> bytes)."""
    return {mime: sign_image(data, mime, model="gpt-image-1.5") for mime, data in unsigned_images.items()}
