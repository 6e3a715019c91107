"""The signer's certificate chain of a C2PA manifest, and a cache of c2pa's trust verdict per distinct chain.

Why this is safe (c2pa-rs 0.91 ``sdk/src/crypto/cose/verifier.rs``, ``certificate_trust_policy.rs``): the trust
part of a check is one call, ``check_certificate_trust(chain_der, end_entity_der, signing_time_epoch)`` under the
context's trust policy (anchors, user anchors, EKU list). It logs ``signingCredential.trusted`` (and the
``trustListUri``) or ``signingCredential.untrusted`` and nothing else; the claim signature, the certificate profile
(EKU, key usage, the leaf's validity at the signing time or now) and every hash are checked outside it, also
with ``verify.verify_trust`` off. So the verdict is a pure function of:

* the ``x5chain`` certificates of the COSE signature (:func:`signer_chain` reads them, protected and
  unprotected header alike, from the manifest store c2pa returns with ``Reader.resource_to_stream``);
* the signing time: the time stamp's ``genTime`` (``signature_info.time``), or none (then c2pa does not check
  the chain's validity at all). The verdict only depends on how that time compares with the ``notBefore`` /
  ``notAfter`` of the chain's and the anchors' certificates, so the key holds the *time cell* (where the time
  falls among those boundaries), not the time. Without a time stamp the cell of *now* is used: a verdict is
  never reused across a certificate's expiry, whatever the backend does;
* the trust policy: the fingerprint of the context's settings (every anchor's PEM).

A :class:`ChainVerdictCache` maps ``(trust fingerprint, chain digest, time cell)`` to the verdict c2pa itself
gave for that key on a full check; it never computes a verdict of its own.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509

__all__ = [
    "ChainKey",
    "ChainVerdict",
    "ChainVerdictCache",
    "cert_boundaries",
    "parse_signing_time",
    "signer_chain",
    "time_cell",
]

_X5CHAIN_LABELS: Final = (33, "x5chain")
_MAX_DEPTH: Final = 32


class _CborError(ValueError):
    pass


def _cbor_item(data: bytes, pos: int, depth: int = 0) -> tuple[object, int]:
    """Decode one CBOR item (RFC 8949) at ``pos``; returns ``(value, next position)``. Enough for COSE headers:
    ints, byte and text strings (definite and indefinite), arrays, maps, tags (value kept, tag dropped), simple
    values and floats (as raw bytes). Raises :class:`_CborError` on anything malformed."""
    if depth > _MAX_DEPTH or pos >= len(data):
        raise _CborError("truncated or too deep")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        arg = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise _CborError("truncated argument")
        arg = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    elif info == 31 and major in (2, 3, 4, 5):
        arg = -1  # indefinite length
    else:
        raise _CborError(f"unsupported additional info {info}")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if arg == -1:
            chunks: list[bytes] = []
            while pos < len(data) and data[pos] != 0xFF:
                chunk, pos = _cbor_item(data, pos, depth + 1)
                if not isinstance(chunk, bytes | str):
                    raise _CborError("bad indefinite string chunk")
                chunks.append(chunk.encode() if isinstance(chunk, str) else chunk)
            raw = b"".join(chunks)
            pos += 1
        else:
            if pos + arg > len(data):
                raise _CborError("truncated string")
            raw, pos = data[pos : pos + arg], pos + arg
        return (raw if major == 2 else raw.decode("utf-8", "surrogateescape")), pos
    if major == 4:
        items: list[object] = []
        while (arg == -1 and pos < len(data) and data[pos] != 0xFF) or (arg != -1 and len(items) < arg):
            item, pos = _cbor_item(data, pos, depth + 1)
            items.append(item)
        return items, pos + (1 if arg == -1 else 0)
    if major == 5:
        pairs: list[tuple[object, object]] = []
        while (arg == -1 and pos < len(data) and data[pos] != 0xFF) or (arg != -1 and len(pairs) < arg):
            key, pos = _cbor_item(data, pos, depth + 1)
            value, pos = _cbor_item(data, pos, depth + 1)
            pairs.append((key, value))
        return pairs, pos + (1 if arg == -1 else 0)
    if major == 6:
        return _cbor_item(data, pos, depth + 1)
    return ("simple", arg), pos  # major 7: false/true/null/undefined/floats


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """The ISO BMFF / JUMBF boxes in ``data[start:end]``: ``(type, payload start, payload end)``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _jumbf_label(data: bytes, start: int, end: int) -> tuple[str | None, int]:
    """The label of the JUMBF superbox whose payload is ``data[start:end]`` and where its content boxes begin."""
    for kind, p_start, p_end in _boxes(data, start, end):
        if kind != b"jumd" or p_end - p_start < 17:
            return None, start
        toggles = data[p_start + 16]
        if not toggles & 0x02:
            return None, p_end
        nul = data.find(b"\x00", p_start + 17, p_end)
        if nul < 0:
            return None, p_end
        return data[p_start + 17 : nul].decode("utf-8", "replace"), p_end
    return None, start


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[str | None, int, int]]:
    """The labelled ``jumb`` superboxes directly inside ``data[start:end]``: ``(label, payload start, end)``."""
    for kind, p_start, p_end in _boxes(data, start, end):
        if kind == b"jumb":
            label, _ = _jumbf_label(data, p_start, p_end)
            yield label, p_start, p_end


def _cose_bytes(store: bytes, manifest_label: str) -> bytes | None:
    """The COSE_Sign1 bytes of manifest ``manifest_label``'s ``c2pa.signature`` box in a JUMBF manifest store."""
    for label, start, end in _children(store, 0, len(store)):
        if label != "c2pa":
            continue
        _, content = _jumbf_label(store, start, end)
        for m_label, m_start, m_end in _children(store, content, end):
            if m_label != manifest_label:
                continue
            _, m_content = _jumbf_label(store, m_start, m_end)
            for s_label, s_start, s_end in _children(store, m_content, m_end):
                if s_label != "c2pa.signature":
                    continue
                _, s_content = _jumbf_label(store, s_start, s_end)
                for kind, c_start, c_end in _boxes(store, s_content, s_end):
                    if kind == b"cbor":
                        return store[c_start:c_end]
    return None


def _x5chain(header: object) -> list[bytes] | None:
    if not isinstance(header, list):
        return None
    for key, value in header:
        if key in _X5CHAIN_LABELS:
            if isinstance(value, bytes):
                return [value]
            if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
                return [v for v in value if isinstance(v, bytes)]
            return []
    return None


def signer_chain(store: bytes, manifest_label: str) -> tuple[bytes, ...] | None:
    """The DER certificates a c2pa check of manifest ``manifest_label`` trusts or not: every ``x5chain`` entry
    of the COSE signature's protected header, then of its unprotected one (c2pa reads the protected one first;
    both are returned so that the key covers whichever it uses), leaf first. None when the store, the box or
    the CBOR cannot be read or holds no chain: the caller then does the full check."""
    cose = _cose_bytes(store, manifest_label)
    if cose is None:
        return None
    try:
        sign1, _ = _cbor_item(cose, 0)
        if not isinstance(sign1, list) or len(sign1) != 4 or not isinstance(sign1[0], bytes):
            return None
        protected = _cbor_item(sign1[0], 0)[0] if sign1[0] else []
    except _CborError:
        return None
    certs: list[bytes] = []
    found = False
    for header in (protected, sign1[1]):
        chain = _x5chain(header)
        if chain is not None:
            found = True
            certs.extend(chain)
            certs.append(b"")  # separator: ([a], [b]) and ([a, b], []) give different keys
    return tuple(certs) if found and any(certs) else None


def cert_boundaries(ders: Iterable[bytes]) -> list[int] | None:
    """The ``notBefore`` and ``notAfter`` of each DER certificate (epoch seconds; empty entries skipped), or
    None when one does not parse here (c2pa's parser might still read it: then no verdict may be reused)."""
    out: list[int] = []
    for der in ders:
        if not der:
            continue
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        out.append(int(cert.not_valid_before_utc.timestamp()))
        out.append(int(cert.not_valid_after_utc.timestamp()))
    return out


def time_cell(boundaries: list[int], when: int) -> tuple[int, int]:
    """Where ``when`` (epoch seconds) falls among the sorted ``boundaries``: equal cells mean every ``when <
    boundary`` / ``when == boundary`` comparison comes out the same, so every validity check does too."""
    return bisect.bisect_left(boundaries, when), bisect.bisect_right(boundaries, when)


def parse_signing_time(value: object) -> int | None:
    """``signature_info.time`` (RFC 3339, from the time stamp's genTime) as epoch seconds, floored as c2pa-rs
    does (``DateTime::timestamp``); None when absent or unparseable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() // 1)


@dataclass(frozen=True)
class ChainVerdict:
    """c2pa's trust verdict for one chain: ``trusted`` and the ``trustListUri`` it matched (``"system_anchors"``
    / ``"user_anchors"``, None when untrusted)."""

    trusted: bool
    trust_list: str | None


ChainKey = tuple[str, bytes, bool, tuple[int, int]]
"""(trust fingerprint, SHA-256 of the chain, whether the time is a time stamp's (else now), time cell)."""


class ChainVerdictCache:
    """Thread-safe map of :data:`ChainKey` → :class:`ChainVerdict`, bounded (oldest entry dropped first).

    Share one between verifiers if you like: the trust fingerprint is part of every key, so a verifier with
    other anchors never sees another's verdicts. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: dict[ChainKey, ChainVerdict] = {}
        self._bounds: dict[tuple[str, tuple[bytes, ...]], tuple[bytes, list[int]]] = {}
        self._lock = threading.Lock()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def chain_info(
        self, fingerprint: str, chain: tuple[bytes, ...], anchor_bounds: list[int]
    ) -> tuple[bytes, list[int]] | None:
        """The chain's digest and the sorted validity boundaries of its certificates plus ``anchor_bounds`` (the
        anchors of the trust policy ``fingerprint``), memoised per policy and chain; None when a certificate of
        the chain does not parse."""
        memo_key = (fingerprint, chain)
        with self._lock:
            known = self._bounds.get(memo_key)
        if known is None:
            chain_bounds = cert_boundaries(chain)
            if chain_bounds is None:
                return None
            digest = hashlib.sha256(b"".join(struct.pack(">I", len(c)) + c for c in chain)).digest()
            known = digest, sorted(set(chain_bounds) | set(anchor_bounds))
            with self._lock:
                if len(self._bounds) >= self._max:
                    self._bounds.pop(next(iter(self._bounds)))
                self._bounds[memo_key] = known
        return known

    def get(self, key: ChainKey) -> ChainVerdict | None:
        with self._lock:
            verdict = self._entries.get(key)
            if verdict is None:
                self.misses += 1
            else:
                self.hits += 1
            return verdict

    def put(self, key: ChainKey, verdict: ChainVerdict) -> None:
        with self._lock:
            if key not in self._entries and len(self._entries) >= self._max:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = verdict
