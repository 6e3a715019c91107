"""Reference images: local checks, resolving, the loopback mirror, uploads cached by sha256 (emulator over HTTP)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from batchpipe.adapters.openai import ApiSettings, OpenAIClient
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig
from batchpipe.input.references import (
    MAX_MASK_BYTES,
    MAX_REFERENCE_BYTES,
    REFERENCE_ROLE,
    LocalImage,
    ReferenceMirror,
    ReferenceOptions,
    ReferenceResolver,
    inspect_image_bytes,
    inspect_image_file,
)
from batchpipe.ports import AsyncLedger
from batchpipe.stages.references import ensure_uploaded, release_unused

_COLOURS: dict[str, int | tuple[int, ...]] = {"RGBA": (10, 200, 30, 0), "LA": (128, 0), "L": 128, "P": 1}


def _image(fmt: str, mode: str = "RGB", size: tuple[int, int] = (32, 24), **save: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, _COLOURS.get(mode, (10, 200, 30))).save(out, fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "role", "problem"),
    [
        (_image("PNG"), "image", None),
        (_image("JPEG"), "image", None),
        (_image("WEBP"), "image", None),
        (_image("GIF", "P"), "image", "format GIF is not accepted"),
        (b"not an image at all", "image", "not a readable png, jpeg or webp image"),
        (_image("PNG")[:60], "image", "not a readable"),
        (_image("PNG", "RGBA"), "mask", None),
        (_image("PNG", "LA"), "mask", None),
        (_image("PNG", "P", transparency=0), "mask", None),
        (_image("PNG", "RGB"), "mask", "must be a PNG with an alpha channel"),
        (_image("JPEG"), "mask", "a mask must be a PNG with an alpha channel, not JPEG"),
        (_image("WEBP", "RGBA"), "mask", "not WEBP"),
    ],
)
def test_inspect_image_bytes(data: bytes, role: str, problem: str | None) -> None:
    found = inspect_image_bytes(data, role=role)  # type: ignore[arg-type]
    if problem is None:
        assert isinstance(found, LocalImage) and found.size == (32, 24) and found.bytes == len(data)
    else:
        assert isinstance(found, str) and problem in found


def test_size_limits_are_checked_from_stat_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: nothing of it is allocated or read
        handle.truncate(MAX_REFERENCE_BYTES + 1)
    found = inspect_image_file(big, role="image")
    assert isinstance(found, str) and f"{MAX_REFERENCE_BYTES + 1:,} bytes, over the" in found
    mask = tmp_path / "mask.png"
    mask.write_bytes(_image("PNG", "RGBA") + b"\0" * MAX_MASK_BYTES)
    found = inspect_image_file(mask, role="mask")
    assert isinstance(found, str) and f"{MAX_MASK_BYTES:,}-byte limit" in found
    found = inspect_image_file(tmp_path / "missing.jpg", role="image")
    assert isinstance(found, str) and "no such file" in found


def test_resolver_kinds(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_image("JPEG"))
    resolver = ReferenceResolver(ReferenceOptions())
    url = resolver.resolve("https://cdn.example.com/a.jpg", base=tmp_path, role="image")
    assert not isinstance(url, str) and url.param == {"image_url": "https://cdn.example.com/a.jpg"}
    assert (url.ref.kind, url.ref.sha256, url.image) == ("url", None, None)

    data = _image("PNG")
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    inline = resolver.resolve(data_url, base=tmp_path, role="image")
    assert not isinstance(inline, str) and inline.param == {"image_url": data_url}
    assert inline.ref.kind == "data" and inline.ref.ref.startswith("data:image/png;sha256=")
    assert "base64" not in inline.ref.ref  # the ledger never holds the data itself
    bad = resolver.resolve("data:image/png;base64,@@@", base=tmp_path, role="image")
    assert isinstance(bad, str) and "base64" in bad

    own = resolver.resolve("file_id:file-abc", base=tmp_path, role="image")
    assert not isinstance(own, str) and own.param == {"file_id": "file-abc"} and own.ref.kind == "file"
    other = resolver.resolve("s3://bucket/a.jpg", base=tmp_path, role="image")
    assert isinstance(other, str) and "unsupported reference" in other

    local = resolver.resolve("photo.jpg", base=tmp_path, role="image")
    assert not isinstance(local, str) and local.param["file_id"].startswith("file-pending-")
    assert local.image is not None and resolver.needed == {local.image.sha256: photo}

    uploaded = ReferenceResolver(ReferenceOptions(), uploaded={local.image.sha256: "file-xyz"})
    sent = uploaded.resolve(str(photo), base=Path("/elsewhere"), role="image")
    assert not isinstance(sent, str) and sent.param == {"file_id": "file-xyz"}
    assert (sent.ref.kind, sent.ref.ref, sent.ref.sha256) == ("file", "file-xyz", local.image.sha256)
    assert not uploaded.needed

    inline_mode = ReferenceResolver(ReferenceOptions(local_files="data_url"))
    as_data = inline_mode.resolve("photo.jpg", base=tmp_path, role="image")
    assert not isinstance(as_data, str)
    header, _, payload = as_data.param["image_url"].partition(",")
    assert header == "data:image/jpeg;base64" and base64.b64decode(payload) == photo.read_bytes()


def test_mirror_serves_local_copies_over_http_and_remembers_its_port(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "shirt_925x@2x.jpg").write_bytes(_image("JPEG"))
    (tmp_path / "secret.txt").write_text("no")
    routes = (("https://cdn.example.com/photos/", photos),)
    port_file = tmp_path / "state" / "mirror-port"
    with ReferenceMirror(routes, port_file=port_file) as mirror:
        resolver = ReferenceResolver(ReferenceOptions(mirror=routes), mirror_base=mirror.base_url)
        found = resolver.resolve("https://cdn.example.com/photos/shirt_925x@2x.jpg", base=tmp_path, role="image")
        assert not isinstance(found, str) and found.image is not None
        url = found.param["image_url"]
        assert url.startswith(mirror.base_url + "/0/")
        response = httpx.get(url)
        assert response.status_code == 200 and response.content == (photos / "shirt_925x@2x.jpg").read_bytes()
        assert response.headers["content-type"] == "image/jpeg"
        assert httpx.get(f"{mirror.base_url}/0/..%2Fsecret.txt").status_code == 404
        assert httpx.get(f"{mirror.base_url}/0/missing.jpg").status_code == 404
        assert httpx.get(f"{mirror.base_url}/7/shirt_925x@2x.jpg").status_code == 404
        assert mirror.served == 1
        first_port = int(port_file.read_text())
        assert mirror.base_url.endswith(f":{first_port}")
        missing = resolver.resolve("https://cdn.example.com/photos/nope.jpg", base=tmp_path, role="image")
        assert isinstance(missing, str) and "no such file" in missing
        escape = resolver.resolve("https://cdn.example.com/photos/../../secret.txt", base=tmp_path, role="image")
        assert isinstance(escape, str)
    with ReferenceMirror(routes, port_file=port_file) as again:  # same port next time: request bodies stay the same
        assert again.base_url.endswith(f":{first_port}")


# --------------------------------------------------------------------------------------------- uploads


@pytest.fixture
def emulator(tmp_path: Path) -> EmbeddedEmulator:
    with EmbeddedEmulator(EmulatorConfig(state_dir=tmp_path / "emulator")) as running:
        yield running  # type: ignore[misc]


@pytest.fixture
async def client(emulator: EmbeddedEmulator) -> AsyncIterator[OpenAIClient]:
    settings = ApiSettings(base_url=emulator.base_url, api_key=SecretStr("test"))
    async with OpenAIClient(settings) as api:
        yield api


def _files(emulator: EmbeddedEmulator, purpose: str = "vision") -> list[dict[str, object]]:
    listed = httpx.get(f"{emulator.base_url}/files", params={"purpose": purpose}, headers={"Authorization": "Bearer x"})
    data: list[dict[str, object]] = listed.json()["data"]
    return data


async def test_uploads_are_cached_by_sha256_and_checked_against_the_service(
    tmp_path: Path, emulator: EmbeddedEmulator, client: OpenAIClient
) -> None:
    now = [1_900_000_000.0]
    plain = SqliteLedger(tmp_path / "ledger.sqlite", clock=lambda: now[0])
    ledger = AsyncLedger(plain)
    photos = {}
    for index in range(3):
        path = tmp_path / f"p{index}.png"
        path.write_bytes(_image("PNG", size=(20 + index, 20)))
        found = inspect_image_file(path, role="image")
        assert isinstance(found, LocalImage)
        photos[found.sha256] = path
    options = ReferenceOptions(upload_expires_after_s=7 * 86_400, reuse_margin_s=3_600)

    ids, uploaded = await ensure_uploaded(client, ledger, photos, options=options)
    assert uploaded == 3 and set(ids) == set(photos)
    listed = _files(emulator)
    assert {f["id"] for f in listed} == set(ids.values())
    assert all(f["expires_at"] is not None for f in listed)  # expires_after was sent
    rows = await ledger.files(role=REFERENCE_ROLE)
    assert {r["sha256"] for r in rows} == set(photos) and {r["purpose"] for r in rows} == {"vision"}

    again, uploaded = await ensure_uploaded(client, ledger, photos, options=options)
    assert uploaded == 0 and again == ids and len(_files(emulator)) == 3

    # a file deleted behind our back is noticed (GET /files) and uploaded again
    gone_sha, gone_id = next(iter(ids.items()))
    await client.delete_file(gone_id)
    third, uploaded = await ensure_uploaded(client, ledger, photos, options=options)
    assert uploaded == 1 and third[gone_sha] != gone_id
    assert {r["file_id"] for r in await ledger.files(role=REFERENCE_ROLE, deleted=True)} == {gone_id}

    # a cached file expiring within the 24 h completion window + margin is not reused
    short = ReferenceOptions(upload_expires_after_s=7 * 86_400, reuse_margin_s=7 * 86_400)
    fresh, uploaded = await ensure_uploaded(client, ledger, photos, options=short)
    assert uploaded == 3 and not set(fresh.values()) & set(third.values())

    # another purpose is another cache
    other, uploaded = await ensure_uploaded(
        client, ledger, photos, options=ReferenceOptions(upload_purpose="user_data")
    )
    assert uploaded == 3 and len(_files(emulator, "user_data")) == 3

    # clean-up: everything not in keep (and not needed by pending items: there are none) is deleted
    deleted = await release_unused(client, ledger, keep=other.values())
    assert set(deleted) == set(fresh.values()) | set(third.values())
    assert _files(emulator) == [] and len(_files(emulator, "user_data")) == 3
    ledger.close()
    plain.close()
