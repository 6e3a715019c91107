"""Check the C2PA (Content Credentials) manifest of an image and report it as one flat record.

States (:data:`C2paState`), from c2pa-python ``Reader.get_validation_state()`` and the exceptions it raises
(c2pa-notes §1 "Validation state semantics" and "Errors"):

``trusted``     signature intact and the signing chain ends in a configured trust anchor.
``valid``       signature and hashes intact but the signer is not trusted (``signingCredential.untrusted``
                is then in ``failure_codes``); or an untrusted earlier manifest (ingredient).
``invalid``     a hash or signature check failed (tampered pixels, assertion or claim; expired credential).
``missing``     no manifest at all (``C2paError.ManifestNotFound``): never signed, or re-encoded.
``unreadable``  the check could not run: not a supported media type, truncated or corrupt file, unreadable
                path, or a manifest stored remotely (remote fetching is always off).

The verifier never raises for a bad file; ``reason`` says why in one sentence. One ``c2pa.Context`` is
shared by all threads and one ``Reader`` is made per call (c2pa-notes §1 "Settings, Context" and §3: the
native calls release the GIL, so threads scale up to the core count).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast, get_args

import c2pa

from batchpipe.errors import ProvenanceError
from batchpipe.provenance.trust import TrustConfig

__all__ = ["C2paReport", "C2paState", "C2paVerifier", "sniff_text_mime"]

C2paState = Literal["trusted", "valid", "invalid", "missing", "unreadable"]
"""Outcome of one check; see the module docstring for each member."""

C2PA_STATES: tuple[C2paState, ...] = get_args(C2paState)

_STATE_MAP: dict[str, C2paState] = {"Trusted": "trusted", "Valid": "valid", "Invalid": "invalid"}
_TOLERATED_PREFIXES = ("signingCredential.untrusted", "cawg.x509.")
_CREATION_ACTIONS = ("c2pa.created", "c2pa.opened")
_MAX_REASON_CHARS = 240


@dataclass(frozen=True)
class C2paReport:
    """One file's C2PA result.

    Fields (all from the c2pa-python ``Reader`` manifest-store JSON, c2pa-notes §1 "Output JSON"):

    * ``state``: see :data:`C2paState`.
    * ``failure_codes``: ``validation_results.activeManifest.failure[].code`` in order, then the failure
      codes of ``ingredientDeltas`` prefixed ``"ingredient:"``. Empty for missing/unreadable.
    * ``issuer`` / ``common_name``: ``signature_info.issuer`` (the O= of the signing certificate's subject)
      and ``signature_info.common_name`` of the active manifest.
    * ``claim_generator``: ``claim_generator_info[0].name``, or the legacy v1 ``claim_generator`` string.
    * ``digital_source_type`` / ``software_agent``: of the first ``c2pa.created``/``c2pa.opened`` action in a
      ``c2pa.actions*`` assertion; ``software_agent`` is the name whether the manifest holds a string or a
      ``{name, version}`` object.
    * ``trust_list``: ``validation_results.trustListUri`` (``"system_anchors"`` = matched the trust anchors,
      ``"user_anchors"`` = matched the user anchors), None when no anchor matched.
    * ``reason``: one sentence on why the state is missing/unreadable/invalid (or valid-but-untrusted);
      None for trusted.
    """

    state: C2paState
    failure_codes: tuple[str, ...] = ()
    issuer: str | None = None
    common_name: str | None = None
    claim_generator: str | None = None
    digital_source_type: str | None = None
    software_agent: str | None = None
    trust_list: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict with every field (``failure_codes`` as a list)."""
        return {
            "state": self.state,
            "failure_codes": list(self.failure_codes),
            "issuer": self.issuer,
            "common_name": self.common_name,
            "claim_generator": self.claim_generator,
            "digital_source_type": self.digital_source_type,
            "software_agent": self.software_agent,
            "trust_list": self.trust_list,
            "reason": self.reason,
        }

    @property
    def ok(self) -> bool:
        """True for ``trusted`` and ``valid`` (signature intact), False otherwise."""
        return self.state in ("trusted", "valid")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON_CHARS else flat[: _MAX_REASON_CHARS - 1] + "…"


def _error_report(exc: BaseException) -> C2paReport:
    """Map an exception from ``c2pa.Reader(...)`` or from opening the file to a missing/unreadable report."""
    if isinstance(exc, c2pa.C2paError.ManifestNotFound):
        return C2paReport(
            state="missing",
            reason="no C2PA manifest in the file (never signed, or re-encoded, which strips the manifest)",
        )
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
        return C2paReport(state="unreadable", reason=_one_line(f"cannot read the file: {detail}"))
    message = str(exc)
    if message.startswith("Remote:"):
        # base C2paError "Remote: must fetch remote manifests from url ..." (c2pa-notes §1 "Errors")
        url = message.rsplit(" ", 1)[-1]
        reason = f"the manifest is stored remotely ({url}) and remote manifest fetching is disabled"
    elif isinstance(exc, c2pa.C2paError.NotSupported):
        reason = "not a media type C2PA can read (not an image, or an unsupported format)"
    elif isinstance(exc, c2pa.C2paError.Io):
        reason = f"cannot read the file: {message}"
    elif isinstance(exc, c2pa.C2paError):
        reason = f"the file could not be parsed (truncated or corrupt?): {message}"
    else:
        reason = f"the C2PA reader failed: {type(exc).__name__}: {message}"
    return C2paReport(state="unreadable", reason=_one_line(reason))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _failure_codes(results: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not results:
        return ()
    codes: list[str] = []
    active = results.get("activeManifest")
    if isinstance(active, Mapping):
        codes.extend(
            str(entry["code"])
            for entry in active.get("failure") or ()
            if isinstance(entry, Mapping) and "code" in entry
        )
    for delta in results.get("ingredientDeltas") or ():
        deltas = delta.get("validationDeltas") if isinstance(delta, Mapping) else None
        if isinstance(deltas, Mapping):
            codes.extend(
                f"ingredient:{entry['code']}"
                for entry in deltas.get("failure") or ()
                if isinstance(entry, Mapping) and "code" in entry
            )
    return tuple(codes)


def _first_failure_explanation(results: Mapping[str, Any] | None) -> str | None:
    active = results.get("activeManifest") if results else None
    if not isinstance(active, Mapping):
        return None
    for entry in active.get("failure") or ():
        if isinstance(entry, Mapping) and not str(entry.get("code", "")).startswith(_TOLERATED_PREFIXES):
            return f"{entry.get('code')}: {entry.get('explanation', '')}".rstrip(": ")
    return None


def _creation_action(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for assertion in manifest.get("assertions") or ():
        if not isinstance(assertion, Mapping) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data")
        actions = data.get("actions") if isinstance(data, Mapping) else None
        for action in actions or ():
            if isinstance(action, Mapping) and action.get("action") in _CREATION_ACTIONS:
                return action
    return None


def _report_from_reader(reader: Any) -> C2paReport:
    raw_state = reader.get_validation_state()
    results = cast("Mapping[str, Any] | None", reader.get_validation_results())
    manifest = cast("Mapping[str, Any] | None", reader.get_active_manifest()) or {}
    sig = manifest.get("signature_info")
    sig = sig if isinstance(sig, Mapping) else {}
    generator_info = manifest.get("claim_generator_info")
    claim_generator: str | None = None
    if isinstance(generator_info, list) and generator_info and isinstance(generator_info[0], Mapping):
        claim_generator = _str_or_none(generator_info[0].get("name"))
    if claim_generator is None:
        claim_generator = _str_or_none(manifest.get("claim_generator"))
    action = _creation_action(manifest)
    agent = action.get("softwareAgent") if action else None
    software_agent = _str_or_none(agent.get("name")) if isinstance(agent, Mapping) else _str_or_none(agent)
    codes = _failure_codes(results)
    state = _STATE_MAP.get(str(raw_state))
    reason: str | None = None
    if state is None:
        state = "invalid"
        reason = f"the C2PA reader returned an unknown validation state {raw_state!r}"
    elif state == "invalid":
        detail = _first_failure_explanation(results)
        reason = _one_line(f"the manifest does not validate ({detail})" if detail else "the manifest does not validate")
    elif state == "valid":
        if any(code.startswith("signingCredential.untrusted") for code in codes):
            reason = "signature intact, but the signer's certificate chain is not in the configured trust anchors"
        else:
            reason = "signature intact, but not every part of it is trusted"
    return C2paReport(
        state=state,
        failure_codes=codes,
        issuer=_str_or_none(sig.get("issuer")),
        common_name=_str_or_none(sig.get("common_name")),
        claim_generator=claim_generator,
        digital_source_type=_str_or_none(action.get("digitalSourceType")) if action else None,
        software_agent=software_agent,
        trust_list=_str_or_none(results.get("trustListUri")) if results else None,
        reason=reason,
    )


def sniff_text_mime(head: bytes) -> str | None:
    """``"image/svg+xml"`` when ``head`` (a file's first bytes) is an SVG document, else ``None`` (binary formats
    are left to c2pa-python's own detection)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"<?xml", b"<svg", b"<!--", b"<!DOCTYPE svg")) and b"<svg" in head:
        return "image/svg+xml"
    return None


class C2paVerifier:
    """Verify C2PA manifests under one :class:`TrustConfig`. Thread-safe; share one instance.

    Raises (constructor only):
        ProvenanceError: the c2pa library refused the trust settings (e.g. a PEM it cannot parse).
    """

    def __init__(self, trust: TrustConfig) -> None:
        self.trust = trust
        try:
            self._context = c2pa.Context.from_dict(trust.context_settings())
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"the c2pa library rejected trust setting {trust.setting!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"C2paVerifier(trust={self.trust.setting!r})"

    def _read(self, stream: BinaryIO, mime: str | None) -> C2paReport:
        try:
            if mime:
                reader = c2pa.Reader(mime, stream, context=self._context)
            else:
                reader = c2pa.Reader(stream, context=self._context)
            with reader:
                return _report_from_reader(reader)
        except (c2pa.C2paError, OSError, ValueError, TypeError) as exc:
            return _error_report(exc)

    def verify_path(self, path: Path) -> C2paReport:
        """Check the file at ``path`` (type read from its bytes, not its name); never raises for bad files.

        An empty file, a directory, a missing or unreadable path all give ``unreadable`` with a reason. SVG is
        recognised from its text (c2pa-python does not detect ``image/svg+xml`` from bytes, measured on
        c2pa-python 0.38; the manifest reads fine when the type is given).
        """
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
                if not head:
                    return C2paReport(state="unreadable", reason="the file is empty")
                fh.seek(0)
                return self._read(fh, sniff_text_mime(head))
        except OSError as exc:
            return _error_report(exc)

    def verify_bytes(self, data: bytes, mime: str | None = None) -> C2paReport:
        """Check an in-memory file; ``mime`` (e.g. ``"image/png"``) is a hint, None means detect from bytes.

        Never raises for bad data.
        """
        if not data:
            return C2paReport(state="unreadable", reason="the data is empty")
        return self._read(io.BytesIO(data), mime or sniff_text_mime(data[:4096]))
