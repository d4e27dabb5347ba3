"""One OpenAI-style speech request (``POST /v1/audio/speech``), timed as it streams.

The benches compare the HTTP endpoint with the WebSocket on the same clock: TTFB runs
from the request's last byte sent to the first byte of audio in the body. Written on h11
and Trio like the server's own door, so the client library needs no HTTP stack of its
own (and no asyncio).
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
import h11
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping

SPEECH_PATH = "/v1/audio/speech"
REQUEST_TIMEOUT_S = 60.0


@attrs.define
class HttpSpeech:
    """What one request did on the wire, with monotonic (Trio) timestamps."""

    status: int = 0
    sent_at: float = 0.0
    first_byte_at: float | None = None
    ended_at: float | None = None
    body: bytearray = attrs.field(factory=bytearray)

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.sent_at


async def post_speech(
    base_url: str,
    api_key: str,
    fields: Mapping[str, object],
    *,
    first_byte: trio.Event | None = None,
    into: HttpSpeech | None = None,
) -> HttpSpeech:
    """POST ``fields`` as JSON to ``base_url`` + ``/v1/audio/speech`` and read the whole
    answer (``first_byte`` is set when its first byte of audio arrives); OSError or h11
    errors on a broken connection. The caller bounds how long it may take
    (``REQUEST_TIMEOUT_S`` suits a reply; a chapter takes minutes); ``into`` keeps what
    arrived for a caller that stops reading early (cancels it)."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    payload = json.dumps(fields).encode()
    headers = [
        ("Host", parts.netloc or host),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
    ]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    result = HttpSpeech() if into is None else into
    stream: trio.abc.Stream
    if parts.scheme == "https":
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl.create_default_context())
    else:
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(method="POST", target=SPEECH_PATH, headers=headers)
        await stream.send_all(
            (connection.send(request) or b"")
            + (connection.send(h11.Data(data=payload)) or b"")
            + (connection.send(h11.EndOfMessage()) or b"")
        )
        result.sent_at = trio.current_time()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                result.status = event.status_code
            elif isinstance(event, h11.Data):
                if result.first_byte_at is None and event.data:
                    result.first_byte_at = trio.current_time()
                    if first_byte is not None:
                        first_byte.set()
                result.body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                result.ended_at = trio.current_time()
                return result
