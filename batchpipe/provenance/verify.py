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

**Chain-verdict cache** (issue 12; on by default, ``chain_cache=False`` turns it off). Verifying the signer's
chain against the trust anchors is a good part of c2pa's work per image (measured with the emulator's ES256
chain: 0.7 ms of 2.1 ms CPU for a 0.16 MB PNG, of 5.2 ms for a 2.4 MB one), and a catalog has one signer. So each
file is first read with ``verify.verify_trust`` off (claim signature, certificate profile and every hash are
still checked by c2pa); when that read is clean (``Valid``, no failure, one manifest, no stapled OCSP, no CAWG
identity) and c2pa already gave its trust verdict for the same chain, time cell and trust list
(:mod:`batchpipe.provenance.chains`), the report is that read plus the verdict: exactly what the full check
reports (``signingCredential.trusted`` and ``trustListUri``, or ``signingCredential.untrusted``; c2pa-rs
``validation_results.rs`` gives ``Trusted`` / ``Valid`` from those). Anything else (a first chain, a new time
cell, a failure, ingredients, OCSP, a file the fast read cannot read) gets today's full check, whose verdict is
then remembered. After a file with stapled OCSP or CAWG, the next 32 files skip the trust-off read. The trust-off
read's context holds no trust lists: with ``verify_trust`` off c2pa consults none, its validation results are the
same (400 emulator PNGs, compared), and a context holding the lists took 1.13 ms a file against 0.95 without
(median of 6 interleaved runs, c2pa-python 0.38.1).
``ManifestNotFound`` is final on the fast read: trust plays no part in finding no manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, cast, get_args

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from batchpipe.errors import ProvenanceError
from batchpipe.provenance.chains import (
    ChainKey,
    ChainVerdict,
    ChainVerdictCache,
    cert_boundaries,
    parse_signing_time,
    signer_chain,
    time_cell,
)
from batchpipe.provenance.trust import TrustConfig

__all__ = ["C2paReport", "C2paState", "C2paVerifier", "sniff_text_mime"]

C2paState = Literal["trusted", "valid", "invalid", "missing", "unreadable"]
"""Outcome of one check; see the module docstring for each member."""

C2PA_STATES: tuple[C2paState, ...] = get_args(C2paState)

_STATE_MAP: dict[str, C2paState] = {"Trusted": "trusted", "Valid": "valid", "Invalid": "invalid"}
_TOLERATED_PREFIXES = ("signingCredential.untrusted", "cawg.x509.")
_CREATION_ACTIONS = ("c2pa.created", "c2pa.opened")
_MAX_REASON_CHARS = 240
_TRUSTED_CODE: Final = "signingCredential.trusted"
_UNTRUSTED_CODE: Final = "signingCredential.untrusted"
#: Bytes in a manifest store whose checks depend on the trust settings beyond the signer's chain verdict
#: (stapled OCSP in the COSE header or as an assertion; CAWG X.509 identities): such files get the full check.
_TRUST_DEPENDENT_MARKERS: Final = (b"rVals", b"ocspVals", b"c2pa.certificate-status", b"cawg.")
#: After a file with such a marker, this many files go straight to the full check: a catalog's images share a
#: signer, and for a real OpenAI image (stapled OCSP) the trust-off read costs as much as the full check, so
#: reading each twice would double the cost. Every 33rd file tries the fast read again (about 3 % extra then).
_SKIP_AFTER_MARKER: Final = 32


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


def _report_from_reader(reader: Any, verdict: ChainVerdict | None = None) -> C2paReport:
    """The report of a finished read. ``verdict`` is given only for a clean read with trust verification off
    (see the module docstring): the report is then the one the full check gives for that chain verdict."""
    raw_state = reader.get_validation_state()
    results = cast("Mapping[str, Any] | None", reader.get_validation_results())
    if verdict is not None:
        raw_state = "Trusted" if verdict.trusted else "Valid"
        failures = [] if verdict.trusted else [{"code": _UNTRUSTED_CODE}]
        results = {"activeManifest": {"failure": failures}}
        if verdict.trust_list is not None:
            results["trustListUri"] = verdict.trust_list
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


def _anchor_ders(trust: TrustConfig) -> list[bytes] | None:
    """The DER of every anchor certificate (trust and user anchors), or None when a bundle does not parse."""
    ders: list[bytes] = []
    for bundle in (trust.trust_anchors, trust.user_anchors):
        if bundle:
            try:
                certs = x509.load_pem_x509_certificates(bundle.encode("ascii", "replace"))
            except ValueError:
                return None
            ders.extend(cert.public_bytes(Encoding.DER) for cert in certs)
    return ders


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

    def __init__(
        self,
        trust: TrustConfig,
        *,
        chain_cache: ChainVerdictCache | bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``chain_cache``: True (a cache of this verifier's own), a shared :class:`ChainVerdictCache`, or False
        (every file gets the full check). ``clock``: now in epoch seconds (the signing time of a file without a
        time stamp, for the cache key only)."""
        self.trust = trust
        settings = trust.context_settings()
        fast_settings = json.loads(json.dumps(settings))
        fast_settings["verify"]["verify_trust"] = False
        fast_settings.pop("trust", None)  # trust off: the anchors play no part, and holding them slows each read
        try:
            self._context = c2pa.Context.from_dict(settings)
            self._fast_context = c2pa.Context.from_dict(fast_settings) if chain_cache is not False else None
        except c2pa.C2paError as exc:
            raise ProvenanceError(f"the c2pa library rejected trust setting {trust.setting!r}: {exc}") from exc
        self.chain_cache: ChainVerdictCache | None = None
        if chain_cache is not False:
            self.chain_cache = chain_cache if isinstance(chain_cache, ChainVerdictCache) else ChainVerdictCache()
        self._clock = clock
        self._skip_fast_reads = 0  # files left that go straight to the full check (see _SKIP_AFTER_MARKER)
        self._fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        anchors = _anchor_ders(trust)
        anchor_bounds = cert_boundaries(anchors) if anchors is not None else None
        self._anchor_bounds: list[int] = anchor_bounds or []
        if anchor_bounds is None:  # an anchor this side cannot read: its validity is unknown, never reuse
            self._fast_context = None
            self.chain_cache = None

    def __repr__(self) -> str:
        return f"C2paVerifier(trust={self.trust.setting!r})"

    def _read(self, stream: BinaryIO, mime: str | None) -> C2paReport:
        key: ChainKey | None = None
        if self._fast_context is not None and self._skip_fast_reads > 0:
            self._skip_fast_reads -= 1  # a race here only changes how many files skip; never a report
        elif self._fast_context is not None:
            start = stream.tell()
            fast, key = self._read_fast(stream, mime)
            if fast is not None:
                return fast
            stream.seek(start)
        try:
            if mime:
                reader = c2pa.Reader(mime, stream, context=self._context)
            else:
                reader = c2pa.Reader(stream, context=self._context)
            with reader:
                report = _report_from_reader(reader)
                if key is not None:
                    self._learn(key, reader)
                return report
        except (c2pa.C2paError, OSError, ValueError, TypeError) as exc:
            return _error_report(exc)

    def _read_fast(self, stream: BinaryIO, mime: str | None) -> tuple[C2paReport | None, ChainKey | None]:
        """The read with trust verification off: ``(report, None)`` when it is final (a cached verdict, or no
        manifest); ``(None, key)`` when the full check must run and its verdict may be remembered under ``key``;
        ``(None, None)`` when the full check must run and nothing is learnt."""
        assert self._fast_context is not None and self.chain_cache is not None
        try:
            if mime:
                reader = c2pa.Reader(mime, stream, context=self._fast_context)
            else:
                reader = c2pa.Reader(stream, context=self._fast_context)
            with reader:
                key = self._chain_key(reader)
                if key is None:
                    return None, None
                verdict = self.chain_cache.get(key)
                if verdict is None:
                    return None, key
                return _report_from_reader(reader, verdict), key
        except c2pa.C2paError.ManifestNotFound as exc:
            return _error_report(exc), None
        except (c2pa.C2paError, OSError, ValueError, TypeError):
            return None, None  # the full check reports it

    def _chain_key(self, reader: Any) -> ChainKey | None:
        """The cache key of a clean trust-off read, or None when the file needs the full check (see the module
        docstring for what "clean" means)."""
        if reader.get_validation_state() != "Valid":
            return None
        store_json = cast("Mapping[str, Any] | None", reader._get_cached_manifest_data())
        results = cast("Mapping[str, Any] | None", reader.get_validation_results())
        if not store_json or not results:
            return None
        manifests = store_json.get("manifests")
        label = store_json.get("active_manifest")
        active = results.get("activeManifest")
        if not isinstance(manifests, Mapping) or len(manifests) != 1 or not isinstance(label, str):
            return None
        if not isinstance(active, Mapping) or active.get("failure") or results.get("ingredientDeltas"):
            return None
        manifest = manifests.get(label)
        if not isinstance(manifest, Mapping) or manifest.get("ingredients"):
            return None
        raw = io.BytesIO()
        try:
            reader.resource_to_stream(f"self#jumbf=/c2pa/{label}/c2pa.signature", raw)
        except c2pa.C2paError:
            return None
        store = raw.getvalue()
        if any(marker in store for marker in _TRUST_DEPENDENT_MARKERS):
            self._skip_fast_reads = _SKIP_AFTER_MARKER
            return None
        chain = signer_chain(store, label)
        if chain is None:
            return None
        sig = manifest.get("signature_info")
        sig = sig if isinstance(sig, Mapping) else {}
        stamped = "time" in sig
        when = parse_signing_time(sig.get("time")) if stamped else int(self._clock() // 1)
        if when is None:
            return None
        assert self.chain_cache is not None
        info = self.chain_cache.chain_info(self._fingerprint, chain, self._anchor_bounds)
        if info is None:
            return None
        digest, boundaries = info
        return self._fingerprint, digest, stamped, time_cell(boundaries, when)

    def _learn(self, key: ChainKey, reader: Any) -> None:
        """Remember the full check's trust verdict for ``key`` (when it gave exactly one)."""
        assert self.chain_cache is not None
        results = cast("Mapping[str, Any] | None", reader.get_validation_results()) or {}
        active = results.get("activeManifest")
        if not isinstance(active, Mapping):
            return
        success = {str(e.get("code")) for e in active.get("success") or () if isinstance(e, Mapping)}
        failure = {str(e.get("code")) for e in active.get("failure") or () if isinstance(e, Mapping)}
        trusted, untrusted = _TRUSTED_CODE in success, _UNTRUSTED_CODE in failure
        if trusted == untrusted:
            return
        trust_list = _str_or_none(results.get("trustListUri")) if trusted else None
        self.chain_cache.put(key, ChainVerdict(trusted=trusted, trust_list=trust_list))

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
