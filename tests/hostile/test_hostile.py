"""Issue 11, proved against an independent hostile server: the real CLI (``python -m batchpipe run``) in a
subprocess, one test per behaviour class, parametrised over the variants of that class.

Every test checks the same invariants (:func:`problems`): the run ended (within the bound where the issue
says waits are bounded), no traceback, the expected exit code, never more batches than shards (as counted by
the server), every key once in the ledger in a truthful state, no output/error file deleted from the server
before all of it had been served, and the fake key nowhere in the workdir, stdout or stderr.

Knobs (environment): ``HOSTILE_WAIT_BOUND_S`` (default 75): how long a run facing an endless wait may take
before it must have stopped with exit 3 (the issue: "no retry loop is silent for more than a minute").
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from PIL import Image

from hostile.conftest import SECRET, CliResult, HostileServer, run_cli
from hostile.server import BAD_DOWNLOADS, Scenario

pytestmark = pytest.mark.slow

ITEMS = 10
SHARD_SIZE = 5  # so every run has 2 shards: at most 2 batches may be created (plus retry shards)
RUN_TIMEOUT_S = 120.0
#: A run that meets a service fault it must get past (lag, odd fields) should still finish in this time.
FINISH_BOUND_S = 60.0
WAIT_BOUND_S = float(os.environ.get("HOSTILE_WAIT_BOUND_S", "75"))

JOB_TOML = f"""\
[job]
name = "hostile"

[manifest]
path = "items.csv"

[item]
key = "{{sku}}"
prompt = "Studio product photo of {{name}} on a plain white background"

[defaults]
model = "gpt-image-2"
size = "1024x1024"
quality = "low"
output_format = "png"

[output]
dir = "out"

[c2pa]
trust = "none"

[run]
max_attempts = 2
max_requests_per_shard = {SHARD_SIZE}
delete_input_files = true
delete_output_files = true
"""

Start = Callable[[Scenario], HostileServer]


def make_job(root: Path, items: int = ITEMS) -> list[str]:
    """Write ``job.toml`` and ``items.csv`` under ``root``; return the item keys."""
    keys = [f"SKU-{i:03d}" for i in range(items)]
    (root / "job.toml").write_text(JOB_TOML)
    rows = "".join(f"{key},ceramic mug number {i}\n" for i, key in enumerate(keys))
    (root / "items.csv").write_text("sku,name\n" + rows)
    return keys


def run_job(root: Path, api: str, *, timeout_s: float = RUN_TIMEOUT_S) -> CliResult:
    args = ["run", "job.toml", "--api", api, "--workdir", str(root / "work"), "--poll-interval", "0.1"]
    return run_cli(args, cwd=root, timeout_s=timeout_s)


def ledger_items(root: Path) -> list[dict[str, Any]] | None:
    path = root / "work" / "ledger.sqlite"
    if not path.exists():
        return None
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM items")]


def ledger_batch_ids(root: Path) -> set[str]:
    path = root / "work" / "ledger.sqlite"
    if not path.exists():
        return set()
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT batch_id FROM batches")}


def current_rows(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Item key → its rows that are not superseded (exactly one is expected)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != "superseded":
            out.setdefault(row["item_key"], []).append(row)
    return out


def _stored_path(row: dict[str, Any], root: Path) -> Path:
    """The local file a ledger row names: ``output_uri`` (a ``file://`` URI) in current ledgers, ``output_path``
    (a plain path) in older ones."""
    uri = row.get("output_uri") or row.get("output_path") or ""
    path = Path(url2pathname(urlsplit(uri).path)) if uri.startswith("file:") else Path(uri)
    return path if path.is_absolute() else root / path


def _image_problem(path: Path, fmt: str) -> str | None:
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
            actual = (image.format or "").lower()
    except Exception as exc:
        return f"{path} is not a readable image: {type(exc).__name__}: {exc}"
    if actual.replace("jpg", "jpeg") != fmt:
        return f"{path} is {actual}, {fmt} was requested"
    return None


def secret_leaks(root: Path, result: CliResult) -> list[str]:
    """Where the key (or its random tail) shows up: stdout/stderr and every file under ``root``."""
    needles = [SECRET.encode(), SECRET.split("-")[-1].encode()]
    found = [f"output ({needle.decode()[:12]}...)" for needle in needles if needle in result.text.encode()]
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path.relative_to(root)))
    return found


def problems(
    server: HostileServer,
    root: Path,
    result: CliResult,
    *,
    keys: list[str],
    codes: tuple[int, ...],
    bound_s: float | None = None,
    items_required: bool = True,
) -> list[str]:
    """Every broken invariant of issue 11, as readable lines (empty when all hold)."""
    state = server.state
    found: list[str] = []
    if result.code is None:
        found.append(f"HUNG: the run was killed after {result.elapsed_s:.0f}s")
    elif bound_s is not None and result.elapsed_s > bound_s:
        found.append(f"SLOW: the run took {result.elapsed_s:.0f}s, bound {bound_s:.0f}s")
    if "Traceback" in result.text:
        found.append("TRACEBACK in output")
    if result.code is not None and result.code not in codes:
        found.append(f"EXIT {result.code}, expected one of {codes}")
    # never pay twice, as the server counts it
    twice = {shard: n for shard, n in state.batches_per_shard.items() if n > 1}
    if twice:
        found.append(f"PAID TWICE: shards with more than one batch created: {twice}")
    again = [cid for cid, n in state.custom_id_batches.items() if n > 1]
    if again:
        found.append(f"PAID TWICE: {len(again)} custom_id(s) in more than one batch, e.g. {again[:3]}")
    orphans = set(state.batches) - ledger_batch_ids(root)
    if orphans:
        found.append(f"ORPHANS: {len(orphans)} batch(es) created on the server unknown to the ledger")
    if state.deleted_uncollected:
        found.append(f"DELETED UNCOLLECTED: {len(state.deleted_uncollected)} output/error file(s)")
    # every key once, truthfully
    rows = ledger_items(root)
    if rows is None:
        if items_required:
            found.append("NO LEDGER")
    else:
        current = current_rows(rows)
        missing_keys = [k for k in keys if k not in current]
        doubled = [k for k, r in current.items() if len(r) > 1]
        if items_required and missing_keys:
            found.append(f"KEYS NOT IN LEDGER: {missing_keys[:5]} ({len(missing_keys)})")
        if doubled:
            found.append(f"KEYS TWICE (not superseded): {doubled[:5]}")
        for row in rows:
            cid, status = row["custom_id"], row["status"]
            if status == "succeeded":
                path = _stored_path(row, root)
                if not path.is_file():
                    found.append(f"UNTRUTHFUL: {cid} succeeded, no file at {path}")
                    continue
                if hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
                    found.append(f"UNTRUTHFUL: {cid} file does not match the ledger's sha256")
                bad = _image_problem(path, "png")
                if bad:
                    found.append(f"UNTRUTHFUL: {cid} succeeded but {bad}")
                if cid not in state.emitted_ok:
                    found.append(f"UNTRUTHFUL: {cid} succeeded, the server never produced it")
            if status == "missing" and cid in state.emitted_ok | state.emitted_err:
                found.append(f"UNTRUTHFUL: {cid} recorded missing, the server had a line for it")
    leaks = secret_leaks(root, result)
    if leaks:
        found.append(f"SECRET LEAKED in: {leaks[:8]}")
    return found


def report(found: list[str], server: HostileServer, result: CliResult) -> str:
    return "\n".join(
        [
            *found,
            f"exit={result.code} elapsed={result.elapsed_s:.1f}s",
            f"server={server.state.summary()}",
            "--- output tail ---",
            result.tail(30),
        ]
    )


def statuses(root: Path) -> dict[str, str]:
    """Item key → status of its current row."""
    return {k: r[0]["status"] for k, r in current_rows(ledger_items(root) or []).items()}


# ------------------------------------------------------------------------------- 0. a faithful server works


def test_faithful_server_baseline(hostile: Start, tmp_path: Path) -> None:
    """The hostile server with no fault: proves the harness, so every failure below is the fault's doing."""
    server = hostile(Scenario())
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
    assert found == [], report(found, server, result)
    assert set(statuses(tmp_path).values()) == {"succeeded"}
    assert server.state.batches_created == ITEMS // SHARD_SIZE


# ------------------------------------------------------------------- 1. list lag after an ambiguous create


@pytest.mark.parametrize("fault", ["500", "drop", "timeout"])
def test_list_lag_after_ambiguous_create(hostile: Start, tmp_path: Path, fault: str) -> None:
    """The first create is performed but answered with 500 / a dropped connection / a gateway timeout, and the
    new batch is absent from ``GET /v1/batches`` for 4 s: it must be adopted, never created again."""
    server = hostile(Scenario(name=f"lag-{fault}", create_fault=fault, create_faults=1, list_lag_s=4.0))
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
    if server.state.batches_created != ITEMS // SHARD_SIZE:
        found.append(f"BATCHES: {server.state.batches_created} created for {ITEMS // SHARD_SIZE} shards")
    if set(statuses(tmp_path).values()) != {"succeeded"}:
        found.append(f"NOT ALL SUCCEEDED: {statuses(tmp_path)}")
    assert found == [], report(found, server, result)


# ------------------------------------------------------------------------------------- 2. bad downloads


@pytest.mark.parametrize("mode", ["first2", "always"])
@pytest.mark.parametrize("kind", BAD_DOWNLOADS)
def test_unreadable_download_is_a_failed_download(hostile: Start, tmp_path: Path, kind: str, mode: str) -> None:
    """An output file that is not the JSONL it must be: retried, then exit 3; never rows declared missing,
    never resubmitted, never deleted. ``first2``: the first 2 downloads are bad (a retry or a resume must
    succeed); ``always``: every download is bad until the test heals the server, then a resume finishes."""
    bad = 2 if mode == "first2" else -1
    server = hostile(Scenario(name=f"download-{kind}-{mode}", bad_download=kind, bad_downloads=bad))
    keys = make_job(tmp_path)
    shards = ITEMS // SHARD_SIZE
    result = run_job(tmp_path, server.base_url)
    if mode == "always":
        found = problems(server, tmp_path, result, keys=keys, codes=(3,), bound_s=FINISH_BOUND_S)
        now = statuses(tmp_path)
        wrong = {k: s for k, s in now.items() if s not in ("submitted", "succeeded")}
        if wrong:
            found.append(f"ROWS JUDGED ON AN UNREADABLE FILE: {wrong}")
        if server.state.batches_created != shards:
            found.append(f"RESUBMITTED: {server.state.batches_created} batches for {shards} shards")
        assert found == [], report(found, server, result)
        server.state.scenario.bad_download = None  # the proxy recovers; a resume must finish the job
    elif result.code == 0:
        found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
        if server.state.batches_created != shards:
            found.append(f"RESUBMITTED: {server.state.batches_created} batches for {shards} shards")
        assert found == [], report(found, server, result)
    if mode == "always" or result.code != 0:
        first = result
        result = run_job(tmp_path, server.base_url)
        found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
        if first.code not in (0, 3):
            found.insert(0, f"FIRST RUN EXIT {first.code} (expected 0, or 3 to resume): {first.tail(8)}")
        assert found == [], report(found, server, result)
    if server.state.batches_created != shards:
        pytest.fail(f"RESUBMITTED: {server.state.batches_created} batches for {shards} shards")
    assert set(statuses(tmp_path).values()) == {"succeeded"}, statuses(tmp_path)


# --------------------------------------------------------------------------------------- 3. odd fields


ODD_FIELDS = {
    "usage_list": Scenario(usage_kind="list"),
    "usage_string": Scenario(usage_kind="string"),
    "usage_huge": Scenario(usage_kind="huge"),
    "created_at_string": Scenario(created_at_string=True),
    "unknown_status": Scenario(unknown_status="throttled", unknown_status_s=1.5),
    "status_backwards": Scenario(backwards=True),
}


@pytest.mark.parametrize("variant", sorted(ODD_FIELDS))
def test_odd_server_fields_never_crash_a_run(hostile: Start, tmp_path: Path, variant: str) -> None:
    """Wrong types, an unknown status, a status that moves backwards, an absurd usage: the run finishes, every
    item succeeds, and nothing crashes."""
    scenario = ODD_FIELDS[variant]
    scenario.name = variant
    server = hostile(scenario)
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
    if set(statuses(tmp_path).values()) != {"succeeded"}:
        found.append(f"NOT ALL SUCCEEDED: {statuses(tmp_path)}")
    if variant == "usage_huge":
        with sqlite3.connect(tmp_path / "work" / "ledger.sqlite") as conn:
            costs = [row[0] for row in conn.execute("SELECT cost_usd FROM items WHERE status = 'succeeded'")]
        absurd = [c for c in costs if c is not None and c > 1e6]
        if absurd:
            found.append(f"ABSURD COST recorded as if true: {absurd[:2]}")
    assert found == [], report(found, server, result)


# ----------------------------------------------------------------------------------- 4. unbounded waits


UNBOUNDED = {
    "list_cursor_repeats": Scenario(list_cycle="repeat"),
    "list_cursor_cycles": Scenario(list_cycle="cycle"),
    "create_5xx_forever": Scenario(create_fault="503_forever", create_faults=-1),
    "create_429_absurd_retry_after": Scenario(create_429_retry_after=10**9),
    "base_url_without_v1": Scenario(),
}


@pytest.mark.parametrize("variant", sorted(UNBOUNDED))
def test_every_wait_is_bounded(hostile: Start, tmp_path: Path, variant: str) -> None:
    """A cursor that never advances, creates that never succeed, an absurd retry-after, a base URL without
    ``/v1``: the run stops with exit 3 and a message within ``WAIT_BOUND_S``."""
    scenario = UNBOUNDED[variant]
    scenario.name = variant
    server = hostile(scenario)
    keys = make_job(tmp_path)
    api = server.origin if variant == "base_url_without_v1" else server.base_url
    result = run_job(tmp_path, api, timeout_s=WAIT_BOUND_S + 30)
    found = problems(server, tmp_path, result, keys=keys, codes=(3,), bound_s=WAIT_BOUND_S, items_required=False)
    if result.code == 3 and not result.stderr.strip():
        found.append("EXIT 3 WITHOUT A MESSAGE")
    if variant == "base_url_without_v1" and "/v1" not in result.text:
        found.append("the message does not mention /v1")
    if server.state.batches_created > ITEMS // SHARD_SIZE:
        found.append(f"BATCHES: {server.state.batches_created} created for {ITEMS // SHARD_SIZE} shards")
    assert found == [], report(found, server, result)


# ------------------------------------------------------------------------------ 5. bad images in 200 lines


@pytest.mark.parametrize("fault", ["nonstrict_b64", "empty_b64", "not_image", "wrong_format"])
def test_a_200_line_without_a_real_image_is_a_failure(hostile: Start, tmp_path: Path, fault: str) -> None:
    """Every 3rd line of every batch carries a bad image: those items fail with an error code (after at most
    one retry), the others succeed, exit 1, and nothing bad is on disk as a success."""
    server = hostile(Scenario(name=fault, image_fault=fault, image_fault_every=3))
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(1,), bound_s=FINISH_BOUND_S)
    rows = ledger_items(tmp_path) or []
    by_cid = {row["custom_id"]: row for row in rows}
    for cid in sorted(server.state.faulted):
        row = by_cid.get(cid)
        if row is None:
            found.append(f"{cid}: not in the ledger")
        elif row["status"] == "succeeded":
            found.append(f"BAD IMAGE ACCEPTED: {cid} succeeded ({row['format']}, {row['bytes']} bytes)")
        elif row["status"] not in ("failed", "superseded") or (row["status"] == "failed" and not row["error_code"]):
            found.append(f"{cid}: status {row['status']} error_code {row['error_code']}")
    attempts: dict[str, int] = {}
    for row in rows:
        attempts[row["item_key"]] = max(attempts.get(row["item_key"], 0), row["attempt"])
    if any(n > 2 for n in attempts.values()):
        found.append(f"RETRIED MORE THAN ONCE: {attempts}")
    assert found == [], report(found, server, result)


def test_two_different_200_lines_for_one_custom_id(hostile: Start, tmp_path: Path) -> None:
    """Every 3rd item has two different valid 200 lines: one wins, once; the file on disk matches the ledger."""
    server = hostile(Scenario(name="duplicate_line", image_fault="duplicate_line", image_fault_every=3))
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(0,), bound_s=FINISH_BOUND_S)
    # [output] dir = "out" resolves under the workdir; also look beside the job in case that changes
    images = [p for d in (tmp_path / "out", tmp_path / "work" / "out") for p in d.rglob("*") if p.is_file()]
    if len(images) != ITEMS:
        found.append(f"FILES ON DISK: {len(images)} image files for {ITEMS} items")
    assert found == [], report(found, server, result)


# -------------------------------------------------------------------------------------- 6. secret echo


@pytest.mark.parametrize("echo", ["line_errors", "batch_errors"])
def test_echoed_key_is_never_stored(hostile: Start, tmp_path: Path, echo: str) -> None:
    """Per-line error messages (every 3rd line) or a failed batch's ``errors.data[].message`` echo the bearer
    token: the key must not reach the ledger, images, shards, logs or the terminal."""
    server = hostile(Scenario(name=echo, echo_secret=echo, fail_every=3))
    keys = make_job(tmp_path)
    result = run_job(tmp_path, server.base_url)
    found = problems(server, tmp_path, result, keys=keys, codes=(1,), bound_s=FINISH_BOUND_S)
    export = run_cli(["ledger", "export", "--format", "jsonl", "--workdir", str(tmp_path / "work")], cwd=tmp_path)
    status = run_cli(["status", "--workdir", str(tmp_path / "work")], cwd=tmp_path)
    for name, extra in (("ledger export", export), ("status", status)):
        if SECRET in extra.text or SECRET.split("-")[-1] in extra.text:
            found.append(f"SECRET LEAKED in `{name}` output")
    assert found == [], report(found, server, result)


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_credentials_in_the_api_url_are_refused(hostile: Start, tmp_path: Path, where: str) -> None:
    """``--api`` carrying a credential (user info or a query string) is refused with a clear message, exit 2,
    and the credential is not echoed."""
    server = hostile(Scenario(name=f"api-{where}"))
    keys = make_job(tmp_path)
    if where == "userinfo":
        api = f"http://user:{SECRET}@{server.host}:{server.port}/v1"
    else:
        api = f"{server.base_url}?api_key={SECRET}"
    result = run_job(tmp_path, api)
    found = problems(server, tmp_path, result, keys=keys, codes=(2,), bound_s=FINISH_BOUND_S, items_required=False)
    if server.state.requests:
        found.append(f"REQUESTS SENT with a credential in the URL: {dict(server.state.requests)}")
    assert found == [], report(found, server, result)
