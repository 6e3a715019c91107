"""The model table and the lifecycle check, driven by the shipped data file (batchpipe/data/image-models.toml).

Every model x parameter rule is read from the table and checked both ways (accepted when the row lists the value,
refused otherwise); every lifecycle case runs with a pinned clock.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchpipe.domain import spec as rules
from batchpipe.domain.lifecycle import LifecycleError, ModelPolicy, clock_from_env
from batchpipe.domain.modeltable import ModelFacts, ModelTable, ModelTableError, shipped_table
from batchpipe.errors import JobSpecError, NotFoundError
from batchpipe.input.jobspec import JobSpec

REPO = Path(__file__).resolve().parents[1]
GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"
TABLE = shipped_table()
ROWS = list(TABLE)
IDS = [f.name for f in ROWS]
REF = {"file_id": "file-1"}


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _policy(now: str, **kwargs: object) -> tuple[ModelPolicy, list[str]]:
    warnings: list[str] = []
    return ModelPolicy(TABLE, clock=lambda: _at(now), on_warning=warnings.append, **kwargs), warnings  # type: ignore[arg-type]


def _body(facts: ModelFacts, endpoint: str, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {"model": facts.name, "prompt": "a mug", **fields}
    if endpoint == EDIT:
        body.setdefault("images", [REF])
    return body


def _params(facts: ModelFacts, endpoint: str, **fields: object) -> list[str]:
    return [p.field for p in rules.check_image_request(endpoint, _body(facts, endpoint, **fields))]


# ------------------------------------------------------------------------------------------- the data file


def test_every_row_has_a_source_a_check_date_and_resolvable_links() -> None:
    assert len(TABLE) >= 15
    for facts in TABLE:
        assert facts.source and facts.checked == dt.date(2026, 11, 30)
        if facts.alias_of:
            target = TABLE.get(facts.alias_of)
            assert target is not None
            assert (facts.qualities, facts.sizes, facts.batch, facts.shutdown) == (
                target.qualities,
                target.sizes,
                target.batch,
                target.shutdown,
            )
        for other in facts.replacement:
            assert other in TABLE
        if facts.shutdown is not None:
            assert facts.replacement and facts.lifecycle_source


def test_the_current_lineup_and_the_retired_models() -> None:
    for name in (
        "gpt-image-2",
        "gpt-image-2-2026-04-21",
        "gpt-image-2.5-sunburst",
        "gpt-image-2.5-sunburst-2026-09-08",
        "gpt-image-2.5-flare",
        "gpt-image-2.5-flare-2026-09-08",
        "gpt-image-2.6-sunburst",
        "gpt-image-2.6-flare",
    ):
        assert TABLE.get(name) is not None and TABLE.get(name).shutdown is None  # type: ignore[union-attr]
    assert TABLE.get("gpt-image-2").alias_of == "gpt-image-2-2026-04-21"  # type: ignore[union-attr]
    assert TABLE.get("gpt-image-1").shutdown == dt.date(2026, 10, 23)  # type: ignore[union-attr]
    for name in ("gpt-image-1.5", "gpt-image-1.5-2025-12-16", "gpt-image-1-mini", "chatgpt-image-latest"):
        assert TABLE.get(name).shutdown == dt.date(2026, 12, 1)  # type: ignore[union-attr]
    assert {f.name for f in TABLE if f.batch == "unconfirmed"} >= {"gpt-image-2.6-sunburst", "gpt-image-2.6-flare"}
    assert TABLE.get("gpt-image-2").batch == "yes"  # type: ignore[union-attr]


def test_no_module_but_the_table_names_a_model() -> None:
    """'Nothing else in the code names a model': no string value in batchpipe's Python code (docstrings aside)
    is a model name or contains one."""
    import ast

    names = TABLE.names()
    offenders = []
    for path in (REPO / "batchpipe").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [name for name in names if name in node.value]
                if hits:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {hits[0]}")
    assert offenders == []


def test_the_readme_table_is_generated_from_the_data_file() -> None:
    spec = importlib.util.spec_from_file_location("model_table", REPO / "scripts" / "model_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert module.replace_block(readme, module.render(TABLE)) == readme, "run: python scripts/model_table.py --write"
    assert module.render(TABLE).count("\n") == len(TABLE) + 2


def test_bad_rows_are_refused_with_file_and_field() -> None:
    with pytest.raises(ModelTableError) as info:
        TABLE.with_overrides({"x": {"like": "nope", "source": "s", "checked": dt.date(2026, 1, 1)}}, origin="f.toml")
    assert info.value.file == "f.toml" and info.value.field == "models.x.like"
    with pytest.raises(ModelTableError) as info:
        TABLE.with_overrides({"gpt-image-2": {"batch": "maybe"}}, origin="f.toml")
    assert info.value.field == "models.gpt-image-2.batch"
    with pytest.raises(ModelTableError) as info:
        TABLE.with_overrides({"new": {"like": "gpt-image-2"}}, origin="f.toml")  # no source / checked
    assert info.value.field is not None and info.value.field.startswith("models.new.")
    with pytest.raises(ModelTableError):
        ModelTable.from_rows(
            {
                "a": {"like": "b", "source": "s", "checked": dt.date(2026, 1, 1)},
                "b": {"like": "a", "source": "s", "checked": dt.date(2026, 1, 1)},
            },
            origin="cycle.toml",
        )


def test_an_override_of_a_snapshot_reaches_its_alias() -> None:
    table = TABLE.with_overrides({"gpt-image-2.6-sunburst": {"batch": "yes"}}, origin="ops.toml")
    assert table.get("gpt-image-2.6-sunburst").batch == "yes"  # type: ignore[union-attr]
    assert "overridden in ops.toml" in table.get("gpt-image-2.6-sunburst").source  # type: ignore[union-attr]
    table = TABLE.with_overrides({"gpt-image-2-2026-04-21": {"shutdown": dt.date(2027, 1, 1)}}, origin="ops.toml")
    assert table.get("gpt-image-2").shutdown == dt.date(2027, 1, 1)  # type: ignore[union-attr]
    assert TABLE.get("gpt-image-2").shutdown is None  # type: ignore[union-attr]  # the shipped table is untouched


# ------------------------------------------------------------------------------------ model x parameter rules


@pytest.mark.parametrize("facts", ROWS, ids=IDS)
@pytest.mark.parametrize("quality", sorted(rules.QUALITIES))
def test_quality_per_model(facts: ModelFacts, quality: str) -> None:
    accepted = quality in facts.qualities
    assert ("quality" not in _params(facts, GEN, quality=quality)) is accepted


@pytest.mark.parametrize("facts", ROWS, ids=IDS)
@pytest.mark.parametrize("fmt", sorted(rules.OUTPUT_FORMATS))
def test_output_format_per_model(facts: ModelFacts, fmt: str) -> None:
    extra: dict[str, object] = {"svg": {"model": "svg-author"}} if fmt == "svg" else {}
    assert ("output_format" not in _params(facts, GEN, output_format=fmt, **extra)) is (fmt in facts.output_formats)


@pytest.mark.parametrize("facts", ROWS, ids=IDS)
@pytest.mark.parametrize("background", sorted(rules.BACKGROUNDS))
def test_background_per_model(facts: ModelFacts, background: str) -> None:
    accepted = background in facts.backgrounds
    assert ("background" not in _params(facts, GEN, background=background, output_format="png")) is accepted


@pytest.mark.parametrize("facts", ROWS, ids=IDS)
@pytest.mark.parametrize("complexity", sorted(rules.COMPLEXITIES))
def test_complexity_per_model(facts: ModelFacts, complexity: str) -> None:
    assert ("complexity" not in _params(facts, GEN, complexity=complexity)) is (complexity in facts.complexity)


@pytest.mark.parametrize("facts", [f for f in ROWS if EDIT in f.endpoints], ids=lambda f: f.name)
@pytest.mark.parametrize("fidelity", ["high", "low"])
def test_input_fidelity_per_model(facts: ModelFacts, fidelity: str) -> None:
    accepted = fidelity in facts.input_fidelity
    assert ("input_fidelity" not in _params(facts, EDIT, input_fidelity=fidelity)) is accepted


@pytest.mark.parametrize("facts", [f for f in ROWS if EDIT in f.endpoints], ids=lambda f: f.name)
def test_mask_and_markup_per_model_and_never_together(facts: ModelFacts) -> None:
    assert ("mask" not in _params(facts, EDIT, mask=REF)) is facts.mask
    assert ("markup" not in _params(facts, EDIT, markup=REF)) is facts.markup
    assert "markup" in _params(facts, EDIT, mask=REF, markup=REF)
    assert "markup" in _params(facts, GEN, markup=REF)  # generations take no markup


@pytest.mark.parametrize("facts", ROWS, ids=IDS)
@pytest.mark.parametrize(
    ("size", "fits_rule"),
    [
        ("2048x1152", True),
        ("3840x2160", True),
        ("1536x864", True),
        ("2050x2050", False),  # not a multiple of 16
        ("4096x1024", False),  # longest edge over 3840, ratio 4:1
        ("3840x3840", False),  # over 8,294,400 pixels
        ("512x512", False),  # under the pixel floor
    ],
)
def test_sizes_per_model_and_endpoint(facts: ModelFacts, size: str, fits_rule: bool) -> None:
    in_fixed = size in facts.sizes
    for endpoint in (GEN, EDIT):
        if endpoint not in facts.endpoints:
            continue
        rule = facts.custom_size
        accepted = in_fixed or (rule is not None and endpoint in rule.endpoints and fits_rule)
        assert ("size" not in _params(facts, endpoint, size=size)) is accepted, endpoint
    for standard in ("1024x1024", "1536x1024", "1024x1536"):
        if standard in facts.sizes:
            assert "size" not in _params(facts, GEN, size=standard)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"output_format": "gif", "frame_count": 1}, "frame_count"),
        ({"output_format": "gif", "frame_count": 17}, "frame_count"),
        ({"output_format": "png", "frame_count": 4}, "frame_count"),
        ({"output_format": "png", "frame_duration_ms": 200}, "frame_duration_ms"),
        ({"output_format": "gif", "frame_duration_ms": 0}, "frame_duration_ms"),
        ({"output_format": "gif", "output_compression": 50}, "output_compression"),
        ({"output_format": "svg", "n": 2}, "n"),
        ({"output_format": "svg", "output_compression": 50}, "output_compression"),
        ({"output_format": "png", "svg": {"model": "x"}}, "svg"),
        ({"output_format": "svg", "svg": {"model": ""}}, "svg.model"),
        ({"output_format": "svg", "svg": {"model": "x", "reasoning": {"effort": "huge"}}}, "svg.reasoning"),
        ({"output_format": "gif", "background": "transparent"}, "background"),
        ({"safety_identifier": "x" * 65}, "safety_identifier"),
        ({"user": 5}, "user"),
    ],
)
def test_format_options_refused(fields: dict[str, object], param: str) -> None:
    facts = TABLE.get("gpt-image-2.5-flare")
    assert facts is not None
    assert param in _params(facts, GEN, **fields)


def test_format_options_accepted_and_passed_through() -> None:
    facts = TABLE.get("gpt-image-2.5-flare")
    assert facts is not None
    for fields in (
        {"output_format": "gif", "frame_count": 16, "frame_duration_ms": 120},
        {"output_format": "svg", "n": 1, "svg": {"model": "svg-author", "reasoning": {"effort": "low"}}},
        {"quality": "max", "complexity": "high", "safety_identifier": "hash-1", "size": "2048x1152"},
    ):
        assert _params(facts, GEN, **fields) == [], fields
    assert _params(facts, EDIT, markup=REF, quality="xhigh") == []
    assert set(rules.REQUEST_OPTION_FIELDS) >= {
        "complexity",
        "safety_identifier",
        "user",
        "frame_count",
        "frame_duration_ms",
        "svg",
    }


def test_costs_come_from_the_table() -> None:
    usage = {"input_tokens_details": {"text_tokens": 1000, "image_tokens": 0}, "output_tokens": 1000}
    for facts in TABLE:
        cost = rules.request_cost_usd(facts.name, usage)
        if facts.prices is None:
            assert cost is None
        else:
            assert cost == pytest.approx((1000 * facts.prices.text_in + 1000 * facts.prices.image_out) / 2e6)
    cheap = TABLE.with_overrides({"gpt-image-2": {"prices": {"text_in": 0, "image_in": 0, "image_out": 1}}}, origin="t")
    assert rules.request_cost_usd("gpt-image-2", usage, models=cheap) == pytest.approx(0.0005)
    xhigh = rules.estimate_usage({"model": "gpt-image-2.5-flare", "prompt": "x", "quality": "xhigh"})
    high = rules.estimate_usage({"model": "gpt-image-2.5-flare", "prompt": "x", "quality": "high"})
    assert xhigh["output_tokens"] > high["output_tokens"]  # type: ignore[operator]


# ------------------------------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    ("model", "now", "refused", "warned"),
    [
        ("gpt-image-1", "2026-11-30T05:00:00", "was shut down on 2026-10-23", None),
        ("gpt-image-1.5", "2026-11-30T05:00:00", "shuts down on 2026-12-01", None),  # within the 24 h window
        ("chatgpt-image-latest", "2026-11-30T00:00:01", "shuts down on 2026-12-01", None),
        ("gpt-image-1-mini", "2026-11-29T23:59:59", None, "shuts down on 2026-12-01 (in 1 day(s)"),
        ("gpt-image-1.5", "2026-11-10T00:00:00", None, "shuts down on 2026-12-01 (in 21 day(s)"),
        ("gpt-image-1.5", "2026-10-01T00:00:00", None, None),  # 61 days before: nothing to say
        ("gpt-image-2.6-flare", "2026-11-30T05:00:00", None, "Batch API support is unconfirmed"),
        ("gpt-image-2", "2026-11-30T05:00:00", None, None),
    ],
)
def test_lifecycle_cases_with_a_pinned_clock(model: str, now: str, refused: str | None, warned: str | None) -> None:
    policy, warnings = _policy(now)
    problem = policy.model_problem(model)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and problem.field == "model" and problem.code == "model_shut_down"
        facts = TABLE.get(model)
        assert facts is not None
        assert refused in problem.message
        assert facts.replacement[0] in problem.message  # the replacement OpenAI named
        assert "source:" in problem.message and 'Change: model = "gpt-image-2"' in problem.message
        assert model in policy.refused
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]
        if "unconfirmed" in warned:
            assert "Confirmed for Batch: gpt-image-2." in warnings[0]  # the alias, not also its snapshot
    policy.model_problem(model)
    assert len(warnings) == (0 if warned is None else 1)  # once per model


def test_the_warning_period_is_configurable() -> None:
    policy, warnings = _policy("2026-10-01T00:00:00", warn_days=90)
    assert policy.model_problem("gpt-image-1.5") is None
    assert len(warnings) == 1 and "in 61 day(s)" in warnings[0]
    policy, warnings = _policy("2026-11-25T00:00:00", warn_days=0)
    assert policy.model_problem("gpt-image-1.5") is None and warnings == []


def test_the_clock_is_read_from_batchpipe_now() -> None:
    assert clock_from_env({"BATCHPIPE_NOW": "2026-12-02"})() == _at("2026-12-02T00:00:00")
    assert clock_from_env({"BATCHPIPE_NOW": "2026-12-02T10:00:00+02:00"})().hour == 10
    with pytest.raises(ValueError, match="BATCHPIPE_NOW"):
        clock_from_env({"BATCHPIPE_NOW": "tomorrow"})


class _Service:
    """A models API that answers from a dict (model -> shutdown_date or None; missing: 404)."""

    def __init__(self, known: dict[str, str | None], *, code: str = "model_not_found") -> None:
        self.known = known
        self.code = code
        self.calls: list[str] = []

    async def retrieve_model(self, model: str) -> dict[str, object]:
        self.calls.append(model)
        if model not in self.known:
            raise NotFoundError("not found", status_code=404, body={"error": {"code": self.code, "message": "x"}})
        return {"id": model, "object": "model", "created": 0, "owned_by": "openai", "shutdown_date": self.known[model]}


async def test_the_service_word_wins_over_the_table_and_unknown_models_stop_the_run() -> None:
    policy, _ = _policy("2026-11-30T05:00:00")
    service = _Service({"gpt-image-1.5": None, "gpt-image-2": "2026-11-30"})
    await policy.ask_service(service, ["gpt-image-1.5", "gpt-image-2", "gpt-image-2.5-flare", "gpt-image-1.5"])
    assert sorted(service.calls) == ["gpt-image-1.5", "gpt-image-2", "gpt-image-2.5-flare"]  # once per model
    assert policy.model_problem("gpt-image-1.5") is None  # the service says no shutdown: trusted
    refused = policy.model_problem("gpt-image-2")
    assert refused is not None and "shut down on 2026-11-30" in refused.message and "GET /v1/models" in refused.message
    unknown = policy.model_problem("gpt-image-2.5-flare")
    assert unknown is not None and unknown.code == "model_not_found"
    with pytest.raises(LifecycleError) as info:
        policy.refuse(["gpt-image-1.5", "gpt-image-2.5-flare"], file="job.toml")
    assert [p.code for p in info.value.problems] == ["model_not_found"]
    await policy.ask_service(service, ["gpt-image-2"])
    assert len(service.calls) == 3


async def test_a_server_without_the_models_route_leaves_the_table_in_charge() -> None:
    policy, warnings = _policy("2026-11-30T05:00:00")
    await policy.ask_service(_Service({}, code="not_found"), ["gpt-image-2"])
    assert policy.model_problem("gpt-image-2") is None
    assert any("using the model table" in w for w in warnings)


# ------------------------------------------------------------------------------------------ job specs, CLI

JOB = """\
[job]
name = "lineup"

[manifest]
path = "cat.csv"

[item]
key = "{{pid}}"
prompt = "Photo of {{product_name}}"

[defaults]
model = "{model}"
{extra}
[run]
max_requests_per_shard = 10
"""


def _job(tmp_path: Path, model: str, extra: str = "", rows: int = 3) -> Path:
    (tmp_path / "cat.csv").write_text("pid,product_name\n" + "".join(f"P{i},Mug {i}\n" for i in range(rows)))
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(model=model, extra=extra))
    return path


def _cli(*args: str, now: str = "2026-11-30T05:00:00", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["BATCHPIPE_NOW"] = now
    return subprocess.run(
        [sys.executable, "-m", "batchpipe", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=240
    )


@pytest.mark.parametrize(
    ("model", "date", "replacement"),
    [
        ("gpt-image-1", "2026-10-23", "gpt-image-2.5-sunburst"),
        ("gpt-image-1.5", "2026-12-01", "gpt-image-2.6-sunburst"),
        ("chatgpt-image-latest", "2026-12-01", "gpt-image-2.6-sunburst"),
    ],
)
def test_validate_refuses_a_retired_model_with_date_and_replacement(
    tmp_path: Path, model: str, date: str, replacement: str
) -> None:
    proc = _cli("validate", str(_job(tmp_path, model)))
    assert proc.returncode == 2, proc.stderr
    assert "job.toml:12" in proc.stderr and "defaults.model" in proc.stderr
    assert date in proc.stderr and replacement in proc.stderr and 'model = "gpt-image-2"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_xhigh_on_gpt_image_2_is_refused_with_file_line_field(tmp_path: Path) -> None:
    proc = _cli("validate", str(_job(tmp_path, "gpt-image-2", 'quality = "xhigh"\n')))
    assert proc.returncode == 2, proc.stderr
    assert "job.toml:13" in proc.stderr and "defaults.quality" in proc.stderr and "xhigh" in proc.stderr


def test_a_new_model_is_one_row_in_the_job_or_in_a_models_file(tmp_path: Path) -> None:
    row = (
        '[models."gpt-image-2.7-flare"]\nlike = "gpt-image-2.5-flare"\nbatch = "yes"\n'
        'source = "model page, 2026-12-15"\nchecked = 2026-12-15\n'
    )
    path = _job(tmp_path, "gpt-image-2.7-flare", 'quality = "xhigh"\n')
    assert _cli("validate", str(path)).returncode == 2  # unknown until the row exists
    path.write_text(path.read_text() + "\n" + row)
    proc = _cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    path.write_text(JOB.format(model="gpt-image-2.7-flare", extra='quality = "xhigh"\n'))
    models_file = tmp_path / "models.toml"
    models_file.write_text(row)
    assert _cli("validate", str(path), "--models", str(models_file)).returncode == 0
    models_file.write_text('[models."gpt-image-2.7-flare"]\nlike = "nope"\nsource = "s"\nchecked = 2026-12-15\n')
    proc = _cli("validate", str(path), "--models", str(models_file))
    assert proc.returncode == 2 and "models.toml" in proc.stderr and "models.gpt-image-2.7-flare.like" in proc.stderr


def test_a_bad_models_table_in_the_spec_names_its_line(tmp_path: Path) -> None:
    path = _job(tmp_path, "gpt-image-2")
    path.write_text(path.read_text() + '\n[models."gpt-image-2"]\nbatch = "sometimes"\n')
    with pytest.raises(JobSpecError) as info:
        JobSpec.load(path, workdir=tmp_path)
    assert info.value.field == "models.gpt-image-2.batch" and info.value.line == 18


def test_unconfirmed_batch_support_is_warned_at_validate(tmp_path: Path) -> None:
    proc = _cli("validate", str(_job(tmp_path, "gpt-image-2.6-flare")))
    assert proc.returncode == 0, proc.stderr
    assert "warning: gpt-image-2.6-flare: Batch API support is unconfirmed" in proc.stderr
    assert "Confirmed for Batch: gpt-image-2" in proc.stderr


@pytest.mark.slow
def test_a_flare_xhigh_job_runs_to_completion_on_the_emulator(tmp_path: Path) -> None:
    path = _job(tmp_path, "gpt-image-2.5-flare", 'quality = "xhigh"\nsize = "2048x1152"\n', rows=2)
    proc = _cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    proc = _cli("run", str(path), "--api", "emulator", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr
    assert "succeeded 2" in proc.stderr and "Batch API support is unconfirmed" in proc.stderr
    from PIL import Image

    images = sorted((tmp_path / "w" / "out" / "lineup").rglob("*.png"))
    assert len(images) == 2
    for image in images:
        with Image.open(image) as img:
            assert img.size == (2048, 1152)
    workdir = str(tmp_path / "w")
    proc = _cli("retry", "--workdir", workdir, "--status", "succeeded", "--set", "model=gpt-image-1.5")
    assert proc.returncode == 2, proc.stderr
    assert (
        "2026-12-01" in proc.stderr
        and "--set model=gpt-image-2" in proc.stderr
        and "nothing was submitted" in proc.stderr
    )


@pytest.mark.slow
def test_run_stops_before_any_upload_on_a_retired_model(tmp_path: Path) -> None:
    proc = _cli("run", str(_job(tmp_path, "gpt-image-1.5")), "--api", "emulator", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2, proc.stderr
    assert "2026-12-01" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "w").glob("shards/*.jsonl"))


def test_a_jsonl_line_on_a_retired_model_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"key": "a", "prompt": "a mug", "model": "gpt-image-2"}\n'
        '{"key": "b", "prompt": "a mug", "model": "gpt-image-1-mini"}\n'
        '{"key": "c", "prompt": "a mug", "model": "gpt-image-2", "user": "u-1"}\n'
    )
    proc = _cli("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "items.jsonl:2: field 'model': gpt-image-1-mini shuts down on 2026-12-01" in proc.stderr
    assert "warning: 'user' is deprecated: use 'safety_identifier'" in proc.stderr
    proc = _cli("validate", str(path), now="2026-10-01")
    assert proc.returncode == 0, proc.stderr
    proc = _cli("run", "--manifest", str(path), "--job-name", "j", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "items.jsonl:2" in proc.stderr
    assert not list((tmp_path / "w").glob("shards/*.jsonl"))


@pytest.mark.slow
def test_the_service_shutdown_date_wins_over_the_table_over_http(tmp_path: Path) -> None:
    """A standalone emulator whose table disagrees with the pipeline's: the pipeline trusts what
    GET /v1/models/{model} says, both ways, and refuses before anything is uploaded or built."""
    from batchpipe.emulator.config import EmulatorConfig
    from batchpipe.emulator.server import EmbeddedEmulator

    service_table = TABLE.with_overrides(
        {
            "gpt-image-2-2026-04-21": {"shutdown": dt.date(2026, 12, 1), "replacement": ["gpt-image-2.5-flare"]},
            "gpt-image-1.5-2025-12-16": {"shutdown": dt.date(2027, 6, 1)},  # postponed, says the service
        },
        origin="service.toml",
    )
    config = EmulatorConfig(state_dir=tmp_path / "emu", models=service_table)
    with EmbeddedEmulator(config) as emulator:
        # the table says gpt-image-2 lives on; the service says it shuts down tomorrow: refused
        (tmp_path / "a").mkdir()
        job = _job(tmp_path / "a", "gpt-image-2")
        proc = _cli("run", str(job), "--api", emulator.base_url, "--workdir", str(tmp_path / "wa"))
        assert proc.returncode == 2, proc.stderr
        assert "job.toml:12: field 'defaults.model'" in proc.stderr
        assert "GET /v1/models/gpt-image-2" in proc.stderr and "2026-12-01" in proc.stderr
        assert not list((tmp_path / "wa").glob("shards/*.jsonl"))
        assert emulator.service is not None
        # the table says gpt-image-1.5 shuts down tonight; the service says June 2027: it runs
        (tmp_path / "b").mkdir()
        job = _job(tmp_path / "b", "gpt-image-1.5", rows=2)
        assert _cli("validate", str(job)).returncode == 2  # offline, the table decides
        proc = _cli("run", str(job), "--api", emulator.base_url, "--workdir", str(tmp_path / "wb"))
        assert proc.returncode == 0, proc.stderr
        assert "succeeded 2" in proc.stderr


@pytest.mark.slow
def test_items_that_failed_on_a_retired_model_are_rerendered_with_retry_set_model(tmp_path: Path) -> None:
    """A batch that reached the service just before a shutdown: its lines fail model_not_found (per line, as the
    service fails an unknown model); `batchpipe retry --error-code model_not_found --set model=...` re-renders
    exactly those items on a live model."""
    from batchpipe.emulator.config import EmulatorConfig
    from batchpipe.emulator.server import EmbeddedEmulator

    config = EmulatorConfig(state_dir=tmp_path / "emu", now=_at("2026-12-02T00:00:00"))
    with EmbeddedEmulator(config) as emulator:
        job = _job(tmp_path, "gpt-image-1.5", rows=3)
        workdir = str(tmp_path / "w")
        # our clock says November: the table and the service agree the model still has a week
        proc = _cli("run", str(job), "--api", emulator.base_url, "--workdir", workdir, now="2026-11-24")
        assert proc.returncode == 1, proc.stderr
        assert "failed 3" in proc.stderr and "shuts down on 2026-12-01 (in 7 day(s)" in proc.stderr
        proc = _cli(
            "retry",
            "--workdir",
            workdir,
            "--error-code",
            "model_not_found",
            "--set",
            "model=gpt-image-2",
            "--api",
            emulator.base_url,
            now="2026-12-02",
        )
        assert proc.returncode == 0, proc.stderr
        assert "selected 3 item(s)" in proc.stderr and "succeeded 3" in proc.stderr
