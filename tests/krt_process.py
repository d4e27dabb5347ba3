"""``krt serve`` as an orchestrator runs it: a real process, started and signalled.

Each server is started with ``--port 0`` in a temporary working directory (so ``.env``
and ``logs/`` land there); the test learns the port and readiness from the process's own
log lines on stderr, never by sleeping. Every process is killed in teardown.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import trio

from krt.wire.protocol import WS_PATH

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

STARTUP_SECONDS = 30


class ServerProcess:
    """A running ``krt serve`` and the lines it has logged so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.port = 0
        self._grew = trio.Event()
        self._ended = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    async def pump_stderr(self) -> None:
        """Collect stderr line by line until the process closes it (keeps the pipe drained)."""
        assert self.process.stderr is not None
        pending = b""
        async for data in self.process.stderr:
            *complete, pending = (pending + data).split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]
            self._grew.set()
            self._grew = trio.Event()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self._ended = True
        self._grew.set()

    async def wait_for_line(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first line from index ``start`` on that matches; fails if stderr ends first."""
        regex = re.compile(pattern)
        seen = start
        while True:
            for line in self.lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = max(seen, len(self.lines))
            if self._ended:
                raise AssertionError(f"krt serve never logged {pattern!r}; its log:\n" + self.log)
            await self._grew.wait()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
async def start_krt(nursery, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ServerProcess]]]:
    """Start ``krt serve`` with extra environment; returns once it has logged ``ready``."""
    servers: list[ServerProcess] = []

    async def start(startup_seconds: float = STARTUP_SECONDS, **env: str) -> ServerProcess:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "krt", "serve", "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "LOG_LEVEL": "INFO",
                "API_KEY": "",
                "KRT_METRICS_LOG": "logs/metrics.log",
                **env,
            },
            cwd=tmp_path,
        )
        server = ServerProcess(process)
        servers.append(server)
        nursery.start_soon(server.pump_stderr)
        with trio.fail_after(startup_seconds):
            listening = await server.wait_for_line(r"krt\.server\.listener: listening on 127\.0\.0\.1:(\d+)")
            server.port = int(listening[1])
            await server.wait_for_line(r"krt\.server\.app: ready$")
        return server

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for server in servers:
                if server.process.returncode is None:
                    server.process.kill()
                await server.process.wait()


async def terminate(server: ServerProcess) -> None:
    """Send SIGTERM and return once the server has logged that it is draining."""
    mark = len(server.lines)
    server.process.send_signal(signal.SIGTERM)
    await server.wait_for_line(r"SIGTERM: draining", start=mark)
