"""What the server knows of a client's reading, from its pongs, and what it does about it.

A session's outbox pings behind its audio; a client's pong proves it has read everything
before it. A client that stops reading (whatever its socket buffers) holds back only its
own stream and is dropped ``WS_SEND_TIMEOUT`` after its audio went unread; a peer that
answers no ping at all is dropped too; and every ping comes before the event that ends
its response, since clients close on that event. Sessions run over memory streams (a
real trio-websocket client, or wsproto where the test must see the pings themselves),
the model inline on virtual time. (The outbox alone, on a fake socket, is in
``test_outbox.py``.)
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events

from krt import PCM_BYTES_PER_SECOND
from krt.server.outbox import READ_CHECK_SECONDS
from krt.synth.fake_backend import FakeBackend
from krt.wire.protocol import WS_PATH
from tests.fakes import ClockedFake, MemoryClient, ServerSide
from tests.inline_engine import LONG_TEXT, expected_pcm, start_state

if TYPE_CHECKING:
    from krt.server.state import ServerState

pytestmark = pytest.mark.trio

TICK = 1e-9
"""Autojumps land on a deadline give or take float rounding; nothing else may pass."""
SHORT_TEXT = "Hello there. This is a test."


async def wire_events(stream: trio.abc.Stream, ws: wsproto.WSConnection) -> list[wsproto.events.Event]:
    """The next events from the server, as a raw WebSocket client sees them (pongs included)."""
    data = await stream.receive_some()
    ws.receive_data(data or None)
    return list(ws.events())


async def open_raw(
    nursery: trio.Nursery, state: ServerState
) -> tuple[trio.abc.Stream, wsproto.WSConnection, ServerSide]:
    """A session whose client is wsproto on a memory stream, handshake done."""
    server_stream, stream = trio.testing.memory_stream_pair()
    server = ServerSide()
    await nursery.start(server.serve, server_stream, state)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(wsproto.events.Request(host="krt.test", target=WS_PATH)))
    assert isinstance((await wire_events(stream, ws))[0], wsproto.events.AcceptConnection)
    return stream, ws, server


async def test_every_ping_reaches_the_client_before_the_event_that_ends_its_response(
    nursery, tmp_path, autojump_clock
):
    """Clients close on ``response.completed``; some fail on a ping that comes after their
    close (trio-websocket, python-trio/trio-websocket#184), so none may."""
    with trio.fail_after(120):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.1))
        stream, ws, _server = await open_raw(nursery, state)

        seen: list[str] = []
        for n in range(5):  # the order of tasks is random in Trio: a race shows in a few rounds
            create = {"type": "response.create", "response_id": f"r{n}", "input": SHORT_TEXT}
            await stream.send_all(ws.send(wsproto.events.TextMessage(json.dumps(create))))
            while seen.count("response.completed") <= n:
                for event in await wire_events(stream, ws):
                    if isinstance(event, wsproto.events.Ping):
                        seen.append("ping")
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, wsproto.events.TextMessage):
                        seen.append(json.loads(event.data)["type"])
        await stream.send_all(ws.send(wsproto.events.CloseConnection(code=1000)))
        while "CloseConnection" not in seen:
            seen.extend(type(event).__name__ for event in await wire_events(stream, ws))

        audio_seconds = len(expected_pcm(state, SHORT_TEXT)) / PCM_BYTES_PER_SECOND
        # A ping after each READ_CHECK_SECONDS of audio, give or take a frame of it.
        assert seen.count("ping") >= 5 * int(audio_seconds / (2 * READ_CHECK_SECONDS))
        rounds = "|".join(seen).split("response.completed")
        for audio in rounds[:-1]:  # the last audio is acknowledged too...
            assert "ping" in audio.split("response.output_audio.delta")[-1]
        for after in rounds[1:]:  # ...and nothing comes between a completion and what follows
            assert after.split("|")[1] in ("response.created", "CloseConnection")


async def test_a_peer_that_answers_no_server_ping_is_dropped(nursery, tmp_path, autojump_clock):
    """A socket whose far end is gone (or a proxy holding it open) answers no ping."""
    with trio.fail_after(100):
        state = await start_state(
            nursery, tmp_path, FakeBackend(), WS_PING_INTERVAL="20", WS_SEND_TIMEOUT="5"
        )
        opened = trio.current_time()
        stream, ws, server = await open_raw(nursery, state)
        assert trio.current_time() == opened
        pings = [event for event in await wire_events(stream, ws) if isinstance(event, wsproto.events.Ping)]
        assert len(pings) == 1 and trio.current_time() == pytest.approx(opened + 20, abs=1e-6)
        await server.ended.wait()  # never answered
        assert server.ended_at == pytest.approx(opened + 20 + 5, abs=1e-6)


async def test_a_client_that_stops_reading_costs_only_itself_however_much_its_socket_buffers(
    nursery, tmp_path, autojump_clock
):
    """The memory streams under these clients take every byte at once, as a kernel's
    socket buffers take a minute of PCM: only what the client acknowledges reading (its
    pongs) counts as read, so a client that stops reading holds its stream back after a
    few seconds of audio, and while it stays attached the others stream exactly as fast
    as they would without it."""
    ratio = 0.25

    async def bravo_speaks(state: ServerState) -> list[float]:
        """When each of bravo's deltas arrived, counted from its request."""
        bravo = await MemoryClient.connect(nursery, state)
        asked = trio.current_time()
        await bravo.send("response.create", response_id="bravo", input=LONG_TEXT)
        await bravo.receive_until("response.completed", "bravo")
        assert bytes(bravo.audio["bravo"]) == expected_pcm(state, LONG_TEXT)
        return [
            arrived - asked
            for arrived, event in zip(bravo.arrivals, bravo.events, strict=True)
            if event["type"] == "response.output_audio.delta"
        ]

    with trio.fail_after(300):
        alone_backend = ClockedFake(autojump_clock, ratio)
        alone = await bravo_speaks(await start_state(nursery, tmp_path, alone_backend))

        backend = ClockedFake(autojump_clock, ratio)
        state = await start_state(nursery, tmp_path, backend, WS_SEND_TIMEOUT="600")
        alpha = await MemoryClient.connect(nursery, state)  # never reads after this
        await alpha.send("response.create", response_id="alpha", input=f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}")
        await trio.sleep(30)  # virtual: long enough to compute all 75 s of it, unbounded
        alpha_made = backend.made
        # Its first two windows (1.2 s, then up to twice that), not 75 s: the second
        # window was due while the first was still in flight, the third never was.
        first_window = state.config.scheduler.priority_quantum_bytes / PCM_BYTES_PER_SECOND
        assert 0 < alpha_made <= first_window + 2 * first_window

        beside_alpha = await bravo_speaks(state)
        assert not alpha.ended.is_set()  # attached all along
        assert beside_alpha == pytest.approx(alone, abs=TICK)
        assert backend.made == pytest.approx(alpha_made + alone_backend.made)


async def test_a_client_whose_pongs_stop_is_dropped_ws_send_timeout_after_its_audio_went_unread(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, 0.25), WS_SEND_TIMEOUT="2")
        alpha = await MemoryClient.connect(nursery, state)
        await alpha.send("response.create", response_id="alpha", input=LONG_TEXT)
        await alpha.receive_until("response.output_audio.delta", "alpha")
        assert alpha.session is not None
        response = alpha.session.responses.get("alpha")
        assert response is not None and response.first_audio_sent_at is not None
        # The reader holds the first audio: nothing after it is read, not even a pong.
        # Everything the server writes still goes through (the memory stream takes it all).
        await alpha.ended.wait()
        assert alpha.ended_at == pytest.approx(response.first_audio_sent_at + 2, abs=TICK)
        assert state.in_flight.count == 0
        assert state.engine is not None and state.engine.statistics().active == 0


async def test_a_client_that_stops_reading_is_dropped_after_ws_send_timeout_and_others_go_on(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_SEND_TIMEOUT="2")
        stuck = await MemoryClient.connect(nursery, state, lockstep=True)
        reader = await MemoryClient.connect(nursery, state)
        engine = state.engine
        assert engine is not None

        sent = trio.current_time()
        # Three times LONG_TEXT: more audio than the outbox and the job's buffer hold, so
        # the stuck client's job is still in the engine when its sends block.
        await stuck.send("response.create", response_id="stuck", input=f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}")
        await trio.sleep(1.5)  # virtual; nobody reads the stuck client's frames
        # Its reader took nothing for PARK_AFTER_SECONDS: it is parked and holds no place.
        assert (engine.statistics().active, engine.statistics().parked) == (0, 1)
        await reader.send("response.create", response_id="r1", input=LONG_TEXT)
        await reader.receive_until("response.completed", "r1")
        await stuck.ended.wait()

        assert stuck.ended_at == pytest.approx(sent + 2, abs=TICK)
        assert bytes(reader.audio["r1"]) == expected_pcm(state, LONG_TEXT)
        # It held up nobody: r1's first audio came the moment it was asked for (the model
        # computes in no time), and a player started then never ran dry.
        deltas = [
            (arrived, event)
            for arrived, event in zip(reader.arrivals, reader.events, strict=True)
            if event["type"] == "response.output_audio.delta" and event["response"] == "r1"
        ]
        assert deltas[0][0] == pytest.approx(sent + 1.5, abs=TICK)
        played = 0.0
        for arrived, event in deltas:
            assert arrived <= deltas[0][0] + played + TICK
            played += len(base64.b64decode(event["delta"])) / PCM_BYTES_PER_SECOND
        stats = engine.statistics()
        assert (stats.active, stats.waiting, stats.parked) == (0, 0, 0)
        assert state.sessions == 1
        assert state.in_flight.count == 0
        await reader.send("response.create", response_id="r2", input="Still here.")
        await reader.receive_until("response.completed", "r2")
