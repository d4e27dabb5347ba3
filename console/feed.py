"""The console's end of the admin socket: attach, read the feed, send commands, and
reattach by itself (with backoff) when the server goes away, saying plainly why it
cannot reach the socket.

asyncio, not trio: the console is a Textual app and shares only the admin schema with
the server.
"""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING, Protocol

from krt.wire import admin_schema as schema

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FIRST_RETRY_S = 0.5
LAST_RETRY_S = 5.0


class FeedListener(Protocol):
    def feed_message(self, message: schema.ServerMessage) -> None: ...

    def feed_status(self, attached: bool, status: str) -> None: ...


def why_unreachable(path: Path, exc: OSError) -> str:
    """What an operator needs to know when the socket cannot be reached."""
    if isinstance(exc, FileNotFoundError):
        return f"no admin socket at {path}: is `krt serve` running from this directory? (--socket PATH for another)"
    if exc.errno == errno.ENOTSOCK or (path.exists() and not path.is_socket()):
        return f"{path} is not a socket: is --socket (or KRT_ADMIN_SOCKET) right?"
    if isinstance(exc, ConnectionRefusedError):
        return f"{path} exists but nobody answers: the server that made it has stopped"
    if isinstance(exc, PermissionError):
        return f"permission denied on {path}: it is 0600, attach as the user who started krt"
    return f"cannot reach {path}: {exc.strerror or exc}"


class Feed:
    """One admin connection at a time, reopened until ``stop``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._requests = 0

    async def run(self, listener: FeedListener) -> None:
        """Attach and read until cancelled; each failure is reported, then retried later."""
        delay = FIRST_RETRY_S
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.path), limit=schema.MAX_LINE_BYTES
                )
            except OSError as exc:
                listener.feed_status(False, why_unreachable(self.path, exc))
            else:
                delay = FIRST_RETRY_S
                self._writer = writer
                listener.feed_status(True, f"attached to {self.path}")
                try:
                    reason = await self._read(reader, listener)
                finally:
                    self._writer = None
                    writer.close()
                listener.feed_status(False, f"{reason}; reattaching")
            await asyncio.sleep(delay)
            delay = min(LAST_RETRY_S, delay * 2)

    async def _read(self, reader: asyncio.StreamReader, listener: FeedListener) -> str:
        try:
            while line := await reader.readline():
                try:
                    message = schema.decode_server_message(line)
                except schema.SchemaError as exc:
                    return f"the server sent something this console cannot read ({exc})"
                listener.feed_message(message)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            return f"the connection broke ({exc})"
        return "the server closed the admin connection"

    async def send(self, command_for: Callable[[int], schema.Command]) -> int | None:
        """Send the command ``command_for(request number)``; the number, or None when not
        attached. The reply arrives in the feed, with that number."""
        if self._writer is None:
            return None
        self._requests += 1
        try:
            self._writer.write(schema.encode(command_for(self._requests)))
            await self._writer.drain()
        except OSError:  # the server went away under us; the reader reports it and reattaches
            return None
        return self._requests
