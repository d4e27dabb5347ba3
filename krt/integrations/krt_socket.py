"""One krt WebSocket over aiohttp, its session agreed: ``KrtSocket``.

The LiveKit plugin (:mod:`krt.integrations.livekit`) speaks on sockets from this module,
and everything about keeping one open and readable is here:

- **Opened with the key in a header.** ``connect`` sends krt's ``API_KEY`` as a Bearer
  token, never in the URL, which proxies log.
- **Agreed before use.** ``agree_session`` sends one ``session.update`` (voice, speed,
  PCM at the asked rate, word timestamps) and waits for ``session.updated``, so a
  refused voice, speed or rate fails here, before any text is sent, as
  :class:`SessionRefused`.
- **Read all the time.** A reader task turns every frame into a typed event from the
  moment the socket opens: krt counts audio as read only when the pings it sends behind
  it are answered (aiohttp answers them while reading), and a socket krt closed while it
  waited in a pool (a drain's 1012, an idle timeout) is known to be closed before anyone
  takes it. A frame that does not decode is logged and skipped: one odd frame must not
  cost the call.
- **Kept alive.** A quiet socket sends a ``ping`` event every ``KEEPALIVE_INTERVAL_S``, so
  krt's idle timeout never closes one waiting in a pool during a call.
- **Closed at once.** ``close_soon`` starts the close without waiting: krt cancels
  whatever the socket has in flight as soon as the close frame arrives.

It imports neither LiveKit nor Trio (only aiohttp, asyncio and :mod:`krt.wire.protocol`,
whose classes build every event sent and decode every frame read): what a failure means
to a framework (retry or not, which error) is for the caller to say. It logs to the
plugin's logger, ``krt.integrations.livekit``, so one name sets the level for all the
plugin says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from krt.wire import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "KEEPALIVE_INTERVAL_S",
    "Closed",
    "KrtSocket",
    "SessionLost",
    "SessionOptions",
    "SessionRefused",
    "agree_session",
    "connect",
]

logger = logging.getLogger("krt.integrations.livekit")

KEEPALIVE_INTERVAL_S = 60.0
"""A quiet pooled socket sends a ``ping`` event this often, well inside krt's
``WS_IDLE_TIMEOUT`` (300 s by default)."""
SOCKET_CLOSE_TIMEOUT_S = 2.0
"""Longest wait for krt to answer a close frame; the response it cancels stops at once
either way."""
_KEEPALIVE_ID = "krt-keepalive"


@dataclass(frozen=True)
class SessionOptions:
    """What a socket's session is agreed with; a socket keeps the options it was agreed
    with for its whole life."""

    voice: str
    speed: float | None
    sample_rate: int


@dataclass(frozen=True)
class Closed:
    """The end of a socket's events: krt's close code (1012 when it drains), or 1006 when
    the connection dropped."""

    code: int | None


class SessionRefused(Exception):
    """krt will not agree the session as asked (a voice, speed or format it does not
    offer): asking again would be refused the same."""


class SessionLost(Exception):
    """krt closed the socket before agreeing its session."""


class KrtSocket:
    """One krt WebSocket: its session, a reader that turns every frame into a typed event
    from the moment it opens, and a keepalive."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        options: SessionOptions,
        keepalive: float,
        on_closed: Callable[[KrtSocket], None],
    ) -> None:
        self.ws = ws
        self.options = options
        self._on_closed = on_closed
        self.events: asyncio.Queue[protocol.ServerEvent | Closed] = asyncio.Queue()
        self.closed: Closed | None = None
        self._send_lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        self._closing: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._read(), name="krt-socket-reader")
        self._keepalive = (
            asyncio.create_task(self._keep_alive(keepalive), name="krt-socket-keepalive")
            if keepalive > 0
            else None
        )

    @property
    def usable(self) -> bool:
        return self.closed is None and self._closing is None and not self.ws.closed

    def forget_idle_events(self) -> None:
        """Drop what came while the socket waited in the pool: a segment leaves it only
        once krt has ended all its responses, so that is the keepalive's pongs."""
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, Closed):
                self.events.put_nowait(event)
                return

    async def send(self, event: protocol.ClientEvent) -> None:
        async with self._send_lock:
            await self.ws.send_str(protocol.encode(event))
            self._last_sent = time.monotonic()

    async def _read(self) -> None:
        code: int | None = None
        try:
            async for message in self.ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    event = _decode(message.data)
                    if event is not None:
                        self.events.put_nowait(event)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    logger.debug("krt socket failed: %s", message.data)
                    break
            code = self.ws.close_code
        except Exception as e:  # a broken connection ends the events as a close does
            logger.debug("krt socket failed: %s", e)
        finally:
            self.closed = Closed(code if code is not None else 1006)
            self.events.put_nowait(self.closed)

    async def _keep_alive(self, interval: float) -> None:
        while self.closed is None:
            # A timer, not synchronisation: the ping is due ``interval`` after the last send.
            await asyncio.sleep(max(0.0, self._last_sent + interval - time.monotonic()))
            if self.closed is None and time.monotonic() - self._last_sent >= interval:
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await self.send(protocol.Ping(_KEEPALIVE_ID))

    def close_soon(self) -> None:
        """Start closing now, without waiting: krt cancels whatever the socket has in flight
        as soon as the close frame arrives."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="krt-socket-close")

    async def aclose(self) -> None:
        self.close_soon()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        try:
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self.ws.close()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            logger.debug("closing a krt socket: %s", e)
        finally:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._on_closed(self)


async def connect(
    http: aiohttp.ClientSession,
    url: str,
    *,
    api_key: str | None,
    options: SessionOptions,
    keepalive: float,
    on_closed: Callable[[KrtSocket], None],
) -> KrtSocket:
    """A new socket to krt at ``url``, its session not agreed yet; ``on_closed`` is called
    once it has closed. aiohttp's errors (``WSServerHandshakeError`` for an upgrade krt
    refused, with its HTTP status) are the caller's to read."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ws = await http.ws_connect(
        url,
        headers=headers,
        timeout=aiohttp.ClientWSTimeout(ws_close=SOCKET_CLOSE_TIMEOUT_S),
    )
    return KrtSocket(ws, options, keepalive, on_closed)


async def agree_session(socket: KrtSocket) -> None:
    """Ask krt for the socket's session and wait until krt has agreed it.

    Raises:
        SessionRefused: krt refused the session, or would send another format or rate.
        SessionLost: krt closed the socket first.
    """
    options = socket.options
    patch = protocol.SessionPatch(
        voice=options.voice,
        speed=options.speed,
        audio=protocol.AudioSettings(format="pcm", sample_rate=options.sample_rate),
        timestamps=True,
    )
    await socket.send(protocol.SessionUpdate(patch))
    while True:
        event = await socket.events.get()
        if isinstance(event, protocol.SessionUpdated):
            audio = event.session.audio
            if (audio.format, audio.sample_rate) != ("pcm", options.sample_rate):
                raise SessionRefused(
                    f"asked krt for PCM at {options.sample_rate} Hz, it would send "
                    f"{audio.format} at {audio.sample_rate} Hz"
                )
            return
        if isinstance(event, protocol.ErrorEvent):
            raise SessionRefused(f"krt refused the session ({event.error.code}): {event.error.message}")
        if isinstance(event, Closed):
            raise SessionLost(f"krt closed the connection ({event.code}) before agreeing the session")


def _decode(message: str) -> protocol.ServerEvent | None:
    """krt's event, or None (logged) for a frame this client cannot read: one odd frame
    must not cost the call."""
    try:
        return protocol.decode_server_event(message)
    except protocol.UnknownServerEvent as e:
        logger.debug("skipping a krt event newer than this plugin: %s", e)
    except ValueError as e:
        logger.warning("ignoring a krt frame that is not an event (%s): %.200r", e, message)
    return None
