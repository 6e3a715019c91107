"""The emulator's C2PA signer: embed an OpenAI-shaped manifest, signed with the TEST PKI in ``pki/``.

The manifest copies the *shape* of OpenAI's 2026 GPT Image manifests (c2pa-notes §4c):
``claim_generator_info`` with one ``{name, version}``, a ``title``, and a ``c2pa.actions.v2`` assertion
whose first action is ``c2pa.created`` with digitalSourceType ``trainedAlgorithmicMedia`` and a
``softwareAgent {name, version}``, then ``c2pa.converted``. Every name says "emulator"/"emulated", and the
certificate is the batchpipe emulator test chain, so the output can never pass for a real OpenAI image: it
verifies as ``valid`` under the default trust lists and ``trusted`` only under ``--trust emulator``.

Thumbnails are disabled (on a noisy 1024x1024 PNG a thumbnail alone adds ~680 KB; c2pa-notes §1) and no
time-stamp authority is used (no network).

Formats: :func:`sign_image` signs the still formats png, jpeg and webp; :func:`sign_media` also signs the preview
formats gif and svg (SDK 3.57.0 ``output_format``), which c2pa-python 0.38.1 signs. Measured 2026-11-30 on
emulator output: an animated GIF verifies like a PNG (``trusted`` with the emulator root, ``valid`` without); an
SVG verifies the same when the reader is told ``image/svg+xml``, but c2pa cannot detect SVG from the bytes, so
``batchpipe verify`` (which does) reports it ``unreadable``.

Speed and concurrency (measured on the 2-core dev box, 1024x1024 gradient+noise PNG of 1.5 MB):

* One ``c2pa.Context`` is shared by every thread (Builders copy what they need from it), one ``Builder`` is
  made per image (a Builder signs only once), and each thread gets its own ``c2pa.Signer`` through
  ``threading.local``. Sharing one Signer is allowed by c2pa-python 0.38 (a *shared* native call), but it
  scaled worse: best of 3, 2 threads, 248 images/s shared versus 295 images/s per-thread.
* ``builder.verify_after_sign`` is turned off: re-reading every image we just signed cost ~20 % of the
  throughput, and the tests verify the signer's output for every format instead. With it off: about
  290 images/s on one thread, 317 images/s on two (the stream callbacks that hash the image hold the GIL,
  so a second thread adds little).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, Final

import c2pa

from batchpipe import __version__
from batchpipe.errors import ProvenanceError
from batchpipe.provenance.trust import EMULATOR_ROOT_PEM

__all__ = [
    "CLAIM_GENERATOR_NAME",
    "EMULATOR_CHAIN_PEM",
    "EMULATOR_LEAF_KEY_PEM",
    "EMULATOR_ROOT_PEM",
    "MEDIA_MIME_TYPES",
    "PREVIEW_MIME_TYPES",
    "SIGNABLE_MIME_TYPES",
    "SOFTWARE_AGENT_NAME",
    "TRAINED_ALGORITHMIC_MEDIA",
    "build_manifest",
    "sign_image",
    "sign_media",
]

_PKI: Final = Path(__file__).resolve().parent / "pki"
EMULATOR_CHAIN_PEM: Final[Path] = _PKI / "emulator-chain.pem"
"""Leaf + intermediate certificates (PEM) of the emulator's TEST signing chain."""
EMULATOR_LEAF_KEY_PEM: Final[Path] = _PKI / "emulator-leaf-key.pem"
"""The emulator leaf's PKCS#8 private key. A TEST key published in the repository."""

CLAIM_GENERATOR_NAME: Final = "batchpipe emulator (imitation of OpenAI Media Service API)"
"""``claim_generator_info[0].name``; OpenAI's real one is "OpenAI Media Service API" (c2pa-notes §4c)."""
SOFTWARE_AGENT_NAME: Final = "gpt-image (emulated)"
"""``softwareAgent.name`` of the ``c2pa.created`` action; OpenAI's real one is "gpt-image"."""
TRAINED_ALGORITHMIC_MEDIA: Final = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
"""IPTC digital source type for generative-AI output (c2pa-notes §4c)."""

SIGNABLE_MIME_TYPES: Final[dict[str, str]] = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
"""MIME type -> the extension used in the manifest title: the still formats every GPT Image model outputs, the
ones :func:`sign_image` signs."""
PREVIEW_MIME_TYPES: Final[dict[str, str]] = {"image/gif": "gif", "image/svg+xml": "svg"}
"""The preview output formats ``gif`` and ``svg`` (SDK 3.57.0 ``image_generate_params.py``; M26 §2), which
c2pa-python 0.38.1 (c2pa-rs 0.91.3) signs: measured on 2026-11-30 with this signer, both come out ``Trusted``
under the emulator root when read back with their MIME type. Signed by :func:`sign_media` only."""
MEDIA_MIME_TYPES: Final[dict[str, str]] = {**SIGNABLE_MIME_TYPES, **PREVIEW_MIME_TYPES}
"""Every MIME type :func:`sign_media` signs (the emulator's five ``output_format`` values)."""

_lock = threading.Lock()
_context: Any = None  # the shared c2pa.Context, created on first use
_pem: tuple[bytes, bytes] | None = None  # (chain, key) read once
_local = threading.local()  # .signer: this thread's c2pa.Signer


def _signer_and_context() -> tuple[Any, Any]:
    """This thread's ``c2pa.Signer`` and the process-wide ``c2pa.Context``, created on first use.

    Raises:
        ProvenanceError: the PKI files are missing or the c2pa library rejects them.
    """
    global _context, _pem
    if _context is None or _pem is None:
        with _lock:
            if _pem is None:
                try:
                    _pem = (EMULATOR_CHAIN_PEM.read_bytes(), EMULATOR_LEAF_KEY_PEM.read_bytes())
                except OSError as exc:
                    raise ProvenanceError(f"emulator signing PKI is missing: {exc}") from exc
            if _context is None:
                settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False}}
                try:
                    _context = c2pa.Context.from_dict(settings)
                except c2pa.C2paError as exc:  # pragma: no cover - fixed, known-good settings
                    raise ProvenanceError(f"the c2pa library rejected the signing settings: {exc}") from exc
    signer = getattr(_local, "signer", None)
    if signer is None:
        chain, key = _pem
        try:
            signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"the c2pa library rejected the emulator signing PKI: {exc}") from exc
        _local.signer = signer
    return signer, _context


def build_manifest(mime: str, *, model: str) -> dict[str, object]:
    """The manifest definition (c2pa ``Builder`` JSON) for one emulated image of type ``mime`` from ``model``.

    Raises:
        ValueError: ``mime`` is not one of :data:`MEDIA_MIME_TYPES`.
    """
    ext = MEDIA_MIME_TYPES.get(mime)
    if ext is None:
        raise ValueError(f"cannot sign {mime!r}: expected one of {', '.join(MEDIA_MIME_TYPES)}")
    return {
        "claim_generator_info": [{"name": CLAIM_GENERATOR_NAME, "version": __version__}],
        "title": f"image.{ext}",
        "format": mime,
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": {"name": SOFTWARE_AGENT_NAME, "version": model},
                        },
                        {"action": "c2pa.converted"},
                    ]
                },
            }
        ],
    }


def sign_image(data: bytes, mime: str, *, model: str) -> bytes:
    """Return ``data`` (an encoded image of type ``mime``) with an embedded, signed C2PA manifest.

    ``model`` (e.g. ``"gpt-image-2"``) becomes ``softwareAgent.version`` of the ``c2pa.created`` action.
    Thread-safe; the c2pa native calls release the GIL. Output grows by about 4 KB (no thumbnail).
    Only the still formats (:data:`SIGNABLE_MIME_TYPES`); :func:`sign_media` also signs GIF and SVG.

    Raises:
        ValueError: ``mime`` is not image/png, image/jpeg or image/webp.
        ProvenanceError: the bytes are not a well-formed image of that type, or signing failed.
    """
    if mime not in SIGNABLE_MIME_TYPES:
        raise ValueError(
            f"cannot sign {mime!r} with sign_image: expected one of {', '.join(SIGNABLE_MIME_TYPES)} "
            f"(sign_media also signs {', '.join(PREVIEW_MIME_TYPES)})"
        )
    return _sign(data, mime, model)


def sign_media(data: bytes, mime: str, *, model: str) -> bytes:
    """:func:`sign_image` for every emulator output format: png, jpeg, webp, gif (``image/gif``, animated or
    not) and svg (``image/svg+xml``; c2pa embeds the manifest as base64 JUMBF in a ``<metadata>`` element of the
    root ``<svg>``, adding about 5 KB).

    Raises:
        ValueError: ``mime`` is not one of :data:`MEDIA_MIME_TYPES`.
        ProvenanceError: the bytes are not a well-formed file of that type, or signing failed.
    """
    if mime not in MEDIA_MIME_TYPES:
        raise ValueError(f"cannot sign {mime!r}: expected one of {', '.join(MEDIA_MIME_TYPES)}")
    return _sign(data, mime, model)


def _sign(data: bytes, mime: str, model: str) -> bytes:
    manifest = build_manifest(mime, model=model)
    signer, context = _signer_and_context()
    out = io.BytesIO()
    try:
        with c2pa.Builder(manifest, context=context) as builder:
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"could not sign the {mime} image: {exc}") from exc
    return out.getvalue()
