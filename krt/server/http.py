"""HTTP/1.1 on one connection, through h11: read a request, answer it, stream a body.

h11 does the parsing and the framing: it says what status a malformed head deserves
(400, or 431 for one over ``MAX_HEAD_BYTES``), keeps a ``HEAD`` answer bodiless, and
streams a body of unknown length chunked to an HTTP/1.1 client (close-delimited to 1.0).
What h11 leaves to its user (which HTTP versions, how long a target, how many fields,
how big a body) is checked here. Every connection serves one request and closes: krt's
clients hold a WebSocket or make one speech request, and nothing gains from keep-alive
but a longer attack surface.

Why not an ASGI server (Hypercorn's Trio worker): the WebSocket route must stay on
trio-websocket (the design: its sessions, pings and close handling are what krt is built
on), and an ASGI server owns every connection's bytes, so both could not share the port
without a second hop. The door is small, its limits are explicit, and the streaming
bodies and SSE the speech endpoint needs are a few calls into h11.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import h11
import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0


class ReplayStream(trio.abc.Stream):
    """A stream that first hands back bytes already read from the socket."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


MAX_TARGET_BYTES = 8 * 1024
"""Longest request target (path and query) answered with anything but 414."""
MAX_HEADER_FIELDS = 100
"""Most header fields in a request head; more is 431, as is a head over MAX_HEAD_BYTES."""
HTTP_VERSIONS = (b"1.0", b"1.1")
LINGER_SECONDS = 2.0
"""How long, at most, krt reads on (and discards) after answering a request it did not
read to the end, before it closes. A socket closed with input unread sends the peer a
reset, not a FIN: a client still sending its head or body has its write fail, and most
(curl, http.client) stop there and never read the status that was already sent; some
stacks even drop the answer on the reset. Reading on until the peer has sent what it had
(and seen our half-close) lets it read the answer, as nginx's ``lingering_close`` does.
Bounded, so a peer cannot hold the connection by sending forever; nginx's bound is 30 s
(``lingering_time``), far more than krt's small refusals need on a working network."""
LINGER_MAX_BYTES = 1024 * 1024
"""The most a lingering close reads and discards: a client sending a few hundred kilobytes
too many gets its answer; a flood is cut off at once whatever LINGER_SECONDS allows."""
_READ_WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
"""The peer's h11 states once its request has been read to its end (or it closed)."""


class RequestRefused(Exception):
    """A request head that gets a 4xx/5xx and a close, never a traceback: what a port
    scanner or a broken client sends is routine, not a server error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class FrontDoor:
    """One connection's request, read and answered through h11.

    Every byte of the head read is kept, so a WebSocket upgrade can be replayed into
    trio-websocket.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.received = bytearray()
        self._method = b""
        self.request_head = h11.Request(method="GET", target="/", headers=[("Host", "?")])
        """The request read (a placeholder until then)."""

    async def read_head(self) -> h11.Request | None:
        """The request, or None when the peer closed first; RequestRefused when it is not
        one krt will answer normally."""
        try:
            while True:
                event = self._connection.next_event()
                if isinstance(event, h11.Request):
                    self._method = event.method
                    self.request_head = event
                    _check_limits(event)
                    return event
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return None
                data = bytes(await self.stream.receive_some(4096))
                self.received += data
                self._connection.receive_data(data)
        except h11.RemoteProtocolError as error:
            raise RequestRefused(error.error_status_hint, str(error)) from None

    async def read_body(self, limit: int) -> bytes:
        """The request's body; RequestRefused 413 past ``limit`` bytes (checked against a
        declared Content-Length before anything is read)."""
        declared = header(self.request_head, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            raise RequestRefused(413, f"the body is over {limit} bytes")
        body = bytearray()
        try:
            while True:
                event = self._connection.next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise RequestRefused(413, f"the body is over {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                elif event is h11.NEED_DATA:
                    data = bytes(await self.stream.receive_some(65536))
                    self._connection.receive_data(data)
                else:
                    raise RequestRefused(400, "the request ended before its body")
        except h11.RemoteProtocolError as error:
            raise RequestRefused(error.error_status_hint, str(error)) from None

    async def respond(self, status: int, body: object, headers: Sequence[tuple[str, str]] = ()) -> None:
        """One JSON answer, then the connection closes (``Connection: close``)."""
        payload = (json.dumps(body) + "\n").encode()
        fields = [*headers, ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        await self.respond_bytes(status, payload, fields)

    async def respond_bytes(self, status: int, payload: bytes, headers: Sequence[tuple[str, str]]) -> None:
        """A whole answer of known length, then the connection closes."""
        if self._connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self.start(status, [*headers, ("Content-Length", str(len(payload)))])
        await self.send(payload)
        await self.end()

    async def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """The status line and headers of an answer whose body follows with ``send``:
        chunked to an HTTP/1.1 client unless a Content-Length is given."""
        response = h11.Response(
            status_code=status, headers=[*headers, ("Connection", "close")], reason=_REASONS.get(status, "")
        )
        await self.stream.send_all(self._connection.send(response) or b"")

    @property
    def started(self) -> bool:
        """An answer's head is on the wire (only its body, or nothing, may follow)."""
        return self._connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE)

    async def send(self, data: bytes) -> None:
        if data and self._method != b"HEAD":
            await self.stream.send_all(self._connection.send(h11.Data(data=data)) or b"")

    async def end(self) -> None:
        await self.stream.send_all(self._connection.send(h11.EndOfMessage()) or b"")

    async def linger(self) -> None:
        """Before the caller closes: after an answer to a request not read to its end,
        half-close and read (discarding) until the peer closes, for at most
        LINGER_SECONDS and LINGER_MAX_BYTES (see LINGER_SECONDS for why).

        Nothing to wait for when the door answered nothing (a WebSocket session took the
        stream over, or the peer was dropped unanswered) or read the whole request: those
        close at once. A stream that cannot half-close is still drained.
        """
        if not self.started or self._read_whole():
            return
        try:
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()  # the answer is whole: the peer reads our FIN
            discarded = 0
            with trio.move_on_after(LINGER_SECONDS):
                while discarded < LINGER_MAX_BYTES:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        return
                    discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer reset: nothing left to protect

    def _read_whole(self) -> bool:
        """Whether the peer's request has been read to its end. A request's end is
        consumed from what was already received (a bodiless GET's, or a small body that
        came with the head), never waited for; a head h11 refused never ends."""
        try:
            while self._connection.their_state is h11.SEND_BODY:
                if self._connection.next_event() in (h11.NEED_DATA, h11.PAUSED):
                    break
        except h11.ProtocolError:
            return False
        return self._connection.their_state in _READ_WHOLE


def _check_limits(request: h11.Request) -> None:
    if request.http_version not in HTTP_VERSIONS:
        raise RequestRefused(505, f"HTTP/{request.http_version.decode('latin-1')} is not supported")
    if len(request.target) > MAX_TARGET_BYTES:
        raise RequestRefused(414, f"request target over {MAX_TARGET_BYTES} bytes")
    if len(request.headers) > MAX_HEADER_FIELDS:
        raise RequestRefused(431, f"over {MAX_HEADER_FIELDS} header fields")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def header(request: h11.Request, name: bytes) -> str:
    for key, value in request.headers:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def presented_key(request: h11.Request) -> str:
    """The API key from ``?api_key=`` or ``Authorization: Bearer``; empty when absent."""
    query = parse_qs(urlsplit(request.target.decode("latin-1")).query)
    if query.get("api_key"):
        return query["api_key"][0]
    scheme, _, token = header(request, b"authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authorized(request: h11.Request, api_key: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a key matched."""
    if not api_key:
        return True
    return hmac.compare_digest(presented_key(request).encode(), api_key.encode())
