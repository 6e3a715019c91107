"""The API key never leaves the Authorization header: not in logs, ledger, exports, files, reprs or errors.

A job runs end to end with ``OPENAI_API_KEY`` set to a fresh fake key, over real HTTP against the
standalone emulator (``--api URL``, so the key really is sent as the bearer token), with faults on so that
retries, cut downloads, expiries and a stopped run are logged. Then everything a user or an operator could
see is scanned: stdout/stderr of every command (JSON and text logs, debug level), the ledger and its WAL,
``ledger export`` (jsonl, csv, file), ``status`` (text and ``--json``), ``verify --json``, the shard files,
the images, the emulator's own log and state; and repr()/str() of the settings, the client and every
exception a failing call raises (401, 500, connection refused).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import importlib.util
import os
import secrets
import string
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from batchpipe.adapters.openai import ApiSettings, OpenAIClient, RetryPolicy
from batchpipe.errors import ApiError

REPO = Path(__file__).resolve().parents[1]
#: A fresh fake key per test session: "sk-test-" and 40 random letters and digits.
KEY = "sk-test-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def _load_drill() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fault_drill", REPO / "scripts" / "fault_drill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_drill"] = module
    spec.loader.exec_module(module)
    return module


drill = sys.modules.get("fault_drill") or _load_drill()


def leaks(blob: bytes | str, key: str = KEY) -> list[str]:
    """The forms of ``key`` found in ``blob``: whole, its random part, a 16-character slice, base64.

    A masked form such as ``sk-test-****AbCd`` (4 characters shown, as OpenAI's 401 message does) is not a leak.
    """
    data = blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else bytes(blob)
    needles = {
        "whole key": key.encode(),
        "random part": key[8:].encode(),
        "16-character slice": key[20:36].encode(),
        "base64 of the key": base64.b64encode(key.encode()),
        "base64 of the bearer credential": base64.b64encode(f"Bearer {key}".encode()),
    }
    return [name for name, needle in needles.items() if needle in data]


def test_the_scanner_finds_the_key_in_every_form_it_looks_for() -> None:
    assert leaks(f"log line: Authorization: Bearer {KEY}\n") == ["whole key", "random part", "16-character slice"]
    assert "16-character slice" in leaks(f"...{KEY[18:40]}...")  # a truncated copy still counts
    assert leaks(base64.b64encode(KEY.encode())) == ["base64 of the key"]
    assert leaks(b"\x00\x01" + KEY.encode() + b"\xff") != []  # binary files are scanned as bytes
    assert leaks(f"{KEY[:8]}****{KEY[-4:]}") == []  # a masked key is fine
    assert leaks("nothing secret here") == []


# ------------------------------------------------------------------------------------------------ the CLI
class _Refuse(http.server.BaseHTTPRequestHandler):
    """Answers every request 401 with OpenAI's ``invalid_api_key`` error (key masked, as the service does)."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = orjson.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {KEY[:8]}****{KEY[-4:]}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        )
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def _refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = KEY
    return env


def _cli(*args: str, cwd: Path) -> tuple[int, bytes]:
    """Run ``batchpipe ARGS`` with the key in the environment; returns (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("batchpipe")), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + b"\n" + proc.stderr


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A faulty end-to-end run with the key set; yields (root directory, {what: captured output})."""
    root = tmp_path_factory.mktemp("secrets")
    options = drill.DrillOptions(items=30, shard_size=10, seed=5, share_429=0.08, share_5xx=0.08, workdir=root)
    job_spec, _ = drill.write_job(root, options)
    faults = [*drill.emulator_fault_args(options), "--first-5xx", "batches.create=2", "--first-429", "files.create=1"]
    outputs: dict[str, bytes] = {}
    work = root / "work"
    with drill.standalone_emulator(root / "emulator", faults, root / "emulator.log", log_level="debug") as url:
        run = ["run", str(job_spec), "--api", url, "--workdir", str(work), "--poll-interval", "0.1", "--limit", "30"]
        codes = []
        for attempt in range(6):
            code, out = _cli("--log-json", "--log-level", "debug", *run, cwd=root)
            outputs[f"run {attempt} (json logs)"] = out
            codes.append(code)
            if code in (0, 1):
                break
        assert codes[-1] in (0, 1), outputs
        code, out = _cli("--log-text", "--log-level", "debug", *run, cwd=root)  # finished: a new, empty run
        outputs["re-run (text logs)"] = out
        assert code in (0, 1), out
    # an API that refuses the key (401, as OpenAI words it): the run stops (exit 3) and says why
    with _refusing_server() as refusing:
        code, out = _cli(
            "--log-json", "run", str(job_spec), "--api", refusing, "--workdir", str(root / "refused"), cwd=root
        )
        outputs["run refused with 401"] = out
        assert code == 3, out
    for name, args in {
        "status": ["status"],
        "status --json": ["status", "--json"],
        "export jsonl": ["ledger", "export", "--format", "jsonl", "--all-attempts"],
        "export csv": ["ledger", "export", "--format", "csv", "--all-attempts"],
        "export to file": ["ledger", "export", "--format", "csv", "--output", str(root / "export.csv")],
        "verify --json": ["verify", "--trust", "emulator", "--json", str(work / "out")],
    }.items():
        extra = [] if name.startswith("verify") else ["--workdir", str(work)]
        code, out = _cli(*args, *extra, cwd=root)
        assert code == 0, (name, out)
        outputs[name] = out
    return root, outputs


@pytest.mark.slow
def test_the_run_really_used_the_key_and_hit_faults(secret_run: tuple[Path, dict[str, bytes]]) -> None:
    """Guard against a vacuous scan: the key was sent, faults were logged, every output is non-trivial."""
    root, outputs = secret_run
    everything = b"\n".join(outputs.values())
    assert b"api.retry" in everything  # 429/5xx were retried and logged
    assert b"stopped" in outputs["run refused with 401"] and b"HTTP 401" in outputs["run refused with 401"]
    assert b"succeeded" in outputs["status --json"]
    assert outputs["export jsonl"].count(b"custom_id") >= 30
    assert (root / "export.csv").stat().st_size > 0
    assert list((root / "work" / "shards").glob("*.jsonl")) or list((root / "work").rglob("*.jsonl"))
    assert (root / "work" / "ledger.sqlite").stat().st_size > 0
    assert len(list((root / "work" / "out").rglob("*.png"))) >= 25
    assert b"emulator.request" in (root / "emulator.log").read_bytes()  # the server logged requests...


@pytest.mark.slow
def test_the_key_is_in_no_output_of_any_command(secret_run: tuple[Path, dict[str, bytes]]) -> None:
    _, outputs = secret_run
    found = {name: leaks(out) for name, out in outputs.items()}
    assert {name: forms for name, forms in found.items() if forms} == {}


@pytest.mark.slow
def test_the_key_is_in_no_file_written(secret_run: tuple[Path, dict[str, bytes]]) -> None:
    """Ledger (+ -wal / -shm), shards, images, export file, emulator log and state: every byte of every file."""
    root, _ = secret_run
    scanned = [path for path in root.rglob("*") if path.is_file()]
    names = {path.name for path in scanned}
    assert {"ledger.sqlite", "export.csv", "emulator.log"} <= names
    assert any(path.suffix == ".png" for path in scanned) and any(path.suffix == ".jsonl" for path in scanned)
    found = {str(path.relative_to(root)): leaks(path.read_bytes()) for path in scanned}
    assert {path: forms for path, forms in found.items() if forms} == {}


# ---------------------------------------------------------------------------------- reprs and exceptions
def _settings() -> ApiSettings:
    return ApiSettings.from_env({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://api.test/v1"})


def test_settings_and_client_show_no_key() -> None:
    settings = _settings()
    assert settings.headers()["Authorization"] == f"Bearer {KEY}"  # the key is there, on the wire only
    client = OpenAIClient(settings, transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    try:
        views = [
            repr(settings),
            str(settings),
            str(settings.model_dump()),
            settings.model_dump_json(),
            repr(client),
            str(client),
            repr(vars(client)),
            repr(client._http.headers),  # httpx masks credentials in its own repr
        ]
    finally:
        asyncio.run(client.aclose())
    assert [leaks(view) for view in views] == [[]] * len(views)


def _error_views(exc: BaseException) -> list[str]:
    views = [repr(exc), str(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))]
    cause = exc.__cause__
    if cause is not None:
        views += [repr(cause), str(cause)]
    return views


async def _failing_call(handler: Any) -> tuple[ApiError, list[MutableMapping[str, Any]]]:
    """``list_batches`` through ``handler`` with fast retries; returns the exception and the captured logs."""

    async def no_sleep(_: float) -> None:
        return None

    transport = httpx.MockTransport(handler)
    with capture_logs() as logs:
        async with OpenAIClient(
            _settings(), transport=transport, retry=RetryPolicy(max_retries=2), sleep=no_sleep
        ) as client:
            with pytest.raises(ApiError) as info:
                await client.list_batches()
    return info.value, logs


def _reject(status: int, message: str) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(status, json={"error": {"message": message, "type": "x", "code": None}})

    return handler


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "retried"),
    [
        pytest.param(_reject(401, f"Incorrect API key provided: {KEY[:8]}****{KEY[-4:]}."), False, id="401-masked"),
        pytest.param(_reject(500, "The server had an error while processing your request."), True, id="500"),
        pytest.param(_reject(429, "Rate limit reached for requests"), True, id="429"),
        pytest.param(_refuse, True, id="connection-refused"),
    ],
)
async def test_errors_and_retry_logs_of_failing_calls_show_no_key(handler: Any, retried: bool) -> None:
    exc, logs = await _failing_call(handler)
    assert any(entry["event"] == "api.retry" for entry in logs) == retried  # retries were logged, and scanned
    views = [*_error_views(exc), repr(logs)]
    assert [leaks(view) for view in views] == [[]] * len(views)


async def test_a_server_echoing_the_key_does_not_leak_it_into_the_exception() -> None:
    exc, _ = await _failing_call(_reject(401, f"Incorrect API key provided: {KEY}"))
    views = _error_views(exc)
    assert [leaks(view) for view in views] == [[]] * len(views)
