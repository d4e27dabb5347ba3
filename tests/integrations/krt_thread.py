"""krt for the integration tests, which run on asyncio: ``KrtInThread`` and ``Relay``.

Pipecat and LiveKit Agents run on asyncio and krt on Trio, so a test's server (the
production code path, fake backend unless told otherwise) runs its own Trio loop in a
daemon thread, and the test drives the framework with ``asyncio.run`` beside it. A
``Relay`` stands in for the load balancer in front of several such replicas, for the
tests of a drain.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import trio

from krt.engine.facade import WARM_UP_TEXT
from krt.metrics.report import read_records
from krt.server.drain import drain
from krt.synth.loading import load_backend
from tests.server_harness import start_server

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from krt.config import Config
    from krt.synth.backend import Backend
    from tests.server_harness import RunningServer

START_WITHIN = 120.0
"""Longest wait for krt to start: a real model takes a while to load and warm up."""


class KrtInThread:
    """A krt server on a loopback port, served by its own Trio run in a daemon thread."""

    def __init__(
        self,
        tmp_path: Path,
        load: Callable[[Config], Backend] = load_backend,
        warm_up_text: str = WARM_UP_TEXT,
        **env: str,
    ) -> None:
        self.tmp_path = tmp_path
        self.load = load
        self.warm_up_text = warm_up_text
        self.env = env
        self.server: RunningServer | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                self.server = await start_server(
                    nursery, self.tmp_path, self.load, self.warm_up_text, **self.env
                )
                self._started.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._started.set()

    def __enter__(self) -> KrtInThread:
        self._thread.start()
        assert self._started.wait(START_WITHIN), "krt did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def draining(self) -> bool:
        return self.server is not None and self.server.state.draining

    def drain(self) -> None:
        """Drain as on SIGTERM (refuse new responses, close each socket with 1012 once
        idle); returns once drained. The server stays up, refusing upgrades with 503."""
        assert self.server is not None
        trio.from_thread.run(drain, self.server.state, trio_token=self._token)

    def close_sessions(self, code: int) -> None:
        """Close every client socket from the server side, as a restart or proxy would."""
        assert self.server is not None
        trio.from_thread.run(self.server.state.close_sessions, code, trio_token=self._token)

    def records(self) -> list[dict[str, Any]]:
        path = self.tmp_path / "metrics.log"
        return list(read_records(path)) if path.exists() else []


class Relay:
    """A TCP relay standing in for a load balancer: each new connection goes to the
    replica it points at when the connection is made; it counts the connections."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer), return_exceptions=True
        )
