"""Running the emulator: in-process (``EmbeddedEmulator``) or standalone (``run_server``).

``EmbeddedEmulator`` starts uvicorn on ``127.0.0.1`` port 0 in a daemon thread with its own event loop,
exposes ``base_url`` (``http://127.0.0.1:PORT/v1``) and stops cleanly on exit; use it with ``with`` or
``async with``. Without ``config.state_dir`` it keeps its state in a temporary directory removed on exit.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from batchpipe.emulator.app import EmulatorService, create_app
from batchpipe.emulator.config import EmulatorConfig
from batchpipe.emulator.processor import ExecutorLike

__all__ = ["EmbeddedEmulator", "EmulatorServer", "default_executor_factory", "run_server"]

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


def default_executor_factory(config: EmulatorConfig) -> ExecutorLike:
    """The real ``ImageExecutor`` (``batchpipe.emulator.images``) configured from ``config`` (its model table
    and lifecycle clock included)."""
    from batchpipe.emulator.images import ImageExecutor

    return ImageExecutor(
        detail=config.image_detail,
        max_workers=config.image_workers,
        fetch_timeout_s=config.fetch_timeout_s,
        models=config.models,
        now=config.lifecycle_now,
    )


def _uvicorn_config(app: Any, *, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        loop="asyncio",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


class EmbeddedEmulator:
    """The emulator in a background thread of this process.

    ``config``: the settings (default ``EmulatorConfig()``). ``executor_factory``: builds the image
    executor (default: the real ``ImageExecutor``). Raises ``RuntimeError`` if the server does not start
    within 30 s. ``service`` exposes the shared state for introspection (treat it as read-only).
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        executor_factory: Callable[[EmulatorConfig], ExecutorLike] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self._executor_factory = executor_factory or default_executor_factory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._port: int | None = None
        self.service: EmulatorService | None = None

    @property
    def state_dir(self) -> Path:
        """The directory holding the emulator's files and database."""
        if self.config.state_dir is not None:
            return self.config.state_dir
        if self._tmp is None:
            raise RuntimeError("emulator not started")
        return Path(self._tmp.name)

    @property
    def port(self) -> int:
        """The TCP port the server listens on (after start)."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: pass it as the OpenAI client's ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Start the server thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        if self.config.state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="batchpipe-emulator-")
        state_dir = self.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        app, self.service = create_app(self.config, state_dir=state_dir, executor_factory=self._executor_factory)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(app, host="127.0.0.1", port=self._port, log_level="warning"))
        self._server = server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start()/stop()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name="batchpipe-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator failed to start: {self._error!r}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Ask uvicorn to exit, wait for the thread, remove a temporary state directory."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
        self._thread = None
        self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


#: The in-process server under its other name.
EmulatorServer = EmbeddedEmulator


def run_server(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    executor_factory: Callable[[EmulatorConfig], ExecutorLike] | None = None,
    log_level: str = "info",
) -> None:
    """Run the emulator in the foreground until interrupted (Ctrl-C). ``config.state_dir`` is required."""
    if config.state_dir is None:
        raise ValueError("a standalone emulator needs a state directory")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    app, _service = create_app(
        config, state_dir=config.state_dir, executor_factory=executor_factory or default_executor_factory
    )
    uvicorn.Server(_uvicorn_config(app, host=host, port=port, log_level=log_level)).run()
