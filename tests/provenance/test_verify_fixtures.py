"""The verifier against the c2pa fixtures, under the three contexts of tests/fixtures/c2pa/README.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpipe.provenance import C2paVerifier
from batchpipe.provenance.cli import verify_command

from .conftest import FIXTURES, REAL_OPENAI_PNG, TEST_ROOTS_PEM

UNTRUSTED = "signingCredential.untrusted"

# Column C of tests/fixtures/c2pa/README.md (official C2PA list + CAI interim list): file -> (state, codes).
COLUMN_C: dict[str, tuple[str, list[str]]] = {
    "openai/openai-gpt-image-2_circuit-panel.png": ("trusted", []),
    "c2pa-rs/C.jpg": ("valid", [UNTRUSTED]),
    "c2pa-rs/XCA.jpg": ("invalid", [UNTRUSTED, "assertion.dataHash.mismatch"]),
    "c2pa-rs/E-sig-CA.jpg": ("invalid", [UNTRUSTED, "claimSignature.mismatch"]),
    "c2pa-rs/no_manifest.jpg": ("missing", []),
    "c2pa-rs/libpng-test.png": ("missing", []),
    "c2pa-rs/libpng-test_with_url.png": ("unreadable", []),
    "generated/openai-like_signed.png": ("valid", [UNTRUSTED]),
    "generated/openai-like_signed.jpg": ("valid", [UNTRUSTED]),
    "generated/openai-like_signed.webp": ("valid", [UNTRUSTED]),
    "generated/openai-like_tampered-pixels.png": ("invalid", [UNTRUSTED, "assertion.dataHash.mismatch"]),
    "generated/openai-like_tampered-pixels.webp": ("invalid", [UNTRUSTED, "assertion.dataHash.mismatch"]),
    "generated/openai-like_tampered-assertion.png": ("invalid", [UNTRUSTED, "assertion.hashedURI.mismatch"]),
    "generated/openai-like_tampered-claim.png": ("invalid", [UNTRUSTED, "claimSignature.mismatch"]),
    "generated/openai-like_stripped.png": ("missing", []),
    # Not images: the README and the PEM bundle are walked too and cannot be read as media.
    "README.md": ("unreadable", []),
    "c2pa-rs/certs/test_cert_root_bundle.pem": ("unreadable", []),
}

REQUIRED_KEYS = {
    "path",
    "c2pa_state",
    "failure_codes",
    "issuer",
    "common_name",
    "claim_generator",
    "digital_source_type",
    "software_agent",
    "trust_list",
    "reason",
}


@pytest.fixture(scope="module")
def default_jsonl() -> tuple[int, dict[str, dict[str, object]]]:
    result = CliRunner().invoke(verify_command, ["--trust", "default", "--json", str(FIXTURES)])
    records = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    by_rel = {Path(str(r["path"])).relative_to(FIXTURES).as_posix(): r for r in records}
    assert len(by_rel) == len(records)
    return result.exit_code, by_rel


def test_default_json_covers_every_fixture_file(
    default_jsonl: tuple[int, dict[str, dict[str, object]]],
) -> None:
    exit_code, records = default_jsonl
    on_disk = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file()}
    assert set(records) == on_disk == set(COLUMN_C)
    assert exit_code == 1  # some files are invalid / missing / unreadable
    for record in records.values():
        assert set(record) >= REQUIRED_KEYS


@pytest.mark.parametrize("rel", sorted(COLUMN_C))
def test_default_json_matches_readme_column_c(
    rel: str, default_jsonl: tuple[int, dict[str, dict[str, object]]]
) -> None:
    state, codes = COLUMN_C[rel]
    record = default_jsonl[1][rel]
    assert record["c2pa_state"] == state
    assert record["failure_codes"] == codes
    if state in ("missing", "unreadable", "invalid"):
        assert isinstance(record["reason"], str)
        assert record["reason"]


def test_real_openai_image_is_trusted_through_the_official_list(
    default_jsonl: tuple[int, dict[str, dict[str, object]]],
) -> None:
    record = default_jsonl[1]["openai/openai-gpt-image-2_circuit-panel.png"]
    assert record["issuer"] == "OpenAI OpCo, LLC"
    assert record["common_name"] == "OpenAI Media Service"
    assert record["claim_generator"] == "OpenAI Media Service API"
    assert record["software_agent"] == "gpt-image"
    assert record["digital_source_type"] == ("http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")
    assert record["trust_list"] == "system_anchors"
    assert record["reason"] is None


def test_remote_manifest_reason_names_the_url(
    default_jsonl: tuple[int, dict[str, dict[str, object]]],
) -> None:
    reason = str(default_jsonl[1]["c2pa-rs/libpng-test_with_url.png"]["reason"])
    assert "remote" in reason
    assert "http://localhost:5000/" in reason
    assert "Traceback" not in reason


def test_missing_reason_is_one_sentence(default_jsonl: tuple[int, dict[str, dict[str, object]]]) -> None:
    reason = str(default_jsonl[1]["generated/openai-like_stripped.png"]["reason"])
    assert "no C2PA manifest" in reason
    assert "\n" not in reason


# Columns A (no anchors) and B (c2pa-rs test roots as trust anchors) for a few files.
@pytest.mark.parametrize(
    ("rel", "column_a", "column_b"),
    [
        ("c2pa-rs/C.jpg", ("valid", [UNTRUSTED]), ("trusted", [])),
        ("generated/openai-like_signed.webp", ("valid", [UNTRUSTED]), ("trusted", [])),
        (
            "generated/openai-like_tampered-pixels.png",
            ("invalid", [UNTRUSTED, "assertion.dataHash.mismatch"]),
            ("invalid", ["assertion.dataHash.mismatch"]),
        ),
        (
            "c2pa-rs/E-sig-CA.jpg",
            ("invalid", [UNTRUSTED, "claimSignature.mismatch"]),
            ("invalid", ["claimSignature.mismatch"]),
        ),
        ("openai/openai-gpt-image-2_circuit-panel.png", ("valid", [UNTRUSTED]), ("valid", [UNTRUSTED])),
        ("c2pa-rs/no_manifest.jpg", ("missing", []), ("missing", [])),
    ],
)
def test_columns_a_and_b(
    rel: str,
    column_a: tuple[str, list[str]],
    column_b: tuple[str, list[str]],
    verifiers: dict[str, C2paVerifier],
) -> None:
    path = FIXTURES / rel
    for verifier, (state, codes) in ((verifiers["none"], column_a), (verifiers["test_roots"], column_b)):
        report = verifier.verify_path(path)
        assert (report.state, list(report.failure_codes)) == (state, codes), verifier


def test_column_b_via_cli_pem_file() -> None:
    result = CliRunner().invoke(
        verify_command, ["--trust", str(TEST_ROOTS_PEM), "--json", str(FIXTURES / "c2pa-rs" / "C.jpg")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["c2pa_state"] == "trusted"
    assert record["trust_list"] == "system_anchors"


def test_verify_bytes_matches_verify_path(verifiers: dict[str, C2paVerifier]) -> None:
    data = REAL_OPENAI_PNG.read_bytes()
    by_path = verifiers["default"].verify_path(REAL_OPENAI_PNG)
    assert verifiers["default"].verify_bytes(data, "image/png") == by_path
    assert verifiers["default"].verify_bytes(data) == by_path
    assert by_path.state == "trusted"


def test_wrong_extension_is_read_by_content(tmp_path: Path, verifiers: dict[str, C2paVerifier]) -> None:
    target = tmp_path / "actually-a-png.jpg"
    target.write_bytes((FIXTURES / "generated" / "openai-like_signed.png").read_bytes())
    assert verifiers["test_roots"].verify_path(target).state == "trusted"
