"""``batchpipe validate``: check a job before spending anything (:func:`batchpipe.input.validate.validate_job`)."""

from __future__ import annotations

from pathlib import Path

import click

from batchpipe.cli.exits import EXIT_INPUT, EXIT_OK, guarded
from batchpipe.domain.lifecycle import clock_from_env
from batchpipe.errors import InputError
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import count_summary, validate_job

__all__ = ["validate_command"]


@click.command("validate")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--job-name", help="Job name when SOURCE is a plain JSONL manifest rather than a TOML spec.")
@click.option("--limit", type=click.IntRange(min=1), help="Read at most this many manifest rows.")
@click.option("--max-listed", type=click.IntRange(min=0), default=50, show_default=True)
@click.option(
    "--models",
    "models_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='A TOML file of [models."NAME"] rows added to or overriding the model table.',
)
def validate_command(
    source: Path, job_name: str | None, limit: int | None, max_listed: int, models_file: Path | None
) -> None:
    """Check a job (TOML spec, or plain JSONL manifest) before spending anything.

    Exit 0: no problem; 2: bad input, as ``run`` would refuse it: some items have problems (each with file, line
    and field), the spec or the manifest is bad, or a model is shut down (or shuts down before a batch could
    finish), with the date, the source and the replacement.
    """

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def action() -> int:
        clock = clock_from_env()
        if source.suffix.lower() == ".toml":
            spec = JobSpec.load(source, models_file=models_file, clock=clock, on_warning=warn)
        else:
            spec = JobSpec.for_manifest(
                source, job_name or source.stem, models_file=models_file, clock=clock, on_warning=warn
            )
        report = validate_job(spec, limit=limit, max_listed=max_listed)
        if report.matrix is not None:
            click.echo(report.matrix.line())
        for problem in report.problems:
            click.echo(str(problem), err=True)
        for warning in report.warnings:
            click.echo(str(warning), err=True)
        for (endpoint, model), count in sorted(report.groups.items()):
            click.echo(f"{count:>9,}  {model}  {endpoint}")
        summary = {**count_summary(report), "model_warnings": len(spec.policy.warnings)}
        click.echo("  ".join(f"{k}={v}" for k, v in summary.items()))
        if spec.policy.refused:
            raise InputError(
                f"refused model(s): {', '.join(sorted(spec.policy.refused))} (see above)", file=spec.source_name
            )
        return EXIT_OK if report.ok else EXIT_INPUT

    guarded(action, echo=lambda line: click.echo(line, err=True))
