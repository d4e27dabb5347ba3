"""One listening port: probes, ``/metrics``, OpenAI's speech API and the WebSocket route.

Each TCP connection's request head is parsed with h11 first, so plain HTTP (health
probes, a browser, a scanner) gets a proper answer — 404 for unknown paths, 426 for a
plain GET on the WebSocket route, 401 for a wrong key — before anything is upgraded.
Only then are the bytes already read replayed into trio-websocket, which performs the
handshake and owns the connection from there.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11
import trio
import trio_websocket

from krt.server import openai_api, playground, prometheus
from krt.server.http import HEAD_TIMEOUT, FrontDoor, ReplayStream, RequestRefused, authorized, header
from krt.server.openai_schema import ApiError
from krt.server.outbox import CLOSE_TIMEOUT_S
from krt.server.session import Session
from krt.wire.protocol import DRAINING_REASON, MAX_WS_MESSAGE_BYTES, WS_PATH

if TYPE_CHECKING:
    from krt.server.state import ServerState

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
"""From a valid upgrade request to an open WebSocket: a peer cannot hold a half-open
handshake (and what it holds) for longer."""


ROUTES = ("/healthz", "/readyz", "/metrics", *openai_api.ROUTES, WS_PATH)


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
        await door.linger()  # a request answered before it was read whole: let its peer see the answer
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
    if path == "/metrics":
        if request.method not in (b"GET", b"HEAD"):
            await door.respond(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
        else:
            await door.respond_bytes(
                200, state.prometheus.render(), [("Content-Type", prometheus.CONTENT_TYPE)]
            )
        return
    if path in openai_api.ROUTES:
        try:
            await openai_api.serve(door, path, state, peer)
        except ApiError as error:
            await door.respond(error.status, error.body, error.headers)
        return
    if state.config.server.playground and playground.route(path):
        await playground.serve(door, path, key_required=bool(state.config.auth.api_key))
        return
    if path != WS_PATH:
        routes = [*ROUTES, playground.PAGE_PATH] if state.config.server.playground else list(ROUTES)
        await door.respond(404, {"error": f"no route {path}", "routes": routes})
        return
    if request.method != b"GET":
        await door.respond(405, {"error": "this route speaks WebSocket (GET)"}, [("Allow", "GET")])
        return
    if header(request, b"upgrade").lower() != "websocket":
        await door.respond(426, {"error": "this route speaks WebSocket"}, [("Upgrade", "websocket")])
        return
    if state.engine is None:
        await door.respond(503, {"error": "the model is still loading"}, [("Retry-After", "5")])
        return
    if state.draining:
        # Before the upgrade, so a load balancer can try the next replica (nothing was sent).
        await door.respond(503, {"error": DRAINING_REASON}, [("Retry-After", "5")])
        return
    refusal = handshake_refusal(request)
    if refusal is not None:
        status, reason, headers = refusal
        log.info("%s: refused WebSocket upgrade: %s", peer, reason)
        await door.respond(status, {"error": reason}, headers)
        return
    if not authorized(request, state.config.auth.api_key):
        log.warning("%s: refused WebSocket upgrade: missing or wrong API key", peer)
        await door.respond(
            401, {"error": "missing or wrong API key"}, [("WWW-Authenticate", 'Bearer realm="krt"')]
        )
        return
    await serve_websocket(ReplayStream(bytes(door.received), door.stream), state, peer)


def handshake_refusal(request: h11.Request) -> tuple[int, str, list[tuple[str, str]]] | None:
    """Why an upgrade request is not a valid RFC 6455 opening handshake, with its status;
    None when it is. Checked before trio-websocket sees it: given an invalid one, its
    handshake answers 400 but never returns, and each such request held its memory."""
    if request.http_version != b"1.1":
        return 400, "a WebSocket upgrade needs HTTP/1.1", []
    connection = {token.strip().lower() for token in header(request, b"connection").split(",")}
    if "upgrade" not in connection:
        return 400, "a WebSocket upgrade needs 'Connection: Upgrade'", []
    if header(request, b"sec-websocket-version").strip() != "13":
        return 426, "only WebSocket version 13 is supported", [("Sec-WebSocket-Version", "13")]
    try:
        key = base64.b64decode(header(request, b"sec-websocket-key").strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 16:
        return 400, "'Sec-WebSocket-Key' must be 16 bytes in base64", []
    return None


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
        ws = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            request = await trio_websocket.wrap_server_stream(
                nursery, stream, max_message_size=MAX_WS_MESSAGE_BYTES
            )
            ws = await request.accept()
        if ws is None:
            log.info("%s: WebSocket handshake not done within %s s; dropped", peer, HANDSHAKE_TIMEOUT_S)
            nursery.cancel_scope.cancel()
            return
        connection = state.monitor.new_connection_id()
        session = Session(ws, engine, state.config, state.response_book(connection), peer)
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
