"""The admin socket: where ``krt console`` attaches to a running server.

A Unix domain socket (``KRT_ADMIN_SOCKET``, mode 0600, so only the user who started krt
may attach) served by the server's own Trio process. Each console gets a hello with a
snapshot, then the monitor's events (see :mod:`krt.server.monitor`); it may send commands
(cancel a response, close a connection, drain, change admission knobs), each answered
by a reply. Several consoles may attach at once. A console is never waited on: one that
stops reading loses events, and one whose socket takes nothing for
``CONSOLE_SEND_TIMEOUT_S`` is dropped.

A socket file left by a crashed run is replaced; one a live server still answers on is
not (two servers would fight over it), and neither is a file that is not a socket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING

import attrs
import trio

from krt.server.monitor import MonitorLogHandler
from krt.wire import admin_schema as schema

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from krt.server.state import ServerState

log = logging.getLogger(__name__)

CONSOLE_SEND_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 5.0
"""Longest a console's cancel may wait for the session to queue its event."""
LISTEN_BACKLOG = 16


class AdminSocketError(RuntimeError):
    """The admin socket's path cannot be used (another server has it, or it is not a socket)."""


class _ConsoleTooSlow(Exception):
    pass


async def bind(path: trio.Path) -> trio.SocketListener:
    """Listen on ``path`` with mode 0600, replacing a stale socket file."""
    await path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK((await path.lstat()).st_mode):
            raise AdminSocketError(f"{path} exists and is not a socket; not replacing it")
        if await _answers(path):
            raise AdminSocketError(f"another krt is serving its admin socket at {path}")
        log.info("admin socket %s was left by a previous run; replacing it", path)
        await path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)  # no moment at which others could connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(previous_umask)
    await path.chmod(0o600)
    sock.listen(LISTEN_BACKLOG)
    return trio.SocketListener(sock)


async def _answers(path: trio.Path) -> bool:
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError:
        return False
    await stream.aclose()
    return True


async def serve_admin(
    state: ServerState, *, task_status: trio.TaskStatus[trio.Path | None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve consoles until cancelled (started with the bound path, or None when turned off);
    the socket file is removed on the way out."""
    if not state.config.server.admin_socket:
        task_status.started(None)
        return
    path = trio.Path(state.config.server.admin_socket)
    listener = await bind(path)
    inode = (await path.stat()).st_ino
    handler = MonitorLogHandler(state.monitor)
    logging.getLogger().addHandler(handler)
    log.info("admin socket at %s (krt console)", path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.monitor.run)
            task_status.started(path)
            await trio.serve_listeners(
                functools.partial(_serve_console, state), [listener], handler_nursery=nursery
            )
    finally:
        logging.getLogger().removeHandler(handler)
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            if (await path.stat()).st_ino == inode:  # still ours, not a newer server's
                await path.unlink()


async def _serve_console(state: ServerState, stream: trio.SocketStream) -> None:
    lock = trio.Lock()

    async def send(message: schema.ServerMessage) -> None:
        with trio.move_on_after(CONSOLE_SEND_TIMEOUT_S) as timeout:
            async with lock:
                await stream.send_all(schema.encode(message))
        if timeout.cancelled_caught:
            raise _ConsoleTooSlow

    log.info("console attached")
    try:
        with state.monitor.subscribe() as feed:
            async with trio.open_nursery() as console:
                console.start_soon(_obey, state, stream, send, console.cancel_scope)
                await send(state.monitor.hello())
                while True:
                    await send(await feed.next())
    except* _ConsoleTooSlow:
        log.warning("a console took nothing for %ss; dropped it", CONSOLE_SEND_TIMEOUT_S)
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except* Exception:  # whatever else goes wrong with one console ends that console only
        log.exception("console connection failed")
    finally:
        await trio.aclose_forcefully(stream)
        log.info("console detached")


async def _obey(
    state: ServerState,
    stream: trio.abc.Stream,
    send: Callable[[schema.ServerMessage], Awaitable[None]],
    console_scope: trio.CancelScope,
) -> None:
    """Carry out the console's commands in order; its hang-up ends the console."""
    async for line in _lines(stream):
        try:
            command = schema.decode_command(line)
        except schema.SchemaError as exc:
            await send(schema.Reply(-1, False, str(exc)))
            continue
        try:
            ok, message = await execute(state, command)
        except Exception as exc:  # a command that breaks must not take the console (or krt) down
            log.exception("console command %r failed", command)
            ok, message = False, f"failed: {exc}"
        await send(schema.Reply(command.request, ok, message))
    console_scope.cancel()


async def _lines(stream: trio.abc.Stream) -> AsyncIterator[bytes]:
    buffer = bytearray()
    while data := await stream.receive_some():
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
        if len(buffer) > schema.MAX_LINE_BYTES:
            return  # not a console: hang up


async def execute(state: ServerState, command: schema.Command) -> tuple[bool, str]:
    """Carry out one command: (done, what was done or why not)."""
    monitor = state.monitor
    if isinstance(command, schema.Drain):
        if state.draining:
            return True, "already draining"
        log.warning("console: drain requested")
        state.drain_requested.set()
        return True, "draining"
    if isinstance(command, schema.SetKnob):
        engine = state.engine
        if engine is None:
            return False, "the model is still loading"
        field = schema.KNOB_FIELDS[command.knob]
        old = getattr(engine.admission, field)
        try:
            admission = attrs.evolve(engine.admission, **{field: command.value})
        except ValueError as exc:
            return False, f"{command.knob} {exc}"
        engine.set_admission(admission)
        log.info("console: %s %s -> %s", command.knob, old, command.value)
        monitor.server_changed()
        return True, f"{command.knob} is now {command.value} (was {old})"
    session = monitor.session(command.connection)
    if session is None:
        return False, f"no connection {command.connection}"
    if isinstance(command, schema.CloseConnection):
        log.info("console: closing %s (%s)", command.connection, session.peer)
        await session.close(1000)
        return True, f"closed {command.connection}"
    # Shielded: once the cancel has begun, its response.canceled must be queued for the
    # client even if this console hangs up meanwhile (bounded: the session's outbox drains).
    with trio.CancelScope(shield=True), trio.move_on_after(COMMAND_TIMEOUT_S) as timeout:
        try:
            canceled = await session.cancel_response(command.response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False, f"{command.connection} is closing"
    if timeout.cancelled_caught:
        return False, f"{command.connection} did not take the cancel within {COMMAND_TIMEOUT_S:g} s"
    if canceled:
        log.info("console: canceled %s on %s", command.response, command.connection)
        return True, f"canceled {command.response}"
    return False, f"{command.response} on {command.connection} is not active"
