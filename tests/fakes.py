"""Test doubles: fake backends that record, hold or fail, handed to the code under test.

Tests give these to the engine or the server (``start_server(..., load=...)``) instead of
monkeypatching attributes of live objects, so what a test changes is visible in its
arguments and the production objects stay as they are.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import trio

from krt import SAMPLE_RATE
from krt.synth.fake_backend import FakeBackend, SpelledPhonemizer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    import numpy as np
    from trio.testing import MockClock


class RecordingFake(FakeBackend):
    """The fake backend, noting which segment each model call was for, in call order.

    It can also hold a segment on the model thread until the test releases it (so the
    test knows exactly which turn is in progress), or fail a segment like a broken model.
    Segments are named by their lower-cased text (the fake's phonemes are the text).
    """

    def __init__(
        self, compute_ratio: float = 0.0, *, hold: Iterable[str] = (), fail: Iterable[str] = ()
    ) -> None:
        super().__init__(compute_ratio=compute_ratio)
        self._symbols = {token: symbol for symbol, token in self.vocab.items()}
        self.calls: list[str] = []
        self.unfinished = 0
        """Segments whose audio generator has started and not yet ended or been closed."""
        self._fail = set(fail)
        self._reached = {text: trio.Event() for text in hold}
        self._release = {text: threading.Event() for text in hold}

    def synthesize(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> Iterator[np.ndarray]:
        # SpelledPhonemizer makes the tokens the segment's own (lower-cased) text.
        text = "".join(self._symbols[token] for token in tokens)
        self.calls.append(text)
        if text in self._reached:
            trio.from_thread.run_sync(self._reached[text].set)
            self._release[text].wait(timeout=10)
        if text in self._fail:
            raise RuntimeError(f"the model broke on {text!r}")
        self.unfinished += 1
        try:
            yield from super().synthesize(tokens, style, speed)
        finally:
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


class ClockedFake(FakeBackend):
    """The fake backend computing on virtual time, for an engine run inline (InlineRunner).

    Each chunk of audio is released only after advancing ``clock`` by its duration ×
    ``ratio`` with ``MockClock.jump``, where the plain fake would sleep on the real
    clock: compute times are then exact, and the Trio loop is blocked for them just as
    an inline model blocks it. ``computed`` adds up the seconds jumped so far.
    """

    def __init__(self, clock: MockClock, ratio: float) -> None:
        super().__init__(compute_ratio=0.0)
        self.clock = clock
        self.ratio = ratio
        self.computed = 0.0

    def synthesize(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> Iterator[np.ndarray]:
        for chunk in super().synthesize(tokens, style, speed):
            seconds = chunk.size / SAMPLE_RATE * self.ratio
            self.clock.jump(seconds)
            self.computed += seconds
            yield chunk
