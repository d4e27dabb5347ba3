"""KrtTTSService in a real Pipecat pipeline against a real krt server on loopback.

Pipecat runs on asyncio and krt on Trio, so the server (the production code path, fake
backend) runs its own Trio loop in a thread for the whole module, and each test drives a
real ``Pipeline`` / ``PipelineWorker`` / ``WorkerRunner`` with ``asyncio.run``. A
recorder on each side of the service keeps every frame it pushes: audio and words
downstream, errors upstream. What krt itself did is read from its metrics log (one line
per response, with ``canceled``), and reference numbers (audio length, word times) come
from a plain WebSocket client speaking to the same server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import warnings
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from loguru import logger
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from krt.engine.segmenter import AUDIO_SECONDS_PER_CHAR
from tests.integrations.krt_thread import KrtInThread, Relay

pytestmark = pytest.mark.slow

with warnings.catch_warnings():
    # pipecat.audio.utils imports audioop, deprecated since 3.11; the suite turns warnings
    # into errors, and this one is pipecat's to fix.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pipecat.frames.frames import (
        EndFrame,
        ErrorFrame,
        Frame,
        InterruptionFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        TTSTextFrame,
        TTSUpdateSettingsFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from krt.integrations.pipecat import KrtTTSService, krt_endpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path


API_KEY = "pipecat-test-key"
WAIT = 10.0
"""Longest wait for anything the fake backend makes in milliseconds."""
SHORT = "Hello there, this is krt speaking."
LONG = " ".join(f"Sentence number {n} keeps this long reply going for a while." for n in range(1, 9))
"""About 35 s of audio: far more than krt computes ahead of its player (8 s)."""


# --- the server: krt's own Trio loop, in a thread -----------------------------------------


@pytest.fixture(scope="module")
def krt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KrtInThread]:
    with KrtInThread(tmp_path_factory.mktemp("krt-pipecat"), API_KEY=API_KEY) as running:
        yield running


# --- the pipeline ------------------------------------------------------------------------


class Recorder(FrameProcessor):
    """Passes frames on and keeps those going one way, in order, with their arrival time."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self.arrived: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append(frame)
            self.arrived.append(time.monotonic())
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Any]:
        return [frame for frame in self.frames if isinstance(frame, kind)]


class Bot:
    """A running pipeline: ``recorder-up → KrtTTSService → recorder-down``."""

    def __init__(self, tts: KrtTTSService, sample_rate: int) -> None:
        self.tts = tts
        self.up = Recorder(FrameDirection.UPSTREAM)
        self.down = Recorder(FrameDirection.DOWNSTREAM)
        self.worker = PipelineWorker(
            Pipeline([self.up, tts, self.down]),
            params=PipelineParams(audio_out_sample_rate=sample_rate),
            cancel_on_idle_timeout=False,
            enable_rtvi=False,
        )
        self.connections = 0

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)

    def errors(self) -> list[str]:
        return [frame.error for frame in self.up.of(ErrorFrame)]

    def audio(self, context_id: str | None = None) -> list[TTSAudioRawFrame]:
        return [
            frame
            for frame in self.down.of(TTSAudioRawFrame)
            if context_id is None or frame.context_id == context_id
        ]

    async def until(self, what: str, condition: Callable[[], object], within: float = WAIT) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; errors: {self.errors()}")
            await asyncio.sleep(0.01)

    async def stopped(self, count: int = 1) -> list[TTSStoppedFrame]:
        """Wait for ``count`` contexts to end; their stop frames."""
        await self.until(f"{count} TTSStoppedFrame", lambda: len(self.down.of(TTSStoppedFrame)) >= count)
        return self.down.of(TTSStoppedFrame)


@asynccontextmanager
async def running_bot(url: str, sample_rate: int = 24_000, **service: Any) -> AsyncIterator[Bot]:
    tts = KrtTTSService(url=url, **{"api_key": API_KEY, **service})
    bot = Bot(tts, sample_rate)
    worker = bot.worker

    @tts.event_handler("on_connected")
    async def _on_connected(_tts: KrtTTSService) -> None:
        bot.connections += 1

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await bot.until("the pipeline to start", lambda: bot.down.of(StartFrame) or run.done())
        yield bot
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), WAIT)
    finally:
        if not run.done():
            await worker.cancel()
            await asyncio.wait_for(run, WAIT)


async def reference(url: str, text: str, sample_rate: int = 24_000) -> dict[str, Any]:
    """What krt says for ``text`` to a plain client: PCM bytes and timestamp words."""
    async with connect(krt_endpoint(url), additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        session = {"audio": {"format": "pcm", "sample_rate": sample_rate}, "timestamps": True}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.send(json.dumps({"type": "response.create", "response_id": "ref", "input": text}))
        audio, words = bytearray(), []
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "response.output_audio.delta":
                audio += base64.b64decode(event["delta"])
            elif event["type"] == "response.output_audio.timestamps":
                words += event["words"]
            elif event["type"] in ("response.completed", "response.error", "error"):
                assert event["type"] == "response.completed", event
                return {"audio": bytes(audio), "words": words}
    raise AssertionError("krt closed the reference connection")


def seconds(frames: list[TTSAudioRawFrame]) -> float:
    return sum(len(frame.audio) for frame in frames) / 2 / frames[0].sample_rate


def spoken_text(bot: Bot) -> str:
    return " ".join(frame.text.strip() for frame in bot.down.of(TTSTextFrame))


# --- tests -------------------------------------------------------------------------------


def test_text_becomes_audio_at_the_pipeline_rate(krt: KrtInThread) -> None:
    """A TTSSpeakFrame is one krt response whose id is the context id: started, audio at
    24 kHz of about the length the fake model gives the text, stopped, its words."""

    async def scenario() -> None:
        async with running_bot(krt.url) as bot:
            await bot.send(TTSSpeakFrame(SHORT))
            (stopped,) = await bot.stopped()
            (started,) = bot.down.of(TTSStartedFrame)
            context_id = started.context_id
            audio = bot.audio()
            assert stopped.context_id == context_id
            assert audio and {(f.sample_rate, f.num_channels, f.context_id) for f in audio} == {
                (24_000, 1, context_id)
            }
            predicted = len(SHORT) * AUDIO_SECONDS_PER_CHAR
            assert 0.5 * predicted < seconds(audio) < 2 * predicted
            assert spoken_text(bot) == SHORT  # timed words, or the sentence at its end
            assert bot.errors() == []
            assert bot.tts._speech.responses == {}  # krt ended the response
        assert context_id in {record["request_id"] for record in krt.records()}

    asyncio.run(scenario())


def test_a_turn_is_one_context_of_consecutive_responses(krt: KrtInThread) -> None:
    """An LLM turn's sentences share Pipecat's context: krt speaks them as responses
    ``<context>`` and ``<context>#2`` on one socket, heard in order, with one start and
    one stop around them."""
    first, second = "The first sentence is short.", "A second one follows it right away."

    async def scenario() -> None:
        async with running_bot(krt.url) as bot:
            await bot.send(
                LLMFullResponseStartFrame(),
                LLMTextFrame(first + " "),
                LLMTextFrame(second),
                LLMFullResponseEndFrame(),
            )
            (stopped,) = await bot.stopped()
            context_id = stopped.context_id
            assert [frame.context_id for frame in bot.down.of(TTSStartedFrame)] == [context_id]
            assert bot.audio() == bot.audio(context_id)
            predicted = len(first + second) * AUDIO_SECONDS_PER_CHAR
            assert 0.5 * predicted < seconds(bot.audio()) < 2 * predicted
            assert spoken_text(bot) == f"{first} {second}"
            assert bot.errors() == []
        spoken = [record["request_id"] for record in krt.records()]
        assert spoken[-2:] == [context_id, f"{context_id}#2"]

    asyncio.run(scenario())


def test_interruption_stops_the_audio_and_cancels_on_krt(krt: KrtInThread) -> None:
    """Mid-reply, an InterruptionFrame: nothing of that context comes out after it, krt
    logs the response canceled well short of its length, and the socket speaks on."""

    async def scenario() -> None:
        async with running_bot(krt.url) as bot:
            await bot.send(TTSSpeakFrame(LONG))
            await bot.until("a second of audio", lambda: bot.audio() and seconds(bot.audio()) > 1.0)
            (started,) = bot.down.of(TTSStartedFrame)
            context_id = started.context_id
            await bot.send(InterruptionFrame())
            await bot.until("the interruption downstream", lambda: bot.down.of(InterruptionFrame))

            def canceled() -> list[dict[str, Any]]:
                return [r for r in krt.records() if r["request_id"] == context_id and r["canceled"]]

            await bot.until("krt to log the response canceled", canceled)
            await bot.until("krt's response.canceled", lambda: context_id not in bot.tts._speech.responses)
            (record,) = canceled()
            assert record["audio_s"] < 0.5 * len(LONG) * AUDIO_SECONDS_PER_CHAR

            # Anything of the interrupted context still on its way would come out before
            # the next reply, which goes through the same socket and the same queues.
            await bot.send(TTSSpeakFrame(SHORT))
            await bot.until("the next reply", lambda: len(bot.down.of(TTSStartedFrame)) == 2)
            await bot.stopped()
            cut = bot.down.frames.index(bot.down.of(InterruptionFrame)[0])
            after = [f for f in bot.down.frames[cut:] if getattr(f, "context_id", None) == context_id]
            assert after == []
            heard = seconds(bot.audio(context_id))
            assert heard <= record["audio_s"] + 0.01
            assert seconds(bot.audio()) > heard
            assert bot.errors() == []

    asyncio.run(scenario())


def test_word_timestamps_reach_pipecat_on_one_clock_per_turn(krt: KrtInThread) -> None:
    """krt's words become TTSTextFrames: the text's own tokens with their punctuation (so
    the transcript reads as written), at PTS that keep krt's timing, each later response's
    words shifted by exactly the audio of the responses before it in the turn."""
    sentences = ["Good morning to you.", "How can I help today?", 'It\'s "well-known": a $5 fee, right?']

    async def scenario() -> None:
        references = [await reference(krt.url, sentence) for sentence in sentences]
        assert all(ref["words"] for ref in references), "krt sent no response.output_audio.timestamps"
        async with running_bot(krt.url) as bot:
            await bot.send(
                LLMFullResponseStartFrame(),
                *(LLMTextFrame(sentence + " ") for sentence in sentences),
                LLMFullResponseEndFrame(),
            )
            await bot.stopped()
            assert bot.errors() == []
        frames = bot.down.of(TTSTextFrame)
        assert [frame.text for frame in frames] == " ".join(sentences).split()
        # Where each token should be heard: its first word's start in its own response,
        # after all the audio of the responses before it.
        expected_ms, played_ms = [], 0.0
        for sentence, ref in zip(sentences, references, strict=True):
            for token in re.finditer(r"\S+", sentence):
                starts = [
                    w["start_ms"]
                    for w in ref["words"]
                    if w["char_start"] < token.end() and w["char_end"] > token.start()
                ]
                expected_ms.append(played_ms + min(starts))
            played_ms += len(ref["audio"]) / 2 / 24_000 * 1000
        pts = [frame.pts for frame in frames]
        assert all(isinstance(p, int) for p in pts) and pts == sorted(pts)
        base = pts[0] / 1e6 - expected_ms[0]
        assert [p / 1e6 - base for p in pts] == pytest.approx(expected_ms, abs=1.0)

    asyncio.run(scenario())


def test_krt_renders_at_the_pipelines_16_khz(krt: KrtInThread) -> None:
    """At a 16 kHz pipeline krt is asked for 16 kHz: the frames say 16 kHz and hold the
    same duration as krt's 24 kHz rendering of the text, so nothing was resampled here or
    mislabelled."""

    async def scenario() -> None:
        native = await reference(krt.url, SHORT)
        async with running_bot(krt.url, sample_rate=16_000) as bot:
            await bot.send(TTSSpeakFrame(SHORT))
            await bot.stopped()
            assert bot.errors() == []
            audio = bot.audio()
            assert audio and {frame.sample_rate for frame in audio} == {16_000}
        assert seconds(audio) == pytest.approx(len(native["audio"]) / 2 / 24_000, abs=0.005)

    asyncio.run(scenario())


@pytest.mark.parametrize("code", [1001, 1011], ids=["going-away", "server-error"])
def test_a_dropped_socket_reconnects_and_the_next_text_is_spoken(krt: KrtInThread, code: int) -> None:
    """krt closes the socket (cleanly, or with an error); the very next text, sent before
    the service has noticed, is spoken on a new socket."""

    async def scenario() -> None:
        async with running_bot(krt.url) as bot:
            await bot.send(TTSSpeakFrame("Before the drop."))
            await bot.stopped()
            assert bot.connections == 1
            await asyncio.to_thread(krt.close_sessions, code)
            await bot.send(TTSSpeakFrame(SHORT))
            stopped = await bot.stopped(2)
            assert bot.connections == 2
            after = bot.audio(stopped[1].context_id)
            assert seconds(after) > 0.5 * len(SHORT) * AUDIO_SECONDS_PER_CHAR
            assert bot.errors() == []

    asyncio.run(scenario())


def test_a_refused_key_is_a_permanent_error_and_no_audio(krt: KrtInThread) -> None:
    async def scenario() -> None:
        async with running_bot(krt.url, api_key="wrong") as bot:
            await bot.until("an error", bot.errors)
            await bot.send(TTSSpeakFrame(SHORT))
            assert not bot.tts.is_usable
            assert "401" in bot.errors()[0]
        assert bot.audio() == []  # the pipeline has ended: nothing came of the text

    asyncio.run(scenario())


def test_settings_change_mid_call_without_a_reconnect(krt: KrtInThread) -> None:
    """Voice and speed from TTSUpdateSettingsFrame go to krt as a session.update on the
    same socket; a voice krt does not know is a non-fatal error and the call speaks on."""

    async def scenario() -> None:
        settings = KrtTTSService.Settings(voice="female", speed=1.0)
        async with running_bot(krt.url, settings=settings) as bot:
            await bot.send(TTSSpeakFrame(SHORT))
            (normal,) = await bot.stopped()
            await bot.send(
                TTSUpdateSettingsFrame(delta=KrtTTSService.Settings(voice="male", speed=2.0)),
                TTSSpeakFrame(SHORT),
            )
            fast = (await bot.stopped(2))[1]
            await bot.send(TTSUpdateSettingsFrame(delta=KrtTTSService.Settings(voice="nobody")))
            await bot.until("the refusal", bot.errors)
            assert "invalid_voice" in bot.errors()[0]
            await bot.send(TTSSpeakFrame(SHORT))
            third = (await bot.stopped(3))[2]
            assert bot.tts.is_usable and bot.connections == 1
            normal_s, fast_s = seconds(bot.audio(normal.context_id)), seconds(bot.audio(fast.context_id))
            assert fast_s == pytest.approx(normal_s / 2, rel=0.15)
        voices = {r["request_id"]: r["voice"] for r in krt.records()}
        assert voices[normal.context_id] != voices[fast.context_id] == voices[third.context_id]

    asyncio.run(scenario())


def test_a_refused_sentence_is_a_non_fatal_error_and_the_turn_goes_on(krt: KrtInThread) -> None:
    """krt's response.error (too_long here) is an ErrorFrame that costs the service
    nothing: the turn's other sentences are heard and its context still ends."""
    first, last = "This one is fine.", "So is this one."
    too_long = " ".join(["word"] * 401) + "."

    async def scenario() -> None:
        async with running_bot(krt.url) as bot:
            await bot.send(
                LLMFullResponseStartFrame(),
                LLMTextFrame(f"{first} {too_long} {last}"),
                LLMFullResponseEndFrame(),
            )
            (stopped,) = await bot.stopped()
            (error,) = bot.errors()
            assert "too_long" in error
            assert bot.tts.is_usable
            predicted = len(first + last) * AUDIO_SECONDS_PER_CHAR
            assert 0.5 * predicted < seconds(bot.audio(stopped.context_id)) < 2 * predicted

    asyncio.run(scenario())


def test_a_sentence_a_draining_krt_refuses_is_spoken_by_the_next_replica(tmp_path: Path) -> None:
    """A rolling deploy mid-turn: the replica speaking the turn's first sentence starts
    draining and refuses the second ("busy", reconnect). The service holds it, and once
    the first sentence ends and the replica closes the socket (1012) it reconnects, through
    the balancer, to the next replica and sends it there: the whole turn is heard, in order,
    in one context, with no error."""
    first = (
        "The first sentence, which is long enough to keep its replica busy for a while, is spoken "
        "by the replica that then drains."
    )
    second = "The second one is refused there and spoken by the next replica."
    # The draining replica makes audio at only 4x real time, so the first sentence (about
    # 8 s of audio) is still being made when the second arrives, and is refused.
    slow = {"API_KEY": API_KEY, "KRT_FAKE_COMPUTE_RATIO": "0.25"}
    resent: list[str] = []
    sink = logger.add(
        lambda message: resent.append(str(message)),
        level="INFO",
        filter=lambda r: "goes out again" in r["message"],
    )
    try:
        with (
            KrtInThread(tmp_path / "a", **slow) as draining,
            KrtInThread(tmp_path / "b", API_KEY=API_KEY) as spare,
        ):

            async def scenario() -> None:
                async with Relay(draining.port) as relay, running_bot(relay.url) as bot:
                    # An LLM's tokens: the first sentence goes to krt once the next begins.
                    await bot.send(LLMFullResponseStartFrame(), LLMTextFrame(f"{first} {second[:3]}"))
                    await bot.until("the first sentence's audio", bot.audio)
                    drained = asyncio.create_task(asyncio.to_thread(draining.drain))
                    await bot.until("the drain to start", lambda: draining.draining)
                    relay.target = spare.port  # the balancer takes the draining replica out
                    await bot.send(LLMTextFrame(second[3:]), LLMFullResponseEndFrame())
                    (stopped,) = await bot.stopped()
                    await drained
                    assert bot.errors() == []
                    assert bot.connections == 2
                    assert bot.audio() == bot.audio(stopped.context_id)
                    assert spoken_text(bot) == f"{first} {second}"
                    heard = seconds(bot.audio())

                context_id = stopped.context_id
                (made_first,) = [r for r in draining.records() if r["request_id"] == context_id]
                (made_second,) = [r for r in spare.records() if r["request_id"] == f"{context_id}#2"]
                assert not made_first["canceled"] and not made_second["canceled"]
                assert heard == pytest.approx(made_first["audio_s"] + made_second["audio_s"], abs=0.01)

            asyncio.run(scenario())
    finally:
        logger.remove(sink)
    assert len(resent) == 1, "the second sentence was never refused: the test missed the drain"


def test_a_connect_cancelled_mid_handshake_leaves_no_half_open_socket() -> None:
    """A connect that is cancelled while krt has not yet agreed the session (an
    interruption during an on-demand reconnect) closes the socket it opened: left open, it
    would look connected and never be ready, and every later sentence would wait on it."""

    async def scenario() -> None:
        asked, closed = asyncio.Event(), asyncio.Event()

        async def never_agrees(connection: Any) -> None:
            await connection.recv()  # the session.update, left unanswered
            asked.set()
            await connection.wait_closed()
            closed.set()

        async with serve(never_agrees, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            tts = KrtTTSService(url=f"ws://127.0.0.1:{port}", api_key=API_KEY, session_timeout=WAIT)
            connecting = asyncio.create_task(tts._connect_websocket())
            await asyncio.wait_for(asked.wait(), WAIT)
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            await asyncio.wait_for(closed.wait(), WAIT)
            assert tts._websocket is None

    asyncio.run(scenario())


def test_a_reply_krt_queues_past_pipecats_usual_quiet_time_is_still_heard(tmp_path: Path) -> None:
    """On a busy krt a reply may wait in the queue for up to ``QUEUE_WAIT_SLA_MS`` (4 s by
    default) before its first audio. After Pipecat's usual 3 s without audio its context
    would be finished and the reply dropped; the service gives krt longer, and the reply
    is heard whole, with no error."""
    queue_wait = 3.5
    one_slot = {"MAX_CONCURRENT_JOBS": "1", "MAX_QUEUED_REQUESTS": "2", "QUEUE_WAIT_SLA_MS": "600000"}
    with KrtInThread(tmp_path, API_KEY=API_KEY, **one_slot) as busy:

        async def scenario() -> None:
            native = await reference(busy.url, SHORT)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with connect(krt_endpoint(busy.url), additional_headers=headers) as blocker:
                create = {"type": "response.create", "response_id": "blocker", "input": LONG}
                await blocker.send(json.dumps(create))
                async for message in blocker:  # the one slot is taken once its audio flows
                    if json.loads(message)["type"] == "response.output_audio.delta":
                        break
                reading = asyncio.create_task(asyncio.wait_for(_read_all(blocker), WAIT + queue_wait))
                async with running_bot(busy.url) as bot:
                    await bot.send(TTSSpeakFrame(SHORT))
                    await asyncio.sleep(queue_wait)  # the time krt keeps the reply queued
                    assert bot.audio() == [], "the reply was not queued behind the blocker"
                    await blocker.send(json.dumps({"type": "response.cancel", "response": "blocker"}))
                    (stopped,) = await bot.stopped()
                    assert bot.errors() == []
                    assert seconds(bot.audio(stopped.context_id)) == pytest.approx(
                        len(native["audio"]) / 2 / 24_000, abs=0.005
                    )
                reading.cancel()

        asyncio.run(scenario())


async def _read_all(websocket: Any) -> None:
    async for _message in websocket:
        pass
