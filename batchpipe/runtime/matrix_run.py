"""The run-time side of a ``[matrix]`` job (:mod:`batchpipe.input.matrix`): the loopback mirror of reference
photos, the one checking pass with its ``matrix: P products x V variants`` line, and the reference uploads that
must happen before the build.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import click

from batchpipe.domain.items import Item
from batchpipe.domain.problems import Problem
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.matrix import MatrixStats, VariantMatrix
from batchpipe.input.references import ReferenceMirror, ReferenceResolver
from batchpipe.input.validate import make_items
from batchpipe.ports import AsyncLedger, BatchApi, Clock
from batchpipe.runtime.runner import ValidationFailed
from batchpipe.stages.references import ensure_uploaded, release_unused

__all__ = ["MatrixRun"]


# --------------------------------------------------------------------------------------------- a run


class MatrixRun:
    """The run-time side of a matrix job: its ``prepare`` hook and its ``items`` stream (see
    :class:`batchpipe.runtime.wiring.RunRequest`).

    :meth:`prepare` (once, before a new run's build, with the API client and the ledger): starts the loopback
    :class:`~batchpipe.input.references.ReferenceMirror` when ``[references] mirror`` is set (it lives as long as
    the run's event loop), makes one checking pass over the matrix (prints ``matrix: P products x V variants
    = N items`` through ``echo``), raises ``ValidationFailed`` (every problem; exit 2) if items are invalid
    and ``skip_invalid`` is off, uploads the local reference files the first ``limit`` items need — each distinct
    file once, reusing cached ``file_id`` values (:func:`~batchpipe.stages.references.ensure_uploaded`) — and, with
    ``delete_unused``, deletes reference files nothing pending needs. :meth:`items` then streams the items with
    real ``file_id`` values and mirrored URLs. ``workdir`` keeps the mirror's port (``references/mirror-port``).
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        workdir: Path,
        limit: int | None = None,
        skip_invalid: bool = False,
        echo: Callable[[str], None] | None = None,
        clock: Clock = time.time,
    ) -> None:
        if spec.matrix is None:
            raise ValueError("MatrixRun needs a job spec with a [matrix] section")
        self.spec = spec
        self.matrix: VariantMatrix = spec.matrix
        self.workdir = workdir
        self.limit = limit
        self.skip_invalid = skip_invalid
        self.echo = echo or _echo_stderr
        self.clock = clock
        self.mirror: ReferenceMirror | None = None
        self.stats = MatrixStats()
        self.uploaded_now = 0
        self.reused = 0
        self.deleted: list[str] = []
        self._resolver: ReferenceResolver | None = None
        self._keeper: object = None

    def _start_mirror(self) -> None:
        options = self.matrix.references
        if self.mirror is None and options.mirror:
            self.mirror = ReferenceMirror(
                options.mirror, port=options.mirror_port, port_file=self.workdir / "references" / "mirror-port"
            ).start()
            self._keeper = self.mirror.keep_alive_in_loop()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """The whole run's context (new or resumed, or a ``batchpipe retry`` of this job): serves the loopback
        mirror while batches may still fetch mirrored URLs, and closes it at the end."""
        self._start_mirror()
        try:
            yield
        finally:
            if self.mirror is not None:
                self.mirror.close()
                self.mirror = None

    async def prepare(self, client: BatchApi, ledger: AsyncLedger) -> None:
        """Mirror, count, upload, clean up (see the class docstring). Raises the client's ``ApiError`` family
        when an upload fails and ``OSError`` when an explicit ``mirror_port`` is taken."""
        options = self.matrix.references
        mirror_base: str | None = None
        if options.mirror:
            self._start_mirror()
            assert self.mirror is not None
            mirror_base = self.mirror.base_url
        checker = ReferenceResolver(options, mirror_base=mirror_base)
        needed: dict[str, Path] = {}
        problems: list[Problem] = []
        items = 0
        for entry in make_items(self.spec, resolver=checker, stats=self.stats, on_warning=lambda problem: None):
            if self.limit is not None and items >= self.limit:
                continue  # past the run's --limit: counted for the matrix line only (the build stops there too)
            if not isinstance(entry, Item):
                problems.append(entry)
                continue
            items += 1
            for ref in entry.inputs:
                if ref.kind == "file" and ref.sha256 in checker.needed:
                    needed[ref.sha256] = checker.needed[ref.sha256]
        limited = f"; this run takes the first {items} (--limit)" if self.limit is not None else ""
        self.echo(self.stats.line() + limited)
        if problems and not self.skip_invalid:
            raise ValidationFailed(problems, file=self.spec.source_name)  # before any upload or shard
        uploaded: dict[str, str] = {}
        if needed:
            uploaded, self.uploaded_now = await ensure_uploaded(
                client, ledger, needed, options=options, clock=self.clock
            )
            self.reused = len(needed) - self.uploaded_now
            self.echo(
                f"references: {len(needed)} local file(s): {self.uploaded_now} uploaded, {self.reused} reused "
                f"(purpose {options.upload_purpose!r})"
            )
        if options.delete_unused:
            self.deleted = await release_unused(client, ledger, keep=uploaded.values())
        self._resolver = ReferenceResolver(options, uploaded=uploaded, mirror_base=mirror_base)

    def items(self) -> Iterator[Item | Problem]:
        """The job's items (after :meth:`prepare`: real ``file_id`` values, mirrored URLs)."""
        return make_items(self.spec, resolver=self._resolver or ReferenceResolver(self.matrix.references))


def _echo_stderr(line: str) -> None:
    click.echo(line, err=True)
