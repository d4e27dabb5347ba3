"""One WebSocket session, as its client hears it: responses, cancels, barge, incremental
input, session settings, bad events, failures, keepalive and the session's end.

Each session is the listener's own ``serve_websocket`` with a real trio-websocket client
at the other end of an in-memory stream (``MemoryClient``), and the engine runs its model
inline, so everything runs on virtual time (``autojump_clock``) and the order of events
is exact. ``ClockedFake`` makes a response take virtual time to compute, so a cancel or a
disconnect lands while its audio is still being made. What only a real socket has (the
HTTP front door, the upgrade, auth) is tested in ``test_http.py``; a drain in
``test_drain.py``; what the server knows of a client's reading in ``test_outbox_reading.py``.
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import trio
import trio.testing

from krt.media.audio import pcm16_to_float
from krt.media.codecs import OutputAudio, decode
from krt.metrics.record import MetricsLog
from krt.server.state import ServerState
from krt.synth.fake_backend import FakeBackend
from tests.fakes import ClockedFake, CrashingG2PFake, CrashingPhonemizer, MemoryClient, RecordingFake
from tests.inline_engine import (
    LONG_TEXT,
    engine_config,
    expected_pcm,
    metrics_lines,
    sentences,
    start_engine,
    start_state,
)

pytestmark = pytest.mark.trio

TICK = 1e-9
"""Autojumps land on a deadline give or take float rounding; nothing else may pass."""
SHORT_TEXT = "Hello there. This is a test."
"""About 25 s of fake audio: at a ratio of 0.25, over 6 virtual seconds of compute."""
VERY_LONG_TEXT = f"{LONG_TEXT} {LONG_TEXT} {LONG_TEXT}"
"""More audio than a session's outbox (64 engine batches) and its job's buffer hold."""
PCM_BYTES_PER_S = 48_000


class ClockedCrashingFake(ClockedFake):
    """A model on virtual time whose G2P breaks on any text containing ``explode``."""

    def make_phonemizer(self) -> CrashingPhonemizer:
        return CrashingPhonemizer("explode")


def engine_idle(state: ServerState) -> bool:
    assert state.engine is not None
    stats = state.engine.statistics()
    return (stats.active, stats.waiting) == (0, 0)


def created_ids(client: MemoryClient) -> list[str]:
    return [event["response"] for event in client.events if event["type"] == "response.created"]


# -- a response -----------------------------------------------------------------------


async def test_a_response_is_created_streamed_and_completed(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="r1", input=SHORT_TEXT)
        assert await client.receive() == {"type": "response.created", "response": "r1"}
        completed = await client.receive_until("response.completed")

        assert completed == {"type": "response.completed", "response": "r1"}
        kinds = client.event_types("r1")
        assert kinds[0] == "response.created"
        assert kinds[-1] == "response.completed"
        assert set(kinds[1:-1]) == {"response.output_audio.delta"}
        deltas = [event for event in client.events if event["type"] == "response.output_audio.delta"]
        assert deltas and all(event["response"] == "r1" for event in deltas)
        assert len(client.audio["r1"]) / PCM_BYTES_PER_S > 1.0
        assert len(client.audio["r1"]) % 2 == 0
        assert bytes(client.audio["r1"]) == expected_pcm(state, SHORT_TEXT)
        assert state.in_flight.count == 0
        assert engine_idle(state)


async def test_the_first_delta_is_20_ms_and_the_rest_come_in_ws_buffer_bytes_frames(
    nursery, tmp_path, autojump_clock
):
    """WS_FIRST_CHUNK_IMMEDIATE: the first 20 ms leaves alone, the rest in WS_BUFFER_BYTES batches."""
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), WS_BUFFER_BYTES="9600")
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="r1", input="Hello there, how are you doing today?")
        await client.receive_until("response.completed")
        sizes = [len(base64.b64decode(e["delta"])) for e in client.events if e["type"].endswith("delta")]
        total = sum(sizes)
        assert sizes[0] == 960
        assert max(sizes) <= 9600
        # full 9600-byte frames, except where an engine delivery (0.5 s of fake audio) ends
        assert len(sizes) <= 1 + math.ceil(total / 9600) + math.ceil(total / 24000)


async def test_primer_silence_comes_first_when_enabled(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), PRIME_STREAM="1", PRIME_BYTES="480")
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="r1", input="Hi.")
        await client.receive_until("response.completed")
        assert bytes(client.audio["r1"][:480]) == bytes(480)
        # The primer comes on top of the speech (whose own first samples are quiet too).
        assert bytes(client.audio["r1"]) == bytes(480) + expected_pcm(state, "Hi.")


async def test_a_response_without_an_id_gets_one_made_by_the_server(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", input="Hello.")
        created = await client.receive()
        assert created["type"] == "response.created" and created["response"]
        assert (await client.receive_until("response.completed"))["response"] == created["response"]


async def test_queued_responses_are_spoken_in_order(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        for n in (1, 2, 3):
            await client.send(
                "response.create", response_id=f"r{n}", input=f"Response number {n}. It has two parts."
            )
        await client.receive_until("response.completed", "r3")
        order = [(e["type"], e["response"]) for e in client.events if e["type"] != "response.created"]
        speaking = [response for _type, response in order]
        # each response's frames are contiguous and in submission order
        assert [r for i, r in enumerate(speaking) if i == 0 or speaking[i - 1] != r] == ["r1", "r2", "r3"]
        completions = [r for t, r in order if t == "response.completed"]
        assert completions == ["r1", "r2", "r3"]


# -- session settings -----------------------------------------------------------------


async def test_session_update_is_echoed_and_applies_to_later_responses(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send(
            "session.update", session={"voice": "male", "speed": 1.5, "audio": {"format": "pcm"}}
        )
        updated = await client.receive()
        assert updated == {
            "type": "session.updated",
            "session": {
                "voice": "male",
                "speed": 1.5,
                "audio": {"format": "pcm", "sample_rate": 24000},
                "timestamps": False,
            },
        }
        await client.send("response.create", response_id="fast", input="one two three four")
        await client.send("response.create", response_id="slow", input="one two three four", speed=0.75)
        await client.receive_until("response.completed", "slow")
        assert len(client.audio["slow"]) == pytest.approx(2 * len(client.audio["fast"]), rel=0.05)
        assert state.engine is not None
        assert metrics_lines(tmp_path)["fast"]["voice"] == state.engine.describe().male


@pytest.mark.parametrize(
    ("session", "code"),
    [
        ({"voice": "robot"}, "invalid_voice"),
        ({"speed": 9}, "invalid_speed"),
        ({"audio": {"format": "opus", "sample_rate": 22050}}, "unsupported_format"),
        ({"audio": {"sample_rate": 11025}}, "unsupported_format"),
        ({"audio": {"format": "opus"}}, "unsupported_format"),  # the session's 44100 stays
    ],
)
async def test_a_bad_session_update_is_an_error_and_changes_nothing(
    nursery, tmp_path, autojump_clock, session, code
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("session.update", session={"audio": {"sample_rate": 44100}})
        before = (await client.receive())["session"]
        await client.send("session.update", session=session)
        error = await client.receive()
        assert error["type"] == "error"
        assert error["error"]["code"] == code and error["error"]["event_type"] == "session.update"
        await client.send("session.update", session={})
        assert (await client.receive())["session"] == before


@pytest.mark.parametrize(
    ("audio", "decoded_rate"),
    [
        ({"format": "opus"}, 48000),
        ({"format": "opus", "sample_rate": 16000}, 48000),
        ({"format": "mulaw", "sample_rate": 8000}, 8000),
        ({"format": "alaw", "sample_rate": 8000}, 8000),
        ({"format": "pcm", "sample_rate": 16000}, 16000),
        ({"format": "pcm", "sample_rate": 44100}, 44100),
    ],
)
async def test_each_format_and_rate_streams_the_same_audio(
    nursery, tmp_path, autojump_clock, audio, decoded_rate
):
    """What a session asks for is what its deltas carry, and it decodes back (PyAV) to as
    long as the PCM the same text gives at 24 kHz; the audio is still the voice."""
    text = "Hello there. This is a test of the output formats."
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="native", input=text)
        await client.receive_until("response.completed", "native")
        await client.send("session.update", session={"audio": audio})
        updated = await client.receive_until("session.updated")
        output = OutputAudio(**{"format": "pcm", "sample_rate": 24000, **audio})
        assert updated["session"]["audio"] == {"format": output.format, "sample_rate": output.sample_rate}
        await client.send("response.create", response_id="encoded", input=text)
        await client.receive_until("response.completed", "encoded")
    native = pcm16_to_float(bytes(client.audio["native"]))
    samples, rate = decode(bytes(client.audio["encoded"]), output)
    assert rate == decoded_rate
    assert samples.size / rate == pytest.approx(native.size / 24000, abs=1 / output.sample_rate)
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(np.sqrt(np.mean(native**2)), rel=0.2)


# -- bad events and failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "response.explode"}', "unknown_event"),
        ('{"type": "response.create"}', "missing_field"),
        ('{"type": "response.create", "input": 42}', "invalid_field"),
        ('{"type": "response.cancel"}', "missing_field"),
        (b"\x00\x01binary", "binary_frame"),
        (json.dumps({"type": "input.append", "text": "x" * 70_000}), "oversized"),
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
        assert error["error"]["message"]
        assert bytes(client.audio["r1"]) == expected_pcm(state, SHORT_TEXT)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "response.create", "response_id": "big", "input": "x" * 70_000}, "oversized"),
        ({"type": "response.create", "response_id": "big", "input": 42}, "invalid_field"),
        ({"type": "response.create", "response_id": "big", "input": "Hi.", "speed": "fast"}, "invalid_field"),
    ],
)
async def test_an_unreadable_create_whose_id_can_be_read_ends_that_response(
    nursery, tmp_path, autojump_clock, frame, code
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send_frame(json.dumps(frame))
        error = await client.receive()
        assert error["type"] == "error" and error["error"]["code"] == code
        ended = await client.receive()
        assert ended["type"] == "response.error"
        assert (ended["response"], ended["code"]) == ("big", code)
        await client.send("response.create", response_id="after", input="Still here.")
        await client.receive_until("response.completed", "after")
        # Exactly one terminal event for "big": nothing else about it followed.
        assert client.event_types("big") == ["response.error"]


async def test_an_unreadable_create_reusing_a_live_id_leaves_that_response_alone(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        # The model takes virtual time: "live" is still being spoken when the bad frame lands.
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.25))
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="live", input="One sentence. And another one.")
        await client.receive_until("response.created", "live")
        await client.send_frame(json.dumps({"type": "response.create", "response_id": "live", "input": 42}))
        await client.receive_until("response.completed", "live")
        assert "response.error" not in client.event_types("live")
        assert [event["error"]["code"] for event in client.events if event["type"] == "error"] == [
            "invalid_field"
        ]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"input": "word " * 401}, "too_long"),
        ({"input": "Read this: " + "a." * 1000}, "too_long"),
        ({"input": "A word " + "z" * 4000 + "."}, "too_long"),
        ({"input": "Hi.", "voice": "nobody"}, "invalid_voice"),
        ({"input": "Hi.", "speed": 2.5}, "invalid_speed"),
        ({"input": "   "}, "invalid_input"),
    ],
)
async def test_a_bad_response_gets_response_error_with_the_code(
    nursery, tmp_path, autojump_clock, fields, code
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend())
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="bad", **fields)
        error = await client.receive()
        assert error["type"] == "response.error"
        assert (error["response"], error["code"]) == ("bad", code)
        await client.send("response.create", response_id="good", input="Fine.")
        await client.receive_until("response.completed", "good")


async def test_a_model_failure_fails_that_response_only(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, RecordingFake(fail=["explode now."]))
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="boom", input="Explode now.")
        await client.send("response.create", response_id="ok", input="Then carry on.")
        error = await client.receive_until("response.error")
        assert (error["response"], error["code"]) == ("boom", "synthesis_failed")
        await client.receive_until("response.completed", "ok")


async def test_a_phonemizer_crash_fails_that_response_and_the_engine_goes_on(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, CrashingG2PFake(trigger="boom"))
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="bad", input="Boom goes the lexicon.")
        error = await client.receive_until("response.error")
        assert (error["response"], error["code"]) == ("bad", "synthesis_failed")
        await client.send("response.create", response_id="good", input="Fine again.")
        await client.receive_until("response.completed", "good")


async def test_an_unwritable_metrics_log_costs_the_line_not_the_response(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        (tmp_path / "a-directory").mkdir()
        config = engine_config()
        engine = await start_engine(nursery, config, FakeBackend())
        state = ServerState(config, engine, MetricsLog(tmp_path / "a-directory"), ready=True)
        client = await MemoryClient.connect(nursery, state)
        for name in ("one", "two"):
            await client.send("response.create", response_id=name, input="Hello.")
            await client.receive_until("response.completed", name)


async def test_the_metrics_log_gets_one_line_per_finished_response(nursery, tmp_path, autojump_clock):
    """Completed and canceled responses get a line with the seed's fields; failed and
    refused ones none."""
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
        await client.send("session.end")
        assert await client.receive_until_closed() == 1000

        assert failed["code"] == "synthesis_failed"
        assert refused["code"] == "invalid_voice"
        records = metrics_lines(tmp_path)
        assert set(records) == {"canceled", "completed"}
        assert records["canceled"]["canceled"] is True
        record = records["completed"]
        for field in ("ts", "request_id", "ttfb_ms", "wall_s", "audio_s", "rtf", "xrt", "kbps", "canceled"):
            assert field in record
        assert record["request_id"] == "completed" and record["canceled"] is False
        assert record["audio_s"] == round(len(client.audio["completed"]) / PCM_BYTES_PER_S, 3)
        assert 0 < record["ttfb_ms"] <= record["wall_s"] * 1000
        # Virtual time: the completed response took exactly its compute, nothing else.
        assert record["wall_s"] == round(completed_compute, 3)
        assert state.in_flight.count == 0


# -- cancel and barge -----------------------------------------------------------------


async def test_nothing_of_a_canceled_response_follows_its_canceled_event(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.25)
        state = await start_state(nursery, tmp_path, backend)
        client = await MemoryClient.connect(nursery, state)
        assert state.engine is not None
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
        assert len(client.audio["r1"]) < 0.5 * PCM_BYTES_PER_S * 0.065 * len(LONG_TEXT)
        # The model stopped on r1 within a segment or two of the cancel.
        assert backend.segments_synthesized < len(plan.segments)
        assert bytes(client.audio["r2"]) == expected_pcm(state, SHORT_TEXT)
        assert engine_idle(state)


async def test_a_queued_response_can_be_canceled_by_response_id_and_an_unknown_id_is_an_error(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(30):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.25))
        client = await MemoryClient.connect(nursery, state)
        await client.send("response.create", response_id="a", input=LONG_TEXT)
        await client.send("response.create", response_id="b", input=LONG_TEXT)
        await client.send("response.cancel", response_id="b")  # still queued behind "a"
        await client.receive_until("response.canceled", "b")
        await client.send("response.cancel", response="a")
        await client.receive_until("response.canceled", "a")
        await client.send("response.cancel", response="never-was")
        error = await client.receive_until("error")
        assert error["error"]["code"] == "unknown_response"
        assert "b" not in client.audio


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
        await client.send("input.append", text=" and half a sentence that was never")
        await client.receive_until("response.output_audio.delta", "r1")
        await client.send("barge")
        canceled = {(await client.receive_until("response.canceled"))["response"] for _ in range(2)}
        after_barge = len(client.events)
        await client.send("input.commit")  # the buffered words are gone: nothing to speak
        await client.send("response.create", response_id="r3", input=SHORT_TEXT)
        created = await client.receive_until("response.created")
        await client.receive_until("response.completed", "r3")

        assert canceled == {"r1", "r2"}
        assert created["response"] == "r3"
        assert client.event_types("r1")[-1] == "response.canceled"
        assert client.event_types("r2") == ["response.created", "response.canceled"]
        assert "r2" not in client.audio
        later = client.events[after_barge:]
        assert all(event["response"] == "r3" for event in later)
        assert bytes(client.audio["r3"]) == expected_pcm(state, SHORT_TEXT)
        assert state.in_flight.count == 0
        assert engine_idle(state)


# -- busy -----------------------------------------------------------------------------


async def test_busy_when_the_engine_is_full_and_served_once_it_has_room(nursery, tmp_path, autojump_clock):
    with trio.fail_after(30):
        state = await start_state(
            nursery,
            tmp_path,
            ClockedFake(autojump_clock, ratio=0.25),
            MAX_CONCURRENT_JOBS="1",
            MAX_QUEUED_REQUESTS="0",
        )
        first = await MemoryClient.connect(nursery, state)
        second = await MemoryClient.connect(nursery, state)
        await first.send("response.create", response_id="hog", input=LONG_TEXT)
        await first.receive_until("response.output_audio.delta", "hog")
        await second.send("response.create", response_id="late", input="Me too please.")
        error = await second.receive_until("response.error")
        assert (error["response"], error["code"]) == ("late", "busy")
        await first.send("response.cancel", response="hog")
        await first.receive_until("response.canceled", "hog")
        await second.send("response.create", response_id="retry", input="Me too please.")
        await second.receive_until("response.completed", "retry")


async def test_busy_comes_instead_of_response_created_never_after_it(nursery, tmp_path, autojump_clock):
    """A response is accepted only if the engine takes it: four sockets queue three
    sentences each on a one-slot engine. A response the engine refuses gets ``busy`` and
    no ``response.created``; every response created is spoken in full, its socket's later
    ones included (they wait behind it, they are never refused)."""
    with trio.fail_after(120):
        state = await start_state(nursery, tmp_path, ClockedFake(autojump_clock, ratio=0.5))
        assert state.engine is not None
        await state.engine.warm_up()
        assert state.engine.statistics().slots == 1
        clients = [await MemoryClient.connect(nursery, state) for _ in range(4)]
        for i, client in enumerate(clients):
            for j in range(3):
                await client.send("response.create", response_id=f"r{j}", input=sentences("alpha", 2 + i))

        async def read(client: MemoryClient) -> None:
            ended = 0
            while ended < 3:
                event = await client.receive()
                ended += event["type"] in ("response.completed", "response.error")

        async with trio.open_nursery() as readers:
            for client in clients:
                readers.start_soon(read, client)
        outcomes = [[client.event_types(f"r{j}") for j in range(3)] for client in clients]
        refused = [types for per_socket in outcomes for types in per_socket if types == ["response.error"]]
        spoken = [types for per_socket in outcomes for types in per_socket if types[0] == "response.created"]
        assert len(refused) + len(spoken) == 12
        assert refused and spoken
        assert all(types[-1] == "response.completed" for types in spoken)
        for client in clients:
            for j in range(3):
                if client.event_types(f"r{j}") == ["response.error"]:
                    (event,) = [e for e in client.events if e.get("response") == f"r{j}"]
                    assert event["code"] == "busy"
                    assert "reconnect" not in event  # a full replica: ask it again, not another
                    # When to ask again: the moment the engine predicts it would fit.
                    assert event["retry_after_ms"] > 0
                    assert f"retry in {event['retry_after_ms']} ms" in event["message"]


# -- incremental input ----------------------------------------------------------------


async def test_buffered_input_is_spoken_exactly_flush_idle_ms_after_the_last_append(
    nursery, tmp_path, autojump_clock
):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        first = trio.current_time()
        await client.send("input.append", text="Hello there")
        await client.expect_nothing_before(first + 0.100)
        second = trio.current_time()
        await client.send("input.append", text=" my friend")
        # The first append's deadline (first + 0.160) passes quietly: the second restarted it.
        await client.expect_nothing_before(second + 0.159)
        created, arrived = await client.next_response()

        assert created["type"] == "response.created"
        assert second + 0.160 <= arrived <= second + 0.160 + TICK
        assert bytes(client.audio[created["response"]]) == expected_pcm(state, "Hello there my friend")


async def test_input_commit_speaks_buffered_input_at_once_and_only_once(nursery, tmp_path, autojump_clock):
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        sent = trio.current_time()
        await client.send("input.append", text="No sentence end here")
        await client.send("input.commit")
        created, arrived = await client.next_response()
        await client.expect_nothing_before(sent + 1.0)  # the idle flush finds nothing left

        assert created["type"] == "response.created"
        assert arrived == sent
        assert created_ids(client) == [created["response"]]
        assert len(client.audio[created["response"]]) / PCM_BYTES_PER_S > 0.5
        assert bytes(client.audio[created["response"]]) == expected_pcm(state, "No sentence end here")


async def test_a_finished_sentence_is_spoken_at_once_and_the_rest_after_flush_idle_ms(
    nursery, tmp_path, autojump_clock
):
    """The sentence end comes in a later append than its words, as an LLM streams it."""
    with trio.fail_after(10):
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="160")
        client = await MemoryClient.connect(nursery, state)

        sent = trio.current_time()
        for piece in ("Hello there", ". This is", " a demo"):
            await client.send("input.append", text=piece)
        sentence, sentence_at = await client.next_response()
        rest, rest_at = await client.next_response()

        assert sentence["type"] == rest["type"] == "response.created"
        assert sentence["response"] != rest["response"]
        assert created_ids(client) == [sentence["response"], rest["response"]]
        assert sentence_at == sent
        assert sent + 0.160 <= rest_at <= sent + 0.160 + TICK
        assert len(client.audio[sentence["response"]]) and len(client.audio[rest["response"]])
        assert bytes(client.audio[sentence["response"]]) == expected_pcm(state, "Hello there.")
        assert bytes(client.audio[rest["response"]]) == expected_pcm(state, "This is a demo")


async def test_a_run_on_input_stream_is_spoken_as_it_comes(nursery, tmp_path, autojump_clock):
    """No sentence end and no idle flush in sight: it is still spoken before it ends."""
    with trio.fail_after(20):  # virtual: the idle flush would come after 600 s
        state = await start_state(nursery, tmp_path, FakeBackend(), FLUSH_IDLE_MS="600000")
        client = await MemoryClient.connect(nursery, state)
        for n in range(12):
            await client.send("input.append", text=f" and then word{n} went on, without any end")
        created = await client.receive_until("response.created")
        await client.receive_until("response.completed", created["response"])
        assert len(client.audio[created["response"]]) > 0


# -- keepalive, the session's end, leaving ----------------------------------------------


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


@pytest.mark.parametrize("leaving", ["closes", "vanishes"])
async def test_a_client_that_leaves_mid_stream_frees_everything_and_the_server_goes_on(
    nursery, tmp_path, autojump_clock, leaving
):
    """With one response speaking and one queued, the client closes the socket, or
    vanishes without a close handshake (its network dropped, its process died): only its
    own session ends, each response gets its metrics line as canceled, every job leaves
    the engine, the model stops working for it, and the next client is served."""
    with trio.fail_after(30):
        backend = ClockedFake(autojump_clock, ratio=0.25)
        state = await start_state(nursery, tmp_path, backend)
        client = await MemoryClient.connect(nursery, state)

        await client.send("response.create", response_id="speaking", input=LONG_TEXT)
        await client.send("response.create", response_id="queued", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "speaking")
        assert state.in_flight.count == 2
        if leaving == "closes":
            await client.aclose()
        else:
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

        survivor = await MemoryClient.connect(nursery, state)
        await survivor.send("response.create", response_id="after", input="Still serving.")
        await survivor.receive_until("response.completed", "after")
        assert bytes(survivor.audio["after"]) == expected_pcm(state, "Still serving.")
