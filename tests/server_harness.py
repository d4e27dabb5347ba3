"""A real krt server on a loopback port, in the test's own Trio run, and a small client.

The server is the production code path (h11 front door, trio-websocket, sessions, the
engine loop and its model thread) with the fake backend, so tests are fast and exact.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import attrs
import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from krt.engine.facade import WARM_UP_TEXT
from krt.engine.pipeline import SpeechPipeline
from krt.server.app import main
from krt.server.state import ServerState
from krt.synth.loading import load_backend
from krt.wire.protocol import WS_PATH
from tests.conftest import make_config

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

    from krt.config import Config
    from krt.synth.backend import Backend

__all__ = ["WS_PATH", "Client", "Harness", "RunningServer", "run_krt", "start_server"]


@attrs.frozen
class RunningServer:
    port: int
    state: ServerState

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"


async def start_server(
    nursery: trio.Nursery,
    tmp_path: Path,
    load: Callable[[Config], Backend] = load_backend,
    warm_up_text: str = WARM_UP_TEXT,
    **env: str,
) -> RunningServer:
    """Start krt on 127.0.0.1, any free port, fake backend unless ``env`` says otherwise;
    ``load`` hands the server a backend the test built (a double from tests/fakes.py)."""
    settings = {
        "KRT_BACKEND": "fake",
        "KRT_METRICS_LOG": str(tmp_path / "metrics.log"),
        "KRT_ADMIN_SOCKET": "",  # many servers per test run: each test that wants one names its own
        **env,
    }
    port, state = await nursery.start(
        lambda task_status: main(
            make_config(**settings),
            "127.0.0.1",
            0,
            handle_signals=False,
            build=lambda config: SpeechPipeline(load(config), config),
            warm_up_text=warm_up_text,
            task_status=task_status,
        )
    )
    return RunningServer(port, state)


class Client:
    """A WebSocket client that speaks krt's JSON events and collects audio per response."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.audio: dict[str, bytearray] = {}
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, nursery: trio.Nursery, url: str) -> Client:
        return cls(await connect_websocket_url(nursery, url))

    async def send(self, type_: str, **fields: Any) -> None:
        await self.ws.send_message(json.dumps({"type": type_, **fields}))

    async def receive(self) -> dict[str, Any]:
        """The next event; audio deltas are also accumulated in ``self.audio``."""
        event: dict[str, Any] = json.loads(await self.ws.get_message())
        self.events.append(event)
        if event["type"] == "response.output_audio.delta":
            self.audio.setdefault(event["response"], bytearray()).extend(base64.b64decode(event["delta"]))
        return event

    async def receive_until(self, type_: str, response: str | None = None) -> dict[str, Any]:
        """Read events until one of ``type_`` (for ``response``, if given) arrives."""
        while True:
            event = await self.receive()
            if event["type"] == type_ and (response is None or event.get("response") == response):
                return event

    async def aclose(self) -> None:
        await self.ws.aclose()


class Harness:
    """Servers and clients for one test; every client is closed cleanly at teardown."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.clients: list[Client] = []

    async def server(
        self, load: Callable[[Config], Backend] = load_backend, warm_up_text: str = WARM_UP_TEXT, **env: str
    ) -> RunningServer:
        return await start_server(self.nursery, self.tmp_path, load, warm_up_text, **env)

    async def client(self, server: RunningServer) -> Client:
        client = await Client.connect(self.nursery, server.url)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            with trio.move_on_after(2):
                await client.aclose()
            # After a close initiated by the server, trio-websocket's client waits for the
            # server's TCP close before closing its own socket; a test that ends first
            # would leak it. Closing an already closed stream is a no-op.
            await trio.aclose_forcefully(client.ws._stream)


async def run_krt(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """Run the ``krt`` CLI while the calling test's Trio loop keeps serving its server.

    The server address and key come from the test's ``.env`` or flags, never from the
    developer's shell.
    """
    inherited = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "KRT_URL")}
    return await trio.run_process(
        [sys.executable, "-m", "krt", "--env-file", str(cwd / ".env"), *args],
        cwd=cwd,
        env={**inherited, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
