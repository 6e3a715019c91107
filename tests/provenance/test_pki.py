"""The committed emulator PKI meets the C2PA signing-certificate profile (c2pa-notes §1); the script works."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import c2pa
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from batchpipe.provenance import C2paVerifier, TrustConfig
from batchpipe.provenance.sign import (
    EMULATOR_CHAIN_PEM,
    EMULATOR_LEAF_KEY_PEM,
    EMULATOR_ROOT_PEM,
    build_manifest,
)

from .conftest import encode, make_picture

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_emulator_pki.py"
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_emulator_pki", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_emulator_pki", module)
    spec.loader.exec_module(module)
    return module


def _chain() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    leaf, inter = x509.load_pem_x509_certificates(EMULATOR_CHAIN_PEM.read_bytes())
    root = x509.load_pem_x509_certificate(EMULATOR_ROOT_PEM.read_bytes())
    return root, inter, leaf


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def test_chain_links_and_names() -> None:
    root, inter, leaf = _chain()
    leaf.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "batchpipe Emulator Test Root CA"
    for cert in (root, inter, leaf):
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "batchpipe emulator"
        text = cert.subject.rfc4514_string() + cert.issuer.rfc4514_string()
        assert "OpenAI" not in text
        assert "SSL" not in text
        assert cert.version == x509.Version.v3


def test_leaf_profile() -> None:
    _, inter, leaf = _chain()
    basic = _ext(leaf, x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    ekus = list(_ext(leaf, x509.ExtendedKeyUsage).value)
    assert ekus == [ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    ski_inter = _ext(inter, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski_inter.digest
    _ext(leaf, x509.SubjectKeyIdentifier)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=10 * 365)


def test_ca_profiles() -> None:
    root, inter, _ = _chain()
    for cert, path_length in ((root, 1), (inter, 0)):
        basic = _ext(cert, x509.BasicConstraints)
        assert basic.critical
        assert basic.value.ca
        assert basic.value.path_length == path_length
        usage = _ext(cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign
        assert usage.value.crl_sign
        _ext(cert, x509.SubjectKeyIdentifier)
        _ext(cert, x509.AuthorityKeyIdentifier)
    assert root.not_valid_after_utc - root.not_valid_before_utc >= dt.timedelta(days=20 * 365)


def test_leaf_key_matches_leaf_certificate() -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(EMULATOR_LEAF_KEY_PEM.read_bytes(), password=None)
    _, _, leaf = _chain()
    assert key.public_key() == leaf.public_key()


def test_script_refuses_to_overwrite_and_makes_a_working_pki(tmp_path: Path) -> None:
    script = _load_script()
    assert script.main(["--out", str(tmp_path)]) == 0
    assert script.main(["--out", str(tmp_path)]) == 1  # already there, no --force
    chain = (tmp_path / "emulator-chain.pem").read_bytes()
    key = (tmp_path / "emulator-leaf-key.pem").read_bytes()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    out = io.BytesIO()
    with signer, c2pa.Builder(build_manifest("image/png", model="m"), context=context) as builder:
        builder.sign(signer, "image/png", io.BytesIO(encode(make_picture(64), "image/png")), out)
    fresh_root = C2paVerifier(TrustConfig.from_setting(str(tmp_path / "emulator-root.pem")))
    assert fresh_root.verify_bytes(out.getvalue()).state == "trusted"
    committed_root = C2paVerifier(TrustConfig.from_setting("emulator"))
    report = committed_root.verify_bytes(out.getvalue())
    assert report.state == "valid"  # a different root: intact but not trusted


@pytest.mark.parametrize("name", ["emulator-root.pem", "emulator-chain.pem", "emulator-leaf-key.pem", "README.md"])
def test_pki_files_are_committed(name: str) -> None:
    assert (EMULATOR_ROOT_PEM.parent / name).is_file()
    if name == "README.md":
        text = (EMULATOR_ROOT_PEM.parent / name).read_text()
        assert "TEST" in text
        assert "Never trust" in text
