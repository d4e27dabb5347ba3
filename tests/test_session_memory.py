"""One WebSocket session without a socket: a real trio-websocket client over memory streams.

The session, its outbox and the engine (run inline, fake model) are the production
objects; only the transport is in memory, so everything runs on virtual time and the
order of events is exact. ``ClockedFake`` makes a response take virtual time to compute,
so a cancel or a disconnect lands while its audio is still being made.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events

from krt import PCM_BYTES_PER_SECOND
from krt.protocol import WS_PATH
from krt.server.outbox import READ_CHECK_SECONDS
from krt.synth.fake_backend import FakeBackend
from tests.fakes import ClockedFake, CrashingPhonemizer, MemoryClient, ServerSide
from tests.inline_engine import LONG_TEXT, expected_pcm, metrics_lines, start_state

if TYPE_CHECKING:
    from krt.server.state import ServerState

pytestmark = pytest.mark.trio

SHORT_TEXT = "Hello there. This is a test."
"""About 25 s of fake audio: at a ratio of 0.25, over 6 virtual seconds of compute."""
VERY_LONG_TEXT = f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}"
"""More audio than a session's outbox (64 engine batches) and its job's buffer hold."""


class ClockedCrashingFake(ClockedFake):
    """A model on virtual time whose G2P breaks on any text containing ``explode``."""

    def make_phonemizer(self) -> CrashingPhonemizer:
        return CrashingPhonemizer("explode")


def engine_idle(state: ServerState) -> bool:
    assert state.engine is not None
    stats = state.engine.statistics()
    return (stats.active, stats.waiting) == (0, 0)


async def test_a_response_is_created_streamed_and_completed(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="r1", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r1")

        kinds = client.event_types("r1")
        assert kinds[0] == "response.created"
        assert kinds[-1] == "response.completed"
        assert set(kinds[1:-1]) == {"response.output_audio.delta"}
        assert bytes(client.audio["r1"]) == expected_pcm(state, SHORT_TEXT)
        assert state.in_flight.count == 0
        assert engine_idle(state)


async def test_nothing_of_a_canceled_response_follows_its_canceled_event(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.25)
        state = await start_state(nursery, tmp_path, backend)
        client = await MemoryClient.connect(nursery, state)
        plan = state.engine.plan(LONG_TEXT, "female")

        await client.send("response.create", response_id="r1", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "r1")
        await client.send("response.cancel", response="r1")
        canceled = await client.receive_until("response.canceled", "r1")
        after_cancel = len(client.events)
        await client.send("response.cancel", response="r1")
        unknown = await client.receive()
        await client.send("response.create", response_id="r2", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r2")

        assert canceled == {"type": "response.canceled", "response": "r1"}
        assert not [event for event in client.events[after_cancel:] if event.get("response") == "r1"]
        assert unknown["type"] == "error" and unknown["error"]["code"] == "unknown_response"
        assert 0 < len(client.audio["r1"]) < len(expected_pcm(state, LONG_TEXT))
        # The model stopped on r1 within a segment or two of the cancel.
        assert backend.segments_synthesized < len(plan.segments)
        assert bytes(client.audio["r2"]) == expected_pcm(state, SHORT_TEXT)
        assert engine_idle(state)


async def test_a_cancel_drops_the_audio_still_waiting_to_be_sent(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_SEND_TIMEOUT="60")
        # A stream with no buffer: the server's writes wait for this client to read.
        client = await MemoryClient.connect(nursery, state, lockstep=True)

        # More audio than the outbox and the job's buffer hold: r1 is still being made.
        await client.send("response.create", response_id="r1", input=VERY_LONG_TEXT)
        await trio.sleep(1)  # virtual: the client reads nothing; r1's audio piles up server-side
        await client.send("response.cancel", response="r1")
        await client.receive_until("response.canceled", "r1")

        # Only what was already on the wire arrives: the frame the client's reader holds
        # and the one the server was part-way through writing. The queued audio is
        # dropped instead of being played after the user asked for silence.
        deltas = ["response.output_audio.delta"] * 2
        assert client.event_types("r1") == ["response.created", *deltas, "response.canceled"]
        await client.send("response.create", response_id="r2", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r2")
        assert bytes(client.audio["r2"]) == expected_pcm(state, SHORT_TEXT)
        assert engine_idle(state)


async def test_a_response_whose_audio_is_still_queued_can_be_canceled(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_SEND_TIMEOUT="60")
        client = await MemoryClient.connect(nursery, state, lockstep=True)

        # All of r1 fits in the outbox: its synthesis is over, none of it has been read.
        await client.send("response.create", response_id="r1", input=LONG_TEXT)
        await trio.sleep(1)  # virtual: the client reads nothing
        await client.send("response.cancel", response="r1")
        while (answer := await client.receive())["type"] not in ("response.canceled", "error"):
            pass

        # The cancel stops the audio still queued, not just synthesis: no completion, and
        # not the unknown_response a response retired on queueing its last event would get.
        assert answer == {"type": "response.canceled", "response": "r1"}
        assert "response.completed" not in client.event_types("r1")


async def test_barge_cancels_every_response_and_forgets_buffered_input(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(
            nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.25), FLUSH_IDLE_MS="600000"
        )
        client = await MemoryClient.connect(nursery, state)

        await client.send("input.append", text="words still being typed")
        await client.send("response.create", response_id="r1", input=LONG_TEXT)
        await client.send("response.create", response_id="r2", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "r1")
        await client.send("barge")
        await client.receive_until("response.canceled", "r2")
        after_barge = len(client.events)
        await client.send("input.commit")  # the buffered words are gone: nothing to speak
        await client.send("response.create", response_id="r3", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r3")

        assert client.event_types("r1")[-1] == "response.canceled"
        assert client.event_types("r2") == ["response.created", "response.canceled"]
        later = client.events[after_barge:]
        assert all(event["response"] == "r3" for event in later)
        assert bytes(client.audio["r3"]) == expected_pcm(state, SHORT_TEXT)
        assert state.in_flight.count == 0
        assert engine_idle(state)


async def test_session_end_speaks_what_is_queued_then_closes_1000(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.25))
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="r1", input=SHORT_TEXT)
        await client.send("response.create", response_id="r2", input=LONG_TEXT)
        await client.send("input.append", text="and one trailing thought")
        await client.send("session.end")
        code = await client.receive_until_closed()

        assert code == 1000
        created = [event["response"] for event in client.events if event["type"] == "response.created"]
        completed = [event["response"] for event in client.events if event["type"] == "response.completed"]
        assert created[:2] == ["r1", "r2"] and len(created) == 3
        assert completed == created
        assert bytes(client.audio["r2"]) == expected_pcm(state, LONG_TEXT)
        assert bytes(client.audio[created[2]]) == expected_pcm(state, "and one trailing thought")
        with trio.fail_after(1):
            await client.ended.wait()
        assert state.sessions == 0
        assert state.in_flight.count == 0


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "response.explode"}', "unknown_event"),
        ('{"type": "response.create", "input": 42}', "invalid_field"),
        (b"\x00\x01binary", "binary_frame"),
    ],
)
async def test_a_malformed_frame_gets_an_error_event_and_the_session_goes_on(
    nursery, tmp_path, autojump_clock, frame, code
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)

        await client.send_frame(frame)
        error = await client.receive()
        await client.send("response.create", response_id="r1", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r1")

        assert error["type"] == "error"
        assert error["error"]["code"] == code
        assert bytes(client.audio["r1"]) == expected_pcm(state, SHORT_TEXT)


async def test_the_metrics_log_gets_one_line_per_finished_response(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        backend = ClockedCrashingFake(autojump_clock, ratio=0.25)
        state = await start_state(nursery, tmp_path, backend)
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="canceled", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "canceled")
        await client.send("response.cancel", response="canceled")
        await client.receive_until("response.canceled", "canceled")
        computed_before = backend.computed
        await client.send("response.create", response_id="completed", input=SHORT_TEXT)
        await client.receive_until("response.completed", "completed")
        completed_compute = backend.computed - computed_before
        await client.send("response.create", response_id="failed", input="This will explode.")
        failed = await client.receive_until("response.error", "failed")
        await client.send("response.create", response_id="refused", input="Hi.", voice="robot")
        refused = await client.receive_until("response.error", "refused")

        assert failed["code"] == "synthesis_failed"
        assert refused["code"] == "invalid_voice"
        records = metrics_lines(tmp_path)
        assert set(records) == {"canceled", "completed"}
        assert records["canceled"]["canceled"] is True
        assert records["completed"]["canceled"] is False
        assert records["completed"]["audio_s"] == round(len(client.audio["completed"]) / 48000, 3)
        # Virtual time: the completed response took exactly its compute, nothing else.
        assert records["completed"]["wall_s"] == round(completed_compute, 3)
        assert state.in_flight.count == 0


async def test_an_abrupt_disconnect_settles_everything_and_frees_the_engine(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.25)
        state = await start_state(nursery, tmp_path, backend)
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="speaking", input=LONG_TEXT)
        await client.send("response.create", response_id="queued", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "speaking")
        assert state.in_flight.count == 2
        await client.abort()
        await client.ended.wait()
        computed_at_end = backend.computed

        assert state.in_flight.count == 0
        assert state.in_flight.zero.is_set()
        assert state.sessions == 0
        assert engine_idle(state)
        records = metrics_lines(tmp_path)
        assert set(records) == {"speaking", "queued"}
        assert all(record["canceled"] is True for record in records.values())
        await trio.sleep(5)  # virtual: the model is not still working for the vanished client
        assert backend.computed == computed_at_end


async def wire_events(stream: trio.abc.Stream, ws: wsproto.WSConnection) -> list[wsproto.events.Event]:
    """The next events from the server, as a raw WebSocket client sees them (pongs included)."""
    data = await stream.receive_some()
    ws.receive_data(data or None)
    return list(ws.events())


async def test_every_ping_reaches_the_client_before_the_event_that_ends_its_response(
    nursery, tmp_path, autojump_clock
):
    """Clients close on ``response.completed``; some fail on a ping that comes after their
    close (trio-websocket, python-trio/trio-websocket#184), so none may."""
    with trio.fail_after(120):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.1))
        server_stream, stream = trio.testing.memory_stream_pair()
        await nursery.start(ServerSide().serve, server_stream, state)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(wsproto.events.Request(host="krt.test", target=WS_PATH)))
        assert isinstance((await wire_events(stream, ws))[0], wsproto.events.AcceptConnection)

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


async def test_a_ping_event_is_answered_with_its_id(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("ping", id="k-1")
        await client.send("ping")
        assert [await client.receive(), await client.receive()] == [
            {"type": "pong", "id": "k-1"},
            {"type": "pong"},
        ]


async def test_an_idle_connection_is_closed_after_ws_idle_timeout_and_what_the_client_does_keeps_it(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(1000):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_IDLE_TIMEOUT="180")
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="r1", input=SHORT_TEXT)
        await client.receive_until("response.completed", "r1")
        await trio.sleep(150)  # virtual: idle, under the timeout (the server pings meanwhile)
        await client.send("ping")
        await client.receive_until("pong")
        heard = trio.current_time()
        code = await client.receive_until_closed()
        assert code == 1000
        assert client.closed_at == pytest.approx(heard + 180, abs=1e-6)
        await client.ended.wait()  # and the session is over on the server too


async def test_a_peer_that_answers_no_server_ping_is_dropped(nursery, tmp_path, autojump_clock):
    """A socket whose far end is gone (or a proxy holding it open) answers no ping."""
    with trio.fail_after(100):
        state = await start_state(
            nursery, tmp_path, FakeBackend(), WS_PING_INTERVAL="20", WS_SEND_TIMEOUT="5"
        )
        server_stream, stream = trio.testing.memory_stream_pair()
        server = ServerSide()
        await nursery.start(server.serve, server_stream, state)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(wsproto.events.Request(host="krt.test", target=WS_PATH)))
        assert isinstance((await wire_events(stream, ws))[0], wsproto.events.AcceptConnection)
        opened = trio.current_time()
        pings = [event for event in await wire_events(stream, ws) if isinstance(event, wsproto.events.Ping)]
        assert len(pings) == 1 and trio.current_time() == pytest.approx(opened + 20, abs=1e-6)
        await server.ended.wait()  # never answered
        assert server.ended_at == pytest.approx(opened + 20 + 5, abs=1e-6)
