"""Generate the emulator's TEST C2PA signing PKI (root CA, intermediate CA, ES256 leaf) with `cryptography`.

Run once; the output is committed under ``batchpipe/provenance/pki/``::

    .venv/bin/python scripts/make_emulator_pki.py            # refuses to overwrite existing files
    .venv/bin/python scripts/make_emulator_pki.py --force    # fresh PKI: old signatures become untrusted

Files written (PEM):

* ``emulator-root.pem``: the self-signed root "batchpipe Emulator Test Root CA" (public; what verifiers trust
  with ``--trust emulator``), valid 20 years.
* ``emulator-chain.pem``: leaf + intermediate, the ``sign_cert`` for ``c2pa.C2paSignerInfo``.
* ``emulator-leaf-key.pem``: the leaf's PKCS#8 private key, unencrypted. A TEST key, public in the repository.

Certificate profile (c2pa-notes §1 "Requirements for signing certificates" and §2 step 1, from c2pa-rs
``certificate_profile.rs``): X.509 v3, ECDSA P-256 with SHA-256; CAs carry BasicConstraints (critical,
path length 1 for the root and 0 for the intermediate), KeyUsage keyCertSign+cRLSign (critical), SKI and AKI;
the leaf carries BasicConstraints CA:FALSE (critical), KeyUsage digitalSignature only (critical), EKU
emailProtection + id-kp-documentSigning (1.3.6.1.5.5.7.3.36), SKI and an AKI pointing at the intermediate.
The names say "batchpipe emulator" and nothing resembling OpenAI or any real CA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "batchpipe" / "provenance" / "pki"
ORG = "batchpipe emulator"
ROOT_CN = "batchpipe Emulator Test Root CA"
INTERMEDIATE_CN = "batchpipe Emulator Test Intermediate CA"
LEAF_CN = "batchpipe Emulator Media Service (test)"
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
ROOT_DAYS = 20 * 365 + 5
INTERMEDIATE_DAYS = 15 * 365 + 4
LEAF_DAYS = 10 * 365 + 2


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "TEST ONLY - never trust in production"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_pki(
    now: dt.datetime,
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Build (root, intermediate, leaf, leaf_key); ``now`` (UTC) anchors the validity periods."""
    start = now - dt.timedelta(days=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())

    root = (
        x509.CertificateBuilder()
        .subject_name(_name(ROOT_CN))
        .issuer_name(_name(ROOT_CN))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=ROOT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    inter = (
        x509.CertificateBuilder()
        .subject_name(_name(INTERMEDIATE_CN))
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=INTERMEDIATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(LEAF_CN))
        .issuer_name(inter.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()), critical=False)
        .sign(inter_key, hashes.SHA256())
    )
    return root, inter, leaf, leaf_key


def main(argv: list[str] | None = None) -> int:
    """Write the three PEM files into ``--out``; exit 1 if they exist and ``--force`` is not given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--force", action="store_true", help="overwrite an existing PKI")
    args = parser.parse_args(argv)
    out: Path = args.out
    files = {name: out / name for name in ("emulator-root.pem", "emulator-chain.pem", "emulator-leaf-key.pem")}
    if not args.force and any(p.exists() for p in files.values()):
        print(f"{out} already holds an emulator PKI; pass --force to replace it", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    root, inter, leaf, leaf_key = make_pki(dt.datetime.now(dt.UTC))
    pem = serialization.Encoding.PEM
    files["emulator-root.pem"].write_bytes(root.public_bytes(pem))
    files["emulator-chain.pem"].write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    files["emulator-leaf-key.pem"].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for path in files.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
