"""``batchpipe verify PATH... [--trust default|emulator|none|FILE.pem] [--json]``: check C2PA manifests.

Exit codes: 0 when every file is ``trusted`` or ``valid``; 1 when any is ``invalid``, ``missing`` or
``unreadable`` (or no file was found); 2 for usage errors (e.g. an unknown ``--trust`` value).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from batchpipe.errors import ProvenanceError
from batchpipe.logs import json_only
from batchpipe.provenance.trust import TrustConfig
from batchpipe.provenance.verify import C2paReport, C2paVerifier

__all__ = ["iter_files", "verify_command", "verify_paths"]

VERIFY_THREADS = 2
"""Worker threads: the c2pa Reader releases the GIL, and reads scale up to the core count (c2pa-notes §3)."""

_STATE_STYLE = {
    "trusted": "bold green",
    "valid": "yellow",
    "invalid": "bold red",
    "missing": "red",
    "unreadable": "magenta",
}


#: Up to this many files, ``verify`` prints the table of every file; beyond, a summary (``--all``: the table).
TABLE_MAX_FILES = 20
#: Problems (not trusted or valid) listed under the summary.
FIRST_PROBLEMS = 10


def _state_table(counts: Counter[str]) -> Table:
    """Files by validation state, in the order of :data:`_STATE_STYLE`."""
    table = Table(title="C2PA states", title_justify="left")
    table.add_column("state")
    table.add_column("files", justify="right")
    for state, style in _STATE_STYLE.items():
        if counts[state]:
            table.add_row(f"[{style}]{state}[/]", str(counts[state]))
    return table


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Yield each path that is not a directory as given, and every file under each directory (recursively,
    sorted, symlinked directories not followed). Anything that is not a directory is yielded for checking."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def verify_paths(verifier: C2paVerifier, files: Iterable[Path]) -> Iterator[tuple[Path, C2paReport]]:
    """Verify ``files`` on :data:`VERIFY_THREADS` threads; yield ``(path, report)`` in input order."""
    with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="c2pa-verify") as pool:
        file_list = list(files)
        yield from zip(file_list, pool.map(verifier.verify_path, file_list), strict=True)


def _json_line(path: Path, report: C2paReport) -> str:
    record: dict[str, object] = {"path": str(path), "c2pa_state": report.state}
    fields = report.to_dict()
    fields.pop("state")
    record.update(fields)
    return json.dumps(record, ensure_ascii=False)


def _table(rows: list[tuple[Path, C2paReport]]) -> Table:
    """A compact table: the JSON output carries every field, this shows what a person scans for."""
    table = Table(title="C2PA verification")
    table.add_column("path", overflow="fold", ratio=3)
    table.add_column("state", no_wrap=True)
    table.add_column("issuer", overflow="fold", ratio=1)
    table.add_column("claim generator", overflow="fold", ratio=2)
    table.add_column("failure codes / reason", overflow="fold", ratio=3)
    for path, report in rows:
        if report.state in ("missing", "unreadable"):
            detail = report.reason or ""
        elif report.failure_codes:
            detail = ", ".join(report.failure_codes)
        else:
            detail = f"anchor: {report.trust_list}" if report.trust_list else ""
        state = f"[{_STATE_STYLE[report.state]}]{report.state}[/]"
        table.add_row(str(path), state, report.issuer or "-", report.claim_generator or "-", detail or "-")
    return table


@click.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--trust",
    "trust_setting",
    default="default",
    show_default=True,
    metavar="default|emulator|none|FILE.pem",
    help="Trust anchors: official C2PA + CAI interim lists (default), those plus the emulator's TEST root "
    "(emulator), none (intact signatures are 'valid'), or a PEM bundle of roots.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file per line (JSONL).")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help=f"The table of every file, however many (default: the table up to {TABLE_MAX_FILES} files; beyond, a "
    "summary by state and the first problems).",
)
def verify_command(paths: tuple[Path, ...], trust_setting: str, as_json: bool, show_all: bool = False) -> None:
    """Check the C2PA Content Credentials of image files (directories are walked recursively).

    Up to 20 files (or with --all) a table of every file; beyond, a summary by state and the first problems.
    Exit 0 if every file is trusted or valid, 1 if any is invalid, missing or unreadable, 2 on usage errors.
    """
    try:
        trust = TrustConfig.from_setting(trust_setting)
        verifier = C2paVerifier(trust)
    except ProvenanceError as exc:
        raise click.BadParameter(str(exc), param_hint="'--trust'") from exc
    as_json = as_json or json_only()  # batchpipe --log-json verify: JSON lines only
    counts: Counter[str] = Counter()
    rows: list[tuple[Path, C2paReport]] = []
    for path, report in verify_paths(verifier, iter_files(paths)):
        counts[report.state] += 1
        if as_json:
            click.echo(_json_line(path, report))
        else:
            rows.append((path, report))
    total = sum(counts.values())
    bad = total - counts["trusted"] - counts["valid"]
    if not as_json:
        console = Console()
        if rows and (show_all or len(rows) <= TABLE_MAX_FILES):
            console.print(_table(rows))
        elif rows:
            problems = [row for row in rows if row[1].state not in ("trusted", "valid")]
            console.print(_state_table(counts))
            if problems:
                shown = problems[:FIRST_PROBLEMS]
                table = _table(shown)
                table.title = f"the first {len(shown)} of {len(problems)} problem(s)"
                console.print(table)
            console.print(f"{len(rows)} files: the table of every file with --all, every field with --json")
        summary = ", ".join(f"{counts[s]} {s}" for s in _STATE_STYLE if counts[s]) or "no files found"
        console.print(f"{total} file(s) checked with --trust {trust.setting}: {summary}", highlight=False)
    if bad or total == 0:
        click.get_current_context().exit(1)
