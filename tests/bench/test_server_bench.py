"""``krt bench server``, the client-side figures in ``krt.client.figures`` and the load shapes
in ``krt.bench.load``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from krt.bench.load import LevelResult, StreamResult, run_barge_in, summarize_barge_in, summarize_level
from krt.client.figures import Stalls, jain_index, stalls
from krt.client.speech import ResponseTrace, SpeechClient, open_speech_client
from krt.metrics.stats import percentile
from krt.wire import protocol

# --- stalls ---------------------------------------------------------------------------------


def test_audio_arriving_faster_than_real_time_never_stalls():
    # 0.5 s of audio every 0.1 s: the player's buffer only grows.
    assert stalls([(0.0, 0.5), (0.1, 0.5), (0.2, 0.5), (0.3, 0.5)]) == Stalls(0, 0.0)


def test_a_gap_longer_than_the_buffered_audio_stalls_for_exactly_the_difference():
    # 0.5 s buffered at t=0 is played out by t=0.5; the next piece comes at 0.8: 0.3 s of
    # silence. Playback then runs to 1.3, so the piece at 1.0 arrives in time.
    result = stalls([(0.0, 0.5), (0.8, 0.5), (1.0, 0.5)])
    assert result.count == 1
    assert result.seconds == pytest.approx(0.3)


def test_stalls_add_up_over_a_response():
    result = stalls([(10.0, 0.2), (10.5, 0.2), (11.0, 0.2)])
    assert result.count == 2
    assert result.seconds == pytest.approx(0.3 + 0.3)


def test_gaps_under_the_noise_floor_are_not_stalls():
    assert stalls([(0.0, 0.1), (0.1005, 0.1)], noise_floor=0.001) == Stalls(0, 0.0)
    assert stalls([(0.0, 0.1), (0.1005, 0.1)]).count == 1


def test_no_audio_no_stall():
    assert stalls([]) == Stalls(0, 0.0)


def test_trace_stalls_use_pcm16_durations():
    # 24000 bytes of PCM16 at 24 kHz are 0.5 s.
    trace = ResponseTrace("r", "text", 0.0, arrivals=[1.0, 2.0], sizes=[24_000, 24_000])
    assert trace.audio_seconds == pytest.approx(1.0)
    assert trace.ttfb == pytest.approx(1.0)
    assert trace.stalls().seconds == pytest.approx(0.5)


# --- Jain's index and percentiles --------------------------------------------------------------


def test_jain_index_is_one_for_equal_shares():
    assert jain_index([2.5, 2.5, 2.5, 2.5]) == pytest.approx(1.0)


def test_jain_index_is_one_over_n_when_one_stream_gets_everything():
    assert jain_index([4.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 4)


def test_jain_index_with_one_stream_starved():
    assert jain_index([3.0, 3.0, 3.0, 0.0]) == pytest.approx(3 / 4)


def test_jain_index_of_no_streams_is_an_error():
    with pytest.raises(ValueError, match="no streams"):
        jain_index([])


def test_percentile_interpolates_between_ranks():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(7).exponential(size=37))
    for q in (5, 50, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_level_summary_from_hand_made_traces():
    def trace(sent: float, first: float, end: float, audio_s: float) -> ResponseTrace:
        made = ResponseTrace("r", "t", sent, arrivals=[first], sizes=[round(audio_s * 48_000)])
        made.outcome, made.ended_at = "completed", end
        return made

    fast = StreamResult(((trace(0.0, 0.1, 1.0, 4.0),),), ())
    slow = StreamResult(((trace(0.0, 0.3, 2.0, 2.0),),), ())
    busy = ResponseTrace("b", "t", 0.0, outcome="error", error_code="busy", ended_at=0.0)
    summary = summarize_level(LevelResult(2, (fast, StreamResult((*slow.transactions, (busy,)), ())), 2.0))
    assert summary["aggregate_xrt"] == pytest.approx(3.0)
    assert summary["stream_xrt"] == [4.0, 1.0]
    assert summary["fairness"] == pytest.approx(round(jain_index([4.0, 1.0]), 3))
    assert summary["ttfb_p50_ms"] == pytest.approx(200.0)
    assert (summary["busy"], summary["errors"], summary["completed"]) == (1, 0, 2)


# --- the client against a server that breaks the cancel rule -----------------------------------


async def _leaky_handler(request) -> None:
    """Answers each cancel with ``response.canceled`` and then, wrongly, more of that response."""
    ws = await request.accept()
    delta = base64.b64encode(bytes(960)).decode()
    try:
        while True:
            event = json.loads(await ws.get_message())
            if event["type"] == "response.create":
                response = event["response_id"]
                await ws.send_message(json.dumps({"type": "response.created", "response": response}))
                await ws.send_message(
                    json.dumps({"type": "response.output_audio.delta", "response": response, "delta": delta})
                )
            elif event["type"] == "response.cancel":
                for type_, extra in (
                    ("response.canceled", {}),
                    ("response.output_audio.delta", {"delta": delta}),
                    ("response.completed", {}),
                ):
                    await ws.send_message(json.dumps({"type": type_, "response": event["response"], **extra}))
            elif event["type"] == "session.end":
                await ws.aclose(1000)
                return
    except ConnectionClosed:
        return


@pytest.mark.trio
async def test_audio_after_canceled_is_counted_as_leaked(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_websocket, _leaky_handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/v1/audio/speech/stream/ws"
        traces = await run_barge_in(lambda: open_speech_client(url), "Hello there.", 2)
    assert [t.outcome for t in traces] == ["canceled", "canceled"]
    assert [t.leaked_bytes for t in traces] == [960, 960]
    assert [t.late_events for t in traces] == [["response.completed"]] * 2
    summary = summarize_barge_in(traces)
    assert (summary["leaked_bytes"], summary["late_events"], summary["canceled"]) == (1920, 2, 2)
    assert summary["cancel_p50_ms"] is not None


# --- the command, end to end ------------------------------------------------------------------


@pytest.mark.slow
def test_bench_server_with_the_fake_backend_reports_every_figure(tmp_path):
    env = {**os.environ, "KRT_FAKE_COMPUTE_RATIO": "0.05"}
    command = [sys.executable, "-m", "krt", "--env-file", str(tmp_path / "none.env"), "bench", "server"]
    done = subprocess.run(
        [*command, "--backend", "fake", "--n", "4", "--concurrency", "1,2", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    by_kind: dict[str, list[dict]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record)
    assert sorted(by_kind) == ["barge_in", "engine_floor", "level", "overhead", "run"]

    floor = by_kind["engine_floor"][0]
    assert floor["backend"] == "fake" and floor["floor_p50_ms"] > 0
    overhead = by_kind["overhead"][0]
    # The floor is the raw model on the whole first sentence: windows may beat it.
    assert 0 < overhead["ttfb_over_floor_p50"] < 5

    barge = by_kind["barge_in"][0]
    assert (barge["responses"], barge["canceled"]) == (4, 4)
    assert barge["cancel_p50_ms"] is not None and barge["cancel_p95_ms"] is not None
    assert (barge["leaked_bytes"], barge["late_events"], barge["stuck"]) == (0, 0, 0)

    levels = by_kind["level"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert all(value is not None for value in level.values()), level
        assert (level["responses"], level["completed"]) == (4, 4)
        assert len(level["stream_xrt"]) == level["concurrency"]
        assert level["aggregate_xrt"] > 1  # the fake computes at 20x real time
        assert 0 < level["fairness"] <= 1
        assert (level["leaked_bytes"], level["stuck"], level["errors"]) == (0, 0, 0)
    assert not (tmp_path / "logs").exists(), "the bench must not write the operator's metrics log"
    assert "concurrency 2: 4/4" in done.stderr


def _delta(response: str, pcm: bytes) -> protocol.OutputAudioDelta:
    return protocol.OutputAudioDelta(response, base64.b64encode(pcm).decode())


@pytest.mark.parametrize(
    ("sound_arrives", "heard_at"),
    [
        (0.6, 0.9),  # the sound arrives while the silence still plays: heard after 400 ms of it
        (1.2, 1.2),  # the player ran dry at 0.9 and waits: heard the moment it arrives
    ],
)
def test_first_audible_is_when_a_real_time_player_reaches_the_first_sound(sound_arrives, heard_at):
    client = SpeechClient(ws=None)  # type: ignore[arg-type]  # frames are fed by hand
    trace = ResponseTrace("r", "text", sent_at=0.0)
    client.traces["r"] = trace
    silence = bytes(2 * 4800)  # 200 ms of digital zeros
    sound = np.concatenate([np.zeros(10, "<i2"), np.full(470, 3000, "<i2")]).tobytes()
    client._record(_delta("r", silence), 0.5)
    client._record(_delta("r", silence), 0.55)
    client._record(_delta("r", sound), sound_arrives)
    assert trace.ttfb == 0.5
    assert trace.first_audible == pytest.approx(heard_at + 10 / 24_000)
