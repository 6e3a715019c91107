"""The emulator's durable state: file bytes on disk, metadata in SQLite, in one directory.

Layout of ``root``::

    state.sqlite3      files and batches tables (WAL)
    files/<file-id>    the bytes of every uploaded or published file
    parts/<batch-id>.{output,error}.part   result lines appended while a batch runs

A restarted emulator opened on the same directory knows every file and batch; the processor resumes the
non-terminal batches. All methods are thread-safe (one connection behind a lock): the server loop and the
image executor's threads both read files.
"""

from __future__ import annotations

import secrets
import sqlite3
import string
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

__all__ = ["BatchRecord", "FileRecord", "StateStore", "new_id"]

_ALPHABET = string.ascii_letters + string.digits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    model TEXT,
    doc TEXT NOT NULL,
    internal TEXT NOT NULL
);
"""

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


def new_id(prefix: str, length: int = 24) -> str:
    """A random object id like the service's: ``file-`` / ``batch_`` / ``batch_req_`` + alphanumerics."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored file. Times are unix seconds; ``size_bytes`` its length on disk."""

    id: str
    filename: str
    purpose: str
    size_bytes: int
    created_at: int
    expires_at: int | None

    def to_api(self) -> dict[str, object]:
        """The SPEC ``OpenAIFile`` object (``status`` is always ``processed``; deprecated fields kept)."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size_bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(slots=True)
class BatchRecord:
    """One batch: ``doc`` is the SPEC ``Batch`` object as stored; ``internal`` the emulator's own fields
    (fault plan, enqueued tokens, output expiry, when file ids become visible)."""

    id: str
    doc: dict[str, object]
    internal: dict[str, object]

    @property
    def status(self) -> str:
        """The batch status (SPEC ``Batch.status``)."""
        return str(self.doc["status"])


class StateStore:
    """Files and batches persisted under ``root``. ``clock`` returns unix seconds (float)."""

    def __init__(self, root: Path, *, clock: Callable[[], float]) -> None:
        self.root = root
        self.files_dir = root / "files"
        self.parts_dir = root / "parts"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "state.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ files
    def file_path(self, file_id: str) -> Path:
        """Where the bytes of ``file_id`` live (the id alphabet is safe for paths)."""
        return self.files_dir / file_id

    def part_path(self, batch_id: str, kind: Literal["output", "error"]) -> Path:
        """The part file a running batch appends its ``kind`` lines to."""
        return self.parts_dir / f"{batch_id}.{kind}.part"

    def add_file(self, record: FileRecord) -> None:
        """Register a file whose bytes are already at ``file_path(record.id)``."""
        with self._lock:
            self._db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, expires_at) VALUES (?,?,?,?,?,?)",
                (
                    record.id,
                    record.filename,
                    record.purpose,
                    record.size_bytes,
                    record.created_at,
                    record.expires_at,
                ),
            )

    @staticmethod
    def _file_from_row(row: tuple[object, ...]) -> FileRecord:
        fid, filename, purpose, size, created, expires = row
        return FileRecord(
            str(fid),
            str(filename),
            str(purpose),
            int(size),  # type: ignore[call-overload]
            int(created),  # type: ignore[call-overload]
            None if expires is None else int(expires),  # type: ignore[call-overload]
        )

    def _purge_expired(self) -> None:
        now = int(self._clock())
        rows = self._db.execute(
            "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        ).fetchall()
        for (fid,) in rows:
            self._db.execute("DELETE FROM files WHERE id = ?", (fid,))
            self.file_path(str(fid)).unlink(missing_ok=True)

    def get_file(self, file_id: str) -> FileRecord | None:
        """The file, or None when unknown, deleted or expired (expired files are purged on access)."""
        with self._lock:
            self._purge_expired()
            row = self._db.execute(
                "SELECT id, filename, purpose, bytes, created_at, expires_at FROM files WHERE id = ?",
                (file_id,),
            ).fetchone()
        return None if row is None else self._file_from_row(row)

    def read_file_bytes(self, file_id: str) -> bytes | None:
        """The whole content of ``file_id`` (for small files: image references), or None if unknown."""
        if self.get_file(file_id) is None:
            return None
        try:
            return self.file_path(file_id).read_bytes()
        except FileNotFoundError:
            return None

    def list_files(
        self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"], after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Files ordered by creation (``seq``), ``limit`` of them after the cursor ``after``; and has_more."""
        with self._lock:
            self._purge_expired()
            clauses: list[str] = []
            params: list[object] = []
            if purpose:
                clauses.append("purpose = ?")
                params.append(purpose)
            if after:
                row = self._db.execute("SELECT seq FROM files WHERE id = ?", (after,)).fetchone()
                if row is not None:
                    clauses.append("seq > ?" if order == "asc" else "seq < ?")
                    params.append(row[0])
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            direction = "ASC" if order == "asc" else "DESC"
            rows = self._db.execute(
                f"SELECT id, filename, purpose, bytes, created_at, expires_at FROM files {where} "
                f"ORDER BY seq {direction} LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        records = [self._file_from_row(r) for r in rows]
        return records[:limit], len(records) > limit

    def delete_file(self, file_id: str) -> bool:
        """Delete the file's row and bytes; False if it did not exist."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.file_path(file_id).unlink(missing_ok=True)
        return cursor.rowcount > 0

    # ---------------------------------------------------------------- batches
    def add_batch(self, record: BatchRecord) -> None:
        """Insert a new batch."""
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, status, model, doc, internal) VALUES (?,?,?,?,?)",
                (
                    record.id,
                    record.status,
                    record.doc.get("model"),
                    orjson.dumps(record.doc).decode(),
                    orjson.dumps(record.internal).decode(),
                ),
            )

    def save_batch(self, record: BatchRecord) -> None:
        """Write the batch's current ``doc`` and ``internal`` back."""
        with self._lock:
            self._db.execute(
                "UPDATE batches SET status = ?, model = ?, doc = ?, internal = ? WHERE id = ?",
                (
                    record.status,
                    record.doc.get("model"),
                    orjson.dumps(record.doc).decode(),
                    orjson.dumps(record.internal).decode(),
                    record.id,
                ),
            )

    @staticmethod
    def _batch_from_row(row: tuple[object, ...]) -> BatchRecord:
        bid, doc, internal = row
        return BatchRecord(str(bid), orjson.loads(str(doc)), orjson.loads(str(internal)))

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None."""
        with self._lock:
            row = self._db.execute("SELECT id, doc, internal FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else self._batch_from_row(row)

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """Batches newest first, ``limit`` of them after the cursor ``after``; and has_more."""
        with self._lock:
            params: list[object] = []
            where = ""
            if after:
                row = self._db.execute("SELECT seq FROM batches WHERE id = ?", (after,)).fetchone()
                if row is not None:
                    where = "WHERE seq < ?"
                    params.append(row[0])
            rows = self._db.execute(
                f"SELECT id, doc, internal FROM batches {where} ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        records = [self._batch_from_row(r) for r in rows]
        return records[:limit], len(records) > limit

    def iter_unfinished_batches(self) -> Iterator[BatchRecord]:
        """Batches not in a terminal status, oldest first (for resuming after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, doc, internal FROM batches WHERE status NOT IN (?,?,?,?) ORDER BY seq",
                tuple(sorted(TERMINAL_STATUSES)),
            ).fetchall()
        for row in rows:
            yield self._batch_from_row(row)

    def enqueued_tokens(self, model: str, *, exclude: str) -> int:
        """Sum of ``internal.enqueued_tokens`` of non-terminal batches of ``model``, except ``exclude``."""
        total = 0
        for record in self.iter_unfinished_batches():
            if record.id != exclude and record.doc.get("model") == model:
                total += int(record.internal.get("enqueued_tokens") or 0)  # type: ignore[call-overload]
        return total
