"""Plain HTTP and the handshake on the server's one port: probes, wrong requests, auth.

Requests are raw bytes on a TCP socket, the way a load balancer's probe, a browser or a
port scanner would arrive, against the real server (fake model) on loopback.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, open_websocket_url, wrap_client_stream

from krt.server import http, listener, openai_api
from tests.conftest import make_config
from tests.server_harness import WS_PATH, Client, RunningServer, start_server

pytestmark = pytest.mark.trio

API_KEY = "krt-test-key-7f3a9c1e5b"


async def http_exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and return every byte the server sends until it closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    async with stream:
        try:
            await stream.send_all(raw)
            while data := await stream.receive_some(65536):
                received += data
        except trio.BrokenResourceError:  # a reset is a close too
            pass
    return bytes(received)


async def http_get(port: int, path: str, method: str = "GET", headers: str = "") -> tuple[int, dict, bytes]:
    """One request; the status, the headers (lower-cased names) and the body."""
    raw = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: 0\r\n\r\n"
    response = await http_exchange(port, raw.encode())
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    assert int(fields["content-length"]) == len(body)
    return int(status), fields, body


@pytest.fixture
async def server(nursery, tmp_path) -> RunningServer:
    return await start_server(nursery, tmp_path)


@pytest.fixture
async def keyed_server(nursery, tmp_path) -> RunningServer:
    return await start_server(nursery, tmp_path, API_KEY=API_KEY)


async def test_healthz_answers_200(server):
    with trio.fail_after(10):
        status, headers, body = await http_get(server.port, "/healthz")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"status": "ok"}


async def test_readyz_names_backend_device_and_voices(server):
    with trio.fail_after(10):
        status, _headers, body = await http_get(server.port, "/readyz")
        assert status == 200
        ready = json.loads(body)
        assert ready["ready"] is True
        assert ready["draining"] is False
        assert ready["backend"] == "fake"
        assert ready["device"] == "cpu"
        assert ready["voices"]["female"] == "fake_female"
        assert ready["voices"]["male"] == "fake_male"
        assert sorted(ready["voices"]["all"]) == ["fake_female", "fake_male"]
        assert ready["batch_windows"] == 1
        assert set(ready["capacity_by_batch"]) <= {"1"}


async def test_readyz_says_503_while_draining(server):
    with trio.fail_after(10):
        server.state.in_flight.start_drain()
        status, _headers, body = await http_get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["draining"] is True
        status, _headers, _body = await http_get(server.port, "/healthz")
        assert status == 200  # alive, just not taking new work


async def test_a_draining_replica_refuses_new_websockets_before_the_upgrade(server):
    """503 before anything is upgraded: a load balancer may try the next replica."""
    with trio.fail_after(10):
        server.state.in_flight.start_drain()
        upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        status, headers, body = await http_get(server.port, WS_PATH, headers=upgrade)
    assert (status, headers["retry-after"]) == (503, "5")
    assert "reconnect" in json.loads(body)["error"]


async def test_unknown_path_is_404(server):
    with trio.fail_after(10):
        status, _headers, body = await http_get(server.port, "/v1/audio/transcriptions")
        assert status == 404
        assert WS_PATH in json.loads(body)["routes"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_post_to_a_probe_is_405(server, path):
    with trio.fail_after(10):
        status, headers, _body = await http_get(server.port, path, method="POST")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"


async def test_plain_get_on_the_websocket_route_is_426(server):
    with trio.fail_after(10):
        status, headers, _body = await http_get(server.port, WS_PATH)
        assert status == 426
        assert headers["upgrade"].lower() == "websocket"


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(bytes.fromhex("160301002e0100002a0303") + bytes(32), id="tls-client-hello"),
        pytest.param(b"\x00\xff\x13\x37 not http at all\r\n\r\n", id="binary"),
        pytest.param(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", id="oversized-head"),
    ],
)
async def test_garbage_is_dropped_and_the_server_goes_on(server, garbage):
    with trio.fail_after(10):
        answer = await http_exchange(server.port, garbage)  # returns only once the server closes
        assert not answer.startswith(b"HTTP/1.1 2")
        status, _headers, _body = await http_get(server.port, "/healthz")
        assert status == 200


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), fields, body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"HELLO THERE\r\n\r\n", 400, id="garbage-request-line"),
        pytest.param(b"GET\r\n\r\n", 400, id="bare-get"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", 400, id="no-host"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="space-in-target"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400, id="bad-header-name"),
        pytest.param(b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505, id="http-9.9"),
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="long-target"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 150 + b"\r\n", 431, id="150-headers"
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 10_000 + b"\r\n", 431, id="10000-headers"
        ),
        pytest.param(
            f"POST {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n".encode(),
            405,
            id="post-upgrade",
        ),
    ],
)
async def test_a_malformed_request_gets_its_status_and_a_quiet_log(server, raw, status, caplog):
    with trio.fail_after(10):
        answer = await http_exchange(server.port, raw)
    got, headers, body = parse_answer(answer)
    assert got == status, answer[:200]
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert "error" in json.loads(body)
    # A scanner's requests are routine: nothing at WARNING or above, no traceback.
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]


async def test_head_is_answered_without_a_body(server):
    with trio.fail_after(10):
        answer = await http_exchange(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = parse_answer(answer)
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


# -- auth -------------------------------------------------------------------------------


async def assert_refused_with_401(
    server: RunningServer, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """The handshake is answered 401 (never 101): trio-websocket raises ConnectionRejected.

    The client runs on a stream the test owns, because ``open_websocket_url`` leaves its
    socket unclosed when the server rejects the handshake (trio-websocket 0.12.2).
    """
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        with pytest.RaisesGroup(ConnectionRejected) as refused:
            async with trio.open_nursery() as nursery:
                await wrap_client_stream(
                    nursery, stream, f"127.0.0.1:{server.port}", WS_PATH + query, extra_headers=headers
                )
    rejection = refused.value.exceptions[0]
    assert rejection.status_code == 401
    assert (b"www-authenticate", b'Bearer realm="krt"') in rejection.headers


async def speak_once(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Connect, speak one short response to completion, close; the audio received."""
    async with open_websocket_url(url, extra_headers=headers) as ws:
        client = Client(ws)
        await client.send("response.create", response_id="r1", input="Hello there.")
        await client.receive_until("response.completed", "r1")
        return bytes(client.audio["r1"])


async def test_missing_key_is_refused_with_401_before_the_upgrade(keyed_server):
    with trio.fail_after(10):
        await assert_refused_with_401(keyed_server)
        assert keyed_server.state.sessions == 0


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        pytest.param("?api_key=not-the-key", None, id="query"),
        pytest.param("", [(b"authorization", b"Bearer not-the-key")], id="bearer"),
        pytest.param("", [(b"authorization", f"Basic {API_KEY}".encode())], id="not-bearer"),
        pytest.param(f"?api_key={API_KEY[:-1]}", None, id="prefix-of-the-key"),
    ],
)
async def test_wrong_key_is_refused_with_401(keyed_server, query, headers):
    with trio.fail_after(10):
        await assert_refused_with_401(keyed_server, query, headers)


async def test_right_key_in_the_query_connects_and_speaks(keyed_server):
    with trio.fail_after(10):
        audio = await speak_once(f"{keyed_server.url}?api_key={API_KEY}")
        assert len(audio) > 24000  # more than half a second of PCM16


async def test_right_key_as_bearer_token_connects_and_speaks(keyed_server):
    with trio.fail_after(10):
        audio = await speak_once(keyed_server.url, [(b"authorization", f"Bearer {API_KEY}".encode())])
        assert len(audio) > 24000


async def test_no_key_is_needed_when_none_is_set(server):
    with trio.fail_after(10):
        assert await speak_once(server.url)


async def test_the_key_never_reaches_the_log(keyed_server, caplog):
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        await speak_once(f"{keyed_server.url}?api_key={API_KEY}")
        await speak_once(keyed_server.url, [(b"authorization", f"Bearer {API_KEY}".encode())])
        await assert_refused_with_401(keyed_server, f"?api_key={API_KEY}x")
        await assert_refused_with_401(keyed_server, "", [(b"authorization", f"Bearer {API_KEY}x".encode())])
    # The test's own client logs the URL it dials; everything else is the server's.
    server_lines = [r.getMessage() for r in caplog.records if not r.getMessage().startswith("Connecting to ")]
    assert any("refused" in line for line in server_lines), "the refusals should be logged"
    assert any("session open" in line for line in server_lines)
    leaked = [line for line in server_lines if API_KEY in line]
    assert not leaked


VALID_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {VALID_KEY}\r\n"
MALFORMED_UPGRADES = [
    pytest.param(
        f"GET {WS_PATH} HTTP/1.1",
        UPGRADE.replace(f"Sec-WebSocket-Key: {VALID_KEY}\r\n", ""),
        400,
        id="no-key",
    ),
    pytest.param(f"GET {WS_PATH} HTTP/1.1", UPGRADE.replace(VALID_KEY, "c2hvcnQ="), 400, id="short-key"),
    pytest.param(
        f"GET {WS_PATH} HTTP/1.1", UPGRADE.replace("Version: 13", "Version: 8"), 426, id="version-8"
    ),
    pytest.param(
        f"GET {WS_PATH} HTTP/1.1", UPGRADE.replace("Connection: Upgrade\r\n", ""), 400, id="no-connection"
    ),
    pytest.param(f"POST {WS_PATH} HTTP/1.1", UPGRADE, 405, id="post"),
    pytest.param(f"GET {WS_PATH} HTTP/1.0", UPGRADE, 400, id="http-1.0"),
]


def live_tasks() -> int:
    """Every task in this Trio run (the server's included)."""
    count, nurseries = 0, list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        nursery = nurseries.pop()
        count += len(nursery.child_tasks)
        for task in nursery.child_tasks:
            nurseries += task.child_nurseries
    return count


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(("request_line", "headers", "status"), MALFORMED_UPGRADES)
async def test_a_malformed_upgrade_is_refused_and_its_handler_ends(server, request_line, headers, status):
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()
        before = live_tasks()
        raw = f"{request_line}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()
        answer = await http_exchange(server.port, raw)  # returns once the server has closed
        await trio.testing.wait_all_tasks_blocked()
        assert live_tasks() == before
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


async def test_memory_stays_flat_over_many_refused_upgrades(server):
    """Each refused upgrade used to leave its handler waiting forever inside the
    handshake (about 13 kB each: 3,000 of them held 38 MB)."""
    with trio.fail_after(60):
        raws = [
            f"{line}\r\nHost: x\r\n{headers}\r\n".encode()
            for line, headers, _ in (p.values for p in MALFORMED_UPGRADES)
        ]
        for raw in raws * 10:  # warm every path up first
            await http_exchange(server.port, raw)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tasks, rss = live_tasks(), resident_bytes()
        for raw in raws * 100:
            await http_exchange(server.port, raw)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert live_tasks() == tasks
        assert resident_bytes() - rss < 2_000_000  # 600 requests; the leak was ~8 MB


async def test_a_handshake_that_never_completes_is_dropped_at_its_deadline(server, monkeypatch):
    """Whatever the WebSocket library does with a handshake, it gets HANDSHAKE_TIMEOUT_S."""

    async def stuck(*_args, **_kwargs):
        await trio.sleep_forever()

    monkeypatch.setattr(listener, "HANDSHAKE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(listener.trio_websocket, "wrap_server_stream", stuck)
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()
        before = live_tasks()
        started = trio.current_time()
        answer = await http_exchange(
            server.port, f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n".encode()
        )
        assert answer == b""  # dropped, not answered
        assert 0.2 <= trio.current_time() - started < 2
        await trio.testing.wait_all_tasks_blocked()
        assert live_tasks() == before


async def test_a_request_head_that_never_ends_is_dropped(server, monkeypatch):
    monkeypatch.setattr(listener, "HEAD_TIMEOUT", 0.2)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n".encode())  # and nothing more
            assert await stream.receive_some() == b""


# -- a lingering close: a refused request's client sees its status -------------------------


def oversized_head(path: str) -> bytes:
    """A request of 10,000 header lines (about 200 kB, far over MAX_HEAD_BYTES) to ``path``,
    with the method and fields its route takes, so only the head's size is wrong."""
    method = "POST" if path == openai_api.SPEECH_PATH else "GET"
    fields = UPGRADE if path == WS_PATH else ""
    filler = b"".join(b"X-Filler-%05d: 1\r\n" % n for n in range(10_000))
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{fields}".encode() + filler + b"\r\n"


async def send_while_reading(port: int, raw: bytes, then: bytes = b"") -> tuple[bytes, str, str]:
    """Send ``raw`` in one write (then ``then`` over and over, if given, until the server
    stops taking it) while another task reads the answer.

    Returns the answer, how the sending ended ("whole", or "reset" where the server's reset
    cut it short) and how the answer ended ("eof", the server's orderly close, or "reset").
    A client like curl or http.client stops at its first failed write and never reads
    the answer, so "reset" while sending is an answer lost.
    """
    answer = bytearray()
    ends = {"sent": "whole", "answer": "eof"}
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    async def send() -> None:
        try:
            await stream.send_all(raw)
            while then:
                await stream.send_all(then)
        except trio.BrokenResourceError:
            ends["sent"] = "reset"

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        try:
            while data := await stream.receive_some(65536):
                answer += data
        except trio.BrokenResourceError:
            ends["answer"] = "reset"
    return bytes(answer), ends["sent"], ends["answer"]


@pytest.mark.parametrize("path", [*listener.ROUTES, "/no/such/route"])
async def test_an_oversized_head_gets_its_431_before_the_close(server, path):
    """The server refuses after reading MAX_HEAD_BYTES of the head; it used to close with
    the rest unread, and the kernel's reset cut the client's write short (an answer lost
    to a client that stops there, as most do)."""
    with trio.fail_after(10):
        answer, sent, ended = await send_while_reading(server.port, oversized_head(path))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert (sent, ended) == ("whole", "eof")
    _status, headers, body = parse_answer(answer)
    assert int(headers["content-length"]) == len(body)


async def test_a_body_over_the_limit_gets_its_413_before_the_close(server):
    """A declared body over the limit is refused before it is read: the client that
    sends it whole, then reads, gets its 413 and an orderly close."""
    body = b"x" * (2 * openai_api.max_body_bytes(make_config().server.openai_max_input_chars))
    head = (
        f"POST {openai_api.SPEECH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.fail_after(10):
        answer, sent, ended = await send_while_reading(server.port, head + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert (sent, ended) == ("whole", "eof")


async def test_a_body_that_never_ends_gets_its_413_and_is_cut_off(server):
    """A client that goes on sending a refused body reads its 413 and the server's
    orderly end of it, and is cut off once the linger's bound is reached."""
    head = (
        f"POST {openai_api.SPEECH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000000\r\n\r\n"
    ).encode()
    with trio.fail_after(30):  # the bounds are LINGER_MAX_BYTES and LINGER_SECONDS: far less
        answer, sent, ended = await send_while_reading(server.port, head, then=b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert (sent, ended) == ("reset", "eof")  # it never stops: the server closed on it


async def refused_door(client: trio.abc.Stream, server: trio.abc.Stream) -> http.FrontDoor:
    """A FrontDoor that answered 413 to a POST whose declared body it never read."""
    await client.send_all(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    door = http.FrontDoor(server)
    await door.read_head()
    with pytest.raises(http.RequestRefused) as refused:
        await door.read_body(1024)
    await door.respond(refused.value.status, {"error": refused.value.reason})
    return door


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    received = bytearray()
    while data := await stream.receive_some():
        received += data
    return bytes(received)


# The door's own tests run on memory streams in virtual time (``autojump_clock``): a wait
# for a deadline passes at once, and a fail_after turns a hang into a failure.


async def test_linger_ends_at_its_time_bound_when_the_peer_neither_sends_nor_closes(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        door = await refused_door(client, server)
        await door.linger()
        assert trio.current_time() == pytest.approx(http.LINGER_SECONDS)
        assert (await read_to_eof(client)).startswith(b"HTTP/1.1 413 ")  # then the half-close


async def test_linger_ends_at_its_byte_bound_when_the_peer_never_stops_sending(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            await client.send_all(b"x" * 4096)
            sent += 4096

    with trio.fail_after(60):
        door = await refused_door(client, server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await door.linger()
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 0  # the bytes ended it, long before the time bound
    assert sent >= http.LINGER_MAX_BYTES


async def test_linger_ends_when_the_peer_closes(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        door = await refused_door(client, server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(door.linger)
            assert (await read_to_eof(client)).startswith(b"HTTP/1.1 413 ")
            await client.send_all(b"the rest of the body")
            await client.send_eof()
    assert trio.current_time() == 0


async def test_linger_drains_a_stream_that_cannot_half_close(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        door = await refused_door(client, http.ReplayStream(b"", server))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(door.linger)
            await client.send_all(b"the rest of the body")
            await client.send_eof()
        assert (await client.receive_some()).startswith(b"HTTP/1.1 413 ")
    assert trio.current_time() == 0  # it read to the peer's close, not to its bound


async def test_no_linger_after_a_request_read_whole(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        await client.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        door = http.FrontDoor(server)
        await door.read_head()
        await door.respond(200, {"status": "ok"})
        await door.linger()  # the peer stays open: a linger would last its time bound
    assert trio.current_time() == 0


async def test_no_linger_when_the_door_answered_nothing(autojump_clock):
    """A WebSocket session (or a dropped handshake) owns the stream: nothing to linger on,
    even with the request's body unread."""
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        head = f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n{UPGRADE}Content-Length: 5\r\n\r\n"
        await client.send_all(head.encode())
        door = http.FrontDoor(server)
        await door.read_head()
        await door.linger()
    assert trio.current_time() == 0


async def test_the_playground_page_and_its_scripts_are_served_with_their_types(server):
    """What a browser needs to run the page offline: each file from this server, typed
    (a worklet module must be JavaScript), and a policy that keeps it to this server."""
    with trio.fail_after(10):
        status, headers, page = await http_get(server.port, "/")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in headers["content-security-policy"]
        assert b'data-key-required="false"' in page
        linked = [src.decode() for src in re.findall(rb'(?:src|href)="(/playground/[^"]+)"', page)]
        assert sorted(linked) == ["/playground/playground.css", "/playground/playground.js"]
        for path in [*linked, "/playground/pcm-player.js"]:
            status, headers, body = await http_get(server.port, path)
            assert status == 200 and body, path
            expected = "text/javascript" if path.endswith(".js") else "text/css"
            assert headers["content-type"].startswith(expected), path
        assert b"registerProcessor" in (await http_get(server.port, "/playground/pcm-player.js"))[2]
        assert (await http_get(server.port, "/playground/nothing.js"))[0] == 404
        assert (await http_get(server.port, "/", method="POST"))[0] == 405


async def test_a_keyed_servers_page_is_public_and_says_a_key_is_needed(keyed_server):
    with trio.fail_after(10):
        status, _headers, page = await http_get(keyed_server.port, "/")
        assert status == 200
        assert b'data-key-required="true"' in page
        await assert_refused_with_401(keyed_server)  # the page is public; the socket is not


async def test_the_playground_is_off_with_its_knob(nursery, tmp_path):
    server = await start_server(nursery, tmp_path, KRT_PLAYGROUND="off")
    with trio.fail_after(10):
        status, _headers, body = await http_get(server.port, "/")
        assert status == 404
        assert "/" not in json.loads(body)["routes"]
        assert (await http_get(server.port, "/playground/playground.js"))[0] == 404
