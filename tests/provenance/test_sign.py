"""The emulator signer: OpenAI-shaped manifests that verify, and that break the way real ones do."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from batchpipe import __version__
from batchpipe.errors import ProvenanceError
from batchpipe.provenance import EMULATOR_ROOT_PEM, C2paVerifier, sign_image
from batchpipe.provenance.sign import CLAIM_GENERATOR_NAME, SOFTWARE_AGENT_NAME, TRAINED_ALGORITHMIC_MEDIA

from .conftest import FORMATS, encode, make_picture

MIMES = sorted(FORMATS)


def _png_chunk_offset(data: bytes, kind: bytes) -> tuple[int, int]:
    """(start of the data, length) of the first PNG chunk of type ``kind``."""
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == kind:
            return pos + 8, length
        pos += 12 + length
    raise AssertionError(f"no {kind!r} chunk")


def _riff_chunk_offset(data: bytes, kinds: tuple[bytes, ...]) -> tuple[int, int]:
    pos = 12
    while pos < len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if kind in kinds:
            return pos + 8, length
        pos += 8 + length + (length & 1)
    raise AssertionError(f"no {kinds!r} chunk")


def _jpeg_scan_offset(data: bytes) -> tuple[int, int]:
    sos = data.index(b"\xff\xda")
    (header_len,) = struct.unpack(">H", data[sos + 2 : sos + 4])
    start = sos + 2 + header_len
    return start, data.rindex(b"\xff\xd9") - start


def tamper_pixels(data: bytes, mime: str) -> bytes:
    """XOR 16 bytes in the middle of the compressed pixel data (IDAT / JPEG scan / VP8 chunk)."""
    if mime == "image/png":
        start, length = _png_chunk_offset(data, b"IDAT")
    elif mime == "image/webp":
        start, length = _riff_chunk_offset(data, (b"VP8 ", b"VP8L"))
    else:
        start, length = _jpeg_scan_offset(data)
    mid = start + length // 2
    out = bytearray(data)
    for i in range(mid, mid + 16):
        out[i] ^= 0x5A
    return bytes(out)


@pytest.mark.parametrize("mime", MIMES)
def test_signed_is_valid_untrusted_under_none(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]
) -> None:
    report = verifiers["none"].verify_bytes(signed_images[mime], mime)
    assert report.state == "valid"
    assert report.failure_codes == ("signingCredential.untrusted",)
    assert report.trust_list is None


@pytest.mark.parametrize("mime", MIMES)
def test_signed_is_trusted_under_emulator_with_openai_shape(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]
) -> None:
    report = verifiers["emulator"].verify_bytes(signed_images[mime])
    assert report.state == "trusted"
    assert report.failure_codes == ()
    assert report.trust_list == "user_anchors"
    assert report.claim_generator == CLAIM_GENERATOR_NAME
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.software_agent == SOFTWARE_AGENT_NAME
    assert report.issuer == "batchpipe emulator"
    assert report.common_name is not None
    assert "batchpipe" in report.common_name


@pytest.mark.parametrize("mime", MIMES)
def test_signed_is_never_trusted_under_default(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]
) -> None:
    """The emulator root is not on the real trust lists: an emulated image cannot pass for a real one."""
    report = verifiers["default"].verify_bytes(signed_images[mime], mime)
    assert report.state == "valid"
    assert "signingCredential.untrusted" in report.failure_codes


def test_emulator_names_never_claim_to_be_openai(signed_images: dict[str, bytes]) -> None:
    for data in signed_images.values():
        assert b"OpenAI OpCo" not in data
        assert b"SSL.com" not in data
    assert b"OpenAI" not in EMULATOR_ROOT_PEM.read_bytes()


@pytest.mark.parametrize("mime", MIMES)
def test_signing_keeps_the_pixels(
    mime: str, unsigned_images: dict[str, bytes], signed_images: dict[str, bytes]
) -> None:
    before = Image.open(io.BytesIO(unsigned_images[mime]))
    after = Image.open(io.BytesIO(signed_images[mime]))
    assert after.format == FORMATS[mime]
    assert after.size == before.size
    assert after.tobytes() == before.tobytes()
    assert 0 < len(signed_images[mime]) - len(unsigned_images[mime]) < 64 * 1024  # no thumbnail


def test_manifest_records_model_and_version(signed_images: dict[str, bytes]) -> None:
    import c2pa

    with c2pa.Reader("image/png", io.BytesIO(signed_images["image/png"])) as reader:
        manifest = reader.get_active_manifest()
    assert manifest["claim_generator_info"][0]["name"] == CLAIM_GENERATOR_NAME
    assert manifest["claim_generator_info"][0]["version"] == __version__
    assert manifest["title"] == "image.png"
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["softwareAgent"] == {"name": SOFTWARE_AGENT_NAME, "version": "gpt-image-1.5"}
    assert not any("thumbnail" in a["label"] for a in manifest["assertions"])


@pytest.mark.parametrize("mime", MIMES)
def test_tampered_pixels_are_invalid(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]
) -> None:
    report = verifiers["emulator"].verify_bytes(tamper_pixels(signed_images[mime], mime), mime)
    assert report.state == "invalid"
    assert "assertion.dataHash.mismatch" in report.failure_codes
    assert report.reason is not None
    assert "dataHash" in report.reason


@pytest.mark.parametrize("mime", MIMES)
def test_pillow_resave_is_missing(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]
) -> None:
    resaved = encode(Image.open(io.BytesIO(signed_images[mime])), mime)
    report = verifiers["emulator"].verify_bytes(resaved, mime)
    assert report.state == "missing"
    assert report.reason is not None


@pytest.mark.parametrize("mime", ["image/png", "image/webp"])
def test_truncated_file_is_unreadable(
    mime: str, signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier], tmp_path: Path
) -> None:
    path = tmp_path / f"truncated.{FORMATS[mime].lower()}"
    path.write_bytes(signed_images[mime][: len(signed_images[mime]) * 2 // 3])
    report = verifiers["emulator"].verify_path(path)
    assert report.state == "unreadable"
    assert report.reason is not None
    assert "parse" in report.reason


def test_truncated_jpeg_fails_its_hash(signed_images: dict[str, bytes], verifiers: dict[str, C2paVerifier]) -> None:
    """A JPEG carries its manifest up front (APP11): a cut-off JPEG still parses, and the hash catches it."""
    data = signed_images["image/jpeg"]
    report = verifiers["emulator"].verify_bytes(data[: len(data) * 2 // 3])
    assert report.state == "invalid"
    assert "assertion.dataHash.mismatch" in report.failure_codes


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notes.txt", b"just some text\n", "not a media type"),
        ("fake.png", b"this is not a png at all", "not a media type"),
        ("empty.png", b"", "empty"),
        ("noise.bin", bytes(range(256)) * 8, "not a media type"),
    ],
)
def test_non_images_are_unreadable_with_reason(
    name: str, content: bytes, needle: str, tmp_path: Path, verifiers: dict[str, C2paVerifier]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    report = verifiers["default"].verify_path(path)
    assert report.state == "unreadable"
    assert report.reason is not None
    assert needle in report.reason
    assert report.failure_codes == ()


def test_missing_path_and_directory_are_unreadable(tmp_path: Path, verifiers: dict[str, C2paVerifier]) -> None:
    gone = verifiers["default"].verify_path(tmp_path / "nope.png")
    assert gone.state == "unreadable"
    assert gone.reason is not None
    assert "No such file" in gone.reason
    folder = verifiers["default"].verify_path(tmp_path)
    assert folder.state == "unreadable"
    assert folder.reason is not None


def test_unsupported_mime_is_rejected() -> None:
    with pytest.raises(ValueError, match="image/gif"):
        sign_image(b"GIF89a", "image/gif", model="gpt-image-1")


def test_garbage_bytes_fail_to_sign_with_provenance_error() -> None:
    with pytest.raises(ProvenanceError, match="image/png"):
        sign_image(b"definitely not a png", "image/png", model="gpt-image-1")


def test_concurrent_signing_from_threads(verifiers: dict[str, C2paVerifier]) -> None:
    """One shared signer used from several threads at once: every output verifies and is distinct."""
    sources = [encode(make_picture(96), "image/png") for _ in range(4)]
    jobs = [(sources[i % 4], f"gpt-image-{i}") for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda job: sign_image(job[0], "image/png", model=job[1]), jobs))
    for out in outputs:
        assert verifiers["emulator"].verify_bytes(out, "image/png").state == "trusted"
    assert len(set(outputs)) == len(outputs)
