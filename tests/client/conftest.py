"""Shared fakes for the client tests: a pinned clock whose sleep records and advances time."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from client_fakes import API_KEY, BASE_URL, FakeClock

from batchpipe.adapters.openai import ApiSettings, OpenAIClient, RetryPolicy

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(clock: FakeClock) -> Callable[..., OpenAIClient]:
    def make(
        handler: Handler | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> OpenAIClient:
        settings = ApiSettings.from_env(
            {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": BASE_URL, "OPENAI_ORG_ID": "org-1"}
        )
        if transport is None:
            assert handler is not None
            transport = httpx.MockTransport(handler)
        return OpenAIClient(
            settings,
            transport=transport,
            retry=retry or RetryPolicy(),
            sleep=clock.sleep,
            clock=clock.now,
            rand=lambda: 0.0,
        )

    return make
