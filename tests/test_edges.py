"""Issue 11, behaviours 6 and 7: secrets and local files, input edges (through the real command line where the
behaviour is a command-line behaviour)."""

from __future__ import annotations

import base64
import io
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.cli.main import main
from batchpipe.domain import redact as redaction
from batchpipe.domain.items import make_custom_id
from batchpipe.domain.localfiles import FileTooLargeError, NotARegularFileError, read_capped
from batchpipe.domain.problems import Problem
from batchpipe.fakes import MemoryLedger
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import make_items, validate_job
from batchpipe.stages.collect import ItemTarget, process_line

KEY = "sk-proj-" + "Q" * 40
GOOD = b'{"key": "a", "prompt": "a red mug", "model": "gpt-image-2.5-flare"}\n'


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHPIPE_"))}
    return subprocess.run(
        [sys.executable, "-m", "batchpipe", "--log-json", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env={**environ, **(env or {})}, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _no_registered_secrets() -> Iterator[None]:
    redaction.forget_secrets()
    yield
    redaction.forget_secrets()


# ------------------------------------------------------------------------------------ 6. secrets


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"Incorrect API key provided: {KEY}.", KEY),
        ("upstream said: Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("bearer sk-1234567890abcdefXYZ rejected", "1234567890abcdefXYZ"),
        ("GET https://gw.example/v1/batches?api-key=s3cr3t-value&x=1 failed", "s3cr3t-value"),
        ("proxy https://alice:hunter2hunter2@proxy.example:8080/ refused", "hunter2hunter2"),
    ],
)
def test_redact_removes_keys_tokens_and_credentials(text: str, leak: str) -> None:
    out = redaction.redact(text)
    assert leak not in out and redaction.REDACTED in out


def test_redact_removes_the_configured_key_in_any_form_and_leaves_plain_text_alone() -> None:
    redaction.remember_secret("my-gateway-key-0001")  # not shaped like sk-...: only the registry knows it
    assert redaction.redact("key my-gateway-key-0001 is invalid") == f"key {redaction.REDACTED} is invalid"
    plain = "Invalid value for 'size': must be one of 1024x1024, 1536x1024."
    assert redaction.redact(plain) is plain
    assert redaction.redact_value({"data": [{"message": f"bad {KEY}", "line": 3}]}) == {
        "data": [{"message": f"bad {redaction.REDACTED}", "line": 3}]
    }


class _NoStore:
    def location_for(self, key: str, index: int, ext: str) -> str:  # pragma: no cover - no image in these lines
        raise AssertionError

    def put(self, location: str, data: bytes) -> object:  # pragma: no cover
        raise AssertionError

    def sync(self) -> None:  # pragma: no cover
        raise AssertionError

    def exists(self, location: str) -> bool:  # pragma: no cover
        raise AssertionError


@pytest.mark.parametrize("kind", ["error line", "non-2xx output line"])
def test_echoed_keys_never_reach_the_ledger_from_output_or_error_lines(kind: str) -> None:
    redaction.remember_secret("configured-key-abcdef")
    custom_id = make_custom_id("t", "a", 1)
    message = f"Incorrect API key provided: {KEY} (also configured-key-abcdef)"
    if kind == "error line":
        record = {"custom_id": custom_id, "error": {"code": "invalid_api_key", "message": message}}
    else:
        body = {"error": {"code": "invalid_api_key", "message": message}}
        record = {"custom_id": custom_id, "response": {"status_code": 401, "body": body}}
    targets = {custom_id: ItemTarget(custom_id=custom_id, key="a", model="gpt-image-2.5-flare")}
    result = process_line(orjson.dumps(record), targets, _NoStore(), None)  # type: ignore[arg-type]
    assert result is not None
    stored = str(result.fields["error_message"])
    assert KEY not in stored and "configured-key-abcdef" not in stored and redaction.REDACTED in stored


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_batch_error_messages_are_redacted_before_the_ledger(tmp_path: Path, kind: str) -> None:
    ledger = open_ledger(tmp_path) if kind == "sqlite" else MemoryLedger()
    batch = {"id": "batch_1", "status": "validating", "input_file_id": "file-1", "created_at": 1}
    ledger.record_batch(batch, shard="s", run_id="r", model="gpt-image-2")
    errors = {"object": "list", "data": [{"code": "invalid_request", "message": f"bad key {KEY}", "line": 1}]}
    ledger.update_batch({**batch, "status": "failed", "errors": errors, "failed_at": 2})
    row = ledger.batch("batch_1")
    stored = str(row.errors_json if row is not None else None)
    assert KEY not in stored and redaction.REDACTED in stored and "invalid_request" in stored
    ledger.close()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--api", f"https://user:{KEY}@gateway.example/v1"], {}),
        (["--api", f"https://gateway.example/v1?api-key={KEY}"], {}),
        (["--api", "openai"], {"OPENAI_API_KEY": "k" * 20, "OPENAI_BASE_URL": f"https://u:{KEY}@gw.example/v1"}),
        (["--api", "openai"], {"OPENAI_API_KEY": "k" * 20, "OPENAI_BASE_URL": f"https://gw.example/v1?key={KEY}"}),
    ],
)
def test_credentials_in_the_api_url_are_refused_without_echoing_them(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(GOOD)
    proc = _cli("run", "--manifest", str(manifest), "--job-name", "j", "--workdir", str(tmp_path / "w"), *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert KEY not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert "without credentials" in proc.stderr and "OPENAI_API_KEY" in proc.stderr
    assert not (tmp_path / "w" / "ledger.sqlite").exists()


def _png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def _matrix_job(tmp_path: Path, photo: str, *, allow: str = "") -> Path:
    data = tmp_path / "job" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "products.csv").write_text(f"sku,name,photo\nS1,a mug,{photo}\n")
    spec = tmp_path / "job" / "job.toml"
    spec.write_text(
        '[job]\nname = "m"\n[manifest]\npath = "data/products.csv"\n[item]\nkey = "{sku}/{variant}"\n'
        'prompt = "{name} on {bg}"\n[defaults]\nmodel = "gpt-image-2"\n[matrix]\nproduct = "{sku}"\n'
        '[[matrix.variant]]\nname = "v"\nbg = "grass"\n[references]\nimages = ["{photo}"]\n'
        'local_files = "data_url"\n' + allow
    )
    return spec


def _problems(spec_path: Path) -> list[Problem]:
    return [r for r in make_items(JobSpec.load(spec_path, workdir=spec_path.parent)) if isinstance(r, Problem)]


def test_a_manifest_row_may_name_only_files_inside_its_folder_or_the_allowed_ones(tmp_path: Path) -> None:
    _png(tmp_path / "job" / "data" / "photos" / "in.png")
    assert _problems(_matrix_job(tmp_path, "photos/in.png")) == []

    secret = _png(tmp_path / "secret" / "id.png")  # a readable image outside the manifest's folder
    for text in ("../../secret/id.png", str(secret)):
        problem = _problems(_matrix_job(tmp_path, text))[0]  # then: "no reference image" for the item
        assert (problem.line, problem.field) == (2, "photo")
        assert "outside the folders a manifest row may name" in problem.message and "allow_dirs" in problem.message

    link = tmp_path / "job" / "data" / "photos" / "link.png"  # inside by name, outside after symlinks
    link.symlink_to(secret)
    problem = _problems(_matrix_job(tmp_path, "photos/link.png"))[0]
    assert "outside" in problem.message

    allowed = _matrix_job(tmp_path, "photos/link.png", allow='allow_dirs = ["../secret"]\n')
    assert _problems(allowed) == []  # the job spec (trusted) allows the folder


def test_new_files_are_owner_only_unless_configured(tmp_path: Path) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(GOOD)
    for workdir, env, private in ((tmp_path / "w1", {}, True), (tmp_path / "w2", {"BATCHPIPE_UMASK": "022"}, False)):
        proc = _cli("run", "--manifest", str(manifest), "--job-name", workdir.name, "--workdir", str(workdir),
                    "--api", "emulator", "--poll-interval", "0.05", env=env, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        export = workdir / "export.csv"
        proc = _cli("ledger", "export", "--workdir", str(workdir), "--format", "csv", "--output", str(export), env=env)
        assert proc.returncode == 0, proc.stderr
        written = [p for p in workdir.rglob("*") if "emulator" not in p.parts]  # the emulator is not batchpipe
        written += list((tmp_path / "out" / workdir.name).rglob("*"))  # images: out/<job> under the current dir
        files = [p for p in written if p.is_file()]
        assert {"ledger.sqlite", "export.csv"} <= {p.name for p in files}
        assert any(p.suffix == ".png" for p in files) and any(p.is_dir() for p in written)
        for path in written:
            others = stat.S_IMODE(path.stat().st_mode) & 0o077
            assert (others == 0) == private, (path, oct(path.stat().st_mode))


def test_a_bad_umask_setting_is_refused(tmp_path: Path) -> None:
    proc = _cli("status", "--workdir", str(tmp_path), env={"BATCHPIPE_UMASK": "rw-r--r--"})
    assert proc.returncode == 2 and "BATCHPIPE_UMASK" in proc.stderr


# --------------------------------------------------------------------------------------------- 7. input edges


def test_validate_exits_2_on_bad_input_like_run(tmp_path: Path) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(GOOD + b'{"key": "b", "prompt": "x", "model": "gpt-image-2.5-flare", "n": "two"}\n')
    proc = _cli("validate", str(manifest))
    assert proc.returncode == 2 and "items.jsonl:2" in proc.stderr and "'n'" in proc.stderr
    bad_spec = tmp_path / "job.toml"
    bad_spec.write_text('[job]\nname = "x"\n[manifest]\npath = "nowhere.csv"\n')
    proc = _cli("validate", str(bad_spec))
    assert proc.returncode == 2 and "job.toml" in proc.stderr and "manifest.path" in proc.stderr


@pytest.mark.parametrize("which", ["spec", "manifest", "models"])
def test_a_fifo_is_refused_at_once_never_waited_on(tmp_path: Path, which: str) -> None:
    fifo = tmp_path / {"spec": "job.toml", "manifest": "items.jsonl", "models": "models.toml"}[which]
    os.mkfifo(fifo)
    args = ["validate", str(fifo)]
    if which == "models":
        manifest = tmp_path / "ok.jsonl"
        manifest.write_bytes(GOOD)
        args = ["validate", str(manifest), "--models", str(fifo)]
    started = time.monotonic()
    proc = _cli(*args, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in proc.stderr or "not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_devices_and_oversized_files_are_refused_by_the_capped_reader(tmp_path: Path) -> None:
    with pytest.raises(NotARegularFileError, match="character device"):
        read_capped(Path("/dev/zero"), what="job spec")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(FileTooLargeError, match="1,024-byte limit"):
        read_capped(big, max_bytes=1024, what="job spec")


def test_a_manifest_that_grows_while_read_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(GOOD * 3)
    spec = JobSpec.for_manifest(manifest, "g")
    results = make_items(spec)
    next(results)
    with manifest.open("ab") as out:  # something still writing it
        out.write(GOOD.replace(b'"a"', b'"z"') * 2000)
    with pytest.raises(Exception, match="grew while it was read"):
        list(results)


def test_a_symlinked_manifest_is_judged_by_the_name_it_was_given(tmp_path: Path) -> None:
    elsewhere = tmp_path / "store" / "blob.dat"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(GOOD)
    link = tmp_path / "items.jsonl"
    link.symlink_to(elsewhere)
    proc = _cli("validate", str(link))
    assert proc.returncode == 0, proc.stderr
    spec = JobSpec.for_manifest(link, "l")
    assert spec.manifest_path == link and spec.manifest_format == "jsonl"

    # a catalog spec: the format from the link's name, relative references from the link's folder
    _png(tmp_path / "job" / "data" / "photos" / "in.png")
    spec_path = _matrix_job(tmp_path, "photos/in.png")
    real = tmp_path / "store" / "catalog.bin"
    (spec_path.parent / "data" / "products.csv").rename(real)
    (spec_path.parent / "data" / "products.csv").symlink_to(real)
    assert _problems(spec_path) == []


def test_renaming_20000_repeats_of_one_key_is_linear(tmp_path: Path) -> None:
    rows = 20_000
    (tmp_path / "c.csv").write_text("sku,name\n" + "".join(f"SAME,mug {i}\n" for i in range(rows)))
    (tmp_path / "job.toml").write_text(
        '[job]\nname = "d"\n[manifest]\npath = "c.csv"\n[item]\nkey = "{sku}"\nprompt = "{name}"\n'
        '[defaults]\nmodel = "gpt-image-2"\n'
    )
    spec = JobSpec.load(tmp_path / "job.toml", workdir=tmp_path)
    started = time.perf_counter()
    report = validate_job(spec, max_listed=3)
    elapsed = time.perf_counter() - started
    assert report.items == rows and report.warning_count == rows - 1
    assert [w.key for w in report.warnings] == ["SAME~2", "SAME~3", "SAME~4"]
    assert elapsed < 20, f"{elapsed:.1f} s for {rows} repeats of one key"


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("ref", "field", "words"),
    [
        ({"images": [{"image_url": _data_url(b"hello")}]}, "images[0].image_url", "not a readable"),
        ({"images": [{"image_url": "data:image/png;base64,@@@"}]}, "images[0].image_url", "does not decode"),
        ({"images": [{"image_url": "https://x.test/a.png"}], "mask": {"image_url": "MASK"}}, "mask.image_url", "alpha"),
    ],
)
def test_data_urls_in_plain_jsonl_are_checked_like_matrix_references(
    tmp_path: Path, ref: dict[str, object], field: str, words: str
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")  # a PNG without alpha: fine as an image, not as a mask
    line = {"key": "e", "prompt": "make it blue", "model": "gpt-image-2", **ref}
    if "mask" in line:
        line["mask"] = {"image_url": _data_url(buffer.getvalue())}
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(orjson.dumps(line) + b"\n")
    proc = _cli("validate", str(manifest))
    assert proc.returncode == 2, proc.stderr
    assert f"items.jsonl:1: field '{field}'" in proc.stderr and words in proc.stderr


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b'{"key": "a", "prompt": "one", "prompt": "two", "model": "gpt-image-2"}', "prompt"),
        (b'{"key":"a","prompt":"p","model":"gpt-image-2","metadata":{"sku":1,"sku" :2}}', "sku"),
    ],
)
def test_a_repeated_json_key_is_a_located_problem(tmp_path: Path, line: bytes, field: str) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(GOOD + line + b"\n" + b'{"key":"c","prompt":"say \\":\\" twice","model":"gpt-image-2"}\n')
    proc = _cli("validate", str(manifest))
    assert proc.returncode == 2, proc.stderr
    assert f"items.jsonl:2: field '{field}'" in proc.stderr and "appears twice" in proc.stderr
    assert "items.jsonl:3" not in proc.stderr  # '":' inside a string is not a key


@pytest.mark.slow
def test_ctrl_c_exits_3_with_the_resume_command_and_the_same_command_resumes(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "emu"
    server = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "emulator", "serve", "--port", str(port), "--state-dir", str(state),
         "--speed", "realistic", "--per-request-s", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = _served_url(server)
        manifest = tmp_path / "items.jsonl"
        manifest.write_bytes(b"".join(GOOD.replace(b'"a"', f'"k{i}"'.encode()) for i in range(4)))
        command = [sys.executable, "-m", "batchpipe", "--log-json", "run", "--manifest", str(manifest),
                   "--job-name", "c", "--workdir", str(tmp_path / "w"), "--api", url,
                   "--poll-interval", "0.1"]  # fmt: skip
        # Ctrl-C as in a terminal: SIGINT at its default, even when this suite runs in the background of a
        # non-interactive shell (`make test &`), where children inherit SIGINT ignored
        run = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "w" / "ledger.sqlite").exists():
            time.sleep(0.05)
        time.sleep(1.5)  # built and submitted: now waiting on the batch
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 3, err
        assert "Traceback" not in err and "interrupted (Ctrl-C)" in err
        assert "to resume, run: batchpipe --log-json run --manifest" in err and "--job-name c" in err
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert resumed.returncode == 0, resumed.stderr
        ledger = open_ledger(tmp_path / "w")
        assert len(ledger.batches()) == 1  # resumed, not submitted again
        assert {row.status for row in ledger.items(latest_only=True)} == {"succeeded"}
        ledger.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)


def _served_url(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        for word in line.replace('"', " ").split():
            if word.startswith("http://127.0.0.1:") and word.rstrip("/").endswith("/v1"):
                time.sleep(0.5)  # the line is printed just before it binds
                return word.rstrip("/")
    raise AssertionError("the emulator did not say where it listens")


def test_cli_runner_keeps_the_callers_umask(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        CliRunner().invoke(main, ["status", "--workdir", str(tmp_path)])
        after = os.umask(0o022)
        assert after == 0o022
    finally:
        os.umask(before)
