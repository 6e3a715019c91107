"""TrustConfig: the four kinds of setting, and the errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from batchpipe.errors import ProvenanceError
from batchpipe.provenance import EMULATOR_ROOT_PEM, C2paVerifier, TrustConfig
from batchpipe.provenance.trust import C2PA_TRUST_LIST_PEM, INTERIM_ANCHORS_PEM

from .conftest import FIXTURES, TEST_ROOTS_PEM


def _count(pem: str | None) -> int:
    return 0 if pem is None else len(x509.load_pem_x509_certificates(pem.encode()))


def test_default_uses_official_and_interim_lists() -> None:
    config = TrustConfig.from_setting("default")
    assert _count(config.trust_anchors) == len(x509.load_pem_x509_certificates(C2PA_TRUST_LIST_PEM.read_bytes()))
    assert _count(config.trust_anchors) == 30
    assert _count(config.user_anchors) == 18
    assert config.user_anchors == INTERIM_ANCHORS_PEM.read_text()


def test_emulator_adds_only_the_emulator_root_to_user_anchors() -> None:
    default = TrustConfig.from_setting("default")
    emulator = TrustConfig.from_setting("emulator")
    assert emulator.trust_anchors == default.trust_anchors
    user = x509.load_pem_x509_certificates((emulator.user_anchors or "").encode())
    assert len(user) == _count(default.user_anchors) + 1
    assert user[-1] == x509.load_pem_x509_certificate(EMULATOR_ROOT_PEM.read_bytes())


def test_none_has_no_anchors() -> None:
    config = TrustConfig.from_setting("none")
    assert (config.trust_anchors, config.user_anchors) == (None, None)
    assert "trust" not in config.context_settings()


def test_pem_file_becomes_trust_anchors() -> None:
    config = TrustConfig.from_setting(str(TEST_ROOTS_PEM))
    assert config.trust_anchors == TEST_ROOTS_PEM.read_text()
    assert config.user_anchors is None
    assert config.setting == str(TEST_ROOTS_PEM)


@pytest.mark.parametrize("setting", ["default", "emulator", "none", str(TEST_ROOTS_PEM)])
def test_network_is_always_off_and_verification_on(setting: str) -> None:
    verify = TrustConfig.from_setting(setting).context_settings()["verify"]
    assert verify == {
        "remote_manifest_fetch": False,
        "ocsp_fetch": False,
        "verify_after_reading": True,
        "verify_trust": True,
    }


@pytest.mark.parametrize("setting", ["bogus", "", "DEFAULT-ish", "/no/such/anchors.pem"])
def test_unknown_setting_raises(setting: str) -> None:
    with pytest.raises(ProvenanceError, match="unknown trust setting"):
        TrustConfig.from_setting(setting)


def test_file_without_certificates_raises(tmp_path: Path) -> None:
    bad = tmp_path / "anchors.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ProvenanceError, match="no valid PEM certificate"):
        TrustConfig.from_setting(str(bad))
    with pytest.raises(ProvenanceError):
        TrustConfig.from_setting(str(FIXTURES / "c2pa-rs" / "C.jpg"))


def test_repr_leaves_out_the_pem_text() -> None:
    config = TrustConfig.from_setting("emulator")
    assert "BEGIN CERTIFICATE" not in repr(config)
    assert "emulator" in repr(config)
    assert "BEGIN" not in repr(C2paVerifier(config))


def test_configs_are_frozen_and_comparable() -> None:
    assert TrustConfig.from_setting("default") == TrustConfig.from_setting("default")
    config = TrustConfig.from_setting("none")
    with pytest.raises(AttributeError):
        config.setting = "default"  # type: ignore[misc]
