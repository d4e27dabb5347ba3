"""An HTTP speech response's body, as a delivery sink: raw audio, or server-sent events.

The body's head leaves with the first audio (so an error before any audio still gets its
own status: 429, 500), then the audio goes out chunked as it is made, encoded per format
by :mod:`krt.media.codecs`. HTTP has no read receipt finer than the kernel taking the bytes, so
audio counts as read once its send returns; a client that stops reading then holds its
own stream back through TCP's flow control.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krt.engine.facade import PcmBatch, WordTime
    from krt.errors import SpeechError
    from krt.server.http import FrontDoor
    from krt.server.responses import Response, ResponseBook


class SpeechBody:
    """The body's shared part: audio through the response's encoder, the head sent once,
    the response settled when the body ends. Subclasses say how bytes are framed."""

    content_type = "application/octet-stream"

    def __init__(self, door: FrontDoor, responses: ResponseBook) -> None:
        self._door = door
        self._responses = responses
        self.error: SpeechError | None = None
        """Why synthesis failed, when it did; before the head left, the route answers it."""

    async def words(self, response: Response, words: list[WordTime]) -> None:
        """OpenAI's speech API has no word times: none are asked for on this path."""

    async def audio(self, response: Response, batch: PcmBatch) -> None:
        pcm = b"".join(batch)
        data = response.output_bytes(pcm)
        if data:
            await self._start_once(response)
            await self._send_audio(data)
        response.sent(len(pcm), len(data))
        response.read(len(pcm))

    async def completed(self, response: Response) -> None:
        tail = response.output_tail()
        if tail:
            await self._start_once(response)
            await self._send_audio(tail)
            response.sent(0, len(tail))
        response.last_event_starting()
        await self._start_once(response)
        await self._end(response)
        self._responses.settle(response)

    async def failed(self, response: Response, error: SpeechError) -> None:
        self.error = error
        if self._door.started:
            await self._cut_short(error)
        self._responses.settle(response)

    async def _start_once(self, response: Response) -> None:
        if not self._door.started:
            await self._door.start(
                200,
                [
                    ("Content-Type", self.content_type),
                    ("Cache-Control", "no-store"),
                    ("X-Request-Id", response.response_id),
                ],
            )

    async def _send_audio(self, data: bytes) -> None:
        raise NotImplementedError

    async def _end(self, response: Response) -> None:
        await self._door.end()

    async def _cut_short(self, error: SpeechError) -> None:
        """The body is under way: a raw body is left unterminated, so the client sees the
        chunked stream cut short rather than a complete file that is missing its end."""


class AudioBody(SpeechBody):
    """The encoded audio itself (``stream_format: "audio"``, the default)."""

    def __init__(self, door: FrontDoor, responses: ResponseBook, content_type: str) -> None:
        super().__init__(door, responses)
        self.content_type = content_type

    async def _send_audio(self, data: bytes) -> None:
        await self._door.send(data)


class SseBody(SpeechBody):
    """OpenAI's ``stream_format: "sse"``: ``speech.audio.delta`` events of base64 audio,
    then ``speech.audio.done`` with the usage, or an ``error`` event when cut short."""

    content_type = "text/event-stream"

    async def _send_audio(self, data: bytes) -> None:
        await self._door.send(_sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}))

    async def _end(self, response: Response) -> None:
        characters = len(response.text)
        usage = {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}
        await self._door.send(_sse({"type": "speech.audio.done", "usage": usage}))
        await self._door.end()

    async def _cut_short(self, error: SpeechError) -> None:
        await self._door.send(
            _sse({"type": "error", "error": {"message": error.message, "code": error.code}})
        )
        await self._door.end()


def _sse(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
