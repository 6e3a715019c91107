"""``batchpipe report``: a static HTML contact sheet of a run or a job, read from the ledger.

What it writes into the output folder (nothing is fetched from the network; it opens from disk offline):

* ``index.html``: the summary (items by status, C2PA states, estimated vs actual cost, each batch's N/M items
  succeeded, errors grouped by code with examples) and the contact sheet: a grid of thumbnails, each with a
  badge (C2PA state, issuer, claim generator), a link to the full image and one to the item's ledger record;
  filters by status, C2PA state, variant and error code, paged 500 cards at a time (``report.js``).
* ``items.js``: the small data block the sheet filters over (one compact array per item, repeated strings as
  indexes into tables); loaded with ``<script src>`` because ``fetch`` of a local file is refused by browsers.
* ``thumbs/<aa>/<sha256>.webp``: thumbnails (256 px, Pillow), separate files, never inlined; named by the
  image's sha256, so a report written again into the same folder makes only the new ones.
* ``records/NNNN.html``: the ledger records, 500 a page, each under an anchor named by its ``custom_id``.
* ``items.csv`` and ``items.jsonl``: the same rows for a spreadsheet or a script.

It reads the ledger only through the :class:`~batchpipe.ports.Ledger` Protocol.
"""

from __future__ import annotations

import csv
import html
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from batchpipe.domain.modeltable import ModelTable
from batchpipe.domain.records import ItemRow
from batchpipe.domain.spec import estimate_usage, request_cost_usd
from batchpipe.errors import InputError
from batchpipe.ports import Ledger
from batchpipe.runtime.images import ImageReader

__all__ = ["PAGE_SIZE", "THUMB_PX", "ReportResult", "c2pa_badge", "write_report"]

#: Cards per page of the sheet and records per page of ``records/``.
PAGE_SIZE: Final = 500
#: The longest side of a thumbnail, in pixels.
THUMB_PX: Final = 256
#: Examples kept per error code in the summary.
ERROR_EXAMPLES: Final = 5
#: An error message in the data block is cut to this many characters (the record page has all of it).
MESSAGE_CHARS: Final = 240


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the index path, counts, thumbnails made and reused, bytes and seconds."""

    index: Path
    title: str
    items: int
    counts: dict[str, int]
    thumbs_made: int = 0
    thumbs_reused: int = 0
    thumbs_failed: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def c2pa_badge(c2pa_json: str | None) -> tuple[str | None, str | None]:
    """``(issuer, claim_generator)`` of an item's C2PA report (``c2pa_json``: one image's dict, or a list of them
    for ``n`` > 1, when the first is used); ``(None, None)`` when absent or unreadable."""
    if not c2pa_json:
        return None, None
    try:
        parsed = orjson.loads(c2pa_json)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(parsed, list):
        first = parsed[0] if parsed else {}
        parsed = first.get("c2pa", first) if isinstance(first, dict) else {}
    if not isinstance(parsed, dict):
        return None, None
    issuer, generator = parsed.get("issuer"), parsed.get("claim_generator")
    return (issuer if isinstance(issuer, str) else None, generator if isinstance(generator, str) else None)


def _estimate(row: ItemRow, models: ModelTable | None) -> float | None:
    try:
        body = row.body
    except orjson.JSONDecodeError:
        return None
    return request_cost_usd(row.model, estimate_usage(body, models), models=models)


class _Table:
    """Strings interned as small ints for the data block."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, value: str | None) -> int:
        text = value or ""
        found = self._index.get(text)
        if found is None:
            found = self._index[text] = len(self.values)
            self.values.append(text)
        return found


def _make_thumb(source: Path | str, target: Path, read: Callable[[str], bytes] | None) -> bool:
    """Write the WebP thumbnail of the image at ``source`` (a local path, or a URI that ``read`` fetches) to
    ``target``; False when it cannot be read or decoded."""
    from PIL import Image  # lazy: Pillow costs ~0.1 s to import, and only the report needs it here

    try:
        if isinstance(source, str):
            if read is None:
                return False
            handle: Path | io.BytesIO = io.BytesIO(read(source))
        else:
            handle = source
        with Image.open(handle) as opened:
            opened.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
            opened.thumbnail((THUMB_PX, THUMB_PX))
            image = opened if opened.mode in ("RGB", "RGBA") else opened.convert("RGBA")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            image.save(tmp, "WEBP", quality=75, method=4)
            tmp.replace(target)
        return True
    except (OSError, ValueError, InputError, Image.DecompressionBombError):
        return False


def _rel(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_uri()


_CSV_FIELDS: Final = [
    "custom_id",
    "key",
    "job",
    "attempt",
    "run_id",
    "status",
    "error_code",
    "error_message",
    "c2pa_state",
    "c2pa_issuer",
    "c2pa_claim_generator",
    "variant",
    "product_key",
    "model",
    "batch_id",
    "output_uri",
    "output_path",
    "sha256",
    "cost_usd",
    "estimated_cost_usd",
    "prompt",
    "created_at",
    "updated_at",
]


def _iso(ts: object) -> str:
    if not isinstance(ts, int | float):
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def write_report(
    ledger: Ledger,
    out_dir: Path,
    *,
    run_id: str | None = None,
    job: str | None = None,
    models: ModelTable | None = None,
    page_size: int = PAGE_SIZE,
    workers: int | None = None,
    reader: ImageReader | None = None,
) -> ReportResult:
    """Write the contact sheet of ``run_id`` (every attempt the run made), or of ``job`` (each item's latest
    attempt across runs), or else of the latest run, into ``out_dir``. ``reader`` reads images that are not
    local files (``s3://``: thumbnails from their bytes, each linked to a presigned URL); without it they get no
    thumbnail. Raises :class:`~batchpipe.errors.InputError` when there is nothing to report (no such run, no
    runs)."""
    started = time.monotonic()
    if run_id is None and job is None:
        latest = ledger.latest_run()
        if latest is None:
            raise InputError("the ledger has no runs yet; run a job first", file="ledger")
        run_id = str(latest["run_id"])
    if run_id is not None:
        info = ledger.run_info(run_id)
        if info is None:
            raise InputError(f"no run {run_id!r} in the ledger", file="ledger", field="--run")
        rows: Iterable[ItemRow] = ledger.items(run_id=run_id)
        title = f"run {run_id} (job {info['job']}, {info['status']}, api {info['api']})"
        report_job: str | None = str(info["job"])
    else:
        assert job is not None
        if ledger.latest_run(job) is None:
            raise InputError(f"no job {job!r} in the ledger", file="ledger", field="--job")
        rows = ledger.items(job=job, latest_only=True)
        title = f"job {job} (latest attempt of each item)"
        report_job = None

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "records").mkdir(exist_ok=True)
    statuses, c2pas, issuers, generators, variants, codes, batches_t, dirs = (_Table() for _ in range(8))
    data: list[list[Any]] = []
    counts: Counter[str] = Counter()
    c2pa_counts: Counter[str] = Counter()
    error_counts: Counter[str] = Counter()
    error_examples: dict[str, list[tuple[str, str, str]]] = {}
    per_batch: dict[str, Counter[str]] = {}
    runs: set[str] = set()
    thumbs_todo: dict[Path, Path | str] = {}
    thumbs_reused = 0
    estimated = actual = 0.0
    unknown_cost = 0
    estimated_items = 0
    record_page: list[dict[str, object]] = []
    page_no = 0
    result = ReportResult(index=out_dir / "index.html", title=title, items=0, counts={})

    with (
        (out_dir / "items.csv").open("w", encoding="utf-8", newline="") as csv_file,
        (out_dir / "items.jsonl").open("wb") as jsonl_file,
    ):
        writer = csv.DictWriter(csv_file, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            runs.add(row.run_id)
            index = len(data)
            if index and index % page_size == 0:
                page_no += 1
                _write_records(out_dir, page_no, record_page, title)
                record_page = []
            counts[row.status] += 1
            issuer, generator = c2pa_badge(row.c2pa_json)
            if row.c2pa_state:
                c2pa_counts[row.c2pa_state] += 1
            if row.error_code:
                error_counts[row.error_code] += 1
                examples = error_examples.setdefault(row.error_code, [])
                if len(examples) < ERROR_EXAMPLES:
                    examples.append(
                        (row.item_key, row.error_message or "", f"records/{page_no + 1:04d}.html#{row.custom_id}")
                    )
            if row.batch_id:
                per_batch.setdefault(row.batch_id, Counter())[row.status] += 1
            estimate = _estimate(row, models) if row.status != "invalid" else None
            if row.status != "superseded":  # what the current items should cost; superseded attempts were redone
                estimated += estimate or 0.0
                estimated_items += 1
            if row.cost_usd is not None:
                actual += row.cost_usd
            elif row.status == "succeeded":
                unknown_cost += 1
            thumb_rel = full_rel = ""
            path = row.output_path
            if path is not None and row.sha256:
                full_rel = _rel(path, out_dir)
                thumb = out_dir / "thumbs" / row.sha256[:2] / f"{row.sha256}.webp"
                thumb_rel = thumb.relative_to(out_dir).as_posix()
                if thumb.exists():
                    thumbs_reused += 1
                else:
                    thumbs_todo.setdefault(thumb, path)
            elif row.output_uri and row.sha256 and reader is not None:  # an image in object storage
                full_rel = reader.link(row.output_uri) or row.output_uri
                thumb = out_dir / "thumbs" / row.sha256[:2] / f"{row.sha256}.webp"
                thumb_rel = thumb.relative_to(out_dir).as_posix()
                if thumb.exists():
                    thumbs_reused += 1
                else:
                    thumbs_todo.setdefault(thumb, row.output_uri)
            elif row.output_uri:
                full_rel = row.output_uri
            record = row.to_record()
            record.pop("body_json", None)
            body = record.get("body")
            prompt = body.get("prompt") if isinstance(body, dict) else None
            record["estimated_cost_usd"] = estimate
            record["created_at_iso"] = _iso(row.created_at)
            record["updated_at_iso"] = _iso(row.updated_at)
            record_page.append(record)
            jsonl_file.write(orjson.dumps(record, default=str) + b"\n")
            writer.writerow(
                {
                    "custom_id": row.custom_id,
                    "key": row.item_key,
                    "job": row.job,
                    "attempt": row.attempt,
                    "run_id": row.run_id,
                    "status": row.status,
                    "error_code": row.error_code or "",
                    "error_message": row.error_message or "",
                    "c2pa_state": row.c2pa_state or "",
                    "c2pa_issuer": issuer or "",
                    "c2pa_claim_generator": generator or "",
                    "variant": row.variant or "",
                    "product_key": row.product_key or "",
                    "model": row.model,
                    "batch_id": row.batch_id or "",
                    "output_uri": row.output_uri or "",
                    "output_path": str(path) if path else "",
                    "sha256": row.sha256 or "",
                    "cost_usd": "" if row.cost_usd is None else f"{row.cost_usd:.6f}",
                    "estimated_cost_usd": "" if estimate is None else f"{estimate:.6f}",
                    "prompt": prompt if isinstance(prompt, str) else "",
                    "created_at": _iso(row.created_at),
                    "updated_at": _iso(row.updated_at),
                }
            )
            thumb_dir, _, thumb_name = thumb_rel.rpartition("/")
            data.append(
                [
                    row.custom_id,
                    row.item_key,
                    statuses(row.status),
                    c2pas(row.c2pa_state),
                    issuers(issuer),
                    generators(generator),
                    variants(row.variant),
                    codes(row.error_code),
                    (row.error_message or "")[:MESSAGE_CHARS],
                    dirs(thumb_dir),
                    thumb_name.removesuffix(".webp"),
                    full_rel,
                    page_no + 1,
                    row.attempt,
                    batches_t(row.batch_id),
                    None if row.cost_usd is None else round(row.cost_usd, 6),
                ]
            )
        if record_page or not data:
            page_no += 1
            _write_records(out_dir, page_no, record_page, title)

    made, failed = _make_thumbs(thumbs_todo, workers, reader.read if reader is not None else None)
    failed_names = {t.name.removesuffix(".webp") for t in failed}
    if failed_names:
        for entry in data:
            if entry[10] in failed_names:
                entry[10] = ""
    batch_rows = _batch_rows(ledger, runs, per_batch)
    (out_dir / "items.js").write_bytes(
        b"window.BP_DATA = "
        + orjson.dumps(
            {
                "tables": {
                    "status": statuses.values,
                    "c2pa": c2pas.values,
                    "issuer": issuers.values,
                    "generator": generators.values,
                    "variant": variants.values,
                    "code": codes.values,
                    "batch": batches_t.values,
                    "dir": dirs.values,
                },
                "items": data,
                "pageSize": page_size,
            }
        )
        + b";\n"
    )
    (out_dir / "report.js").write_text(_SCRIPT, encoding="utf-8")
    (out_dir / "report.css").write_text(_STYLE, encoding="utf-8")
    result.items = len(data)
    result.counts = dict(counts)
    result.errors = dict(error_counts)
    result.thumbs_made, result.thumbs_failed, result.thumbs_reused = made, len(failed), thumbs_reused
    summary = _summary_html(
        title=title,
        counts=counts,
        c2pa_counts=c2pa_counts,
        error_counts=error_counts,
        error_examples=error_examples,
        batch_rows=batch_rows,
        estimated=estimated,
        estimated_items=estimated_items,
        actual=actual,
        unknown_cost=unknown_cost,
        empty_run_of=report_job if not data else None,
    )
    result.index.write_text(_page(title, summary), encoding="utf-8")
    result.total_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    result.seconds = time.monotonic() - started
    return result


def _make_thumbs(
    todo: Mapping[Path, Path | str], workers: int | None, read: Callable[[str], bytes] | None
) -> tuple[int, list[Path]]:
    if not todo:
        return 0, []
    jobs = list(todo.items())
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda pair: _make_thumb(pair[1], pair[0], read), jobs))
    failed = [thumb for (thumb, _), ok in zip(jobs, done, strict=True) if not ok]
    return len(jobs) - len(failed), failed


def _batch_rows(ledger: Ledger, runs: set[str], per_batch: Mapping[str, Counter[str]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for run in sorted(runs):
        for batch in ledger.batches(run_id=run):
            items = per_batch.get(batch.batch_id, Counter())
            total = sum(items.values())
            rc = batch.request_counts
            rows.append(
                [
                    batch.batch_id,
                    batch.shard,
                    batch.status,
                    f"{items.get('succeeded', 0)}/{total}",
                    ", ".join(f"{k} {v}" for k, v in sorted(items.items()) if k != "succeeded") or "-",
                    f"{rc.get('completed', 0)}/{rc.get('total', 0)} ({rc.get('failed', 0)} failed)" if rc else "-",
                ]
            )
    return rows


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _t(text: object) -> str:
    """Escaped for element text (quotes left as they are: smaller pages of JSON)."""
    return html.escape(str(text), quote=False)


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _summary_html(
    *,
    title: str,
    counts: Counter[str],
    c2pa_counts: Counter[str],
    error_counts: Counter[str],
    error_examples: Mapping[str, list[tuple[str, str, str]]],
    batch_rows: list[list[str]],
    estimated: float,
    estimated_items: int,
    actual: float,
    unknown_cost: int,
    empty_run_of: str | None = None,
) -> str:
    """The summary block. ``empty_run_of``: the job of a run with no item, which the block then explains (a nightly
    re-run of an unchanged catalog sends nothing) and points to the job's own report."""
    total = sum(counts.values())
    chips = " ".join(f'<span class="chip st-{_e(k)}">{_e(k)} <b>{v}</b></span>' for k, v in counts.most_common())
    c2pa_chips = (
        " ".join(f'<span class="chip c2-{_e(k)}">{_e(k)} <b>{v}</b></span>' for k, v in c2pa_counts.most_common())
        or "none checked"
    )
    cost = (
        f"estimated <b>${estimated:,.4f}</b> for {estimated_items} current request(s) · actual "
        f"<b>${actual:,.4f}</b> recorded (batch prices)"
    )
    if unknown_cost:
        cost += f" · {unknown_cost} succeeded item(s) with an unknown cost"
    errors = ""
    if error_counts:
        parts = []
        for code, count in error_counts.most_common():
            examples = "".join(
                f'<li><a href="{_e(link)}">{_e(key)}</a>: {_e(message[:MESSAGE_CHARS])}</li>'
                for key, message, link in error_examples.get(code, [])
            )
            parts.append(
                f"<details><summary><code>{_e(code)}</code> × {count} "
                f'<a href="#" class="pick" data-code="{_e(code)}">show</a></summary><ul>{examples}</ul></details>'
            )
        errors = "<h2>Errors by code</h2>" + "".join(parts)
    batches = (
        "<details><summary>Batches: "
        + str(len(batch_rows))
        + "</summary>"
        + _table(["batch", "shard", "status", "items succeeded N/M", "other items", "service counts"], batch_rows)
        + "</details>"
        if batch_rows
        else ""
    )
    empty = (
        "<p>No item in this run: a re-run sends nothing for the rows whose item already succeeded from the same row "
        "and job spec (the run's summary line says how many it skipped). Each item's latest attempt: "
        f"<code>batchpipe report --job {_e(empty_run_of)}</code>.</p>"
        if empty_run_of is not None
        else ""
    )
    return (
        f'<section class="summary"><p>{total} item(s): {chips}</p>{empty}<p>C2PA: {c2pa_chips}</p>'
        f"<p>Cost: {cost}</p>{batches}{errors}</section>"
    )


def _page(title: str, summary: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>batchpipe report: {_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="report.css"></head>
<body>
<header><h1>batchpipe report</h1><p class="title">{_e(title)}</p>
<p class="files"><a href="items.csv">items.csv</a> · <a href="items.jsonl">items.jsonl</a> ·
<a href="records/0001.html">ledger records</a></p></header>
{summary}
<form id="filters" class="filters">
<label>status <select id="f-status"></select></label>
<label>C2PA <select id="f-c2pa"></select></label>
<label>variant <select id="f-variant"></select></label>
<label>error <select id="f-code"></select></label>
<label>key <input id="f-key" type="search" placeholder="contains..."></label>
<span id="f-count"></span>
</form>
<nav class="pager" id="pager-top"></nav>
<main id="grid" class="grid"><noscript>The contact sheet needs JavaScript; the records are in
<a href="records/0001.html">records/</a> and <a href="items.csv">items.csv</a>.</noscript></main>
<nav class="pager" id="pager-bottom"></nav>
<script src="items.js"></script>
<script src="report.js"></script>
</body></html>
"""


def _cell(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def _write_records(out_dir: Path, page: int, records: list[dict[str, object]], title: str) -> None:
    sections = []
    for record in records:
        key = str(record.get("key"))
        cid = str(record.get("custom_id"))
        cells = "".join(
            f"<tr><th>{_t(name)}</th><td>{_t(_cell(value))}</td></tr>"
            for name, value in record.items()
            if value not in (None, "", {}, [])
        )
        sections.append(
            f'<section id="{_e(cid)}"><h2>{_e(key)} <small>{_e(cid)} · '
            f"{_e(record.get('status'))}</small></h2><table>{cells}</table></section>"
        )
    nav = '<p><a href="../index.html">contact sheet</a>'
    if page > 1:
        nav += f' · <a href="{page - 1:04d}.html">previous</a>'
    nav += f' · <a href="{page + 1:04d}.html">next</a></p>' if len(records) else "</p>"
    (out_dir / "records" / f"{page:04d}.html").write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>records {page}: {_e(title)}</title>'
        f'<link rel="stylesheet" href="../report.css"></head><body class="records"><h1>Ledger records, page {page}'
        f"</h1><p>{_e(title)}</p>{nav}{''.join(sections)}{nav}</body></html>",
        encoding="utf-8",
    )


_STYLE: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f4f2;color:#1d1d1f}
header{padding:12px 20px;background:#1d1d1f;color:#fff}header h1{margin:0;font-size:18px}
header a{color:#9cf}.title{margin:2px 0;color:#ddd}.files{margin:2px 0}
.summary{padding:8px 20px;background:#fff;border-bottom:1px solid #ddd}.summary h2{font-size:15px;margin:10px 0 4px}
.chip{display:inline-block;padding:1px 8px;margin:2px;border-radius:10px;background:#e8e8e8}
.st-succeeded,.c2-trusted{background:#d6f5dd}.st-failed,.c2-invalid,.c2-unreadable{background:#fbd8d5}
.st-superseded{background:#eee;color:#777}.c2-valid{background:#fff2c7}.c2-missing{background:#f1e2ff}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
.filters{position:sticky;top:0;z-index:2;padding:8px 20px;background:#fafafa;border-bottom:1px solid #ddd}
.filters label{margin-right:12px}#f-count{color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;padding:12px 20px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden;display:flex;flex-direction:column}
.card .img{display:block;aspect-ratio:1;
  background:#e9e9e9 repeating-conic-gradient(#ddd 0 25%,#eee 0 50%) 0 0/16px 16px}
.card img{width:100%;height:100%;object-fit:contain;display:block}
.card .none{display:flex;align-items:center;justify-content:center;height:100%;color:#a33;padding:8px;text-align:center}
.card .meta{padding:6px 8px;font-size:12px}.card .key{font-weight:600;word-break:break-all}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;margin:2px 2px 0 0;background:#e8e8e8}
.badge.trusted{background:#2e7d32;color:#fff}.badge.valid{background:#f9a825}.badge.invalid,.badge.unreadable{background:#c62828;color:#fff}
.badge.missing{background:#7b1fa2;color:#fff}.badge.failed{background:#c62828;color:#fff}.badge.succeeded{background:#d6f5dd}
.issuer{color:#555}.err{color:#a33}.pager{padding:4px 20px}.pager button{margin-right:4px}
.records section{background:#fff;margin:8px 20px;padding:4px 12px;border:1px solid #ddd}
.records h1,.records>p{margin:8px 20px}
.records td{word-break:break-all;font-size:12px}.records th{font-weight:500;color:#555;white-space:nowrap}
"""

_SCRIPT: Final = r"""(function () {
  "use strict";
  var D = window.BP_DATA, T = D.tables, items = D.items, size = D.pageSize, page = 0, shown = [];
  var byKey = new Intl.Collator(undefined, {numeric: true});
  items.sort(function (a, b) { return byKey.compare(a[1], b[1]) || a[13] - b[13]; });
  var $ = function (id) { return document.getElementById(id); };
  function fill(id, table, col, label) {
    var counts = {}, sel = $(id);
    items.forEach(function (it) { counts[it[col]] = (counts[it[col]] || 0) + 1; });
    var opts = ['<option value="">' + label + ' (all)</option>'];
    if (id === "f-status") opts.push('<option value="!superseded">all but superseded</option>');
    Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a]; }).forEach(function (k) {
      opts.push('<option value="' + k + '">' + esc(table[k] || "(none)") + " (" + counts[k] + ")</option>");
    });
    sel.innerHTML = opts.join("");
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function card(it) {
    var st = T.status[it[2]], c2 = T.c2pa[it[3]], iss = T.issuer[it[4]], gen = T.generator[it[5]];
    var thumb = it[10] ? T.dir[it[9]] + "/" + it[10] + ".webp" : "";
    var rec = "records/" + ("000" + it[12]).slice(-4) + ".html#" + encodeURIComponent(it[0]);
    var img = thumb
      ? '<img loading="lazy" decoding="async" src="' + esc(thumb) + '" alt="' + esc(it[1]) + '">'
      : '<span class="none">' + esc(T.code[it[7]] || st) + "</span>";
    var full = it[11] ? '<a class="img" href="' + esc(it[11]) + '" title="full image">' + img + "</a>"
      : '<span class="img">' + img + "</span>";
    var html = '<div class="card">' + full + '<div class="meta"><div class="key">' + esc(it[1]) + "</div>";
    html += '<span class="badge ' + esc(st) + '">' + esc(st) + "</span>";
    if (c2) html += '<span class="badge ' + esc(c2) + '" title="C2PA state">C2PA ' + esc(c2) + "</span>";
    if (T.variant[it[6]]) html += '<span class="badge">' + esc(T.variant[it[6]]) + "</span>";
    if (iss || gen) html += '<div class="issuer">' + esc(iss || "?") + (gen ? " · " + esc(gen) : "") + "</div>";
    if (T.code[it[7]]) html += '<div class="err" title="' + esc(it[8]) + '"><code>' + esc(T.code[it[7]]) +
      "</code> " + esc(it[8].slice(0, 80)) + "</div>";
    html += '<div><a href="' + rec + '">ledger record</a>' + (it[13] > 1 ? " · attempt " + it[13] : "") + "</div>";
    return html + "</div></div>";
  }
  function apply() {
    var fs = $("f-status").value, fc = $("f-c2pa").value, fv = $("f-variant").value, fe = $("f-code").value;
    var fk = $("f-key").value.toLowerCase(), sup = T.status.indexOf("superseded");
    shown = items.filter(function (it) {
      if (fs === "!superseded") { if (it[2] === sup) return false; }
      else if (fs !== "" && String(it[2]) !== fs) return false;
      if (fc !== "" && String(it[3]) !== fc) return false;
      if (fv !== "" && String(it[6]) !== fv) return false;
      if (fe !== "" && String(it[7]) !== fe) return false;
      return !fk || it[1].toLowerCase().indexOf(fk) >= 0;
    });
    page = 0; render();
  }
  function pager(el) {
    var pages = Math.max(1, Math.ceil(shown.length / size)), h = "";
    if (pages > 1) {
      h += '<button data-p="' + (page - 1) + '"' + (page ? "" : " disabled") + ">previous</button>";
      h += " page " + (page + 1) + " of " + pages + " ";
      h += '<button data-p="' + (page + 1) + '"' + (page + 1 < pages ? "" : " disabled") + ">next</button>";
    }
    el.innerHTML = h;
  }
  function render() {
    $("grid").innerHTML = shown.slice(page * size, (page + 1) * size).map(card).join("") ||
      "<p>No item matches these filters.</p>";
    $("f-count").textContent = shown.length + " of " + items.length + " item(s)";
    pager($("pager-top")); pager($("pager-bottom"));
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (t.dataset && t.dataset.p !== undefined) { page = Number(t.dataset.p); render(); window.scrollTo(0, 0); }
    if (t.classList && t.classList.contains("pick")) {
      ev.preventDefault(); $("f-code").value = String(T.code.indexOf(t.dataset.code)); apply();
      $("filters").scrollIntoView();
    }
  });
  fill("f-status", T.status, 2, "status"); fill("f-c2pa", T.c2pa, 3, "C2PA");
  fill("f-variant", T.variant, 6, "variant");
  fill("f-code", T.code, 7, "error");
  var hash = new URLSearchParams(location.hash.slice(1));
  ["status", "c2pa", "variant", "code"].forEach(function (name) {
    var v = hash.get(name), table = {status: T.status, c2pa: T.c2pa, variant: T.variant, code: T.code}[name];
    if (v !== null && table.indexOf(v) >= 0) $("f-" + name).value = String(table.indexOf(v));
  });
  if (!hash.get("status") && sup_present()) $("f-status").value = "!superseded";
  function sup_present() { return T.status.indexOf("superseded") >= 0; }
  ["f-status", "f-c2pa", "f-variant", "f-code"].forEach(function (id) { $(id).addEventListener("change", apply); });
  $("f-key").addEventListener("input", apply);
  $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); });
  apply();
})();
"""
