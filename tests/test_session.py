"""The WebSocket protocol end to end: a real server on loopback, a real client, fake model."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import trio
import trio.testing

from krt.audio import pcm16_to_float
from krt.codecs import OutputAudio, decode
from krt.metrics.report import read_records
from tests.fakes import CrashingG2PFake, RecordingFake

pytestmark = pytest.mark.trio

LONG_TEXT = " ".join(f"Sentence number {n} goes on for a while." for n in range(1, 9))


async def open_client(harness, backend=None, **env):
    if backend is not None:
        server = await harness.server(load=lambda _config: backend, **env)
    else:
        server = await harness.server(**env)
    return server, await harness.client(server)


async def test_response_streams_audio_then_completes(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", response_id="r1", input="Hello there. This is a test.")
        assert await client.receive() == {"type": "response.created", "response": "r1"}
        completed = await client.receive_until("response.completed")
        assert completed == {"type": "response.completed", "response": "r1"}
        deltas = [e for e in client.events if e["type"] == "response.output_audio.delta"]
        assert deltas and all(e["response"] == "r1" for e in deltas)
        assert len(client.audio["r1"]) / 48000 > 1.0
        assert len(client.audio["r1"]) % 2 == 0


async def test_first_delta_is_one_engine_chunk(harness, tmp_path):
    """WS_FIRST_CHUNK_IMMEDIATE: the first 20 ms leaves alone, the rest in WS_BUFFER_BYTES batches."""
    with trio.fail_after(10):
        _server, client = await open_client(harness, WS_BUFFER_BYTES="9600")
        await client.send("response.create", response_id="r1", input="Hello there, how are you doing today?")
        await client.receive_until("response.completed")
        sizes = [len(base64.b64decode(e["delta"])) for e in client.events if e["type"].endswith("delta")]
        total = sum(sizes)
        assert sizes[0] == 960
        assert max(sizes) <= 9600
        # full 9600-byte frames, except where an engine delivery (0.5 s of fake audio) ends
        assert len(sizes) <= 1 + math.ceil(total / 9600) + math.ceil(total / 24000)


async def test_primer_bytes_come_first_when_enabled(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness, PRIME_STREAM="1", PRIME_BYTES="480")
        await client.send("response.create", response_id="r1", input="Hi.")
        await client.receive_until("response.completed")
        assert bytes(client.audio["r1"][:480]) == bytes(480)


async def test_missing_response_id_gets_a_server_made_one(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", input="Hello.")
        created = await client.receive()
        assert created["type"] == "response.created" and created["response"]
        assert (await client.receive_until("response.completed"))["response"] == created["response"]


async def test_queued_responses_are_spoken_in_order(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
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


async def test_session_update_is_echoed_and_applies_to_later_responses(harness, tmp_path):
    with trio.fail_after(10):
        server, client = await open_client(harness)
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
        records = {r["request_id"]: r for r in read_records(tmp_path / "metrics.log")}
        assert records["fast"]["voice"] == server.state.engine.describe().male


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
async def test_bad_session_update_is_an_error_and_changes_nothing(harness, tmp_path, session, code):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
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
async def test_each_format_and_rate_streams_the_same_audio(harness, tmp_path, audio, decoded_rate):
    """What a session asks for is what its deltas carry, and it decodes back (PyAV) to as
    long as the PCM the same text gives at 24 kHz; the audio is still the voice."""
    text = "Hello there. This is a test of the output formats."
    with trio.fail_after(10):
        _server, client = await open_client(harness)
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
async def test_bad_events_get_an_error_and_the_session_keeps_working(harness, tmp_path, frame, code):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.ws.send_message(frame)
        error = await client.receive()
        assert error["type"] == "error" and error["error"]["code"] == code
        assert error["error"]["message"]
        await client.send("response.create", response_id="after", input="Still here.")
        await client.receive_until("response.completed", "after")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "response.create", "response_id": "big", "input": "x" * 70_000}, "oversized"),
        ({"type": "response.create", "response_id": "big", "input": 42}, "invalid_field"),
        ({"type": "response.create", "response_id": "big", "input": "Hi.", "speed": "fast"}, "invalid_field"),
    ],
)
async def test_an_unreadable_create_whose_id_can_be_read_ends_that_response(harness, tmp_path, frame, code):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.ws.send_message(json.dumps(frame))
        error = await client.receive()
        assert error["type"] == "error" and error["error"]["code"] == code
        ended = await client.receive()
        assert ended["type"] == "response.error"
        assert (ended["response"], ended["code"]) == ("big", code)
        await client.send("response.create", response_id="after", input="Still here.")
        await client.receive_until("response.completed", "after")
        # Exactly one terminal event for "big": nothing else about it followed.
        assert [event["type"] for event in client.events if event.get("response") == "big"] == [
            "response.error"
        ]


async def test_an_unreadable_create_reusing_a_live_id_leaves_that_response_alone(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", response_id="live", input="One sentence. And another one.")
        await client.receive_until("response.created", "live")
        await client.ws.send_message(
            json.dumps({"type": "response.create", "response_id": "live", "input": 42})
        )
        await client.receive_until("response.completed", "live")
        about_live = [event["type"] for event in client.events if event.get("response") == "live"]
        assert "response.error" not in about_live
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
async def test_bad_responses_get_response_error_with_the_code(harness, tmp_path, fields, code):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", response_id="bad", **fields)
        error = await client.receive()
        assert error["type"] == "response.error"
        assert (error["response"], error["code"]) == ("bad", code)
        await client.send("response.create", response_id="good", input="Fine.")
        await client.receive_until("response.completed", "good")


async def test_model_failure_fails_that_response_only(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness, RecordingFake(fail=["explode now."]))
        await client.send("response.create", response_id="boom", input="Explode now.")
        await client.send("response.create", response_id="ok", input="Then carry on.")
        error = await client.receive_until("response.error")
        assert (error["response"], error["code"]) == ("boom", "synthesis_failed")
        await client.receive_until("response.completed", "ok")


def frames_after(events, marker_type, response):
    index = next(i for i, e in enumerate(events) if e["type"] == marker_type and e["response"] == response)
    return [e for e in events[index + 1 :] if e.get("response") == response]


async def test_cancel_stops_a_response_and_nothing_of_it_follows(harness, tmp_path):
    with trio.fail_after(20):
        _server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.05")
        await client.send("response.create", response_id="long", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "long")
        await client.send("response.cancel", response="long")
        await client.receive_until("response.canceled", "long")
        await client.send("response.create", response_id="next", input="And now something else.")
        await client.receive_until("response.completed", "next")
        assert frames_after(client.events, "response.canceled", "long") == []
        assert len(client.audio["long"]) < 0.5 * 48000 * 0.065 * len(LONG_TEXT)


async def test_cancel_accepts_response_id_and_unknown_ids_are_an_error(harness, tmp_path):
    with trio.fail_after(20):
        _server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.05")
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


async def test_barge_cancels_everything_and_clears_pending_input(harness, tmp_path):
    with trio.fail_after(20):
        _server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.05", FLUSH_IDLE_MS="60000")
        await client.send("response.create", response_id="one", input=LONG_TEXT)
        await client.send("response.create", response_id="two", input=LONG_TEXT)
        await client.send("input.append", text="half a sentence that was never")
        await client.receive_until("response.output_audio.delta", "one")
        await client.send("barge")
        canceled = {(await client.receive_until("response.canceled"))["response"] for _ in range(2)}
        assert canceled == {"one", "two"}
        await client.send("input.commit")  # nothing pending any more: must not speak the half sentence
        await client.send("response.create", response_id="three", input="Fresh start.")
        created = await client.receive_until("response.created")
        assert created["response"] == "three"
        await client.receive_until("response.completed", "three")
        assert frames_after(client.events, "response.canceled", "one") == []
        assert "two" not in client.audio


async def test_incremental_input_flushes_sentences_at_once_and_the_rest_after_idle(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness, FLUSH_IDLE_MS="50")
        for piece in ("Hello there", ". This is", " a demo"):
            await client.send("input.append", text=piece)
        first = await client.receive_until("response.created")
        second = await client.receive_until("response.created")
        await client.receive_until("response.completed", second["response"])
        spoken = [len(client.audio[first["response"]]), len(client.audio[second["response"]])]
        assert all(spoken)
        assert first["response"] != second["response"]


async def test_incremental_commit_flushes_at_once(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness, FLUSH_IDLE_MS="600000")
        await client.send("input.append", text="no sentence end here")
        await client.send("input.commit")
        created = await client.receive_until("response.created")
        await client.receive_until("response.completed", created["response"])
        assert len(client.audio[created["response"]]) / 48000 > 0.5


async def test_session_end_finishes_queued_work_then_closes_1000(harness, tmp_path):
    from trio_websocket import ConnectionClosed

    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", response_id="last", input="One more thing. Goodbye.")
        await client.send("session.end")
        await client.receive_until("response.completed", "last")
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.reason.code == 1000


async def test_disconnect_mid_stream_leaves_no_job_task_or_thread(harness, tmp_path):
    with trio.fail_after(20):
        server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.05")
        await client.send("response.create", response_id="gone", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "gone")
        await client.aclose()
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
        statistics = server.state.engine.statistics()
        assert (statistics.active, statistics.waiting) == (0, 0)
        assert server.state.sessions == 0
        assert server.state.in_flight.count == 0
        assert trio.testing.active_thread_count() == 0
        [record] = read_records(tmp_path / "metrics.log")
        assert record["request_id"] == "gone" and record["canceled"] is True


async def test_busy_when_the_engine_is_full(harness, tmp_path):
    with trio.fail_after(20):
        server, first = await open_client(
            harness, KRT_FAKE_COMPUTE_RATIO="0.05", MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="0"
        )
        second = await harness.client(server)
        await first.send("response.create", response_id="hog", input=LONG_TEXT)
        await first.receive_until("response.output_audio.delta", "hog")
        await second.send("response.create", response_id="late", input="Me too please.")
        error = await second.receive_until("response.error")
        assert (error["response"], error["code"]) == ("late", "busy")
        await first.send("response.cancel", response="hog")
        await first.receive_until("response.canceled", "hog")
        await second.send("response.create", response_id="retry", input="Me too please.")
        await second.receive_until("response.completed", "retry")


async def test_metrics_line_per_finished_response(harness, tmp_path):
    with trio.fail_after(10):
        _server, client = await open_client(harness)
        await client.send("response.create", response_id="m1", input="Measure me.")
        await client.receive_until("response.completed", "m1")
        await client.send("session.end")
        with pytest.raises(Exception):  # noqa: B017, PT011 - the close, whatever trio-websocket calls it
            await client.receive()
        [record] = read_records(tmp_path / "metrics.log")
        for field in ("ts", "request_id", "ttfb_ms", "wall_s", "audio_s", "rtf", "xrt", "kbps", "canceled"):
            assert field in record
        assert record["request_id"] == "m1" and record["canceled"] is False
        assert record["audio_s"] == pytest.approx(len(client.audio["m1"]) / 48000, abs=0.01)
        assert 0 < record["ttfb_ms"] <= record["wall_s"] * 1000


async def test_draining_refuses_new_responses_but_speaks_accepted_ones(harness):
    with trio.fail_after(20):
        server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.02")
        for name in ("first", "second"):
            await client.send("response.create", response_id=name, input="Already accepted. Two sentences.")
        await client.receive_until("response.created", "second")
        server.state.in_flight.start_drain()  # what SIGTERM does
        await client.send("response.create", response_id="late", input="Too late now.")
        refused = await client.receive_until("response.error")
        assert (refused["response"], refused["code"]) == ("late", "busy")
        await client.receive_until("response.completed", "second")
        assert len(client.audio["first"]) == len(client.audio["second"]) > 0


async def test_a_sender_that_dies_ends_only_its_own_session(harness):
    """A client gone mid-stream, with responses still queued, must not take the server down."""
    with trio.fail_after(20):
        server, client = await open_client(harness, KRT_FAKE_COMPUTE_RATIO="0.02")
        for n in range(3):
            await client.send("response.create", response_id=f"r{n}", input=LONG_TEXT)
        await client.receive_until("response.output_audio.delta", "r0")
        await trio.aclose_forcefully(client.ws._stream)  # vanish without a close handshake
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
        assert server.state.sessions == 0 and server.state.in_flight.count == 0
        survivor = await harness.client(server)
        await survivor.send("response.create", response_id="after", input="Still serving.")
        await survivor.receive_until("response.completed", "after")


async def test_a_run_on_input_stream_is_spoken_as_it_comes(harness):
    with trio.fail_after(20):
        _server, client = await open_client(harness, FLUSH_IDLE_MS="600000")
        for n in range(12):
            await client.send("input.append", text=f" and then word{n} went on, without any end")
        created = await client.receive_until("response.created")
        await client.receive_until("response.completed", created["response"])
        assert len(client.audio[created["response"]]) > 0


async def test_an_unwritable_metrics_log_costs_the_line_not_the_response(harness, tmp_path):
    with trio.fail_after(10):
        (tmp_path / "a-directory").mkdir()
        _server, client = await open_client(harness, KRT_METRICS_LOG=str(tmp_path / "a-directory"))
        for name in ("one", "two"):
            await client.send("response.create", response_id=name, input="Hello.")
            await client.receive_until("response.completed", name)


async def test_a_phonemizer_crash_fails_that_response_and_the_engine_goes_on(harness):
    with trio.fail_after(10):
        _server, client = await open_client(harness, CrashingG2PFake(trigger="boom"))
        await client.send("response.create", response_id="bad", input="Boom goes the lexicon.")
        error = await client.receive_until("response.error")
        assert (error["response"], error["code"]) == ("bad", "synthesis_failed")
        await client.send("response.create", response_id="good", input="Fine again.")
        await client.receive_until("response.completed", "good")
