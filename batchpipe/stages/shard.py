"""The shard builder: checked items → Batch API input files (JSONL shards), written with aiofiles.

Each line is ``{"custom_id", "method": "POST", "url": <endpoint>, "body": <body>}`` (FACTS §3 input line,
SPEC-OLD ``BatchRequestInput``) serialized by orjson plus ``b"\\n"``. A shard holds one endpoint and one model
(FACTS §3.1: one model per input file, one endpoint per batch); the builder keeps one open shard per
``(endpoint, model)`` group and starts a new one when the next line would take it over ``max_requests``,
``max_bytes`` (exact bytes, newlines included) or ``max_input_tokens`` (``spec.estimate_input_tokens``).

Crash safety: a shard is written to ``.<name>.part``, flushed, fsynced and renamed to ``<name>`` only when it
is closed; a file under a final name is always complete. Output is deterministic: the same items in the same
order give the same shard names and bytes. Writes are batched into ``WRITE_CHUNK_BYTES`` buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiofiles
import aiofiles.os
import orjson
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from batchpipe.domain import spec
from batchpipe.domain.items import Item
from batchpipe.domain.spec import estimate_input_tokens
from batchpipe.errors import InputError

__all__ = ["MAX_BUFFER_BYTES", "WRITE_CHUNK_BYTES", "ShardBuilder", "ShardInfo", "request_line", "shard_files_of"]

#: Bytes buffered per open shard before one write.
WRITE_CHUNK_BYTES: Final = 1024 * 1024
#: Most bytes buffered per open shard while the previous write is still in flight.
MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_SHORT: Final[dict[str, str]] = {"/v1/images/generations": "gen", "/v1/images/edits": "edit"}


def shard_files_of(prefix: str) -> re.Pattern[str]:
    """The names :class:`ShardBuilder` gives the shards of ``prefix`` (``<prefix>-<index:05d>-<kind>-<model>.jsonl``)
    and their ``.<name>.part`` temporaries; ``fullmatch`` a file name against it."""
    return re.compile(rf"\.?{re.escape(prefix)}-\d{{5}}-[A-Za-z0-9._-]+\.jsonl(\.part)?")


def request_line(custom_id: str, endpoint: str, encoded_body: bytes) -> bytes:
    """One batch input line, without its newline: exactly ``orjson.dumps({"custom_id": custom_id, "method":
    "POST", "url": endpoint, "body": body})`` (FACTS §2.1 line format), built around the body's bytes as they
    were serialized once (``Item.body_bytes``)."""
    middle = _LINE_MIDDLE.get(endpoint)
    if middle is None:
        middle = _LINE_MIDDLE[endpoint] = b',"method":"POST","url":' + orjson.dumps(endpoint) + b',"body":'
    return b"".join((b'{"custom_id":', orjson.dumps(custom_id), middle, encoded_body, b"}"))


#: The bytes of a request line between its custom_id and its body, per endpoint (filled by :func:`request_line`).
_LINE_MIDDLE: Final[dict[str, bytes]] = {}


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """A closed shard: ``index`` (0-based, creation order), file ``name`` and ``path``, its ``endpoint`` and
    ``model``, ``requests`` (lines), ``bytes`` (file size), ``sha256`` (hex of the file) and ``input_tokens``
    (sum of ``spec.estimate_input_tokens`` over its bodies; counts against the enqueued-token limit)."""

    index: int
    name: str
    path: Path
    endpoint: str
    model: str
    requests: int
    bytes: int
    sha256: str
    input_tokens: int


@dataclass(slots=True)
class _OpenShard:
    index: int
    name: str
    endpoint: str
    model: str
    part: Path
    handle: AsyncBufferedIOBase
    #: lines (without newlines) not yet handed to the writer, and their bytes with newlines
    lines: list[bytes] = field(default_factory=list)
    buffered: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    requests: int = 0
    bytes: int = 0
    input_tokens: int = 0
    custom_ids: set[str] = field(default_factory=set)
    pending: asyncio.Future[tuple[None, int]] | None = None
    flush_at: int = WRITE_CHUNK_BYTES  # buffer size (bytes) that triggers the next flush


class ShardBuilder:
    """Writes items into JSONL shards in ``out_dir``, named ``<prefix>-<index:05d>-<gen|edit>-<model>.jsonl``.

    Limits: ``max_requests`` lines (default FACTS §3.1 50,000), ``max_bytes`` bytes per file (default
    ``spec.MAX_BATCH_FILE_BYTES``), ``max_input_tokens`` estimated input tokens (default: no limit). Use
    ``await add(...)`` per item, then ``await close()`` once (or ``async with``); :meth:`abort` removes the
    unfinished ``.part`` files. Not safe for concurrent ``add`` calls.
    """

    __slots__ = (
        "_closed",
        "_finished",
        "_next_index",
        "_open",
        "max_bytes",
        "max_input_tokens",
        "max_requests",
        "out_dir",
        "prefix",
    )

    def __init__(
        self,
        out_dir: Path,
        *,
        prefix: str,
        max_requests: int = spec.MAX_REQUESTS_PER_BATCH,
        max_bytes: int = spec.MAX_BATCH_FILE_BYTES,
        max_input_tokens: int | None = None,
    ) -> None:
        if not prefix or _UNSAFE.search(prefix):
            raise ValueError(f"prefix must be 1+ chars of A-Z a-z 0-9 . _ -: {prefix!r}")
        if max_requests < 1 or max_bytes < 1 or (max_input_tokens is not None and max_input_tokens < 1):
            raise ValueError("shard limits must be >= 1")
        self.out_dir = out_dir
        self.prefix = prefix
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_input_tokens = max_input_tokens
        self._open: dict[tuple[str, object], _OpenShard] = {}
        self._closed: list[ShardInfo] = []
        self._next_index = 0
        self._finished = False
        out_dir.mkdir(parents=True, exist_ok=True)

    async def __aenter__(self) -> ShardBuilder:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()

    async def add(self, custom_id: str, item: Item) -> str:
        """Append ``item``'s request line with ``custom_id``; returns the name of the shard it went into.

        The line's number in that shard (the ``line`` a ``BatchError`` names, FACTS §2.2) is the shard's
        request count just after the call: :meth:`open_requests` tells it when needed.

        Raises ``InputError`` (naming the item's source file and line, and its key) when the line alone is
        over ``max_bytes`` or its input tokens over ``max_input_tokens``, or when ``custom_id`` repeats
        within the shard (FACTS §3: unique within the batch). Raises ``RuntimeError`` after ``close``.
        """
        if self._finished:
            raise RuntimeError("the shard builder is closed")
        endpoint = item.endpoint
        body = item.body
        line = request_line(custom_id, endpoint, item.body_bytes())
        size = len(line) + 1
        tokens = estimate_input_tokens(body)
        max_tokens = self.max_input_tokens
        group = (endpoint, body.get("model"))
        shard = self._open.get(group)
        if (
            shard is None
            or shard.requests >= self.max_requests
            or shard.bytes + size > self.max_bytes
            or (max_tokens is not None and shard.input_tokens + tokens > max_tokens)
        ):
            if size > self.max_bytes:
                raise _item_error(
                    item, f"its request line is {size:,} bytes, over the {self.max_bytes:,}-byte shard limit"
                )
            if max_tokens is not None and tokens > max_tokens:
                raise _item_error(item, f"its ~{tokens:,} input tokens are over the {max_tokens:,}-token shard limit")
            if shard is not None:
                del self._open[group]
                await self._finish(shard)
            shard = await self._start(endpoint, item.model)
            self._open[group] = shard
        ids = shard.custom_ids
        known = len(ids)
        ids.add(custom_id)
        if len(ids) == known:  # one hash lookup instead of two on the hot path
            raise _item_error(item, f"custom_id {custom_id!r} is already in shard {shard.name}")
        shard.lines.append(line)  # joined once per chunk: appending to a growing bytearray copied it ~8 times
        buffered = shard.buffered + size
        shard.buffered = buffered
        shard.bytes += size
        shard.input_tokens += tokens
        shard.requests += 1
        if buffered >= shard.flush_at:
            await self._flush(shard)
        return shard.name

    def open_requests(self, name: str) -> int:
        """Lines written so far to the open shard ``name`` (0 if no open shard has that name)."""
        return next((s.requests for s in self._open.values() if s.name == name), 0)

    async def close(self) -> list[ShardInfo]:
        """Finish every open shard (write, fsync, rename); returns all shards in creation order.

        Calling it again returns the same list.
        """
        if not self._finished:
            self._finished = True
            for shard in sorted(self._open.values(), key=lambda s: s.index):
                await self._finish(shard)
            self._open.clear()
            self._closed.sort(key=lambda info: info.index)
        return list(self._closed)

    async def abort(self) -> None:
        """Drop every open shard: close and delete its ``.part`` file. Finished shards stay."""
        self._finished = True
        for shard in self._open.values():
            if shard.pending is not None:
                with contextlib.suppress(Exception):
                    await shard.pending
            await shard.handle.close()
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(shard.part)
        self._open.clear()

    async def _start(self, endpoint: str, model: str) -> _OpenShard:
        index = self._next_index
        self._next_index += 1
        kind = _SHORT.get(endpoint) or _UNSAFE.sub("_", endpoint.strip("/"))
        name = f"{self.prefix}-{index:05d}-{kind}-{_UNSAFE.sub('_', model) or 'none'}.jsonl"
        part = self.out_dir / f".{name}.part"
        handle = await aiofiles.open(part, "wb")
        return _OpenShard(index, name, endpoint, model, part, handle)

    async def _flush(self, shard: _OpenShard, *, final: bool = False) -> None:
        """Hash the buffer and hand it to aiofiles' worker thread; go on filling a fresh one meanwhile.

        At most one write per shard is in flight, so chunks land in order; its errors surface here later.
        If the previous write is still running (its thread may be waiting for the GIL), keep buffering up
        to ``MAX_BUFFER_BYTES`` rather than wait. ``final``: write everything and wait for it.
        """
        pending = shard.pending
        if pending is not None:  # the previous chunk
            if not pending.done():
                await asyncio.sleep(0)  # one loop turn: lets a finished write report back
            if not pending.done() and not final and shard.buffered < MAX_BUFFER_BYTES:
                shard.flush_at = shard.buffered + WRITE_CHUNK_BYTES
                return
            shard.pending = None
            await pending
        shard.flush_at = WRITE_CHUNK_BYTES
        if shard.lines:
            lines = shard.lines
            lines.append(b"")  # the last line's newline
            data = b"\n".join(lines)
            shard.lines = []
            shard.buffered = 0
            # hashing and writing the same chunk are independent: both run in worker threads, in parallel
            job = asyncio.gather(asyncio.to_thread(shard.hasher.update, data), shard.handle.write(data))
            if final:
                await job
            else:
                shard.pending = job
                await asyncio.sleep(0)  # one loop turn: both jobs reach their worker threads now

    async def _finish(self, shard: _OpenShard) -> None:
        await self._flush(shard, final=True)
        await shard.handle.flush()
        await asyncio.to_thread(os.fsync, shard.handle.fileno())
        await shard.handle.close()
        final = self.out_dir / shard.name
        await aiofiles.os.replace(shard.part, final)
        await asyncio.to_thread(_fsync_dir, self.out_dir)
        self._closed.append(
            ShardInfo(
                index=shard.index,
                name=shard.name,
                path=final,
                endpoint=shard.endpoint,
                model=shard.model,
                requests=shard.requests,
                bytes=shard.bytes,
                sha256=shard.hasher.hexdigest(),
                input_tokens=shard.input_tokens,
            )
        )


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _item_error(item: Item, message: str) -> InputError:
    file, _, line = item.source.rpartition(":")
    if not file or not line.isdigit():
        file, line = item.source or "<items>", ""
    return InputError(f"item {item.key!r}: {message}", file=file, line=int(line) if line else None, field="body")
