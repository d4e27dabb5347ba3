"""The admin socket, for real: a server on loopback (fake backend) and consoles on its
Unix socket, reading and writing the admin schema's JSON lines."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.server.admin import AdminSocketError, bind
from krt.synth.fake_backend import FakeBackend
from krt.wire import admin_schema as schema
from tests.inline_engine import LONG_TEXT
from tests.server_harness import start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from tests.server_harness import Harness, RunningServer

pytestmark = pytest.mark.trio

SPEECH = ".".join(LONG_TEXT.split(".")[:3]) + "."
"""About 9 s of fake audio: at a compute ratio of 0.2 streamed in about two seconds, in
several progress steps (a longer text would be paced at real time, 8 s ahead of its
player)."""

M = TypeVar("M")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: a Unix socket's path must fit in 108 bytes, pytest's may not."""
    with tempfile.TemporaryDirectory(prefix="krt-") as directory:
        yield Path(directory)


@pytest.fixture
async def attach() -> AsyncIterator[Callable[[Path], Awaitable[Console]]]:
    """Attach consoles to a socket; each is hung up at the end of the test."""
    consoles: list[Console] = []

    async def attach_to(path: Path) -> Console:
        consoles.append(Console(await trio.open_unix_socket(str(path))))
        return consoles[-1]

    yield attach_to
    for console in consoles:
        await console.stream.aclose()


class Console:
    """The console's end of the admin socket, for tests: decoded messages, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._requests = 0

    async def next(self) -> schema.ServerMessage:
        while (end := self._buffer.find(b"\n")) < 0:
            data = await self.stream.receive_some()
            if not data:
                raise EOFError("the server hung up")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return schema.decode_server_message(line)

    async def until(
        self,
        kind: type[M],
        matching: Callable[[M], bool] = lambda _m: True,
        seen: list[schema.ServerMessage] | None = None,
    ) -> M:
        """Read up to the first ``kind`` message ``matching``; the ones read are added to ``seen``."""
        while True:
            message = await self.next()
            if seen is not None:
                seen.append(message)
            if isinstance(message, kind) and matching(message):
                return message

    async def ask(self, make: Callable[[int], schema.Command]) -> schema.Reply:
        self._requests += 1
        request = self._requests
        await self.stream.send_all(schema.encode(make(request)))
        return await self.until(schema.Reply, lambda reply: reply.request == request)


async def admin_server(
    harness: Harness, socket_dir: Path, compute_ratio: float = 0.0, **env: str
) -> tuple[RunningServer, Path]:
    """A server with its admin socket in ``socket_dir``; its fake model computes at
    ``compute_ratio`` × real time once warm (the warm-up runs at full speed)."""
    path = socket_dir / "admin.sock"
    backend = FakeBackend()
    server = await harness.server(load=lambda _config: backend, KRT_ADMIN_SOCKET=str(path), **env)
    backend.compute_ratio = compute_ratio
    return server, path


def response_state(state: str, response: str) -> Callable[[schema.ResponseUpdated], bool]:
    return lambda update: update.response.response == response and update.response.state == state


async def test_a_console_is_greeted_with_who_the_server_is_and_what_is_live(harness, socket_dir, attach):
    with trio.fail_after(10):
        server, path = await admin_server(harness, socket_dir, MAX_CONCURRENT_JOBS="3")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        client = await harness.client(server)
        await client.send("response.create", response_id="r1", input="Hello there.")
        await client.receive_until("response.completed", "r1")

        console = await attach(path)
        hello = await console.next()
        assert isinstance(hello, schema.Hello)
        assert (hello.schema, hello.pid, hello.backend) == (schema.SCHEMA_VERSION, os.getpid(), "fake")
        assert hello.female in hello.voices and hello.male in hello.voices
        snapshot = hello.snapshot
        assert (snapshot.ready, snapshot.draining) == (True, False)
        assert snapshot.knobs == schema.Knobs(3, 16, 4000)
        (connection,) = snapshot.connections
        assert connection.peer.startswith("127.0.0.1:")
        (done,) = snapshot.responses
        assert (done.response, done.state, done.text) == ("r1", "completed", "Hello there.")
        assert done.audio_s == pytest.approx(len(client.audio["r1"]) / PCM_BYTES_PER_SECOND, abs=0.001)


async def test_a_console_follows_connections_responses_and_the_engine_live(harness, socket_dir, attach):
    with trio.fail_after(20):
        server, path = await admin_server(harness, socket_dir, compute_ratio=0.2)
        console = await attach(path)
        await console.until(schema.Hello)

        client = await harness.client(server)
        opened = await console.until(schema.ConnectionOpened)
        await client.send("response.create", response_id="r1", input=SPEECH)
        listened = trio.Event()

        async def listen() -> None:  # as a player does, while the console watches
            await client.receive_until("response.completed", "r1")
            listened.set()

        harness.nursery.start_soon(listen)
        seen: list[schema.ServerMessage] = []
        completed = await console.until(schema.ResponseUpdated, response_state("completed", "r1"), seen)
        await listened.wait()
        assert completed.response.audio_s == pytest.approx(
            len(client.audio["r1"]) / PCM_BYTES_PER_SECOND, abs=0.001
        )
        updates = [message.response for message in seen if isinstance(message, schema.ResponseUpdated)]
        assert all(update.connection == opened.connection.connection for update in updates)
        assert updates[0].state == "queued" and updates[0].text == SPEECH
        speaking = [update for update in updates if update.state == "speaking"]
        assert speaking[0].ttfb_ms is not None and speaking[0].queue_ms is not None
        sent = [update.audio_s for update in speaking]
        assert len(set(sent)) >= 3 and sent == sorted(sent)  # progress, a few times a second
        assert all(update.xrt is not None for update in speaking)
        busy = [
            message.engine
            for message in seen
            if isinstance(message, schema.EngineUpdated) and message.engine.active == 1
        ]
        assert busy and all(0 < sample.model_busy_pct <= 100 and sample.audio_per_s > 0 for sample in busy)

        await client.aclose()
        closed = await console.until(schema.ConnectionClosed)
        assert closed.connection == opened.connection.connection
        rolling = await console.until(
            schema.EngineUpdated, lambda update: update.engine.ttfb_p50_1m is not None
        )
        assert rolling.engine.ttfb_p50_1m == pytest.approx(completed.response.ttfb_ms)


async def test_a_console_cancels_a_response_and_closes_a_connection(harness, socket_dir, attach):
    with trio.fail_after(20):
        server, path = await admin_server(harness, socket_dir, compute_ratio=0.2)
        console = await attach(path)
        await console.until(schema.Hello)
        client = await harness.client(server)
        await client.send("response.create", response_id="r1", input=LONG_TEXT)
        speaking = await console.until(schema.ResponseUpdated, response_state("speaking", "r1"))
        connection = speaking.response.connection

        reply = await console.ask(lambda n: schema.CancelResponse(n, connection, "r1"))
        assert reply.ok, reply.message
        await client.receive_until("response.canceled", "r1")
        await console.until(schema.ResponseUpdated, response_state("canceled", "r1"))
        again = await console.ask(lambda n: schema.CancelResponse(n, connection, "r1"))
        assert not again.ok and "not active" in again.message
        nobody = await console.ask(lambda n: schema.CloseConnection(n, "c999"))
        assert not nobody.ok and "no connection c999" in nobody.message

        reply = await console.ask(lambda n: schema.CloseConnection(n, connection))
        assert reply.ok, reply.message
        from trio_websocket import ConnectionClosed

        with pytest.raises(ConnectionClosed) as closed:
            await client.receive_until("response.completed")
        assert closed.value.reason.code == 1000
        await console.until(schema.ConnectionClosed, lambda message: message.connection == connection)


async def test_knobs_change_live_are_checked_and_shown_to_every_console(harness, socket_dir, attach):
    with trio.fail_after(10):
        server, path = await admin_server(harness, socket_dir)
        first = await attach(path)
        await first.until(schema.Hello)

        refused = await first.ask(lambda n: schema.SetKnob(n, "MAX_CONCURRENT_JOBS", 0))
        assert not refused.ok and "MAX_CONCURRENT_JOBS must be at least 1" in refused.message
        reply = await first.ask(lambda n: schema.SetKnob(n, "MAX_CONCURRENT_JOBS", 1))
        assert reply.ok and "now 1 (was 4)" in reply.message
        updated = await first.until(schema.ServerUpdated)
        assert updated.knobs.max_concurrent_jobs == 1
        await first.ask(lambda n: schema.SetKnob(n, "QUEUE_WAIT_SLA_MS", 0))

        second = await attach(path)
        hello = await second.until(schema.Hello)
        assert hello.snapshot.knobs == schema.Knobs(1, 16, 0)
        # And the engine obeys: with one slot taken, a second stream waits, past the SLA of 0.
        assert server.state.engine is not None
        assert server.state.engine.admission.max_concurrent_jobs == 1


async def test_a_console_drains_the_server(harness, socket_dir, attach):
    with trio.fail_after(10):
        server, path = await admin_server(harness, socket_dir)
        console = await attach(path)
        await console.until(schema.Hello)
        reply = await console.ask(lambda n: schema.Drain(n))
        assert reply.ok and reply.message == "draining"
        assert server.state.draining
        # Nothing was in flight: the drain ends the server at once (the console may or may
        # not see the server.updated first), and with it the console's connection.
        seen: list[schema.ServerMessage] = []
        with pytest.raises(EOFError):
            await _read_to_the_end(console, seen)
        assert all(message.draining for message in seen if isinstance(message, schema.ServerUpdated))


async def _read_to_the_end(console: Console, seen: list[schema.ServerMessage]) -> None:
    while True:
        seen.append(await console.next())


async def test_a_bad_command_gets_a_reply_and_the_console_goes_on(harness, socket_dir, attach):
    with trio.fail_after(10):
        _server, path = await admin_server(harness, socket_dir)
        console = await attach(path)
        await console.until(schema.Hello)
        for line in (b'{"type": "explode"}', b"[" * 100_000):
            await console.stream.send_all(line + b"\n")
            refused = await console.until(schema.Reply)
            assert not refused.ok and refused.request == -1
        reply = await console.ask(lambda n: schema.SetKnob(n, "MAX_QUEUED_REQUESTS", 3))
        assert reply.ok


async def test_a_console_that_never_reads_holds_up_no_stream(harness, socket_dir, attach):
    with trio.fail_after(20):
        server, path = await admin_server(harness, socket_dir)
        stuck = await attach(path)  # never reads a byte
        for round_ in range(3):
            client = await harness.client(server)
            await client.send(
                "response.create", response_id=f"r{round_}", input="Hello there. This is a test."
            )
            await client.receive_until("response.completed", f"r{round_}")
            await client.aclose()
        hello = await stuck.next()  # it may read late, and what it reads still makes sense
        assert isinstance(hello, schema.Hello)


async def test_a_subscriber_that_falls_behind_loses_events_then_gets_a_snapshot(harness, socket_dir, attach):
    with trio.fail_after(10):
        server, _path = await admin_server(harness, socket_dir)
        monitor = server.state.monitor
        with monitor.subscribe(size=2) as feed:
            for _ in range(5):
                monitor.server_changed()  # never waits, whoever is behind
            assert [type(await feed.next()) for _ in range(2)] == [schema.ServerUpdated] * 2
            lost = await feed.next()
            assert isinstance(lost, schema.EventsLost) and lost.count == 3
            assert lost.snapshot.ready


async def test_a_stale_socket_is_replaced_a_live_one_or_a_file_is_not_and_ours_is_removed(socket_dir, attach):
    path = socket_dir / "admin.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # a run that died without removing its socket
    crashed.close()
    with trio.fail_after(10):
        async with trio.open_nursery() as running:
            await start_server(running, socket_dir, KRT_ADMIN_SOCKET=str(path))
            console = await attach(path)
            assert isinstance(await console.next(), schema.Hello)

            with pytest.raises(AdminSocketError, match="another krt"):
                await bind(trio.Path(path))
            plain = socket_dir / "notes.txt"
            plain.write_text("mine")
            with pytest.raises(AdminSocketError, match="not a socket"):
                await bind(trio.Path(plain))
            assert plain.read_text() == "mine"
            running.cancel_scope.cancel()
        assert not path.exists()  # removed on the way out
