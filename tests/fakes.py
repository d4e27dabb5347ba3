"""Test doubles: fake backends that record, hold or fail, handed to the code under test.

Tests give these to the engine or the server (``start_server(..., load=...)``) instead of
monkeypatching attributes of live objects, so what a test changes is visible in its
arguments and the production objects stay as they are.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed

from krt import PCM_BYTES_PER_SECOND, SAMPLE_RATE
from krt.server.listener import serve_websocket
from krt.server.session import Session
from krt.synth.fake_backend import FakeBackend, SpelledPhonemizer
from krt.synth.windows import SAMPLES_PER_FRAME
from krt.wire.protocol import WS_PATH
from tests.server_harness import Client

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy as np
    from trio.testing import MockClock
    from trio_websocket import WebSocketConnection

    from krt.engine.facade import Job, PcmBatch
    from krt.server.state import ServerState
    from krt.synth.windows import PreparedSegment, WindowRequest


async def read_all(job: Job) -> list[PcmBatch]:
    """Every batch of ``job``, as a reader that keeps up takes them: each is marked read
    (:meth:`~krt.engine.scheduler.Job.mark_read`) the moment it arrives."""
    batches = []
    async for batch in job:
        job.mark_read(sum(map(len, batch)) / PCM_BYTES_PER_SECOND)
        batches.append(batch)
    return batches


class RecordingFake(FakeBackend):
    """The fake backend, noting which segment each model call was for, in call order.

    It can also hold a segment on the model thread until the test releases it (so the
    test knows exactly which turn is in progress), or fail a segment like a broken model.
    Segments are named by their lower-cased text (the fake's phonemes are the text); a
    segment's model call is its ``prepare``, the first step of its first window.
    """

    def __init__(
        self, compute_ratio: float = 0.0, *, hold: Iterable[str] = (), fail: Iterable[str] = ()
    ) -> None:
        super().__init__(compute_ratio=compute_ratio)
        self._symbols = {token: symbol for symbol, token in self.vocab.items()}
        self.calls: list[str] = []
        self.unfinished = 0
        """Prepared segments the engine still holds: a segment is let go when its last
        window is decoded or its response is withdrawn (the pipeline closes it)."""
        self._fail = set(fail)
        self._reached = {text: trio.Event() for text in hold}
        self._release = {text: threading.Event() for text in hold}

    def prepare(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> PreparedSegment:
        # SpelledPhonemizer makes the tokens the segment's own (lower-cased) text.
        text = "".join(self._symbols[token] for token in tokens)
        self.calls.append(text)
        if text in self._reached:
            trio.from_thread.run_sync(self._reached[text].set)
            self._release[text].wait(timeout=10)
        if text in self._fail:
            raise RuntimeError(f"the model broke on {text!r}")
        segment = super().prepare(tokens, style, speed)
        self.unfinished += 1
        weakref.finalize(segment.decoder_inputs, self._let_go)  # shared by its heard-in-part copies
        return segment

    def _let_go(self) -> None:
        self.unfinished -= 1

    async def reached(self, text: str) -> None:
        """Return once the model thread is holding at the start of this segment."""
        await self._reached[text].wait()

    def release(self) -> None:
        for event in self._release.values():
            event.set()

    def started(self, word: str) -> list[str]:
        """The segments of one job (by its word) that the model has started, in order."""
        return [text for text in self.calls if text.split()[0] == word]


class CrashingPhonemizer(SpelledPhonemizer):
    """A G2P with a bug: any text containing ``trigger`` raises, as misaki once did."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger

    def phonemize(self, text: str) -> str:
        if self.trigger in text.lower():
            raise IndexError("list index out of range")
        return super().phonemize(text)


class CrashingG2PFake(FakeBackend):
    """The fake backend with a :class:`CrashingPhonemizer`."""

    def __init__(self, trigger: str) -> None:
        super().__init__()
        self.trigger = trigger

    def make_phonemizer(self) -> CrashingPhonemizer:
        return CrashingPhonemizer(self.trigger)


@attrs.frozen
class ModelCall:
    """One model call of a fake: when it began, and the segment (its text) of each window in it."""

    at: float
    texts: list[str]

    @property
    def owners(self) -> list[str]:
        """The first word of each window's segment (a job's own word in these tests)."""
        return [text.split()[0] for text in self.texts]


class ClockedFake(FakeBackend):
    """The fake backend computing on virtual time, for an engine run inline (InlineRunner).

    Each model call advances ``clock`` by what it costs (``FakeBackend.call_seconds``: the
    duration of the frames it decodes, context included, × ``ratio``, plus
    ``launch_seconds`` per call) with ``MockClock.jump``, where the plain fake would sleep
    on the real clock: compute times are then exact, and the Trio loop is blocked for them
    just as an inline model blocks it. The front end (``prepare``) is free. ``computed``
    adds up the seconds so far, ``made`` the seconds of audio decoded (context left out),
    ``windows`` notes each window's segment (its lower-cased text) and its share of its
    call's seconds, and ``calls`` each model call (when, and whose windows). With no clock nothing
    is jumped: it only tallies what a rendering costs on this model. With
    ``batch_windows`` above 1 and a launch cost it costs like a GPU.
    """

    def __init__(
        self, clock: MockClock | None, ratio: float, *, batch_windows: int = 1, launch_seconds: float = 0.0
    ) -> None:
        super().__init__(compute_ratio=ratio, batch_windows=batch_windows, launch_seconds=launch_seconds)
        self.clock = clock
        self.computed = 0.0
        self.made = 0.0
        self.windows: list[tuple[str, float]] = []
        self.calls: list[ModelCall] = []
        self._symbols = {token: symbol for symbol, token in self.vocab.items()}
        self._texts: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

    def prepare(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> PreparedSegment:
        segment = super().prepare(tokens, style, speed)
        self._texts[segment.decoder_inputs] = "".join(self._symbols[token] for token in tokens)
        return segment

    @property
    def ratio(self) -> float:
        """Seconds of compute per second of audio decoded (a test may change it midway)."""
        return self.compute_ratio

    @ratio.setter
    def ratio(self, ratio: float) -> None:
        self.compute_ratio = ratio

    def compute(self, seconds: float, windows: Sequence[WindowRequest]) -> None:
        at = self.clock.current_time() if self.clock is not None else 0.0
        self.calls.append(ModelCall(at, [self._texts[window.segment.decoder_inputs] for window in windows]))
        if self.clock is not None:
            self.clock.jump(seconds)
        self.computed += seconds
        for window in windows:
            self.made += (window.stop - window.start) * SAMPLES_PER_FRAME / SAMPLE_RATE
            own = self.launch_seconds / len(windows) + self.call_seconds([window]) - self.launch_seconds
            self.windows.append((self._texts[window.segment.decoder_inputs], own))

    def computed_for(self, word: str) -> float:
        """Seconds computed for the segments that start with ``word`` (one job's, when
        each job's segments start with a word of its own, as ``sentences`` makes them)."""
        return sum(seconds for text, seconds in self.windows if text.split()[0] == word)


@attrs.define(eq=False)
class ServerSide:
    """The server end of a memory connection: its session, and when it ended."""

    session: Session | None = None
    ended: trio.Event = attrs.field(factory=trio.Event)
    """Set once ``serve_websocket`` has returned, for whatever reason."""
    ended_at: float | None = None

    async def serve(
        self, stream: trio.abc.Stream, state: ServerState, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """``serve_websocket`` on ``stream``, closing it afterwards as the listener does;
        started once the task is running (the handshake needs the client end too)."""
        task_status.started()
        try:
            async with trio.open_nursery() as connection:
                self.session = await connection.start(serve_websocket, stream, state, "memory")
        finally:
            await trio.aclose_forcefully(stream)
            self.ended_at = trio.current_time()
            self.ended.set()


class MemoryClient(Client):
    """A krt session served over an in-memory stream, and the real trio-websocket client
    at its other end: the listener's own ``serve_websocket`` from the upgrade to the end
    of the session, with no socket, so the whole session can run on virtual time.

    Every event read is kept with the virtual time it arrived at.
    """

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream, server: ServerSide) -> None:
        super().__init__(ws)
        self._stream = stream
        self.server = server
        self.arrivals: list[float] = []
        self.closed_at: float | None = None
        """When ``receive_until_closed`` saw the connection closed."""

    @classmethod
    async def connect(  # type: ignore[override]
        cls, nursery: trio.Nursery, state: ServerState, *, lockstep: bool = False
    ) -> MemoryClient:
        """Open a session on ``state``'s engine; ``lockstep`` gives a stream with no buffer
        at all, so the server's sends block as soon as this client stops reading."""
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        server_stream, client_stream = pair()
        server = ServerSide()
        await nursery.start(server.serve, server_stream, state)
        ws = await trio_websocket.wrap_client_stream(nursery, client_stream, "krt.test", WS_PATH)
        return cls(ws, client_stream, server)

    @property
    def session(self) -> Session | None:
        return self.server.session

    @property
    def ended(self) -> trio.Event:
        return self.server.ended

    @property
    def ended_at(self) -> float | None:
        return self.server.ended_at

    async def send_frame(self, frame: str | bytes) -> None:
        await self.ws.send_message(frame)

    async def receive(self) -> dict[str, Any]:
        event = await super().receive()
        self.arrivals.append(trio.current_time())
        return event

    async def next_response(self) -> tuple[dict[str, Any], float]:
        """The next event and when it arrived; when it creates a response, every event
        through that response's completion is read too (and kept in ``events``/``audio``)."""
        event = await self.receive()
        arrived = self.arrivals[-1]
        if event["type"] == "response.created":
            await self.receive_until("response.completed", event["response"])
        return event, arrived

    async def receive_until_closed(self) -> int | None:
        """Read every event until the server closes the connection; its close code."""
        try:
            while True:
                await self.receive()
        except ConnectionClosed as closed:
            self.closed_at = trio.current_time()
            return closed.reason.code if closed.reason is not None else None

    async def expect_nothing_before(self, deadline: float) -> None:
        """Fail if any event arrives before the virtual time ``deadline``."""
        with trio.move_on_at(deadline):
            event = await self.receive()
            raise AssertionError(
                f"expected nothing before t={deadline}, got {event} at {trio.current_time()}"
            )

    def event_types(self, response: str) -> list[str]:
        """The types of the events about ``response``, in the order they arrived."""
        return [event["type"] for event in self.events if event.get("response") == response]

    async def abort(self) -> None:
        """Vanish without a close handshake, like a client whose network dropped."""
        await trio.aclose_forcefully(self._stream)
