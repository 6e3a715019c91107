"""What a person sees, through the real command line on the embedded emulator: the live progress block in a
pseudo-terminal (logs above it, never scrolled away), plain lines in a pipe, JSON only with ``--log-json`` (ending
with one summary), ``status --job`` with errors by code, and the export's ISO 8601 times and prompts."""

from __future__ import annotations

import csv
import io
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from batchpipe.runtime.progress import ErrorCount, PlainDisplay, retry_command

PYTHON = sys.executable
ISO_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _manifest(path: Path, *, items: int = 12, blocked: tuple[int, ...] = (3, 7)) -> Path:
    """``items`` teapots; the prompts of ``blocked`` carry the emulator's moderation trigger (EMULATOR_BLOCK)."""
    lines = []
    for i in range(items):
        prompt = f"Product shot number {i} of a blue teapot" + (" EMULATOR_BLOCK" if i in blocked else "")
        lines.append(orjson.dumps({"key": f"sku-{i}", "prompt": prompt, "model": "gpt-image-2", "quality": "low"}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "BATCHPIPE_LEDGER", "BATCHPIPE_STORE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m batchpipe ARGS`` with stdout and stderr as pipes (not a terminal)."""
    return subprocess.run(
        [PYTHON, "-m", "batchpipe", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


# -- a pseudo-terminal, and a small terminal to replay what was written to it -----------------------------------
def _run_in_pty(args: list[str], cwd: Path, *, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m batchpipe ARGS`` with stdin, stdout and stderr on a pseudo-terminal (120 x 40); returns the
    exit code and every byte it wrote, decoded."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = _env(TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    proc = subprocess.Popen(
        [PYTHON, "-m", "batchpipe", *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def _screen(raw: str) -> list[str]:
    """Replay ``raw`` on a terminal with unlimited scrollback: text, CR, LF, cursor up (``CSI n A``), erase line
    (``CSI 2K``); colours and cursor visibility are ignored. Returns every line as it ends up, right-stripped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            found = _CSI.match(raw, i)
            if found:
                params, final = found.groups()
                if final == "A":
                    row = max(0, row - int(params or 1))
                elif final == "K" and params == "2":
                    lines[row] = []
                i = found.end()
                continue
            i += 1
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            if row == len(lines):
                lines.append([])
        else:
            line = lines[row]
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines]


def _plain(raw: str) -> str:
    return _CSI.sub("", raw)


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 12-item job ``tea`` (2 items blocked by moderation) run once into ``w``, plus a clean 3-item
    job ``mug`` in the same ledger."""
    root = tmp_path_factory.mktemp("progress")
    _manifest(root / "tea.jsonl")
    _manifest(root / "mug.jsonl", items=3, blocked=())
    tea = _cli("run", "--manifest", "tea.jsonl", "--job-name", "tea", "--workdir", "w", "--api", "emulator",
               "--poll-interval", "0.1", cwd=root)  # fmt: skip
    assert tea.returncode == 1, tea.stderr
    mug = _cli("--log-json", "run", "--manifest", "mug.jsonl", "--job-name", "mug", "--workdir", "w", "--api",
               "emulator", "--poll-interval", "0.1", cwd=root)  # fmt: skip
    assert mug.returncode == 0, mug.stderr
    return root


# -- the live block in a terminal -------------------------------------------------------------------------------
@pytest.mark.slow
def test_live_progress_in_a_terminal_keeps_the_logs_above_it(tmp_path: Path) -> None:
    _manifest(tmp_path / "tea.jsonl")
    code, raw = _run_in_pty(
        ["run", "--manifest", "tea.jsonl", "--job-name", "tea", "--workdir", "w", "--api", "emulator",
         "--poll-interval", "0.3", "--max-cost", "5"],
        tmp_path,
    )  # fmt: skip
    assert code == 1, raw  # two items blocked by moderation
    assert "\x1b[" in raw  # a terminal: rich drew with escape sequences
    plain = _plain(raw)
    # the block was drawn several times, and at least once before the work was done (stage counts and percent)
    assert plain.count("collected ") >= 3, plain
    assert re.search(r"built\s+\S+ 12/12 100%", plain)
    assert re.search(r"collected\s+\S+ 0/12\s+0%", plain), plain

    screen = _screen(raw)
    text = "\n".join(screen)
    # what stays on the screen: one block (redrawn in place, never scrolled into copies), its last frame complete
    headers = [n for n, line in enumerate(screen) if line.startswith("batchpipe tea run tea-")]
    assert len(headers) == 1, text
    block = screen[headers[0] : headers[0] + 9]
    assert sum(line.startswith("collected ") for line in screen) == 1, text
    assert re.match(r"built\s+█+ 12/12 100% 1 shard\(s\)", block[1]), block
    assert re.match(r"submitted\s+█+ 12/12 100% 1 batch\(es\)", block[2]), block
    assert re.match(r"collected\s+█+ 12/12 100% [0-9.]+ items/s", block[4]), block
    assert re.match(r"verified\s+█+ 10/10 100% trusted 10", block[5]), block
    assert re.match(r"cost \$0\.0\d+ so far · estimate \$0\.0\d+ · cap \$5\.00", block[6]), block
    assert block[7] == "batches: completed 1" and block[8] == "not succeeded: failed 2"
    # the log lines written while the block was up are above it, each once and whole
    for event in (
        "estimated cost: $",
        "using the embedded emulator",
        "] built ",
        "] batch created ",
        "] file collected",
    ):
        where = [n for n, line in enumerate(screen) if event in line]
        assert where, (event, text)
        assert all(n < headers[0] for n in where), (event, text)
    assert sum("] batch created " in line for line in screen) == 1
    # and the summary below it: error codes with counts and the command that retries them
    after = screen[headers[0] + 9 :]
    assert any(re.match(r"run tea-\S+: failed 2, succeeded 10", line) for line in after), text
    assert any(line.startswith("  moderation_blocked × 2 (failed, final); e.g. sku-") for line in after), text
    retry = [line.strip() for line in after if line.strip().startswith("retry: ")]
    assert retry == ["retry: batchpipe retry --job tea --error-code moderation_blocked --workdir " +
                     str((tmp_path / "w").resolve())], text  # fmt: skip


@pytest.mark.slow
def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    _manifest(tmp_path / "tea.jsonl", items=6, blocked=(2,))
    done = _cli("--log-text", "run", "--manifest", "tea.jsonl", "--job-name", "tea", "--workdir", "w", "--api",
                "emulator", "--poll-interval", "0.1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "\x1b" not in err and "█" not in err  # no live block, no colours
    lines = err.splitlines()
    assert "progress: built 6 items in 1 shard(s)" in lines
    assert any(re.match(r"progress: batches \w+ 1; requests answered \d+; items collected \d+/6; cost \$", line)
               for line in lines), err  # fmt: skip
    assert any(re.match(r"run tea-\S+: failed 1, succeeded 5", line) for line in lines), err
    assert "    retry: batchpipe retry --job tea --error-code moderation_blocked --workdir " in err

    # --no-report: the same summary, no contact sheet written
    _manifest(tmp_path / "tea2.jsonl", items=3, blocked=())
    done = _cli("--log-text", "run", "--manifest", "tea2.jsonl", "--job-name", "tea2", "--workdir", "w", "--api",
                "emulator", "--poll-interval", "0.1", "--no-report", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "report: " not in done.stderr
    reports = sorted(p.name for p in (tmp_path / "w" / "reports").iterdir())
    assert len(reports) == 1 and reports[0].startswith("tea-")  # only the first run's, written by default


# -- --log-json -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_log_json_prints_json_only_and_ends_with_the_summary(tmp_path: Path) -> None:
    _manifest(tmp_path / "tea.jsonl")
    done = _cli("--log-json", "run", "--manifest", "tea.jsonl", "--job-name", "tea", "--workdir", "w", "--api",
                "emulator", "--poll-interval", "0.1", cwd=tmp_path)  # fmt: skip
    out, err, code = done.stdout, done.stderr, done.returncode
    assert code == 1, err
    records = [orjson.loads(line) for line in err.splitlines()]  # every stderr line is JSON (raises otherwise)
    events = {r["event"] for r in records}
    assert {"message", "progress", "run", "built", "batch created"} <= events, events
    assert any(r["event"] == "message" and r["message"].startswith("estimated cost: $") for r in records)
    progress = [r for r in records if r["event"] == "progress"]
    assert progress[0]["stages"]["built"] == {"done": 12, "total": 12}
    assert all({"items_per_s", "eta_s", "cost_usd", "c2pa", "batch_states"} <= set(p) for p in progress)

    assert len(out.splitlines()) == 1  # stdout: the summary alone, one line
    summary = orjson.loads(out)
    assert summary["event"] == "summary" and summary["exit_code"] == code == 1
    assert summary["items"] == {"failed": 2, "succeeded": 10} and summary["finished"] is True
    assert summary["cost_usd"] > 0 and summary["estimated_cost_usd"] >= summary["cost_usd"]
    assert summary["c2pa"] == {"trusted": 10}
    [error] = summary["errors"]
    assert error["code"] == "moderation_blocked" and error["count"] == 2 and error["retryable"] is False
    assert error["example_message"].startswith("Your request was rejected by the safety system")
    workdir = str((tmp_path / "w").resolve())
    assert error["retry_command"] == f"batchpipe retry --job tea --error-code moderation_blocked --workdir {workdir}"
    assert summary["report"]["path"] == f"{workdir}/reports/{summary['run_id']}/index.html"
    assert summary["report"]["command"] == f"batchpipe report --run {summary['run_id']} --workdir {workdir}"
    # run wrote the contact sheet at the end (the default): all 12 items, 10 thumbnails
    assert summary["report"]["exists"] is True
    report_dir = Path(summary["report"]["path"]).parent
    assert len((report_dir / "items.jsonl").read_bytes().splitlines()) == 12
    assert len(list((report_dir / "thumbs").rglob("*.webp"))) == 10
    assert any(str(r.get("message", "")).startswith(f"report: {summary['report']['path']}") for r in records)

    # the command the summary names selects exactly those two items; moderation blocks are final, so retry leaves
    # them out (and the hint says so); with --force it sends them as they are and they are blocked again
    assert "--force" in error["retry_hint"] and "--set FIELD=VALUE" in error["retry_hint"]
    args = shlex.split(error["retry_command"])
    assert args[:2] == ["batchpipe", "retry"]
    again = _cli("--log-json", *args[1:], "--api", "emulator", "--poll-interval", "0.1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    said = [orjson.loads(line) for line in again.stderr.splitlines()]
    assert any(r.get("message") == "selected 2 item(s) from 1 job(s): tea" for r in said), again.stderr
    assert any(str(r.get("message", "")).startswith("left out 2 item(s) whose failure is final") for r in said)
    again = _cli("--log-json", *args[1:], "--force", "--api", "emulator", "--poll-interval", "0.1", cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    said = [orjson.loads(line) for line in again.stderr.splitlines()]
    assert any(r.get("message") == "selected 2 item(s) from 1 job(s): tea" for r in said), again.stderr
    retried = orjson.loads(again.stdout)
    assert retried["items"] == {"failed": 2} and retried["errors"][0]["count"] == 2


@pytest.mark.parametrize(
    ("args", "expected_code", "says"),
    [
        (["run", "--manifest", "tea.jsonl", "--job-name", "tea", "--limit", "0"], 2, "--limit"),
        (["run", "--manifest", "bad.jsonl", "--job-name", "bad"], 2, "bad.jsonl"),
        (["run", "--manifest", "tea.jsonl", "--job-name", "tea", "--max-cost", "0.0001"], 2, "above the cap"),
    ],
    ids=["click usage error", "bad manifest", "cost cap"],
)
def test_log_json_failures_are_json_too(tmp_path: Path, args: list[str], expected_code: int, says: str) -> None:
    _manifest(tmp_path / "tea.jsonl", items=3, blocked=())
    (tmp_path / "bad.jsonl").write_bytes(b'{"key": "a", "prompt": "a mug", "model": "gpt-image-2"}\n{not json\n')
    done = _cli("--log-json", *args, "--workdir", "w", "--api", "emulator", cwd=tmp_path)
    assert done.returncode == expected_code, done.stderr
    for line in (done.stdout + done.stderr).splitlines():
        orjson.loads(line)  # not one plain line
    summary = orjson.loads(done.stdout)
    assert summary["event"] == "summary" and summary["exit_code"] == expected_code and summary["finished"] is False
    assert says in done.stderr and "Usage:" not in done.stderr and "Traceback" not in done.stderr


# -- status --job and errors by code ----------------------------------------------------------------------------
@pytest.mark.slow
def test_status_of_one_job_with_errors_by_code(tea: Path) -> None:
    done = _cli("status", "--workdir", "w", "--job", "tea", "--json", cwd=tea)
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["job"] == "tea" and status["latest_run"]["job"] == "tea"
    assert status["current_items"] == {"failed": 2, "succeeded": 10}
    assert status["batches"] == {"completed": 1}
    [error] = status["errors"]
    assert error["code"] == "moderation_blocked" and error["count"] == 2 and error["statuses"] == ["failed"]
    assert error["example_key"] in ("sku-3", "sku-7") and "safety system" in error["example_message"]
    assert error["retry_command"] == "batchpipe retry --job tea --error-code moderation_blocked --workdir w"

    mug = orjson.loads(_cli("status", "--workdir", "w", "--job", "mug", "--json", cwd=tea).stdout)
    assert mug["current_items"] == {"succeeded": 3} and mug["errors"] == [] and mug["batches"] == {"completed": 1}
    everything = orjson.loads(_cli("status", "--workdir", "w", "--json", cwd=tea).stdout)
    assert everything["current_items"] == {"failed": 2, "succeeded": 13}
    assert everything["errors"][0]["count"] == 2 and "retry_command" not in everything["errors"][0]
    assert everything["batches"] == {"completed": 2}

    text = _cli("status", "--workdir", "w", "--job", "tea", cwd=tea)
    assert text.returncode == 0, text.stderr
    flat = " ".join(text.stdout.split())
    assert "job tea" in flat and "errors by code" in flat and "moderation_blocked │ 2 │ failed" in flat
    assert "retry moderation_blocked: batchpipe retry --job tea --error-code moderation_blocked" in flat
    quiet = _cli("--log-json", "status", "--workdir", "w", "--job", "tea", cwd=tea)  # JSON only: the object, one line
    assert len(quiet.stdout.splitlines()) == 1 and orjson.loads(quiet.stdout) == status
    missing = _cli("status", "--workdir", "w", "--job", "nope", cwd=tea)
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr


# -- ledger export ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_has_iso_times_and_prompts(tea: Path) -> None:
    done = _cli("ledger", "export", "--workdir", "w", "--format", "jsonl", cwd=tea)
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 15
    for record in records:
        assert ISO_SECONDS.fullmatch(record["created_at"]) and ISO_SECONDS.fullmatch(record["updated_at"])
        assert record["prompt"].startswith(("Product shot number", "Product shot")) and "body" not in record
        assert record["created_at"] <= record["updated_at"]
    blocked = {r["key"]: r for r in records if r["job"] == "tea" and r["status"] == "failed"}
    assert sorted(blocked) == ["sku-3", "sku-7"] and all("EMULATOR_BLOCK" in r["prompt"] for r in blocked.values())

    done = _cli("ledger", "export", "--workdir", "w", "--format", "csv", cwd=tea)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 15 and all(ISO_SECONDS.fullmatch(r["updated_at"]) for r in rows)
    assert all(r["prompt"].startswith("Product shot number") for r in rows)


# -- verify on many files ---------------------------------------------------------------------------------------
def test_verify_many_files_prints_a_summary_and_the_first_problems(tmp_path: Path) -> None:
    from tests.provenance.conftest import FIXTURES

    signed = FIXTURES / "generated" / "openai-like_signed.png"
    stripped = FIXTURES / "generated" / "openai-like_stripped.png"
    for i in range(30):
        shutil.copy(signed, tmp_path / f"ok-{i:02d}.png")
    for i in range(14):
        shutil.copy(stripped, tmp_path / f"bad-{i:02d}.png")
    done = _cli("verify", "--trust", "none", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "44 file(s) checked with --trust none: 30 valid, 14 missing" in " ".join(out.split())
    assert "the first 10 of 14 problem(s)" in out and "--all" in out
    assert sum("ok-" in line for line in out.splitlines()) == 0  # no row for a good file
    assert sum("bad-" in line for line in out.splitlines()) == 10
    as_json = _cli("--log-json", "verify", "--trust", "none", str(tmp_path), cwd=tmp_path)
    assert [orjson.loads(line)["c2pa_state"] for line in as_json.stdout.splitlines()].count("missing") == 14
    full = _cli("verify", "--trust", "none", "--all", str(tmp_path), cwd=tmp_path)
    assert sum("ok-" in line for line in full.stdout.splitlines()) == 30
    assert sum("bad-" in line for line in full.stdout.splitlines()) == 14


# -- small pieces -----------------------------------------------------------------------------------------------
def test_retry_command_names_what_retry_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocked = ErrorCount("moderation_blocked", 2, {"failed"})
    assert retry_command(blocked, job="tea") == "batchpipe retry --job tea --error-code moderation_blocked"
    assert retry_command(blocked, job="tea", workdir=Path(".batchpipe")) == retry_command(blocked, job="tea")
    invalid = ErrorCount("invalid_item", 1, {"invalid"})
    assert retry_command(invalid, job="my job", workdir=tmp_path / "w") == (
        f"batchpipe retry --job 'my job' --error-code invalid_item --status invalid --workdir {tmp_path / 'w'}"
    )


def test_plain_display_throttles_poll_lines() -> None:
    said: list[str] = []
    now = [100.0]
    display = PlainDisplay(said.append, every_s=5.0, clock=lambda: now[0], estimate_usd=0.5, cap_usd=1.0)
    display.progress("built", {"run_id": "r", "items": 4, "shards": 1})
    poll = {"run_id": "r", "batch_states": {"in_progress": 1}, "rendered": 1, "items_done": 0, "items_total": 4}
    display.progress("poll", {**poll, "items": {"submitted": 4}, "cost_usd": 0.0})
    display.c2pa("trusted")
    display.progress("poll", {**poll, "items": {"submitted": 3, "succeeded": 1}, "cost_usd": 0.1})
    now[0] += 6
    display.progress("poll", {**poll, "items_done": 2, "items": {"submitted": 2, "succeeded": 2}, "cost_usd": 0.2})
    assert said[0] == "progress: built 4 items in 1 shard(s)"
    assert len(said) == 3  # the second poll within 5 s is not printed
    assert said[2] == (
        "progress: batches in_progress 1; requests answered 1; items collected 2/4; "
        "cost $0.2000 so far · estimate $0.5000 · cap $1.00; C2PA trusted 1"
    )
    stages = {name: (done, total) for name, done, total, _ in display.stages()}
    assert stages["built"] == (4, 4) and stages["submitted"] == (4, 4) and stages["verified"] == (1, 4)
