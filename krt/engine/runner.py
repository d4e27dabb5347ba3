"""Where model calls run: a dedicated worker thread.

The engine never calls ``trio.to_thread`` itself; it hands blocking model work to a
runner and, from inside that work, hands results back with ``call_soon``. The thread
runner is what ``krt serve`` uses: one worker at a time (one model, one device), so
the event loop never blocks on inference. The :class:`ModelRunner` protocol is the seam
the tests use to run the same work inline on the Trio thread, on virtual time
(``tests/inline_engine.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar, TypeVarTuple, Unpack

import trio

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
