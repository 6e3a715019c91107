"""The chain-verdict cache (issue 12): the cached verifier reports exactly what the full check reports, on every
fixture and on emulator-made images, and a verdict is never reused for a changed chain, an expired certificate
or a changed trust list."""

from __future__ import annotations

import datetime as dt
import io
import time
from dataclasses import dataclass
from pathlib import Path

import c2pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batchpipe.provenance import C2paVerifier, TrustConfig, sign_image
from batchpipe.provenance.chains import ChainVerdictCache, signer_chain
from batchpipe.provenance.sign import build_manifest
from batchpipe.provenance.trust import EMULATOR_ROOT_PEM

from .conftest import FIXTURES, FORMATS, TEST_ROOTS_PEM, encode, make_picture

SETTINGS = ("default", "emulator", "none", str(TEST_ROOTS_PEM))
FIXTURE_FILES = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".png", ".jpg", ".webp"))


def _pair(setting: str) -> tuple[C2paVerifier, C2paVerifier]:
    trust = TrustConfig.from_setting(setting)
    return C2paVerifier(trust, chain_cache=False), C2paVerifier(trust)


# --------------------------------------------------------------------------------------------- same answers


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: Path(s).name)
def test_same_report_on_every_fixture(setting: str) -> None:
    full, cached = _pair(setting)
    assert FIXTURE_FILES, "no fixtures found"
    for _ in range(2):  # the second round is served from the cache where the file allows it
        for path in FIXTURE_FILES:
            assert cached.verify_path(path) == full.verify_path(path), path.name
            data = path.read_bytes()
            assert cached.verify_bytes(data) == full.verify_bytes(data), path.name
    assert cached.chain_cache is not None and cached.chain_cache.hits > 0


def _tamper(data: bytes) -> bytes:
    """Flip 16 bytes in the middle of the file (pixel data for these small images)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 16]) + data[mid + 16 :]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: Path(s).name)
def test_same_report_on_emulator_images(
    setting: str, signed_images: dict[str, bytes], unsigned_images: dict[str, bytes]
) -> None:
    """valid/trusted (emulator signer), tampered, no manifest; under ``default`` the signer is untrusted."""
    full, cached = _pair(setting)
    cases = {}
    for mime in FORMATS:
        cases[f"signed {mime}"] = (signed_images[mime], mime)
        cases[f"tampered {mime}"] = (_tamper(signed_images[mime]), mime)
        cases[f"none {mime}"] = (unsigned_images[mime], mime)
    more = sign_image(encode(make_picture(96), "image/png"), "image/png", model="gpt-image-2")
    cases["another signed png"] = (more, "image/png")
    for _ in range(2):
        for name, (data, mime) in cases.items():
            expected = full.verify_bytes(data, mime)
            assert cached.verify_bytes(data, mime) == expected, name
            assert cached.verify_bytes(data) == full.verify_bytes(data), name
    states = {full.verify_bytes(d, m).state for d, m in cases.values()}
    if setting == "emulator":
        assert {"trusted", "invalid", "missing"} <= states
    if setting == "default":
        assert "valid" in states  # the untrusted emulator signer
    assert cached.chain_cache is not None and cached.chain_cache.hits > 0


def test_signer_chain_is_the_emulator_chain(signed_images: dict[str, bytes]) -> None:
    with c2pa.Reader("image/png", io.BytesIO(signed_images["image/png"])) as reader:
        store = io.BytesIO()
        active = str(reader._get_cached_manifest_data()["active_manifest"])
        reader.resource_to_stream(f"self#jumbf=/c2pa/{active}/c2pa.signature", store)
    chain = signer_chain(store.getvalue(), active)
    assert chain is not None
    ders = [c for c in chain if c]
    pem_chain = (Path(EMULATOR_ROOT_PEM).parent / "emulator-chain.pem").read_bytes()
    expected = [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem_chain)]
    assert ders == expected
    assert signer_chain(store.getvalue(), "urn:c2pa:not-there") is None
    assert signer_chain(b"garbage", active) is None


# --------------------------------------------------------------------------------------------- a test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "batchpipe cache test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)


@dataclass
class Pki:
    root_pem: bytes
    chain_pem: bytes
    key_pem: bytes
    leaf_not_after: dt.datetime

    def sign(self, data: bytes, mime: str = "image/png") -> bytes:
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain_pem, self.key_pem, None)
        )
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        out = io.BytesIO()
        with c2pa.Builder(build_manifest(mime, model="gpt-image-2"), context=context) as builder:
            builder.sign(signer, mime, io.BytesIO(data), out)
        signer.close()
        return out.getvalue()


RootPair = tuple[bytes, ec.EllipticCurvePrivateKey]


def make_pki(
    *, leaf_valid_for: dt.timedelta = dt.timedelta(days=30), root: RootPair | None = None
) -> tuple[Pki, ec.EllipticCurvePrivateKey]:
    """Root (or the given one) -> intermediate -> ES256 leaf with the c2pa certificate profile."""
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=1)
    if root is None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_cert = (
            x509.CertificateBuilder().subject_name(_name("Root")).issuer_name(_name("Root"))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )  # fmt: skip
        root_pem = root_cert.public_bytes(serialization.Encoding.PEM)
    else:
        root_pem, root_key = root
        root_cert = x509.load_pem_x509_certificate(root_pem)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = (
        x509.CertificateBuilder().subject_name(_name("Intermediate")).issuer_name(root_cert.subject)
        .public_key(inter_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(now + dt.timedelta(days=1800))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_after = now + leaf_valid_for
    leaf = (
        x509.CertificateBuilder().subject_name(_name("Media Service")).issuer_name(inter.subject)
        .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()), critical=False)
        .sign(inter_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pki = Pki(root_pem, leaf.public_bytes(pem) + inter.public_bytes(pem), key_pem, not_after.replace(microsecond=0))
    return pki, root_key


def _anchors_file(tmp_path: Path, name: str, *pems: bytes) -> TrustConfig:
    path = tmp_path / name
    path.write_bytes(b"".join(pems))
    return TrustConfig.from_setting(str(path))


def _png(seed: int) -> bytes:
    return encode(make_picture(64 + seed), "image/png")


# --------------------------------------------------------------------------------------------- invalidation


def test_changed_chain_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """Two chains under one root, then a chain with the same names from another (untrusted) root."""
    pki_a, root_key = make_pki()
    pki_b, _ = make_pki(root=(pki_a.root_pem, root_key))
    pki_forged, _ = make_pki()  # same subject names, another root: must never inherit A's verdict
    trust = _anchors_file(tmp_path, "anchors.pem", pki_a.root_pem)
    full, cached = C2paVerifier(trust, chain_cache=False), C2paVerifier(trust)
    assert cached.chain_cache is not None
    image_a = pki_a.sign(_png(1))
    assert cached.verify_bytes(image_a).state == "trusted"  # full check, verdict learnt
    assert cached.verify_bytes(pki_a.sign(_png(2))).state == "trusted"
    assert (cached.chain_cache.hits, cached.chain_cache.misses) == (1, 1)
    image_b = pki_b.sign(_png(3))
    assert cached.verify_bytes(image_b) == full.verify_bytes(image_b)
    assert cached.verify_bytes(image_b).state == "trusted"
    assert cached.chain_cache.misses == 2  # a new chain is a miss, even under the same root
    forged = pki_forged.sign(_png(4))
    report = cached.verify_bytes(forged)
    assert report == full.verify_bytes(forged)
    assert report.state == "valid" and report.failure_codes == ("signingCredential.untrusted",)
    assert len(cached.chain_cache) == 3


def test_expired_certificate_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """A leaf that expires seconds after signing: trusted (and cached) before, never a cached verdict after."""
    pki, _ = make_pki(leaf_valid_for=dt.timedelta(seconds=4))
    trust = _anchors_file(tmp_path, "anchors.pem", pki.root_pem)
    full, cached = C2paVerifier(trust, chain_cache=False), C2paVerifier(trust)
    assert cached.chain_cache is not None
    images = [pki.sign(_png(i)) for i in range(2)]
    assert [cached.verify_bytes(d).state for d in images] == ["trusted", "trusted"]
    assert cached.chain_cache.hits == 1
    time.sleep(max(0.0, pki.leaf_not_after.timestamp() - time.time()) + 1.5)
    hits = cached.chain_cache.hits
    for data in images:
        report = cached.verify_bytes(data)
        assert report == full.verify_bytes(data)
        assert report.state == "invalid" and "signingCredential.expired" in report.failure_codes
    assert cached.chain_cache.hits == hits


def test_a_verdict_is_not_reused_across_a_certificate_boundary(tmp_path: Path) -> None:
    """With the clock past the leaf's notAfter the key's time cell changes, so the verdict is looked up anew
    (whatever c2pa then says is what the full check says)."""
    pki, _ = make_pki(leaf_valid_for=dt.timedelta(days=2))
    trust = _anchors_file(tmp_path, "anchors.pem", pki.root_pem)
    now = [time.time()]
    cached = C2paVerifier(trust, clock=lambda: now[0])
    assert cached.chain_cache is not None
    data = pki.sign(_png(5))
    assert cached.verify_bytes(data).state == "trusted"
    assert cached.verify_bytes(data).state == "trusted"
    assert (cached.chain_cache.hits, cached.chain_cache.misses) == (1, 1)
    now[0] = pki.leaf_not_after.timestamp() + 60  # the verifier believes the leaf has expired
    cached.verify_bytes(data)
    assert cached.chain_cache.misses == 2


def test_changed_trust_list_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """One shared cache; the anchor is removed (as a revocation would) or replaced in the same file."""
    pki, _ = make_pki()
    other, _ = make_pki()
    shared = ChainVerdictCache()
    data = pki.sign(_png(6))
    trusting = C2paVerifier(_anchors_file(tmp_path, "a.pem", pki.root_pem, other.root_pem), chain_cache=shared)
    assert [trusting.verify_bytes(data).state for _ in range(2)] == ["trusted", "trusted"]
    assert shared.hits == 1
    revoked_trust = _anchors_file(tmp_path, "b.pem", other.root_pem)
    revoked = C2paVerifier(revoked_trust, chain_cache=shared)
    report = revoked.verify_bytes(data)
    assert report == C2paVerifier(revoked_trust, chain_cache=False).verify_bytes(data)
    assert report.state == "valid" and report.failure_codes == ("signingCredential.untrusted",)
    assert shared.hits == 1  # the trusting verdict was not reused
    # the same setting string (file path) with other contents is another trust list too
    path_trust = _anchors_file(tmp_path, "c.pem", pki.root_pem)
    assert C2paVerifier(path_trust, chain_cache=shared).verify_bytes(data).state == "trusted"
    changed = _anchors_file(tmp_path, "c.pem", other.root_pem)
    assert changed.setting == path_trust.setting
    assert C2paVerifier(changed, chain_cache=shared).verify_bytes(data).state == "valid"
    assert C2paVerifier(path_trust, chain_cache=shared).verify_bytes(data).state == "trusted"


def test_cache_can_be_turned_off() -> None:
    verifier = C2paVerifier(TrustConfig.from_setting("none"), chain_cache=False)
    assert verifier.chain_cache is None


def test_stapled_ocsp_files_make_the_next_files_skip_the_trust_off_read() -> None:
    """The real OpenAI image staples OCSP (``c2pa.certificate-status``): it gets the full check, and so do the
    next files without a trust-off read first (reports unchanged)."""
    from .conftest import REAL_OPENAI_PNG

    full, cached = _pair("default")
    data = REAL_OPENAI_PNG.read_bytes()
    assert cached.verify_bytes(data) == full.verify_bytes(data)
    assert cached._skip_fast_reads == 32
    for _ in range(3):
        assert cached.verify_path(REAL_OPENAI_PNG) == full.verify_path(REAL_OPENAI_PNG)
    assert cached._skip_fast_reads == 29
    assert cached.chain_cache is not None
    assert (cached.chain_cache.hits, cached.chain_cache.misses) == (0, 0)
