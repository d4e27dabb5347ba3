"""One listening port: ``/healthz``, ``/readyz`` and the WebSocket route.

Each TCP connection's request head is parsed with h11 first, so plain HTTP (health
probes, a browser, a scanner) gets a proper answer — 404 for unknown paths, 426 for a
plain GET on the WebSocket route, 401 for a wrong key — before anything is upgraded.
Only then are the bytes already read replayed into trio-websocket, which performs the
handshake and owns the connection from there.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import h11
import trio
import trio_websocket

from krt.protocol import MAX_WS_MESSAGE_BYTES, WS_PATH
from krt.server.outbox import CLOSE_TIMEOUT_S
from krt.server.session import Session

if TYPE_CHECKING:
    from krt.server.state import ServerState

log = logging.getLogger(__name__)

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


class RequestRefused(Exception):
    """A request head that gets a 4xx/5xx and a close, never a traceback: what a port
    scanner or a broken client sends is routine, not a server error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class FrontDoor:
    """One connection's request head, read and answered through h11.

    h11 does the parsing and says what status a malformed head deserves (400, or 431 for
    one over ``MAX_HEAD_BYTES``); its framing rules keep a ``HEAD`` answer bodiless.
    What h11 leaves to its user (which HTTP versions, how long a target, how many
    fields) is checked here. Every byte read is kept, so a WebSocket upgrade can be
    replayed into trio-websocket.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.received = bytearray()
        self._method = b""

    async def read_head(self) -> h11.Request | None:
        """The request, or None when the peer closed first; RequestRefused when it is not
        one krt will answer normally."""
        try:
            while True:
                event = self._connection.next_event()
                if isinstance(event, h11.Request):
                    self._method = event.method
                    _check_limits(event)
                    return event
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return None
                data = bytes(await self.stream.receive_some(4096))
                self.received += data
                self._connection.receive_data(data)
        except h11.RemoteProtocolError as error:
            raise RequestRefused(error.error_status_hint, str(error)) from None

    async def respond(
        self, status: int, body: dict[str, object], headers: list[tuple[str, str]] | None = None
    ) -> None:
        """One JSON answer, then the connection closes (``Connection: close``)."""
        payload = (json.dumps(body) + "\n").encode()
        fields = [
            *(headers or []),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ]
        connection = self._connection
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        events: list[h11.Event] = [
            h11.Response(status_code=status, headers=fields, reason=_REASONS.get(status, ""))
        ]
        if self._method != b"HEAD":
            events.append(h11.Data(data=payload))
        events.append(h11.EndOfMessage())
        await self.stream.send_all(b"".join(connection.send(event) or b"" for event in events))


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
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


def _header(request: h11.Request, name: bytes) -> str:
    for key, value in request.headers:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def presented_key(request: h11.Request) -> str:
    """The API key from ``?api_key=`` or ``Authorization: Bearer``; empty when absent."""
    query = parse_qs(urlsplit(request.target.decode("latin-1")).query)
    if query.get("api_key"):
        return query["api_key"][0]
    scheme, _, token = _header(request, b"authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def authorized(request: h11.Request, api_key: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a key matched."""
    if not api_key:
        return True
    return hmac.compare_digest(presented_key(request).encode(), api_key.encode())


async def handle_connection(stream: trio.abc.Stream, state: ServerState) -> None:
    peer = _peer_of(stream)
    door = FrontDoor(stream)
    try:
        try:
            request = None
            with trio.move_on_after(HEAD_TIMEOUT):
                request = await door.read_head()
            if request is not None:
                await _route(door, request, state, peer)
        except RequestRefused as refused:
            log.info("%s: refused request: %d %s", peer, refused.status, refused.reason)
            await door.respond(refused.status, {"error": refused.reason})
    except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as group:
        log.debug("%s: connection dropped: %r", peer, group.exceptions)
    except* Exception as group:
        # Last resort: a bug in one connection's handling must never end the listener.
        log.error("%s: connection failed", peer, exc_info=group)
    finally:
        await trio.aclose_forcefully(stream)


async def _route(door: FrontDoor, request: h11.Request, state: ServerState, peer: str) -> None:
    """Answer one parsed request head: a probe, an error, or the WebSocket session."""
    path = urlsplit(request.target.decode("latin-1")).path
    if path in ("/healthz", "/readyz"):
        if request.method not in (b"GET", b"HEAD"):
            await door.respond(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
        elif path == "/healthz":
            await door.respond(200, {"status": "ok"})
        else:
            status, body = state.readiness()
            await door.respond(status, body)
        return
    if path != WS_PATH:
        await door.respond(404, {"error": f"no route {path}", "routes": ["/healthz", "/readyz", WS_PATH]})
        return
    if request.method != b"GET":
        await door.respond(405, {"error": "this route speaks WebSocket (GET)"}, [("Allow", "GET")])
        return
    if _header(request, b"upgrade").lower() != "websocket":
        await door.respond(426, {"error": "this route speaks WebSocket"}, [("Upgrade", "websocket")])
        return
    if state.engine is None:
        await door.respond(503, {"error": "the model is still loading"}, [("Retry-After", "5")])
        return
    if not authorized(request, state.config.auth.api_key):
        log.warning("%s: refused WebSocket upgrade: missing or wrong API key", peer)
        await door.respond(
            401, {"error": "missing or wrong API key"}, [("WWW-Authenticate", 'Bearer realm="krt"')]
        )
        return
    await serve_websocket(ReplayStream(bytes(door.received), door.stream), state, peer)


async def serve_websocket(
    stream: trio.abc.Stream,
    state: ServerState,
    peer: str,
    *,
    task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Complete the WebSocket handshake on ``stream`` and run one session until it ends.

    Any byte stream will do (tests hand it one end of an in-memory pair);
    ``task_status.started`` gets the session once the handshake is done.
    """
    engine = state.engine
    assert engine is not None, "checked by the caller"
    async with trio.open_nursery() as nursery:
        request = await trio_websocket.wrap_server_stream(
            nursery, stream, max_message_size=MAX_WS_MESSAGE_BYTES
        )
        ws = await request.accept()
        connection = state.monitor.new_connection_id()
        session = Session(
            ws,
            engine,
            state.config,
            state.metrics,
            state.in_flight,
            peer,
            functools.partial(state.monitor.response_changed, connection),
        )
        state.open_sessions.add(session)
        state.monitor.connection_opened(connection, peer, session)
        log.info("%s: session open (%d active)", peer, state.sessions)
        task_status.started(session)
        try:
            await session.run()
        finally:
            state.open_sessions.discard(session)
            state.monitor.connection_closed(connection)
            log.info("%s: session closed (%d active)", peer, state.sessions)
            if ws.closed is not None:
                # Our close is under way: trio-websocket's reader must stay to read the
                # client's reply, or the close (and a drain waiting on it) hangs until
                # its timeout. Bounded, since a client may never answer.
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            else:
                nursery.cancel_scope.cancel()


def _peer_of(stream: trio.abc.Stream) -> str:
    socket_stream = getattr(stream, "socket", None)
    try:
        host, port, *_ = socket_stream.getpeername() if socket_stream is not None else ("?", 0)
    except OSError:
        return "?"
    return f"{host}:{port}"


async def serve(
    state: ServerState, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen and serve until cancelled; ``task_status.started`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("listening on %s:%d (ws route %s)", host, bound, WS_PATH)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)

        async def handler(stream: trio.SocketStream) -> None:
            await handle_connection(stream, state)

        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
