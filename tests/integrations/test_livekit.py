"""KrtTTS through LiveKit Agents' own TTS classes, against a real krt server on loopback.

LiveKit Agents runs on asyncio and krt on Trio, so the server (the production code path,
fake backend) runs its own Trio loop in a thread for the whole module, and each test
drives ``KrtTTS`` with ``asyncio.run``, reading its ``SynthesizeStream`` /
``ChunkedStream`` as LiveKit's voice pipeline does: audio frames, and the timed words on
them (``frame.userdata["lk.timed_transcripts"]``). What krt itself did is read from its
metrics log (one line per response, with ``canceled``), and reference numbers (PCM,
word times) come from a plain WebSocket client speaking to the same server.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import pytest
from livekit.agents import APIConnectOptions, APIStatusError, tts
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString

from krt.engine.segmenter import AUDIO_SECONDS_PER_CHAR
from krt.integrations.endpoint import krt_endpoint
from krt.integrations.livekit import KrtTTS
from krt.wire import protocol
from tests.integrations.krt_thread import KrtInThread, Relay
from tests.speech_checks import SHORT_WARM_UP

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from livekit import rtc
    from livekit.agents.metrics import TTSMetrics

    from krt.engine.pipeline import SpeechPipeline

pytestmark = pytest.mark.slow

API_KEY = "livekit-test-key"
WAIT = 10.0
"""Longest wait for anything the fake backend makes."""
SHORT = "Hello there, this is krt speaking."
PUNCTUATED = 'It\'s "well-known": a $5 fee, right?'
FIRST = "The first sentence is short."
SECOND = "A second one follows it right away."
LONG_SENTENCE = (
    "This long sentence, going on with clause after clause and word after word, keeps a single krt "
    "response in the making for many seconds, so that the caller can cut it short and krt must stop at once."
)
"""13 s of audio in one response (krt speaks incremental input a sentence, a response, at a
time, and each response at most 8 s ahead of its player): still being made a second in."""
NO_RETRY = APIConnectOptions(max_retry=0)


# --- the server: krt's own Trio loop, in a thread -----------------------------------------


@pytest.fixture(scope="module")
def krt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KrtInThread]:
    with KrtInThread(tmp_path_factory.mktemp("krt-livekit"), API_KEY=API_KEY) as running:
        yield running


# --- what a plain client hears, and what LiveKit hears --------------------------------------


@dataclass
class Reference:
    """What krt sends a plain WebSocket client for a text."""

    pcm: bytes
    words: list[protocol.WordTiming]


async def reference(
    url: str, text: str, sample_rate: int = 24_000, *, incremental: bool = False, voice: str | None = None
) -> Reference:
    """krt's answer to ``text`` on a socket of its own: one ``response.create``, or (with
    ``incremental``) ``input.append`` and ``input.commit`` and every response krt makes
    of it; the PCM of all of them, and the words of a single response."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(krt_endpoint(url), headers=headers) as ws,
    ):
        audio = protocol.AudioSettings(format="pcm", sample_rate=sample_rate)
        patch = protocol.SessionPatch(voice=voice, audio=audio, timestamps=True)
        await ws.send_str(protocol.encode(protocol.SessionUpdate(patch)))
        if incremental:
            await ws.send_str(protocol.encode(protocol.InputAppend(text)))
            await ws.send_str(protocol.encode(protocol.InputCommit()))
        else:
            await ws.send_str(protocol.encode(protocol.ResponseCreate(input=text, response_id="ref")))
        await ws.send_str(protocol.encode(protocol.Ping("made")))
        pcm, words, open_responses, made = bytearray(), [], set(), False
        async for message in ws:
            event = protocol.decode_server_event(message.data)
            if isinstance(event, protocol.ResponseCreated):
                open_responses.add(event.response)
            elif isinstance(event, protocol.OutputAudioDelta):
                pcm += base64.b64decode(event.delta)
            elif isinstance(event, protocol.OutputAudioTimestamps):
                words += event.words
            elif isinstance(event, protocol.ResponseCompleted):
                open_responses.discard(event.response)
            elif isinstance(event, protocol.Pong):
                made = True
            else:
                assert isinstance(event, protocol.SessionUpdated), event
            if made and not open_responses:
                return Reference(bytes(pcm), words)
    raise AssertionError("krt closed the reference connection")


def expected_words(
    text: str, words: list[protocol.WordTiming], offset_s: float = 0.0
) -> list[tuple[str, float, float]]:
    """krt's words as LiveKit should get them: the input's own tokens (punctuation kept,
    a space after each, as LiveKit concatenates them), each from its first word's start
    to its last word's end, in seconds."""
    expected = []
    for token in re.finditer(r"\S+", text):
        inside = [word for word in words if word.char_start < token.end() and word.char_end > token.start()]
        if inside:
            start = min(word.start_ms for word in inside) / 1000 + offset_s
            end = max(word.end_ms for word in inside) / 1000 + offset_s
            expected.append((token[0] + " ", start, end))
    return expected


@dataclass
class Heard:
    """What LiveKit's voice pipeline would take from a stream."""

    frames: list[rtc.AudioFrame] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    arrived: list[float] = field(default_factory=list)
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, audio: tts.SynthesizedAudio) -> None:
        self.frames.append(audio.frame)
        self.request_ids.add(audio.request_id)
        self.arrived.append(time.monotonic())
        self.first_frame.set()

    @property
    def pcm(self) -> bytes:
        return b"".join(bytes(frame.data) for frame in self.frames)

    @property
    def seconds(self) -> float:
        return sum(frame.duration for frame in self.frames)

    @property
    def rates(self) -> set[tuple[int, int]]:
        return {(frame.sample_rate, frame.num_channels) for frame in self.frames}

    @property
    def words(self) -> list[TimedString]:
        return [word for frame in self.frames for word in frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]

    def timed(self) -> list[tuple[str, float, float]]:
        return [(str(word), word.start_time, word.end_time) for word in self.words]


def assert_same_audio(pcm: bytes, expected: bytes) -> None:
    """The same samples, to the last bit at krt's own rate; krt's resampler may round a
    sample a step differently when its input arrives cut differently."""
    assert len(pcm) == len(expected)
    difference = np.abs(np.frombuffer(pcm, "<i2").astype(int) - np.frombuffer(expected, "<i2").astype(int))
    assert difference.max(initial=0) <= 4


async def hear(stream: tts.SynthesizeStream | tts.ChunkedStream, heard: Heard | None = None) -> Heard:
    heard = heard or Heard()
    async for audio in stream:
        heard.add(audio)
    return heard


async def speak(krt_tts: KrtTTS, *pieces: str) -> Heard:
    """One stream: the pieces pushed as LiveKit pushes an LLM's tokens, then its end."""
    async with krt_tts.stream(conn_options=NO_RETRY) as stream:
        for piece in pieces:
            stream.push_text(piece)
        stream.end_input()
        return await hear(stream)


def tokens_of(text: str) -> list[str]:
    """``text`` cut as an LLM streams it: words with their leading spaces."""
    return re.findall(r"\s*\S+", text)


async def until(what: str, condition: Callable[[], object], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def watch(krt_tts: KrtTTS) -> tuple[list[tts.TTSError], list[TTSMetrics]]:
    errors: list[tts.TTSError] = []
    metrics: list[TTSMetrics] = []
    krt_tts.on("error", errors.append)
    krt_tts.on("metrics_collected", metrics.append)
    return errors, metrics


# --- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample_rate", "text"), [(24_000, PUNCTUATED), (16_000, SHORT)])
def test_a_stream_is_krts_own_audio_and_words_at_the_session_rate(
    krt: KrtInThread, sample_rate: int, text: str
) -> None:
    """Pushed as LLM tokens, the text comes out as the very PCM a plain krt client gets at
    that rate (krt resampled it; nothing here did), in frames that say that rate, with
    krt's word times on the input's own tokens; LiveKit's TTFB metric is krt's."""

    async def scenario() -> None:
        native = await reference(krt.url, text, sample_rate)
        krt_tts = KrtTTS(url=krt.url, api_key=API_KEY, sample_rate=sample_rate)
        errors, metrics = watch(krt_tts)
        try:
            heard = await speak(krt_tts, *tokens_of(text))
        finally:
            await krt_tts.aclose()
        assert heard.rates == {(sample_rate, 1)}
        assert_same_audio(heard.pcm, native.pcm)
        assert heard.timed() == pytest.approx(expected_words(text, native.words))
        assert "".join(heard.words) == text + " "
        assert errors == []
        (metric,) = metrics
        assert 0 < metric.ttfb < WAIT and metric.audio_duration == pytest.approx(heard.seconds)

    asyncio.run(scenario())


def test_tokens_are_spoken_as_they_come_and_as_the_whole_text_would_be(krt: KrtInThread) -> None:
    """The first sentence is heard before the LLM has written the second (krt speaks
    incremental input a sentence at a time), and text pushed token by token, with a pause,
    comes out exactly as the same text pushed at once, and as a plain client's
    ``input.append`` of it: the same PCM, the same words at the same times."""
    text = f"{FIRST} {SECOND}"

    async def scenario() -> None:
        native = await reference(krt.url, text, incremental=True)
        krt_tts = KrtTTS(url=krt.url, api_key=API_KEY)
        try:
            whole = await speak(krt_tts, text)
            async with krt_tts.stream(conn_options=NO_RETRY) as stream:
                for token in tokens_of(FIRST + " "):
                    stream.push_text(token)
                heard = Heard()
                hearing = asyncio.create_task(hear(stream, heard))
                await asyncio.wait_for(heard.first_frame.wait(), WAIT)  # the LLM is still writing
                for token in tokens_of(SECOND):
                    stream.push_text(token)
                stream.end_input()
                await asyncio.wait_for(hearing, WAIT)
        finally:
            await krt_tts.aclose()
        assert whole.pcm == native.pcm
        assert heard.pcm == native.pcm
        assert heard.timed() == pytest.approx(whole.timed())
        assert "".join(heard.words) == text + " "
        starts = [start for _text, start, _end in heard.timed()]
        assert starts == sorted(starts) and starts[-1] < heard.seconds

    asyncio.run(scenario())


def test_synthesize_is_one_krt_response_with_its_words(krt: KrtInThread) -> None:
    """``synthesize()`` (LiveKit's non-streaming path, e.g. ``session.say``) is one krt
    response on a pooled socket: krt's PCM and words, and one line in krt's log."""

    async def scenario() -> None:
        native = await reference(krt.url, PUNCTUATED)
        krt_tts = KrtTTS(url=krt.url, api_key=API_KEY)
        try:
            async with krt_tts.synthesize(PUNCTUATED, conn_options=NO_RETRY) as chunked:
                heard = await hear(chunked)
        finally:
            await krt_tts.aclose()
        assert heard.rates == {(24_000, 1)}
        assert heard.pcm == native.pcm
        assert heard.timed() == pytest.approx(expected_words(PUNCTUATED, native.words))
        (request_id,) = heard.request_ids

        def logged() -> list[dict[str, Any]]:
            return [record for record in krt.records() if record["request_id"] == request_id]

        await until("krt's log of the response", logged)
        (record,) = logged()
        assert not record["canceled"]

    asyncio.run(scenario())


def test_an_interruption_stops_krt_at_once_and_the_next_reply_starts_warm(krt: KrtInThread) -> None:
    """LiveKit interrupts by closing the stream mid-reply: nothing more of it comes out,
    krt logs that response canceled short of its length, and the next reply comes at
    once on a socket opened in the background (no handshake on its path), with nothing
    of the interrupted one in it."""

    async def scenario() -> None:
        native = await reference(krt.url, SHORT)
        before = len(krt.records())
        krt_tts = KrtTTS(url=krt.url, api_key=API_KEY)
        try:
            stream = krt_tts.stream(conn_options=NO_RETRY)
            stream.push_text(LONG_SENTENCE)
            stream.end_input()
            interrupted = Heard()
            hearing = asyncio.create_task(hear(stream, interrupted))
            await until("a second of audio", lambda: interrupted.seconds > 1.0)
            await stream.aclose()
            heard_then = len(interrupted.frames)
            await asyncio.wait_for(hearing, WAIT)
            assert len(interrupted.frames) == heard_then  # nothing after the interruption

            def canceled() -> list[dict[str, Any]]:
                return [record for record in krt.records()[before:] if record["canceled"]]

            await until("krt to log the response canceled", canceled)
            (record,) = canceled()
            assert record["audio_s"] < 0.8 * len(LONG_SENTENCE) * AUDIO_SECONDS_PER_CHAR

            next_stream = krt_tts.stream(conn_options=NO_RETRY)
            next_stream.push_text(SHORT)
            next_stream.end_input()
            async with next_stream:
                after = await hear(next_stream)
            assert next_stream._connection_reused, "the next reply waited for a handshake"
        finally:
            await krt_tts.aclose()
        assert after.pcm == native.pcm  # all of the new reply, nothing of the old one

    asyncio.run(scenario())


def test_prewarm_opens_a_socket_the_first_reply_then_uses(krt: KrtInThread) -> None:
    async def scenario() -> None:
        async with Relay(krt.port) as relay:
            krt_tts = KrtTTS(url=relay.url, api_key=API_KEY)
            try:
                krt_tts.prewarm()
                await until("the prewarmed socket", lambda: krt_tts._pool._available)
                assert relay.connections == 1
                stream = krt_tts.stream(conn_options=NO_RETRY)
                stream.push_text(SHORT)
                stream.end_input()
                async with stream:
                    heard = await hear(stream)
                assert stream._connection_reused and relay.connections == 1
                assert heard.seconds > 1.0
            finally:
                await krt_tts.aclose()

    asyncio.run(scenario())


def test_a_wrong_key_is_a_clear_error_that_is_not_retried(krt: KrtInThread) -> None:
    async def scenario() -> None:
        async with Relay(krt.port) as relay:
            krt_tts = KrtTTS(url=relay.url, api_key="wrong")
            errors, _metrics = watch(krt_tts)
            try:
                stream = krt_tts.stream()  # LiveKit's default: three retries for what is retryable
                stream.push_text(SHORT)
                stream.end_input()
                with pytest.raises(APIStatusError) as refused:
                    async with stream:
                        await hear(stream)
            finally:
                await krt_tts.aclose()
            assert refused.value.status_code == 401 and not refused.value.retryable
            assert "refused the API key" in refused.value.message
            assert [error.recoverable for error in errors] == [False]
            assert relay.connections == 1

    asyncio.run(scenario())


def test_a_voice_krt_does_not_have_is_a_clear_error_that_is_not_retried(krt: KrtInThread) -> None:
    """krt's refusal of the session, with its message, is not retried; after
    ``update_options`` the next reply speaks in the new voice."""

    async def scenario() -> None:
        male = await reference(krt.url, SHORT, voice="male")
        krt_tts = KrtTTS(url=krt.url, api_key=API_KEY, voice="nobody")
        errors, _metrics = watch(krt_tts)
        try:
            with pytest.raises(APIStatusError) as refused:
                async with krt_tts.synthesize(SHORT) as chunked:
                    await hear(chunked)
            krt_tts.update_options(voice="male")
            heard = await speak(krt_tts, SHORT)
        finally:
            await krt_tts.aclose()
        assert refused.value.status_code == 400 and not refused.value.retryable
        assert "invalid_voice" in refused.value.message
        assert [error.recoverable for error in errors] == [False]
        assert heard.pcm == male.pcm

    asyncio.run(scenario())


def test_a_drained_replicas_idle_socket_is_skipped_for_the_next_replica(tmp_path: Path) -> None:
    """Between two replies the replica behind the pooled socket drains and closes it
    (1012); the next reply goes, through the balancer, to the next replica, whole and
    with no error."""
    with (
        KrtInThread(tmp_path / "a", API_KEY=API_KEY) as draining,
        KrtInThread(tmp_path / "b", API_KEY=API_KEY) as spare,
    ):

        async def scenario() -> None:
            native = await reference(spare.url, SHORT)
            async with Relay(draining.port) as relay:
                krt_tts = KrtTTS(url=relay.url, api_key=API_KEY)
                errors, _metrics = watch(krt_tts)
                try:
                    first = await speak(krt_tts, SHORT)
                    await asyncio.to_thread(draining.drain)
                    relay.target = spare.port  # the balancer takes the draining replica out
                    second = await speak(krt_tts, SHORT)
                finally:
                    await krt_tts.aclose()
            assert first.pcm == second.pcm == native.pcm
            assert errors == []
            await until("krt's logs", lambda: len(spare.records()) == 2)  # the reference's and the reply's
            assert len(draining.records()) == 1

        asyncio.run(scenario())


def test_a_reply_a_replica_drains_in_the_middle_of_is_finished_by_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy mid-reply: the replica speaking the first sentence starts draining
    and refuses the second ("busy", reconnect). The first is heard to its end; then the
    stream opens a new socket, which the balancer gives to the next replica, and sends it
    what was not heard: the whole reply is heard, in order, in one LiveKit segment, with
    its words on one clock and no error."""
    first = (
        "The first sentence, which is long enough to keep its replica speaking for a while after the "
        "drain begins, is heard to its end from the replica that drains."
    )
    second = "The second one is refused there and spoken by the next replica."
    # krt makes a reply at most 8 s ahead of its player, so the first sentence (10 s of
    # audio) is still being made when the second arrives, and the second is refused.
    caplog.set_level(logging.INFO, logger="krt.integrations.livekit")
    with (
        KrtInThread(tmp_path / "a", API_KEY=API_KEY) as draining,
        KrtInThread(tmp_path / "b", API_KEY=API_KEY) as spare,
    ):

        async def scenario() -> Heard:
            async with Relay(draining.port) as relay:
                krt_tts = KrtTTS(url=relay.url, api_key=API_KEY)
                errors, _metrics = watch(krt_tts)
                try:
                    async with krt_tts.stream(conn_options=NO_RETRY) as stream:
                        for token in tokens_of(first + " "):
                            stream.push_text(token)
                        heard = Heard()
                        hearing = asyncio.create_task(hear(stream, heard))
                        await asyncio.wait_for(heard.first_frame.wait(), WAIT)
                        drained = asyncio.create_task(asyncio.to_thread(draining.drain))
                        await until("the drain to start", lambda: draining.draining)
                        relay.target = spare.port
                        for token in tokens_of(second):
                            stream.push_text(token)
                        stream.end_input()
                        await asyncio.wait_for(hearing, 4 * WAIT)
                        await drained
                finally:
                    await krt_tts.aclose()
                assert errors == []
                assert relay.connections == 2
            await until("krt's logs", lambda: draining.records() and spare.records())
            return heard

        heard = asyncio.run(scenario())
        (made_first,) = draining.records()
        (made_second,) = spare.records()
    recovered = [r for r in caplog.records if "goes out on a new connection" in r.getMessage()]
    assert len(recovered) == 1, "the second sentence was never refused: the test missed the drain"
    assert not made_first["canceled"] and not made_second["canceled"]
    assert heard.seconds == pytest.approx(made_first["audio_s"] + made_second["audio_s"], abs=0.01)
    assert "".join(heard.words) == f"{first} {second} "
    starts = [start for _text, start, _end in heard.timed()]
    assert starts == sorted(starts) and starts[-1] < heard.seconds
    assert heard.timed()[len(first.split())][1] > made_first["audio_s"]  # on the segment's clock


@pytest.mark.integration
def test_the_real_model_speaks_a_sentence_through_krt_tts(
    tmp_path: Path, onnx_pipeline: SpeechPipeline
) -> None:
    """Kokoro itself, through krt and KrtTTS: speech of a plausible length, at the
    session's rate, its words in order within it."""
    from tests.speech_checks import assert_sounds_like_speech

    with KrtInThread(tmp_path, lambda _config: onnx_pipeline.backend, SHORT_WARM_UP, API_KEY=API_KEY) as real:

        async def scenario() -> Heard:
            krt_tts = KrtTTS(url=real.url, api_key=API_KEY)
            try:
                async with krt_tts.stream(conn_options=APIConnectOptions(max_retry=0, timeout=60)) as stream:
                    for token in tokens_of(SHORT):
                        stream.push_text(token)
                    stream.end_input()
                    return await hear(stream)
            finally:
                await krt_tts.aclose()

        heard = asyncio.run(scenario())
    assert heard.rates == {(24_000, 1)}
    assert_sounds_like_speech(heard.pcm, words=len(SHORT.split()))
    assert "".join(heard.words) == SHORT + " "
    timed = heard.timed()
    starts = [start for _text, start, _end in timed]
    assert starts == sorted(starts)
    assert all(start <= end <= heard.seconds for _text, start, end in timed)


def test_a_busy_krt_is_waited_for_where_it_says_and_the_reply_is_heard_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """krt's one slot is taken, so it refuses the reply ``busy`` with a ``retry_after``
    and keeps the socket's place. The stream waits that long (no error, no retry of
    LiveKit's), sends the text again on the same socket, and it is heard whole."""
    one_slot = {"MAX_CONCURRENT_JOBS": "1", "MAX_QUEUED_REQUESTS": "0", "QUEUE_WAIT_SLA_MS": "300"}
    caplog.set_level(logging.INFO, logger="krt.integrations.livekit")

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("krt is busy")]

    with KrtInThread(tmp_path, API_KEY=API_KEY, **one_slot) as busy:

        async def scenario() -> None:
            native = await reference(busy.url, SHORT)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(krt_endpoint(busy.url), headers=headers) as blocker,
            ):
                await blocker.send_str(
                    protocol.encode(protocol.ResponseCreate(input=LONG_SENTENCE, response_id="blocker"))
                )
                async for message in blocker:  # the slot is taken once its audio flows
                    if isinstance(protocol.decode_server_event(message.data), protocol.OutputAudioDelta):
                        break
                krt_tts = KrtTTS(url=busy.url, api_key=API_KEY)
                errors, _metrics = watch(krt_tts)
                try:
                    async with krt_tts.stream(conn_options=NO_RETRY) as stream:
                        stream.push_text(SHORT)
                        stream.end_input()
                        heard = Heard()
                        hearing = asyncio.create_task(hear(stream, heard))
                        await until("krt's refusal", refused)
                        refused_at = time.monotonic()
                        await blocker.send_str(protocol.encode(protocol.ResponseCancel(response="blocker")))
                        await asyncio.wait_for(hearing, WAIT)
                finally:
                    await krt_tts.aclose()
            (refusal,) = refused()
            told = re.search(r"in (\d+) ms", refusal.getMessage())
            assert told is not None
            wait_ms = int(told[1])
            assert heard.arrived[0] - refused_at >= wait_ms / 1000 - 0.05  # (seen up to 10 ms late)
            assert heard.pcm == native.pcm
            assert errors == []

        asyncio.run(scenario())
