"""One response delivered, from its engine job to its last event, for either transport.

:func:`deliver` is the one loop that speaks a response: it holds the response's job,
hands each batch (and, when asked for, the word times that come before it) to a
:class:`Sink`, and ends the response as completed or failed. A sink is how a transport
writes: the WebSocket :class:`~krt.server.outbox.Outbox`, or an HTTP body (raw audio or
server-sent events, :mod:`krt.server.speech_body`). A sink encodes, writes, says what it
wrote and what the client read (:meth:`Response.sent`, :meth:`Response.read`), and
settles the response once its last word is out; the states it all moves through are
:data:`krt.server.responses.NEXT_STATES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from krt.errors import SpeechError
from krt.server.responses import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from krt.engine.facade import Engine, Job, PcmBatch, WordTime
    from krt.server.responses import Response


class Sink(Protocol):
    """Where a transport writes a response's audio and its last word."""

    async def words(self, response: Response, words: list[WordTime]) -> None:
        """Word times, before the batch holding the first audio of those words."""

    async def audio(self, response: Response, batch: PcmBatch) -> None:
        """The next PCM of the response, in order."""

    async def completed(self, response: Response) -> None:
        """All audio is given: finish it (its last event, then settle it)."""

    async def failed(self, response: Response, error: SpeechError) -> None:
        """Synthesis failed: say so, as its last word, and settle it."""


def _no_more() -> Job | None:
    return None


async def deliver(
    response: Response, engine: Engine, sink: Sink, following: Callable[[], Job | None] = _no_more
) -> None:
    """Speak ``response`` (its job admitted already) into ``sink`` until it is made,
    fails, or is cancelled (``response.scope``: the engine job is withdrawn on the way
    out, and whoever cancelled says the last word). A response that ended before its
    turn (cancelled or refused while queued) only gives its job back.

    A response spoken in parts (a long HTTP download, :mod:`krt.server.speech_parts`)
    gets each next part's job from ``following`` once the one before it is all made,
    until it returns None: one response, one body, however many jobs."""
    job = response.job
    assert job is not None, "admitted when accepted, or when the responses ahead of it are done"
    if not response.making:
        engine.withdraw(job)
        return
    with response.scope:
        try:
            response.move(State.SPEAKING)
            first: Job | None = job
            while job is not None:
                async with engine.hold(job):
                    async for batch in job:
                        if job is first:
                            response.queue_seconds = job.queue_seconds or 0.0
                        for words in job.take_words():
                            await sink.words(response, words)
                        await sink.audio(response, batch)
                job = following()
                if job is not None:
                    response.job = job  # the read credit goes to the part being spoken
        except SpeechError as error:
            response.fail(error.code)
            await sink.failed(response, error)
            return
        response.made()
        await sink.completed(response)
