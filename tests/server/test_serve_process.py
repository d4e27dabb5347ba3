"""``krt serve`` as an orchestrator runs it: a real process, real signals, real exit codes.

Each server is started with ``--port 0`` in a temporary working directory (so ``.env``
and ``logs/`` land there); the test learns the port and readiness from the process's own
log lines on stderr, never by sleeping. Every process is killed in teardown.
"""

from __future__ import annotations

import json
import stat
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from krt.metrics.report import read_records
from tests.krt_process import STARTUP_SECONDS, ServerProcess, terminate
from tests.server_harness import Client
from tests.speech_checks import assert_sounds_like_speech

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.trio, pytest.mark.slow]

DRAIN_TEXT = (
    "The first sentence is here. A second one follows it. Then a third arrives. And a fourth ends it."
)


async def http_get(port: int, path: str) -> tuple[int, dict]:
    """A raw ``GET``; the status code and the JSON body."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        response = bytearray()
        while data := await stream.receive_some(65536):
            response += data
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[Client]:
    """A client on the server's WebSocket route; its socket is closed whatever happens.

    trio-websocket 0.12.2 leaves the TCP socket open when the peer drops the connection
    without a close handshake (as a server that exits does), hence the forced close.
    """
    connection = None
    try:
        async with open_websocket_url(server.url) as ws:
            connection = ws
            yield Client(ws)
    finally:
        if connection is not None:
            await trio.aclose_forcefully(connection._stream)


async def test_sigterm_drains_in_flight_audio_refuses_new_work_and_exits_0(
    start_krt, fake_pipeline, tmp_path
):
    drain_seconds = 15.0
    expected = b"".join(fake_pipeline.speak(DRAIN_TEXT))  # the same fake model, without a server
    assert len(expected) / 48000 > 5.0  # ≈ 2.5 s of work at KRT_FAKE_COMPUTE_RATIO=0.5
    with trio.fail_after(STARTUP_SECONDS + drain_seconds):
        server = await start_krt(
            KRT_BACKEND="fake", KRT_FAKE_COMPUTE_RATIO="0.5", KRT_DRAIN_SECONDS=str(drain_seconds)
        )
        assert (await http_get(server.port, "/readyz"))[0] == 200
        admin_socket = tmp_path / "run" / "krt-admin.sock"  # KRT_ADMIN_SOCKET's default
        assert stat.S_IMODE(admin_socket.stat().st_mode) == 0o600
        async with connect(server) as client:
            await client.send("response.create", response_id="r1", input=DRAIN_TEXT)
            await client.receive_until("response.output_audio.delta", "r1")

            signalled = trio.current_time()
            await terminate(server)
            status, body = await http_get(server.port, "/readyz")
            assert (status, body["ready"], body["draining"]) == (503, False, True)

            await client.send("response.create", response_id="r2", input="Too late for this one.")
            refused = await client.receive_until("response.error", "r2")
            assert refused["code"] == "busy"

            await client.receive_until("response.completed", "r1")
            assert bytes(client.audio["r1"]) == expected
            assert "r2" not in client.audio
            assert not [e for e in client.events if e["type"] == "response.error" and e["response"] == "r1"]

            with trio.fail_after(drain_seconds):
                assert await server.process.wait() == 0, server.log
        assert trio.current_time() - signalled < drain_seconds
        assert "Traceback" not in server.log
        assert not admin_socket.exists()  # removed on the way out
        (record,) = read_records(tmp_path / "logs" / "metrics.log")  # r2 was never started
        assert (record["request_id"], record["canceled"]) == ("r1", False)
        assert record["audio_s"] == pytest.approx(len(expected) / 48000, abs=0.0005)  # logged in ms


@pytest.mark.integration
async def test_real_model_streams_speech_end_to_end(start_krt, model_cache_dir):
    """One server start on the packaged int8 Kokoro weights (joined into the cache on first use)."""
    text = "Hello there. This is krt speaking from a real model."
    with trio.fail_after(120):
        server = await start_krt(
            startup_seconds=90,
            KRT_BACKEND="onnx",
            KRT_CPU_THREADS="2",
            KRT_CACHE_DIR=str(model_cache_dir),
        )
        status, ready = await http_get(server.port, "/readyz")
        assert status == 200
        assert ready["backend"] == "onnx"
        async with connect(server) as client:
            await client.send("response.create", response_id="hello", input=text, voice="female")
            await client.receive_until("response.completed", "hello")
        kinds = [event["type"] for event in client.events]
        assert kinds[0] == "response.created"
        assert kinds.index("response.output_audio.delta") < kinds.index("response.completed")
        assert "response.error" not in kinds
        assert_sounds_like_speech(bytes(client.audio["hello"]), words=10)


async def test_a_stuck_model_call_does_not_keep_a_drained_server_alive(start_krt):
    """A model call that will never end, its response still in flight, then SIGTERM: the
    process exits within KRT_DRAIN_SECONDS plus a small margin, closing the client with
    1012 and abandoning the call (its thread dies with the process), instead of waiting
    on it for ever. The drain gives the engine its whole limit to start the stuck call,
    so the call is running when the limit passes, whatever the timing of the machine."""
    drain_seconds = 2.0
    with trio.fail_after(STARTUP_SECONDS + 10):
        server = await start_krt(
            KRT_BACKEND="fake", KRT_FAKE_STALL_WORD="quagmire", KRT_DRAIN_SECONDS=str(drain_seconds)
        )
        async with connect(server) as client:
            await client.send("response.create", response_id="stuck", input="Into the quagmire we go.")
            await client.send("response.create", response_id="queued", input="Waiting behind it.")
            await client.receive_until("response.created", "queued")
            signalled = trio.current_time()
            await terminate(server)
            with trio.fail_after(drain_seconds + 3), pytest.raises(ConnectionClosed) as closed:
                await client.receive_until("response.completed", "queued")
            assert closed.value.reason.code == 1012
            with trio.fail_after(drain_seconds + 3):
                assert await server.process.wait() == 0, server.log
            assert drain_seconds <= trio.current_time() - signalled < drain_seconds + 3
    assert "KRT_DRAIN_SECONDS=2.0 passed with 2 responses in flight" in server.log
