"""The API client: settings, retry policy, and the async Files/Batches client.

``ApiSettings`` (where/how to connect, secret key), ``RetryPolicy`` + ``decide`` (pure retry rules),
``OpenAIClient`` (httpx, retries, error mapping into :mod:`batchpipe.errors`, rate-limit pacing, stats).
"""

from batchpipe.adapters.openai.client import (
    ClientStats,
    FileStream,
    OpenAIClient,
    RateLimitSnapshot,
    connection_error,
    exception_class_for_status,
    status_error,
)
from batchpipe.adapters.openai.retry import (
    RetryDecision,
    RetryPolicy,
    backoff_delay_s,
    decide,
    parse_duration_s,
    parse_retry_after,
)
from batchpipe.adapters.openai.settings import DEFAULT_BASE_URL, ApiSettings, ApiTimeouts, user_agent

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiSettings",
    "ApiTimeouts",
    "ClientStats",
    "FileStream",
    "OpenAIClient",
    "RateLimitSnapshot",
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay_s",
    "connection_error",
    "decide",
    "exception_class_for_status",
    "parse_duration_s",
    "parse_retry_after",
    "status_error",
    "user_agent",
]
