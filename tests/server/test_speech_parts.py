"""A long HTTP input spoken part by part into one body, on virtual time (the engine
inline, the fake model's compute jumped on ``MockClock``): what the engine holds while
nobody reads, and what is left once the client goes."""

from __future__ import annotations

import attrs
import pytest
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.scheduler import JOB_BUFFER_SECONDS
from krt.server.delivery import deliver
from krt.server.responses import Response, State
from krt.server.speech_parts import PART_CHARS, SpokenParts
from tests.fakes import ClockedFake
from tests.inline_engine import engine_config, start_engine

pytestmark = pytest.mark.trio

CHAPTER = " ".join(f"Sentence number {n} of a very long chapter ends here." for n in range(1, 2000))
"""About 110,000 characters: two hours of speech."""


@attrs.define
class StallingSink:
    """A body whose client takes ``takes`` batches, then stops reading for good."""

    takes: int
    taken: list[bytes] = attrs.field(factory=list)
    stalled: trio.Event = attrs.field(factory=trio.Event)
    completed_at: float | None = None

    async def words(self, response: Response, words: list[object]) -> None:
        """HTTP asks for no word times."""

    async def audio(self, response: Response, batch: tuple[bytes, ...]) -> None:
        if len(self.taken) == self.takes:
            self.stalled.set()
            await trio.sleep_forever()
        self.taken.append(b"".join(batch))
        response.read(len(self.taken[-1]))

    async def completed(self, response: Response) -> None:
        self.completed_at = trio.current_time()

    async def failed(self, response: Response, error: object) -> None:
        raise AssertionError(f"the download failed: {error}")


async def test_a_download_nobody_reads_holds_one_part_and_stops_at_once_when_canceled(
    nursery, autojump_clock
):
    config = engine_config()
    backend = ClockedFake(autojump_clock, 0.1)
    engine = await start_engine(nursery, config, backend)
    spoken = SpokenParts(engine, CHAPTER, "female", 1.0, "speech_1", config.segments)
    plan, job = spoken.first(client="somebody")
    assert spoken.download and job.background  # a chapter yields to real-time streams from the start
    response = Response("speech_1", plan, trio.current_time(), CHAPTER, transport="http", job=job)
    sink = StallingSink(takes=3)
    nursery.start_soon(deliver, response, engine, sink, spoken.following)
    await sink.stalled.wait()
    await trio.sleep(600)  # virtual: the engine could have made the whole chapter meanwhile
    taken = sum(map(len, sink.taken)) / PCM_BYTES_PER_SECOND
    largest_window = 1.5 * config.scheduler.quantum_bytes / PCM_BYTES_PER_SECOND
    assert backend.made <= taken + JOB_BUFFER_SECONDS + 2 * largest_window
    assert spoken.spoken <= 2  # parts planned: the one being read, maybe the next
    turns = len(backend.calls)
    response.cancel()
    await trio.sleep(600)
    assert len(backend.calls) == turns  # not one more model call
    assert response.state is State.CANCELED and response.job is not None and response.job.withdrawn
    statistics = engine.statistics()
    assert statistics.active == statistics.background == 0


async def test_a_download_read_to_its_end_is_every_part_in_order(nursery, autojump_clock):
    """The chapter's first 30 parts, read as fast as they come: each part's audio follows
    the last, the model made each sentence once, and the body ends when they are done."""
    text = ". ".join(CHAPTER.split(". ")[:150]) + "."
    config = engine_config()
    backend = ClockedFake(autojump_clock, 0.1)
    engine = await start_engine(nursery, config, backend)
    spoken = SpokenParts(engine, text, "female", 1.0, "speech_2", config.segments)
    plan, job = spoken.first(client="somebody")
    response = Response("speech_2", plan, trio.current_time(), text, transport="http", job=job)
    sink = StallingSink(takes=10**9)
    await deliver(response, engine, sink, spoken.following)
    assert sink.completed_at is not None and response.state is State.MADE
    assert spoken.spoken >= len(text) // PART_CHARS
    made = [call.texts[0] for call in backend.calls]
    sentences = list(dict.fromkeys(made))  # each segment's windows, in the order first decoded
    assert sentences == [f"sentence number {n} of a very long chapter ends here." for n in range(1, 151)]
    assert engine.statistics().background == 0


async def test_a_reply_in_parts_is_spoken_in_the_foreground(nursery, autojump_clock):
    """Up to OpenAI's 4096 characters a request is a reply, perhaps played as it comes:
    its parts are fed like any stream's, never left to the idle turns."""
    config = engine_config()
    engine = await start_engine(nursery, config, ClockedFake(autojump_clock, 0.1))
    reply = CHAPTER[:2000]
    spoken = SpokenParts(engine, reply, "female", 1.0, "speech_3", config.segments)
    _plan, first = spoken.first(client="somebody")
    following = spoken.following()
    assert not spoken.download and following is not None
    assert not first.background and not following.background
    for job in (first, following):
        engine.withdraw(job)
