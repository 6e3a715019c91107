"""Connection settings for the OpenAI-compatible API: base URL, key, organisation, project, timeouts.

The core never reads ``os.environ``; the CLI passes it to :meth:`ApiSettings.from_env`.
The API key is a :class:`pydantic.SecretStr`: ``repr``/``str``/``model_dump``/``model_dump_json`` show
``**********``, never the key. Only :meth:`ApiSettings.headers` reveals it, to put it on the wire.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from batchpipe import __version__

__all__ = ["DEFAULT_BASE_URL", "ApiSettings", "ApiTimeouts", "check_base_url", "user_agent"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""The public API root (fact sheet §1: base ``https://api.openai.com/v1``)."""


def check_base_url(url: str, *, source: str) -> str:
    """``url`` unchanged when it can be an API root; ``ValueError`` when it carries credentials.

    Refused: user info (``https://user:key@host/v1``), a query string (``?api-key=...``) or a fragment, none of
    which a base URL needs and all of which end up in logs, the ledger and error messages. The message names
    ``source`` (``--api``, ``OPENAI_BASE_URL``) and shows only the scheme, host, port and path of the URL,
    never the secret part.
    """
    parts = urllib.parse.urlsplit(url.strip())
    try:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: show nothing of the netloc
        host, port = "?", ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}"
    problems = []
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        problems.append("user info (user:password@)")
    if parts.query:
        problems.append("a query string")
    if parts.fragment:
        problems.append("a fragment")
    if problems:
        raise ValueError(
            f"{source} must be a plain API root URL, without credentials: it has {' and '.join(problems)} "
            f"(given: {shown} plus the part not shown). Put the key in OPENAI_API_KEY (sent only as the "
            "Authorization header) and give the URL without it."
        )
    return url


def user_agent() -> str:
    """The ``User-Agent`` header value, ``batchpipe/<version>``."""
    return f"batchpipe/{__version__}"


class ApiTimeouts(BaseModel):
    """Per-phase HTTP timeouts, all in seconds (see ``httpx.Timeout``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect_s: float = Field(default=10.0, gt=0)
    read_s: float = Field(default=120.0, gt=0)
    write_s: float = Field(default=120.0, gt=0)
    pool_s: float = Field(default=30.0, gt=0)

    def to_httpx(self) -> httpx.Timeout:
        """Return the equivalent ``httpx.Timeout``."""
        return httpx.Timeout(connect=self.connect_s, read=self.read_s, write=self.write_s, pool=self.pool_s)


class ApiSettings(BaseModel):
    """Where and how to reach the API. Frozen.

    ``base_url`` is the API root including ``/v1`` (no trailing slash needed); ``api_key`` is ``None`` when no
    key is configured (the CLI then starts the built-in emulator); ``organization`` / ``project`` become the
    ``OpenAI-Organization`` / ``OpenAI-Project`` headers when set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    organization: str | None = None
    project: str | None = None
    timeouts: ApiTimeouts = Field(default_factory=ApiTimeouts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ApiSettings:
        """Build settings from an environment mapping, reading the variables the openai SDK reads.

        ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID`` (openai-python
        ``OpenAI.__init__``). Unlike the SDK, an empty value counts as unset. Other keys are ignored.
        """

        def get(name: str) -> str | None:
            value = (environ.get(name) or "").strip()
            return value or None

        key = get("OPENAI_API_KEY")
        return cls(
            base_url=get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            api_key=SecretStr(key) if key is not None else None,
            organization=get("OPENAI_ORG_ID"),
            project=get("OPENAI_PROJECT_ID"),
        )

    def headers(self) -> dict[str, str]:
        """The headers every request carries: ``Authorization: Bearer <key>`` (when a key is set),
        ``OpenAI-Organization``, ``OpenAI-Project`` (when set) and ``User-Agent: batchpipe/<version>``.

        The result contains the key in clear text: never log it.
        """
        headers = {"User-Agent": user_agent()}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers
