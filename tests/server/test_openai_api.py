"""OpenAI's speech API on krt's port, driven by OpenAI's own Python SDK against a real server
on loopback (fake model); ``/metrics`` read back with Prometheus' own parser."""

from __future__ import annotations

import base64
import json
import math
import re
import time

import httpx
import numpy as np
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from krt.engine.pipeline import SpeechPipeline
from krt.media.codecs import OutputAudio, decode
from krt.metrics.record import MetricsLog
from krt.metrics.report import read_records
from krt.server import openai_api
from krt.server.listener import serve
from krt.server.speech_parts import part_chars
from krt.server.state import ServerState
from krt.synth.fake_backend import FakeBackend
from tests.conftest import make_config
from tests.fakes import CrashingG2PFake
from tests.server_harness import Client

pytestmark = pytest.mark.trio

KEY = "sk-krt-test"
TEXT = "Hello there. This is a test of the OpenAI speech endpoint."
SHORT_REPLY = "Sure. Your table is booked for seven tonight, and I sent the details by text."
LONG = " ".join(f"Sentence number {n} keeps this reply going for a while." for n in range(1, 10))


def sdk(server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0)


async def in_thread(function, *args, **kwargs):
    """The SDK is synchronous: it runs in a worker thread while Trio serves krt."""
    return await trio.to_thread.run_sync(lambda: function(*args, **kwargs))


async def settled_records(harness, server) -> list[dict]:
    """The metrics log once every response has settled (the body's end reaches the client
    just before its response is logged)."""
    await server.state.in_flight.zero.wait()
    return read_records(harness.tmp_path / "metrics.log")


async def get(server, path: str) -> httpx.Response:
    url = f"http://127.0.0.1:{server.port}{path}"
    return await in_thread(httpx.get, url, headers={"Authorization": f"Bearer {KEY}"})


async def ws_client(harness, server) -> Client:
    client = await Client.connect(harness.nursery, f"{server.url}?api_key={KEY}")
    harness.clients.append(client)
    return client


async def reference_pcm(harness, server, text: str = TEXT) -> np.ndarray:
    """What a WebSocket client gets for ``text``: the length every format must decode to."""
    client = await ws_client(harness, server)
    await client.send("response.create", response_id="ref", input=text)
    await client.receive_until("response.completed", "ref")
    return np.frombuffer(bytes(client.audio["ref"]), "<i2")


OPENAI_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""What api.openai.com answers each format with: clients that decode by ``Content-Type``
(LiveKit's OpenAI plugin) read krt's audio as they read OpenAI's."""


@pytest.mark.parametrize("response_format", list(OPENAI_CONTENT_TYPES))
async def test_every_format_decodes_back_to_the_audio(harness, response_format):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        expected = (await reference_pcm(harness, server)).size / 24000
        answer = await in_thread(
            sdk(server).audio.speech.create,
            model="tts-1",
            voice="female",
            input=TEXT,
            response_format=response_format,
        )
    assert answer.response.headers["content-type"] == OPENAI_CONTENT_TYPES[response_format]
    samples, rate = decode(answer.content, OutputAudio(response_format))
    padding = 2 * 1152 / 24000 if response_format in ("mp3", "aac") else 0.025  # encoder frames
    assert 0 <= samples.size / rate - expected <= padding
    assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence


async def test_streaming_body_starts_before_the_audio_is_done(harness):
    """``with_streaming_response``: bytes arrive in several chunks as they are made, the
    first long before the last."""
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY, KRT_FAKE_COMPUTE_RATIO="0.05")

        def stream() -> list[bytes]:
            with sdk(server).audio.speech.with_streaming_response.create(
                model="kokoro", voice="male", input=LONG, response_format="pcm"
            ) as response:
                return list(response.iter_bytes(4800))

        chunks = await in_thread(stream)
        [record] = await settled_records(harness, server)
    assert len(chunks) > 10
    assert sum(map(len, chunks)) / 48000 == pytest.approx(record["audio_s"], abs=0.001)
    assert record["ttfb_ms"] < 0.25 * record["wall_s"] * 1000


async def test_sse_stream_carries_base64_audio_then_done(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        expected = await reference_pcm(harness, server)
        answer = await in_thread(
            sdk(server).audio.speech.create,
            model="gpt-4o-mini-tts",
            voice="female",
            input=TEXT,
            response_format="pcm",
            stream_format="sse",
            instructions="Speak cheerfully.",  # accepted, and ignored
        )
    assert answer.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert pcm == expected.tobytes()


@pytest.mark.parametrize(("name", "alias"), [("alloy", "female"), ("onyx", "male"), ("nova", "female")])
async def test_openai_voice_names_speak_with_krts_voices(harness, name, alias):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        await in_thread(sdk(server).audio.speech.create, model="tts-1", voice=name, input="Hi there.")
        voices = (await get(server, "/v1/audio/voices")).json()
        [record] = await settled_records(harness, server)
    info = server.state.engine.describe()
    assert record["voice"] == getattr(info, alias) == voices["openai"][name]


async def test_the_voice_map_is_configurable(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY, OPENAI_VOICE_MAP="alloy=male,zephyr=female")
        await in_thread(sdk(server).audio.speech.create, model="tts-1", voice="alloy", input="Hi there.")
        await in_thread(sdk(server).audio.speech.create, model="tts-1", voice="zephyr", input="Hi there.")
        records = await settled_records(harness, server)
    info = server.state.engine.describe()
    assert [r["voice"] for r in records] == [info.male, info.female]


async def test_kokoro_voice_names_work_out_of_the_box_and_are_listed(harness):
    """A client written for another Kokoro server asks for af_heart and am_michael: the
    fake weights have neither, so each speaks with krt's default of its gender."""
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        for name in ("af_heart", "am_michael"):
            await in_thread(sdk(server).audio.speech.create, model="kokoro", voice=name, input="Hi there.")
        voices = (await get(server, "/v1/audio/voices")).json()
        records = await settled_records(harness, server)
    info = server.state.engine.describe()
    assert [r["voice"] for r in records] == [info.female, info.male]
    assert voices["stand_ins"]["af_heart"] == info.female
    assert voices["stand_ins"]["bm_george"] == info.male


async def test_kokoro_voice_names_can_be_refused_instead(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY, KOKORO_VOICE_STAND_INS="off")
        with pytest.raises(openai.BadRequestError) as caught:
            await in_thread(sdk(server).audio.speech.create, model="kokoro", voice="af_heart", input="Hi.")
        voices = (await get(server, "/v1/audio/voices")).json()
    assert (
        "af_heart" in caught.value.message and server.state.engine.describe().female in caught.value.message
    )
    assert voices["stand_ins"] == {}


@pytest.mark.parametrize(
    ("request_fields", "status", "param"),
    [
        ({"voice": "robot"}, 400, "voice"),
        ({"speed": 5.0}, 400, "speed"),
        ({"input": "word " * 20_001}, 400, "input"),  # over OPENAI_MAX_INPUT_CHARS
        ({"input": "x" * 200}, 400, "input"),  # a word over MAX_WORD_CHARS
        ({"input": ""}, 400, "input"),
        ({"response_format": "ogg"}, 400, "response_format"),
        ({"input": "x" * 700_000}, 413, None),  # a body past what the longest input can be
    ],
)
async def test_bad_requests_get_openai_errors(harness, request_fields, status, param):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        fields = {"model": "tts-1", "voice": "female", "input": "Hello.", **request_fields}
        with pytest.raises(openai.APIStatusError) as raised:
            await in_thread(sdk(server).audio.speech.create, **fields)
    assert raised.value.status_code == status
    error = raised.value.body
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param


async def test_a_wrong_key_is_401_and_an_unknown_route_404(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        with pytest.raises(openai.AuthenticationError):
            await in_thread(
                sdk(server, "wrong").audio.speech.create, model="tts-1", voice="alloy", input="Hi."
            )
        with pytest.raises(openai.NotFoundError):
            await in_thread(sdk(server).audio.transcriptions.create, model="whisper-1", file=b"RIFF")
        models = await in_thread(sdk(server).models.list)
    assert "tts-1" in [model.id for model in models.data]


async def test_busy_is_429_with_retry_after(harness):
    with trio.fail_after(30):
        server = await harness.server(
            API_KEY=KEY, KRT_FAKE_COMPUTE_RATIO="0.05", MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="0"
        )
        hold = await ws_client(harness, server)
        await hold.send("response.create", response_id="long", input=LONG)
        await hold.receive_until("response.output_audio.delta", "long")
        with pytest.raises(openai.RateLimitError) as raised:
            await in_thread(sdk(server).audio.speech.create, model="tts-1", voice="alloy", input="Hi.")
        await hold.send("response.cancel", response="long")
        await hold.receive_until("response.canceled", "long")
    assert raised.value.body["code"] == "busy"
    # When the engine predicts the request would be taken in (the long one ending), as the
    # message says it in milliseconds; the place is kept for this address until then.
    said = re.search(r"retry in (\d+) ms", raised.value.body["message"])
    assert said is not None, raised.value.body["message"]
    assert int(raised.value.response.headers["retry-after"]) == math.ceil(int(said[1]) / 1000) > 1


async def test_a_model_failure_is_500(harness):
    with trio.fail_after(30):
        server = await harness.server(load=lambda _config: CrashingG2PFake("kaboom"), API_KEY=KEY)
        with pytest.raises(openai.InternalServerError) as raised:
            await in_thread(
                sdk(server).audio.speech.create, model="tts-1", voice="alloy", input="Say kaboom."
            )
    assert raised.value.body["code"] == "synthesis_failed"


async def test_draining_is_503(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        server.state.in_flight.start_drain()
        with pytest.raises(openai.InternalServerError) as raised:
            await in_thread(sdk(server).audio.speech.create, model="tts-1", voice="alloy", input="Hi.")
    assert raised.value.status_code == 503 and "draining" in raised.value.message


async def test_loading_is_503_with_retry_after(nursery, tmp_path):
    """The port answers while the model loads (the listener starts first)."""
    state = ServerState(make_config(API_KEY=KEY), None, MetricsLog(tmp_path / "metrics.log"))
    port = await nursery.start(serve, state, "127.0.0.1", 0)
    with trio.fail_after(30), pytest.raises(openai.InternalServerError) as raised:
        await in_thread(
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0
            ).audio.speech.create,
            model="tts-1",
            voice="alloy",
            input="Hi.",
        )
    assert raised.value.status_code == 503 and "loading" in raised.value.message
    assert raised.value.response.headers["retry-after"] == "5"


@pytest.mark.parametrize("text", [LONG, "A whole book of words, read aloud. " * 2800], ids=["reply", "book"])
async def test_a_client_that_hangs_up_mid_body_leaves_no_job(harness, text):
    """A reply, or a book of 100,000 characters (accepted, and spoken part by part): the
    client reads a little and hangs up, and nothing of it is left in the engine."""
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY, KRT_FAKE_COMPUTE_RATIO="0.05")

        def read_a_little() -> None:
            with sdk(server).audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=text, response_format="pcm"
            ) as response:
                next(response.iter_bytes(4800))
            # leaving the block closes the connection mid-body

        await in_thread(read_a_little)
        await server.state.in_flight.zero.wait()  # the response has settled, its job withdrawn first
        statistics = server.state.engine.statistics()
        assert statistics.active == statistics.waiting == statistics.background == 0
        [record] = await settled_records(harness, server)
    assert record["canceled"] is True
    assert record["audio_s"] < 0.5 * min(len(text), len(LONG)) * 0.065


CHAPTER = "\n\n".join(
    " ".join(f"Paragraph {p} says sentence {n} out loud." for n in range(1, 5)) for p in range(1, 10)
)
"""Nine paragraphs, about 1,300 characters: with parts of 100 (``MAX_UTTERANCE_TOKENS=800``),
thirteen parts or more, each spoken when the one before is."""


async def test_a_long_input_sounds_like_one_response_of_the_whole_text(harness):
    """A text longer than one response may be is spoken part by part into one body: the
    audio is exactly what one response of the whole text makes (every sentence once, in
    order, a sentence pause at every seam), and it is one response in the metrics."""
    with trio.fail_after(60):
        server = await harness.server(API_KEY=KEY, MAX_UTTERANCE_TOKENS="800")
        assert part_chars(server.state.config.segments) * 13 < len(CHAPTER)

        def download() -> bytes:
            with sdk(server).audio.speech.with_streaming_response.create(
                model="kokoro", voice="female", input=CHAPTER, response_format="pcm"
            ) as response:
                return b"".join(response.iter_bytes(65536))

        pcm = await in_thread(download)
        [record] = await settled_records(harness, server)
    unlimited = make_config(
        KRT_BACKEND="fake",
        MAX_UTTERANCE_WORDS="100000",
        MAX_UTTERANCE_SECONDS="3600",
        MAX_UTTERANCE_TOKENS="10000000",
    )
    whole = SpeechPipeline(FakeBackend(), unlimited)
    expected = b"".join(b"".join(batch) for batch in whole.rendering(whole.plan(CHAPTER, "female")))
    assert pcm == expected
    assert record["audio_s"] == pytest.approx(len(pcm) / 48000, abs=0.001) and not record["canceled"]


async def test_http_and_websocket_share_the_engine_fairly(harness):
    """A realtime stream and a download, started together on a slow model: each gets its
    first audio while the other is still going (fair turns), and the download, which is
    not paced, never makes the stream's player run dry."""
    with trio.fail_after(60):
        server = await harness.server(API_KEY=KEY, KRT_FAKE_COMPUTE_RATIO="0.05")
        ws = await ws_client(harness, server)
        times: dict[str, float] = {}

        def over_http() -> None:
            with sdk(server).audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=LONG, response_format="pcm"
            ) as response:
                for _ in response.iter_bytes(4800):
                    times.setdefault("http_first", time.monotonic())

        async def over_websocket() -> None:
            await ws.send("response.create", response_id="ws", input=SHORT_REPLY)
            await ws.receive_until("response.output_audio.delta", "ws")
            times["ws_first"] = time.monotonic()
            await ws.receive_until("response.completed", "ws")
            times["ws_done"] = time.monotonic()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(over_websocket)
            await in_thread(over_http)
            times["http_done"] = time.monotonic()
        records = {r["request_id"]: r for r in await settled_records(harness, server)}
    assert times["http_first"] < times["ws_done"] and times["ws_first"] < times["http_done"]
    assert len(records) == 2 and not any(r["canceled"] for r in records.values())
    # the download took every turn the stream did not need, and the stream never ran dry
    assert server.state.engine.statistics().stalls == 0


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_parse_and_move_with_traffic(harness):
    with trio.fail_after(30):
        server = await harness.server(API_KEY=KEY)
        http = sdk(server)
        before = samples_of((await get(server, "/metrics")).text)
        await in_thread(http.audio.speech.create, model="tts-1", voice="alloy", input=TEXT)
        ws = await ws_client(harness, server)
        await ws.send("response.create", response_id="w", input=TEXT)
        await ws.receive_until("response.completed", "w")
        after = samples_of((await get(server, "/metrics")).text)
    female = server.state.engine.describe().female
    for transport in ("http", "websocket"):
        labels = {"backend": "fake", "voice": female, "transport": transport}
        completed = ("krt_responses_total", frozenset({**labels, "outcome": "completed"}.items()))
        assert after[completed] == before.get(completed, 0) + 1
        count = ("krt_ttfb_seconds_count", frozenset(labels.items()))
        assert after[count] == before.get(count, 0) + 1
        sent = ("krt_audio_sent_seconds_total", frozenset(labels.items()))
        assert after[sent] > 1.0
    made = ("krt_audio_made_seconds_total", frozenset({"backend": "fake"}.items()))
    assert after[made] > before[made] + 2.0
    assert after[("krt_open_connections", frozenset())] == 1


async def test_a_trickled_body_is_408(harness, monkeypatch):
    """A client cannot hold a connection by sending its body a byte at a time."""
    monkeypatch.setattr(openai_api, "BODY_TIMEOUT_S", 0.2)
    with trio.fail_after(10):
        server = await harness.server(API_KEY=KEY)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode()
                + b'\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"mo'
            )
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["message"].startswith("the request body did not arrive")
