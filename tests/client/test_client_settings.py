"""ApiSettings: environment reading, headers, and the key never shown."""

from __future__ import annotations

import httpx
import pydantic
import pytest

from batchpipe import __version__
from batchpipe.adapters.openai import DEFAULT_BASE_URL, ApiSettings, ApiTimeouts, OpenAIClient

KEY = "sk-proj-SECRET-abc123xyz"
ENV = {
    "OPENAI_API_KEY": KEY,
    "OPENAI_BASE_URL": "http://127.0.0.1:8765/v1",
    "OPENAI_ORG_ID": "org-42",
    "OPENAI_PROJECT_ID": "proj_7",
    "HOME": "/root",
}


def test_from_env_reads_sdk_variables() -> None:
    settings = ApiSettings.from_env(ENV)
    assert settings.base_url == "http://127.0.0.1:8765/v1"
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == KEY
    assert settings.organization == "org-42"
    assert settings.project == "proj_7"


@pytest.mark.parametrize("env", [{}, {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "  ", "OPENAI_ORG_ID": ""}])
def test_from_env_unset_or_empty_uses_defaults(env: dict[str, str]) -> None:
    settings = ApiSettings.from_env(env)
    assert settings.base_url == DEFAULT_BASE_URL == "https://api.openai.com/v1"
    assert settings.api_key is None
    assert settings.organization is None
    assert settings.project is None
    assert "Authorization" not in settings.headers()


def test_headers() -> None:
    headers = ApiSettings.from_env(ENV).headers()
    assert headers == {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Organization": "org-42",
        "OpenAI-Project": "proj_7",
        "User-Agent": f"batchpipe/{__version__}",
    }


def test_key_never_shown() -> None:
    settings = ApiSettings.from_env(ENV)
    shown = [
        repr(settings),
        str(settings),
        repr(settings.model_dump()),
        str(settings.model_dump()),
        settings.model_dump_json(),
        repr(settings.api_key),
        str(settings.api_key),
        f"{settings}",
    ]
    for text in shown:
        assert KEY not in text
    assert "**********" in settings.model_dump_json()


async def test_client_repr_and_http_headers_hide_key() -> None:
    client = OpenAIClient(ApiSettings.from_env(ENV), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    async with client:
        assert KEY not in repr(client)
        assert KEY not in repr(client.__dict__)


def test_frozen_and_strict() -> None:
    settings = ApiSettings.from_env(ENV)
    with pytest.raises(pydantic.ValidationError):
        settings.base_url = "http://elsewhere"
    with pytest.raises(pydantic.ValidationError):
        ApiSettings(base_url="x", bogus=1)  # type: ignore[call-arg]


def test_timeouts() -> None:
    timeout = ApiTimeouts().to_httpx()
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (10.0, 120.0, 120.0, 30.0)
    custom = ApiSettings(timeouts=ApiTimeouts(read_s=5.0)).timeouts.to_httpx()
    assert custom.read == 5.0
    with pytest.raises(pydantic.ValidationError):
        ApiTimeouts(connect_s=0)
