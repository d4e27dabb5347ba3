"""Where model calls run: a dedicated worker thread in production, inline in tests.

The engine never calls ``trio.to_thread`` itself; it hands blocking model work to a
runner and, from inside that work, hands results back with ``call_soon``. The thread
runner is what ``krt serve`` uses: one worker at a time (one model, one device), so
the event loop never blocks on inference. The inline runner runs the same work on the Trio thread, which lets the whole
engine and session run under ``trio.testing.MockClock(autojump_threshold=0)``:
autojump would take a busy worker thread for an idle program and jump the clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar, TypeVarTuple, Unpack

import trio
import trio.testing

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ModelRunner(Protocol):
    async def run(self, work: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run blocking model work; a cancelled caller stops waiting (the work may run on)."""
        ...

    def call_soon(self, callback: Callable[[Unpack[Ts]], object], *args: *Ts) -> None:
        """From inside ``run``'s work: run ``callback`` on the Trio thread, now."""
        ...


class ThreadRunner:
    """One model thread: ``trio.to_thread`` behind a limiter of one.

    A call is abandoned when its caller is cancelled, which only the process ending does
    (the engine loop outlives every stream): a model call stuck on one input must not keep
    a drained server alive past ``KRT_DRAIN_SECONDS``. The thread is a daemon and dies with
    the process. Abandoning never lets two calls overlap: the limiter's token is only
    released when the abandoned call actually returns.
    """

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, work: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(work, *args, limiter=self._limiter, abandon_on_cancel=True)

    def call_soon(self, callback: Callable[[Unpack[Ts]], object], *args: *Ts) -> None:
        trio.from_thread.run_sync(callback, *args)


class InlineRunner:
    """Model work on the Trio thread itself, for tests on virtual time with a fast backend.

    The work blocks the event loop while it runs, which is what makes the order of
    events exact. Before it, every other task runs until it blocks, as it would while a
    real model thread computes: a reader takes the audio of the last turn when it was
    made, not after the next turn.
    """

    async def run(self, work: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        await trio.testing.wait_all_tasks_blocked()
        return work(*args)

    def call_soon(self, callback: Callable[[Unpack[Ts]], object], *args: *Ts) -> None:
        callback(*args)
