"""Trust settings for C2PA verification: which certificate roots make a signature "trusted".

A :class:`TrustConfig` is built from one setting string (the ``--trust`` option, a job spec value):

=============  ==============================================================================================
``default``    official C2PA Trust List as ``trust.trust_anchors`` + the frozen CAI interim list as
               ``trust.user_anchors`` (c2pa-notes §6). Real OpenAI images (2024-2026) come out ``trusted``.
``emulator``   ``default`` + the emulator's TEST root (``pki/emulator-root.pem``) added to ``user_anchors``.
``none``       no anchors: an intact signature is ``valid`` (with ``signingCredential.untrusted``).
``<path>.pem`` that PEM bundle as ``trust.trust_anchors``, nothing else.
=============  ==============================================================================================

The SDK ships no anchors of its own (c2pa-notes §1 "Default settings"), and the deprecated
``c2pa.load_settings`` is ignored by Reader/Builder in c2pa-python 0.38, so the trust lists are passed in a
per-verifier ``Context`` (see :meth:`TrustConfig.context_settings`). Every setting also turns off
``verify.remote_manifest_fetch`` and ``verify.ocsp_fetch`` (no network) and leaves
``verify.verify_after_reading`` on (turning it off makes every file Invalid: c2pa-notes §1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509

from batchpipe.errors import ProvenanceError

__all__ = [
    "C2PA_TRUST_LIST_PEM",
    "C2PA_TSA_TRUST_LIST_PEM",
    "EMULATOR_ROOT_PEM",
    "INTERIM_ANCHORS_PEM",
    "TRUST_SETTINGS",
    "TrustConfig",
]

_HERE: Final = Path(__file__).resolve().parent
C2PA_TRUST_LIST_PEM: Final[Path] = _HERE / "trust" / "C2PA-TRUST-LIST.pem"
"""Official C2PA Trust List (c2pa-org/conformance-public @ 7dbff513, CC BY 4.0; see trust/README.md)."""
C2PA_TSA_TRUST_LIST_PEM: Final[Path] = _HERE / "trust" / "C2PA-TSA-TRUST-LIST.pem"
"""Official C2PA TSA Trust List (shipped for reference; c2pa-rs 0.91 has no separate TSA-anchor setting)."""
INTERIM_ANCHORS_PEM: Final[Path] = _HERE / "trust" / "interim-anchors.pem"
"""CAI interim trust list, frozen 2026-01-01 (contentauth/verify-site @ 506f98c3; see trust/README.md)."""
EMULATOR_ROOT_PEM: Final[Path] = _HERE / "pki" / "emulator-root.pem"
"""The emulator's TEST root CA cert: trusted only under the ``emulator`` setting, never in production."""

TRUST_SETTINGS: Final = ("default", "emulator", "none")
"""The named settings :meth:`TrustConfig.from_setting` accepts besides a path to a ``.pem`` file."""


def _read_pem_bundle(path: Path) -> str:
    """Read ``path`` as a PEM bundle of one or more X.509 certificates; return its text.

    Raises:
        ProvenanceError: the file cannot be read, is not text, or holds no parseable certificate.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProvenanceError(f"cannot read trust anchors file {path}: {exc.strerror or exc}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ProvenanceError(f"trust anchors file {path} holds no valid PEM certificate: {exc}") from exc
    if not certs:  # pragma: no cover - cryptography raises on an empty bundle
        raise ProvenanceError(f"trust anchors file {path} holds no certificate")
    return data.decode("ascii", errors="replace")


@dataclass(frozen=True)
class TrustConfig:
    """How to build the c2pa ``Context`` used for verification (immutable, hashable, cheap to share).

    ``setting`` is the string it was made from (``"default"``, ``"emulator"``, ``"none"`` or the PEM path);
    ``trust_anchors`` / ``user_anchors`` are PEM bundles (text) or None. The PEM text is left out of
    ``repr`` to keep logs short.
    """

    setting: str
    trust_anchors: str | None = field(default=None, repr=False)
    user_anchors: str | None = field(default=None, repr=False)

    @classmethod
    def from_setting(cls, setting: str) -> TrustConfig:
        """Build a config from ``"default"``, ``"emulator"``, ``"none"`` or a path to a ``.pem`` file.

        The anchors files are read and parsed now, so a bad setting fails here, not on the first file.

        Raises:
            ProvenanceError: an unknown setting (not a name above and not an existing file), or a file that
                cannot be read or holds no PEM certificate.
        """
        name = setting.strip()
        if name == "none":
            return cls(setting=name)
        if name in ("default", "emulator"):
            official = _read_pem_bundle(C2PA_TRUST_LIST_PEM)
            user = _read_pem_bundle(INTERIM_ANCHORS_PEM)
            if name == "emulator":
                user = user.rstrip("\n") + "\n" + _read_pem_bundle(EMULATOR_ROOT_PEM)
            return cls(setting=name, trust_anchors=official, user_anchors=user)
        path = Path(name).expanduser()
        if not name or not path.is_file():
            raise ProvenanceError(
                f"unknown trust setting {setting!r}: expected one of {', '.join(TRUST_SETTINGS)} "
                "or the path of an existing .pem file of trust anchors"
            )
        return cls(setting=str(path), trust_anchors=_read_pem_bundle(path))

    def context_settings(self) -> dict[str, object]:
        """The c2pa settings for ``c2pa.Context.from_dict`` (keys: c2pa-python ``docs/context-settings.md``).

        Always ``verify.remote_manifest_fetch = False`` and ``verify.ocsp_fetch = False``;
        ``verify_after_reading`` and ``verify_trust`` keep their default ``True``.
        """
        trust: dict[str, str] = {}
        if self.trust_anchors is not None:
            trust["trust_anchors"] = self.trust_anchors
        if self.user_anchors is not None:
            trust["user_anchors"] = self.user_anchors
        settings: dict[str, object] = {
            "verify": {
                "remote_manifest_fetch": False,
                "ocsp_fetch": False,
                "verify_after_reading": True,
                "verify_trust": True,
            }
        }
        if trust:
            settings["trust"] = trust
        return settings
