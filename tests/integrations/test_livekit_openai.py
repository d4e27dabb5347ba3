"""LiveKit's own OpenAI TTS plugin against krt's ``/v1/audio/speech``, as its users run it.

``livekit.plugins.openai.TTS(base_url=<krt>/v1, ...)`` needs nothing of krt's: what it
sends (the model decides raw audio or SSE, the format what is decoded) must come out as
24 kHz audio of the length krt made, through ``synthesize()`` and through the
``StreamAdapter`` LiveKit wraps a non-streaming TTS in. The HTTP answers it depends on
(Content-Type per format, the SSE events) are checked on the wire with plain aiohttp.
The server is the module's krt in a thread (fake backend), as in ``test_livekit``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import pytest
from livekit.agents import APIConnectOptions, tts
from livekit.plugins import openai as lk_openai

from tests.integrations.krt_thread import KrtInThread
from tests.integrations.test_livekit import hear, until

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

API_KEY = "livekit-openai-test-key"
TEXT = "Hello there, this is krt speaking."
NO_RETRY = APIConnectOptions(max_retry=0)
MARKER_S = 0.01
"""The silent 10 ms frame LiveKit's emitter ends a segment with after the plugin's flush
(and the StreamAdapter's, after its own)."""
MARKER_BYTES = round(MARKER_S * 24_000) * 2
CODEC_SLACK_S = 0.05
"""What a lossy codec may add or drop at the ends (an encoder's priming, a last partial
frame): about one frame."""


@pytest.fixture(scope="module")
def krt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KrtInThread]:
    with KrtInThread(tmp_path_factory.mktemp("krt-livekit-openai"), API_KEY=API_KEY) as running:
        yield running


def base_url(krt: KrtInThread) -> str:
    return f"http://127.0.0.1:{krt.port}/v1"


async def post_speech(krt: KrtInThread, **fields: Any) -> tuple[str, bytes]:
    """A plain ``POST /v1/audio/speech``: the Content-Type and the body, once krt has
    logged the request (so that a later request's line is told from this one's)."""
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = len(krt.records())
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(krt)}/audio/speech", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        content_type, audio = response.headers["Content-Type"], await response.read()
    await made_seconds(krt, before, 1)
    return content_type, audio


async def made_seconds(krt: KrtInThread, before: int, requests: int) -> float:
    """The audio krt logged for the ``requests`` it served after the first ``before``."""
    await until("krt's log of the requests", lambda: len(krt.records()) >= before + requests)
    made = krt.records()[before:]
    assert len(made) == requests
    return sum(record["audio_s"] for record in made)


@pytest.mark.parametrize("path", ["synthesize", "stream-adapter"])
@pytest.mark.parametrize("response_format", ["pcm", "mp3", "wav", "opus"])
@pytest.mark.parametrize("model", ["tts-1", "kokoro", "gpt-4o-mini-tts"])
def test_livekits_openai_plugin_speaks_through_krt(
    krt: KrtInThread, model: str, response_format: str, path: str
) -> None:
    """``tts-1`` asks for raw audio, the other models for SSE; either way, and in every
    format, the plugin hears 24 kHz mono of the length krt made (and LiveKit's 10 ms end
    marker; a lossy codec gains or loses about a frame); in PCM, krt's very samples."""

    async def scenario() -> None:
        _content_type, native = await post_speech(krt, response_format="pcm")
        before = len(krt.records())
        openai_tts = lk_openai.TTS(
            base_url=base_url(krt),
            api_key=API_KEY,
            model=model,
            voice="alloy",
            response_format=response_format,
        )
        try:
            if path == "synthesize":
                async with openai_tts.synthesize(TEXT, conn_options=NO_RETRY) as chunked:
                    heard = await hear(chunked)
            else:
                adapter = tts.StreamAdapter(tts=openai_tts)
                async with adapter.stream(conn_options=NO_RETRY) as stream:
                    stream.push_text(TEXT)
                    stream.end_input()
                    heard = await hear(stream)
        finally:
            await openai_tts.aclose()
        assert heard.rates == {(24_000, 1)}
        made = await made_seconds(krt, before, 1)
        assert made == pytest.approx(len(native) / 2 / 24_000, abs=0.001)
        samples = np.frombuffer(heard.pcm, "<i2").astype(np.float32) / 32767
        assert float(np.sqrt(np.mean(samples**2))) > 0.01, "the plugin heard silence"
        if response_format == "pcm":
            assert heard.pcm.startswith(native)
            tail = heard.pcm[len(native) :]
            assert not tail.strip(b"\x00") and len(tail) <= 2 * MARKER_BYTES  # the adapter's marker too
        else:
            assert heard.seconds == pytest.approx(made + MARKER_S, abs=CODEC_SLACK_S)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("response_format", "content_type"),
    [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/opus"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm"),
    ],
)
def test_each_format_is_sent_under_the_content_type_clients_decode_by(
    krt: KrtInThread, response_format: str, content_type: str
) -> None:
    """LiveKit's plugin (and OpenAI's SDKs) pick the decoder by the Content-Type."""

    async def scenario() -> None:
        sent_as, body = await post_speech(krt, response_format=response_format)
        assert sent_as.split(";")[0].strip() == content_type
        assert len(body) > 1000

    asyncio.run(scenario())


def test_sse_is_speech_audio_deltas_then_done_with_usage(krt: KrtInThread) -> None:
    """``stream_format: "sse"``: ``speech.audio.delta`` events of base64 audio (under
    ``audio``, which LiveKit's plugin reads), then one ``speech.audio.done`` with the usage,
    which LiveKit's metrics report."""

    async def scenario() -> None:
        _content_type, native = await post_speech(krt, response_format="pcm")
        sent_as, body = await post_speech(krt, response_format="pcm", stream_format="sse")
        assert sent_as.split(";")[0].strip() == "text/event-stream"
        events = [
            json.loads(line.removeprefix("data: "))
            for line in body.decode().splitlines()
            if line.startswith("data: ")
        ]
        *deltas, done = events
        assert deltas and {event["type"] for event in deltas} == {"speech.audio.delta"}
        assert b"".join(base64.b64decode(event["audio"], validate=True) for event in deltas) == native
        assert done["type"] == "speech.audio.done"
        usage = done["usage"]
        assert {"input_tokens", "output_tokens", "total_tokens"} <= usage.keys()
        assert all(isinstance(usage[key], int) for key in ("input_tokens", "output_tokens", "total_tokens"))
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0

    asyncio.run(scenario())
