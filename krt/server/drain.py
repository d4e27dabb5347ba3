"""A drain: finish the work already accepted that can end in time, refuse the rest at once.

On SIGTERM/SIGINT (or an operator's drain) readiness turns 503 and new responses are
refused ``busy`` with ``reconnect`` set (the message says so to people too). Every
response already accepted (``response.created`` sent) is in flight until its last event, and the engine's schedule
predicts, at the signal, when each would end (:meth:`~krt.engine.facade.Engine.forecast`):
those that end within ``KRT_DRAIN_SECONDS`` are finished; the others are refused at once
with that same reconnect error, so their clients resend them to another replica now
instead of losing them when the limit passes. A socket with nothing in flight is closed
with 1012 (service restart) at once, and every other one as soon as its last response
ends; when the limit passes whatever is left is closed the same way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from krt.errors import SpeechError
from krt.wire.protocol import DRAINING_REASON

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from krt.server.responses import Response
    from krt.server.session import Session
    from krt.server.state import ServerState

log = logging.getLogger(__name__)

DRAIN_CLOSE_CODE = 1012
"""WebSocket "service restart": the close a draining replica sends, which tells a client
to reconnect (through its load balancer, to another replica), unlike a failure's 1006
or 1011."""
DRAIN_CLOSE_REASON = "draining: reconnect"


def cannot_finish(state: ServerState) -> list[tuple[Session, Response]]:
    """The accepted responses the engine's schedule predicts will not end within
    ``KRT_DRAIN_SECONDS`` from now, each with its session."""
    engine = state.engine
    if engine is None:
        return []
    sessions = list(state.open_sessions)
    work = [session.pending_work() for session in sessions]
    horizon = state.config.server.drain_seconds
    streams = [(job, [response.plan for response in (making[1:] if job else making)]) for job, making in work]
    ends = engine.forecast(streams, horizon)
    late: list[tuple[Session, Response]] = []
    for session, (_job, making), stream_ends in zip(sessions, work, ends, strict=True):
        late += [
            (session, response) for response, end in zip(making, stream_ends, strict=True) if end > horizon
        ]
    return late


async def drain(state: ServerState, signals: AsyncIterator[int] | None = None) -> None:
    """Refuse new responses and those accepted that cannot end in time (``busy``, saying
    to reconnect), let the others finish for up to ``KRT_DRAIN_SECONDS`` (or until the
    next of ``signals``), and close each session with 1012 as soon as it has nothing in
    flight, so its client reconnects elsewhere at once; when the time is up, close
    whatever is left the same way."""
    state.in_flight.start_drain()
    state.monitor.server_changed()
    late = cannot_finish(state)
    log.info(
        "draining: finishing %d responses predicted to end within KRT_DRAIN_SECONDS=%s, refusing %d",
        state.in_flight.count - len(late),
        state.config.server.drain_seconds,
        len(late),
    )
    with trio.move_on_after(state.config.server.drain_seconds) as limit:
        async with trio.open_nursery() as waiting:
            if signals is not None:
                waiting.start_soon(_cancel_on_next_signal, signals, waiting.cancel_scope)
            for session, response in late:  # each at once: a slow reader holds up only its own
                waiting.start_soon(
                    session.refuse, response, SpeechError("busy", DRAINING_REASON, reconnect=True)
                )
            while True:
                settled = state.in_flight.settled
                await state.close_sessions(DRAIN_CLOSE_CODE, idle_only=True, reason=DRAIN_CLOSE_REASON)
                if not state.in_flight.count:
                    break
                await settled.wait()
            waiting.cancel_scope.cancel()
    if limit.cancelled_caught:
        log.warning(
            "KRT_DRAIN_SECONDS=%s passed with %d responses in flight: closing them and exiting "
            "(a model call still running is abandoned with the process)",
            state.config.server.drain_seconds,
            state.in_flight.count,
        )
    log.info("drained; closing %d sessions and exiting", state.sessions)
    await state.close_sessions(DRAIN_CLOSE_CODE, reason=DRAIN_CLOSE_REASON)


async def _cancel_on_next_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _signum in signals:
        log.warning("second signal: exiting without waiting")
        scope.cancel()
        return
