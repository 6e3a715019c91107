"""Reference images for edits: where they come from, local checks, uploads cached by sha256, a loopback mirror.

A *reference* is the text a job spec or a manifest column gives for one input image of ``/v1/images/edits``
(SPEC ``EditImageBodyJsonParam.images`` / ``mask``, each an ``ImageRefParam``). :class:`ReferenceResolver`
turns it into the request's ``ImageRefParam`` and the ledger's :class:`~batchpipe.domain.items.ImageRef`:

=====================================  ====================================================================
reference text                         becomes
=====================================  ====================================================================
``https://...`` / ``http://...``       ``{"image_url": url}`` passed through (the service fetches it; an
                                       unreachable URL fails that one request with ``invalid_image_url``).
                                       A URL under a ``[references.mirror]`` prefix is served from a local
                                       copy by :class:`ReferenceMirror` and rewritten to its loopback URL.
``data:image/...;base64,...``          ``{"image_url": ...}`` as is (checked locally: decodes, format, size)
``file_id:file-abc``                   ``{"file_id": "file-abc"}`` (an upload you made yourself)
anything else: a local path            checked, then uploaded once to the Files API and sent as
                                       ``{"file_id": ...}`` (``local_files = "upload"``, the default), or
                                       sent inline as a data URL (``local_files = "data_url"``)
=====================================  ====================================================================

Local checks (before anything is spent): input images are png, jpeg or webp and at most
:data:`MAX_REFERENCE_BYTES` (SPEC ``CreateImageEditRequest.image``: "less than 50MB"); masks are PNG with an
alpha channel, at most :data:`MAX_MASK_BYTES` (SPEC ``CreateImageEditRequest.mask``: "less than 4MB") and the
same size as the first image when that one is local too (FACTS §4.2). Plain URLs cannot be checked locally.

Uploads: the purpose that image ``file_id`` references need is not stated by the SPEC (FACTS §4.2, §8: unconfirmed,
``vision`` or ``user_data``); batchpipe uses ``vision`` unless ``[references] upload_purpose`` says otherwise.
Each distinct file (by sha256) is uploaded once with ``expires_after`` and recorded in the ledger's ``files``
table with role ``reference``; later items, shards and nightly runs reuse the ``file_id`` while it is still on
the service and will not expire within the completion window plus a margin (:func:`ensure_uploaded`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import http.server
import io
import mimetypes
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from PIL import Image

from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_UPLOAD_PURPOSE",
    "MAX_MASK_BYTES",
    "MAX_REFERENCE_BYTES",
    "REFERENCE_ROLE",
    "LocalImage",
    "ReferenceMirror",
    "ReferenceOptions",
    "ReferenceResolver",
    "Resolved",
    "check_data_url",
    "inspect_image_bytes",
    "inspect_image_file",
]

_log = structlog.get_logger("batchpipe.input.references")

#: SPEC ``CreateImageEditRequest.image``: each image "less than 50MB" (the emulator uses the same binary MB).
MAX_REFERENCE_BYTES: Final = 50 * 1024 * 1024
#: SPEC ``CreateImageEditRequest.mask``: "Must be a valid PNG file, less than 4MB".
MAX_MASK_BYTES: Final = 4 * 1024 * 1024
#: FACTS §4.2: png, webp or jpg inputs (Pillow format names).
ACCEPTED_FORMATS: Final[frozenset[str]] = frozenset({"PNG", "JPEG", "WEBP"})
#: FACTS §4.2 / §8: the purpose image file_ids need is unconfirmed; ``vision`` is our default (configurable).
DEFAULT_UPLOAD_PURPOSE: Final = "vision"
#: The ledger ``files.role`` of uploaded reference images.
REFERENCE_ROLE: Final = "reference"
_MIME: Final[dict[str, str]] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

Role = Literal["image", "mask"]
LocalFiles = Literal["upload", "data_url"]


@dataclass(frozen=True, slots=True)
class ReferenceOptions:
    """``[references]`` settings that govern how references are sent and kept.

    ``local_files``: ``"upload"`` (Files API, ``file_id``) or ``"data_url"`` (inline; counts toward the
    200 MB shard limit). ``upload_purpose``: Files API purpose (default ``vision``, see module docstring).
    ``upload_expires_after_s``: ``expires_after`` sent with each upload (SPEC ``FileExpirationAfter``:
    3600..2592000 s) so the service removes forgotten files too. ``reuse_margin_s``: a cached ``file_id``
    is reused only if it expires later than now + the 24 h completion window + this margin (seconds).
    ``delete_unused``: delete reference files no pending or submitted item needs (default: keep them as a
    cache for the next run). ``mirror``: URL prefix → local directory (absolute) served on loopback;
    ``mirror_port``: its port (0: the port the last run in this work directory used if free, else any).
    """

    local_files: LocalFiles = "upload"
    upload_purpose: str = DEFAULT_UPLOAD_PURPOSE
    upload_expires_after_s: int = rules.FILE_EXPIRY_MAX_S
    reuse_margin_s: int = 86_400
    delete_unused: bool = False
    mirror: tuple[tuple[str, Path], ...] = ()
    mirror_port: int = 0


# --------------------------------------------------------------------------------------------- local checks


@dataclass(frozen=True, slots=True)
class LocalImage:
    """A checked local (or data URL) image: ``format`` (Pillow name), ``size`` (width, height) in pixels,
    ``has_alpha``, ``bytes`` (file size), ``sha256`` (hex of the bytes), ``path`` (None for data URLs)."""

    format: str
    size: tuple[int, int]
    has_alpha: bool
    bytes: int
    sha256: str
    path: Path | None = None

    @property
    def mime(self) -> str:
        """``image/png`` | ``image/jpeg`` | ``image/webp``."""
        return _MIME.get(self.format, "application/octet-stream")


def inspect_image_bytes(data: bytes, *, role: Role, path: Path | None = None) -> LocalImage | str:
    """Check image bytes as the service would (see module docstring); returns the facts or why not.

    The message (a ``str``) names the problem: not decodable, wrong format, too large, a mask without alpha.
    """
    limit = MAX_MASK_BYTES if role == "mask" else MAX_REFERENCE_BYTES
    if len(data) > limit:
        return f"{len(data):,} bytes, over the {limit:,}-byte limit for {'a mask' if role == 'mask' else 'an image'}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = str(image.format or "unknown")
            size = image.size
            has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
            image.verify()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...)
        return f"not a readable png, jpeg or webp image ({type(exc).__name__})"
    if role == "mask":
        if fmt != "PNG":
            return f"a mask must be a PNG with an alpha channel, not {fmt}"
        if not has_alpha:
            return "a mask must be a PNG with an alpha channel (fully transparent pixels mark the area to edit)"
    elif fmt not in ACCEPTED_FORMATS:
        return f"format {fmt} is not accepted (png, jpeg or webp)"
    return LocalImage(fmt, size, has_alpha, len(data), hashlib.sha256(data).hexdigest(), path)


def inspect_image_file(path: Path, *, role: Role) -> LocalImage | str:
    """:func:`inspect_image_bytes` for a file; a missing or unreadable file is a ``str`` problem too.

    The size limit is checked from ``stat`` before reading, so an oversized file is never loaded.
    """
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if not path.is_file():
        return f"not a file: {path}"
    limit = MAX_MASK_BYTES if role == "mask" else MAX_REFERENCE_BYTES
    if size_bytes > limit:
        return f"{path} is {size_bytes:,} bytes, over the {limit:,}-byte limit"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    found = inspect_image_bytes(data, role=role, path=path)
    return f"{path}: {found}" if isinstance(found, str) else found


def _decode_data_url(url: str) -> bytes | str:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        return "a data URL must read data:image/<type>;base64,<data>"
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "the data URL's base64 payload does not decode"


def check_data_url(url: str, *, role: Role) -> LocalImage | str:
    """Check a ``data:image/...;base64,...`` URL as the service would check the image (decodes; png, jpeg or
    webp; size limit; a mask PNG with alpha): the image's facts, or the problem as a sentence. The one check of
    data URLs, for matrix references and plain JSONL ``images`` / ``mask`` alike."""
    decoded = _decode_data_url(url.strip())
    if isinstance(decoded, str):
        return decoded
    found = inspect_image_bytes(decoded, role=role)
    return f"data URL: {found}" if isinstance(found, str) else found


# --------------------------------------------------------------------------------------------- resolving


@dataclass(frozen=True, slots=True)
class Resolved:
    """One reference made ready for a request.

    ``param``: the ``ImageRefParam`` (``{"image_url": ...}`` or ``{"file_id": ...}``); ``ref``: what the
    ledger records; ``image``: the local facts when the bytes were checked here (None for plain URLs);
    ``upload``: the local file still to be uploaded (``"upload"`` mode before :func:`ensure_uploaded`).
    """

    param: dict[str, str]
    ref: ImageRef
    image: LocalImage | None = None
    upload: Path | None = None


class ReferenceResolver:
    """Turns reference texts into :class:`Resolved` values (or problem strings), caching checks per file.

    ``uploaded``: sha256 → ``file_id`` of files already on the Files API; a local file not in it gets a
    placeholder ``file_id`` (``file-pending-<sha256 prefix>``) and is listed in :attr:`needed` (sha256 →
    path), which is how a first pass finds what to upload. ``mirror_base``: the loopback base URL
    (``http://127.0.0.1:PORT``) of a running :class:`ReferenceMirror`; without it mirrored URLs keep their
    public form (their local copies are still checked).
    """

    def __init__(
        self,
        options: ReferenceOptions,
        *,
        uploaded: Mapping[str, str] | None = None,
        mirror_base: str | None = None,
    ) -> None:
        self.options = options
        self.uploaded = dict(uploaded or {})
        self.mirror_base = mirror_base.rstrip("/") if mirror_base else None
        self.needed: dict[str, Path] = {}
        self._checked: dict[tuple[Path, Role], LocalImage | str] = {}
        self._data_urls: OrderedDict[Path, str] = OrderedDict()

    def resolve(self, text: str, *, base: Path, role: Role, within: Sequence[Path] | None = None) -> Resolved | str:
        """The reference ``text`` (relative paths are relative to ``base``) as a :class:`Resolved`, or why not.

        ``within``: for a reference a manifest row names (not the trusted job spec), the folders (absolute,
        symlinks resolved) a local path must resolve into, after following symlinks; a path outside them is
        a problem naming the folders, and the file is not read.
        """
        text = text.strip()
        if text.startswith("data:"):
            found = check_data_url(text, role=role)
            if isinstance(found, str):
                return found
            return Resolved(
                {"image_url": text}, ImageRef("data", f"data:{found.mime};sha256={found.sha256}", found.sha256), found
            )
        if text.startswith("file_id:"):
            file_id = text.removeprefix("file_id:").strip()
            if not file_id:
                return "file_id: needs an id after the colon"
            return Resolved({"file_id": file_id}, ImageRef("file", file_id))
        scheme = urllib.parse.urlsplit(text).scheme.lower()
        if scheme in ("http", "https"):
            return self._resolve_url(text, role)
        if len(scheme) > 1:  # "C:\..." is a Windows drive, not a scheme
            return f"unsupported reference {text!r}: use an http(s) URL, a data URL, file_id:<id> or a local path"
        path = Path(text)
        path = (path if path.is_absolute() else base / path).resolve()
        if within is not None and not any(path.is_relative_to(root) for root in within):
            return (
                f"local path {text!r} resolves to {path}, outside the folders a manifest row may name "
                f"({', '.join(map(str, within))}); add its folder to [references] allow_dirs in the job spec"
            )
        found = self._check(path, role)
        if isinstance(found, str):
            return found
        if self.options.local_files == "data_url":
            url = self._data_url(path, found)
            return Resolved(
                {"image_url": url}, ImageRef("data", f"data:{found.mime};sha256={found.sha256}", found.sha256), found
            )
        uploaded = self.uploaded.get(found.sha256)
        if uploaded is None:
            self.needed.setdefault(found.sha256, path)
            return Resolved(
                {"file_id": f"file-pending-{found.sha256[:16]}"},
                ImageRef("file", "(upload pending)", found.sha256),
                found,
                path,
            )
        return Resolved({"file_id": uploaded}, ImageRef("file", uploaded, found.sha256), found)

    def _resolve_url(self, url: str, role: Role) -> Resolved | str:
        for index, (prefix, directory) in enumerate(self.options.mirror):
            if not url.startswith(prefix):
                continue
            rest = urllib.parse.unquote(urllib.parse.urlsplit(url[len(prefix) :]).path)
            local = (directory / rest).resolve()
            if not local.is_relative_to(directory):
                return f"mirrored URL {url!r} leaves the mirror directory {directory}"
            found = self._check(local, role)
            if isinstance(found, str):
                return f"mirrored URL {url!r}: {found}"
            sent = url
            if self.mirror_base is not None:
                sent = f"{self.mirror_base}/{index}/{urllib.parse.quote(rest)}"
            return Resolved({"image_url": sent}, ImageRef("url", sent, found.sha256), found)
        return Resolved({"image_url": url}, ImageRef("url", url))

    def _check(self, path: Path, role: Role) -> LocalImage | str:
        key = (path, role)
        found = self._checked.get(key)
        if found is None:
            found = inspect_image_file(path, role=role)
            self._checked[key] = found
        return found

    def _data_url(self, path: Path, image: LocalImage) -> str:
        """The data URL of ``path`` (a few recent ones cached: variants of a product reuse its photo)."""
        url = self._data_urls.get(path)
        if url is None:
            url = f"data:{image.mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
            self._data_urls[path] = url
            if len(self._data_urls) > 8:
                self._data_urls.popitem(last=False)
        else:
            self._data_urls.move_to_end(path)
        return url


# --------------------------------------------------------------------------------------------- the mirror


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: _MirrorServer

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        index, _, rest = path.lstrip("/").partition("/")
        roots = self.server.roots
        target: Path | None = None
        if index.isdigit() and int(index) < len(roots):
            root = roots[int(index)]
            candidate = (root / rest).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                target = candidate
        if target is None:
            self.send_error(404)
            return
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self.server.served += 1

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("mirror request", line=format % args)


class _MirrorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    roots: tuple[Path, ...] = ()
    served = 0


class ReferenceMirror:
    """A static HTTP server on 127.0.0.1 serving local copies of public reference photos.

    ``routes``: (URL prefix, local directory) pairs; the n-th directory is served under ``/<n>/`` and
    :class:`ReferenceResolver` rewrites matching URLs to it, so the API (or emulator) fetches the photos over
    real HTTP. ``port`` 0 picks a free port; ``port_file`` (optional) remembers the port so the next run binds
    the same one when it is free (request bodies, hence request hashes, then stay the same across runs).
    Use :meth:`start` / :meth:`close`, or ``with``. ``served`` counts answered requests.
    """

    def __init__(self, routes: Iterable[tuple[str, Path]], *, port: int = 0, port_file: Path | None = None) -> None:
        self.routes = tuple((prefix, Path(directory).resolve()) for prefix, directory in routes)
        self.port = port
        self.port_file = port_file
        self._server: _MirrorServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the mirror is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def served(self) -> int:
        """Requests answered with a file so far."""
        return self._server.served if self._server is not None else 0

    def start(self) -> ReferenceMirror:
        """Bind and serve in a daemon thread. Raises ``OSError`` if an explicit ``port`` is taken."""
        if self._server is not None:
            return self
        server = self._bind()
        server.roots = tuple(directory for _, directory in self.routes)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="reference-mirror", daemon=True
        )
        self._thread.start()
        if self.port_file is not None:
            with contextlib.suppress(OSError):
                self.port_file.parent.mkdir(parents=True, exist_ok=True)
                self.port_file.write_text(str(server.server_address[1]))
        _log.info("reference mirror", url=self.base_url, routes=[p for p, _ in self.routes])
        return self

    def _bind(self) -> _MirrorServer:
        if self.port:
            return _MirrorServer(("127.0.0.1", self.port), _MirrorHandler)
        if self.port_file is not None:
            with contextlib.suppress(OSError, ValueError):
                return _MirrorServer(("127.0.0.1", int(self.port_file.read_text().strip())), _MirrorHandler)
        return _MirrorServer(("127.0.0.1", 0), _MirrorHandler)

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReferenceMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keep_alive_in_loop(self) -> Awaitable[None]:
        """A task, on the running loop, that closes the mirror when it is cancelled (``asyncio.run`` cancels
        leftover tasks when it ends): the mirror then lives exactly as long as the run's event loop."""

        async def keeper() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                self.close()

        return asyncio.get_running_loop().create_task(keeper(), name="reference-mirror")


@dataclass(slots=True)
class UploadStats:
    """What :func:`ensure_uploaded` did in one run: files needed, reused from the cache, uploaded now."""

    needed: int = 0
    reused: int = 0
    uploaded: int = 0
    deleted: list[str] = field(default_factory=list)
