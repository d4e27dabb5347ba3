"""Text → validated plan → PCM, one segment at a time, on the model thread.

Planning is cheap and happens before any model work, so a request that is too long, or
names a voice or speed we cannot use, is refused at once with its protocol code.
Phonemizing is deferred to the segment being rendered: the first segment's audio does
not wait for the G2P of the whole paragraph. A segment whose phonemes exceed the
model's context is halved at its most natural cut and rendered as several.

:class:`Rendering` is the one loop from a plan to the PCM16 chunks krt streams: ``krt
say``, the warm-up, the benches and the engine's turns all iterate one, so edge shaping,
limiting and cutting into ``STREAM_CHUNK_SECONDS`` chunks happen in one place, on the
thread that makes the audio.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING

import attrs

from krt import SAMPLE_RATE
from krt.audio import FloatAudio, PcmChunker, chunk_samples_for, shape_segment, trim_silence
from krt.engine.segmenter import Segmenter, ends_sentence, split_in_two
from krt.engine.timestamps import WordClock
from krt.errors import SpeechError
from krt.g2p import PhonemeWord, Phonemizer, joined_phonemes, tokenize
from krt.normalize import Normalized, normalize
from krt.synth.backend import MAX_TOKENS, Backend
from krt.synth.windows import (
    CONTEXT_FRAMES,
    CUT_SLACK,
    SAMPLES_PER_FRAME,
    PreparedSegment,
    WindowJoiner,
    context_span,
    cut_window,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from krt.config import Config
    from krt.voices import VoiceCatalog

log = logging.getLogger(__name__)

MIN_SPEED = 0.5
MAX_SPEED = 2.0
CLAUSE_PAUSE_MS = 120
"""Silence after a piece cut mid-sentence (a long first sentence, a segment over the
model's context): about a comma's pause, so the cut does not sound like a full stop."""
END_PAUSE_MS = 40
"""Silence after the last sound of a response: the caller's turn may start right away."""
LEAD_FRAMES = 3
"""Frames decoded before a segment's first sound when its lead is trimmed: 75 ms, room for
``LEAD_PAD_SAMPLES`` and the onset that rises before the first token's frames."""
TAIL_FRAMES = 2
"""Frames decoded after a segment's last token when its tail is trimmed: the decay."""


MIN_WINDOW_FRAMES = CONTEXT_FRAMES
"""The smallest window a cap may ask for, however little time a stream has left. A window
costs its frames plus ``2 * CONTEXT_FRAMES``: at ~8 ms per frame (2-core CPU) a window of
16 frames still makes a little more audio (0.4 s) than it costs (0.38 s), so a stream
short of time catches up; a smaller one would fall further behind with every window."""


ALONE_WINDOW_FACTOR = 1.5
"""How much larger than the largest window (``SCHED_QUANTUM_BYTES``) a window may be while
its stream is alone on the model. With ``cut_window``'s rule against slivers, a segment's
rest of up to 2.25× the largest window then comes in one window. Bounded, because a
newcomer arriving during the window waits for it: at 1.5× (4.5 s of audio by default) a
CPU at 3× realtime keeps that wait near 1.5 s."""


class WindowSizes:
    """How many frames each decode window of one response asks for.

    A small first window (``PRIORITY_QUANTUM_BYTES``) so the first audio comes soon, then
    each twice the last, up to ``SCHED_QUANTUM_BYTES``: larger windows amortise the
    ``CONTEXT_FRAMES`` decoded on each side, and the largest stays short enough that a
    newcomer's first window waits for at most one of them. The scheduler may cap the next
    window (``limit_compute``) to what the stream's player has buffered, so a window is
    never so long that the player runs dry while it is computed.
    """

    def __init__(self, first_frames: int, max_frames: int) -> None:
        self._next = max(1, first_frames)
        self._max = max(self._next, max_frames)
        self._limit: int | None = None
        self._alone = False
        self.frames_decoded = 0
        """Frames decoded so far, context included: what the compute is measured against."""
        self._left_in_segment = 0

    @classmethod
    def from_bytes(cls, first_bytes: int, max_bytes: int) -> WindowSizes:
        per_frame = SAMPLES_PER_FRAME * 2
        return cls(round(first_bytes / per_frame), round(max_bytes / per_frame))

    def limit_compute(self, seconds: float | None, seconds_per_frame: float) -> None:
        """Cap the next window so that decoding it, context and all, takes about ``seconds``
        (None: no cap beyond the schedule)."""
        if seconds is None or seconds_per_frame <= 0:
            self._limit = None
        else:
            self._limit = max(MIN_WINDOW_FRAMES, int(seconds / seconds_per_frame) - 2 * CONTEXT_FRAMES)

    def serve_alone(self, alone: bool) -> None:
        """Whether the next window may be ``ALONE_WINDOW_FACTOR`` times the largest: no other
        stream waits for the model, so a longer window delays no one, and every seam it
        saves is ``2 * CONTEXT_FRAMES`` frames not decoded. A response's first window
        stays small whatever this says (its first audio waits for all of it)."""
        self._alone = alone

    def next_size(self) -> int:
        """The next window's frames: the schedule's, or the cap when lower, but never under
        half the schedule, so a run of caps cannot shrink the windows towards their
        context-heavy minimum (where the engine falls behind on every stream at once)."""
        size = self.peek()
        self._next = min(self._max, size * 2)
        return size

    def peek(self) -> int:
        """What ``next_size`` would return, without taking it."""
        size = self._next
        if self._alone and self.frames_decoded > 0:
            size = int(self._max * ALONE_WINDOW_FACTOR)
        if self._limit is not None and self._limit < size:
            size = max(self._limit, self._next // 2)
        return size

    def at_most(self) -> int | None:
        """The most frames the next window may have (None: no bound but its size): the
        cap, where the player cannot wait for more."""
        return None if self._limit is None else max(self._limit, self.peek())

    def smallest_cost_frames(self) -> int:
        """Frames the smallest window a cap may ask for decodes, context included."""
        return MIN_WINDOW_FRAMES + 2 * CONTEXT_FRAMES

    def expected_cost_frames(self) -> int:
        """Frames the next window will decode, context included (at most; a segment's
        edges have less context): no more than what is left of the segment in progress."""
        frames = int(self.peek() * (1 + CUT_SLACK))
        if self._left_in_segment:
            frames = min(frames, self._left_in_segment)
        return frames + 2 * CONTEXT_FRAMES

    def count(self, start: int, stop: int, segment: PreparedSegment) -> None:
        """Note a window [start, stop) of ``segment`` as decoded."""
        lo, hi = context_span(start, stop, segment)
        self.frames_decoded += hi - lo
        self._left_in_segment = segment.heard_span[1] - stop


@attrs.frozen
class SpeechPlan:
    """What will be spoken: resolved voice and speed, and the text of each segment."""

    voice: str
    speed: float
    segments: tuple[str, ...]
    source: Normalized | None = None
    """The client's text and how it became the segments' text (for word timestamps)."""
    timestamps: bool = False
    """Whether its rendering times the client's words."""


PcmBatch = tuple[bytes, ...]
"""Consecutive PCM16 chunks of ``STREAM_CHUNK_SECONDS`` (the last of a plan may be
shorter), handed over together: what one backend chunk of audio became."""


@attrs.frozen
class TokenizedSegment:
    text: str
    phonemes: str
    tokens: tuple[int, ...]
    words: tuple[PhonemeWord, ...] = ()


def check_speed(speed: float) -> float:
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not math.isfinite(speed):
        raise SpeechError("invalid_speed", f"speed must be a number between {MIN_SPEED} and {MAX_SPEED}")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise SpeechError("invalid_speed", f"speed {speed} is outside {MIN_SPEED}–{MAX_SPEED}")
    return float(speed)


class SpeechPipeline:
    """The engine without scheduling: what ``krt say``, the bench and the server share."""

    def __init__(self, backend: Backend, config: Config, phonemizer: Phonemizer | None = None) -> None:
        self.backend = backend
        self.config = config
        self.phonemizer = phonemizer if phonemizer is not None else backend.make_phonemizer()
        self.segmenter = Segmenter(config.segments)
        self.chunk_samples = chunk_samples_for(config.stream.chunk_seconds)

    @property
    def voices(self) -> VoiceCatalog:
        return self.backend.voices

    def resolve_speed(self, requested: float | None) -> float:
        """The speed a request gets: its own, checked, else ``KOKORO_SPEED``."""
        return check_speed(self.config.voices.speed if requested is None else requested)

    def plan(
        self, text: str, voice: str | None = None, speed: float | None = None, *, timestamps: bool = False
    ) -> SpeechPlan:
        """Validate a request and cut its text; raises SpeechError with the protocol code."""
        resolved_voice = self.backend.voices.resolve(voice)
        resolved_speed = self.resolve_speed(speed)
        normalized = normalize(text)  # the limits apply to what will be spoken
        segments = tuple(self.segmenter.split(normalized.text, resolved_speed))
        return SpeechPlan(resolved_voice, resolved_speed, segments, normalized, timestamps)

    def tokenize_segment(self, text: str) -> list[TokenizedSegment]:
        """Phonemes of one segment, split further until every piece fits the context."""
        words = self.phonemizer.phonemize_words(text)
        phonemes = joined_phonemes(words)
        tokens = tokenize(phonemes, self.backend.vocab)
        if len(tokens) <= MAX_TOKENS:
            return [TokenizedSegment(text, phonemes, tuple(tokens), tuple(words))] if tokens else []
        head, tail = split_in_two(text)
        log.debug("segment of %d tokens split in two", len(tokens))
        return [*self.tokenize_segment(head), *self.tokenize_segment(tail)]

    def render_segment(
        self,
        plan: SpeechPlan,
        text: str,
        windows: WindowSizes,
        *,
        first: bool = True,
        last: bool = True,
        budget: TokenBudget | None = None,
        clock: WordClock | None = None,
    ) -> Generator[FloatAudio, None, None]:
        """Shaped float audio of one planned segment, a decoder window per step.

        The front end runs first (it is cheap); its durations say where the silence
        before the first sound and after the last is, and with ``TRIM_SILENCE`` those
        frames are never decoded: the response starts within ``LEAD_PAD_SAMPLES`` of its
        first sound, sentences are separated by ``SENTENCE_PAUSE_MS`` and the response
        ends ``END_PAUSE_MS`` after its last sound. Each step decodes the next window
        (``windows`` says how big) and yields what of it is final.

        Any failure on the way (G2P, voice styling, the model) fails this response as
        ``synthesis_failed``; it must never take the engine loop with it. A response whose
        tokens overrun ``budget`` ends as ``too_long`` before the model sees the piece
        that overran it. With a ``clock``, each piece's words are timed just before its
        first audio leaves.
        """
        try:
            pieces = self.tokenize_segment(text)
            for index, piece in enumerate(pieces):
                if budget is not None:
                    budget.spend(len(piece.tokens))
                style = self.backend.voices.style(plan.voice, len(piece.tokens))
                prepared = self.backend.prepare(piece.tokens, style, plan.speed)
                ends = last and index == len(pieces) - 1
                trim = self.config.segments.trim_silence
                pause = self._pause_samples(piece.text, ends, plan.speed) if trim else None
                lead = trim and (self.config.segments.sentence_pause_ms is not None or (first and index == 0))
                start, end = self._frames_to_decode(prepared, lead=lead, tail=pause is not None)
                prepared = prepared.hearing_only(start, end)
                audio = self._decode(prepared, windows)
                time_words = (
                    functools.partial(clock.piece, piece.words, prepared.durations, prepared.loudness, start)
                    if clock is not None
                    else _ignore
                )
                audio = trim_silence(audio, lead=lead, tail_samples=pause, on_first_sound=time_words)
                yield from shape_segment(audio)
        except SpeechError:
            raise
        except Exception as exc:
            log.exception("synthesis failed on %r", text[:80])
            raise SpeechError("synthesis_failed", f"the model failed on this segment: {exc}") from exc

    @staticmethod
    def _frames_to_decode(prepared: PreparedSegment, *, lead: bool, tail: bool) -> tuple[int, int]:
        """[start, end) of ``prepared``'s frames worth decoding: the silent padding frames
        at either end are skipped where they will be trimmed anyway."""
        start = max(0, prepared.lead_frames - LEAD_FRAMES) if lead else 0
        end = prepared.frames - max(0, prepared.tail_frames - TAIL_FRAMES) if tail else prepared.frames
        return start, max(end, start + 1)

    def _decode(self, prepared: PreparedSegment, windows: WindowSizes) -> Iterator[FloatAudio]:
        """The joined audio of the frames of ``prepared`` that will be heard, a window at a time."""
        joiner = WindowJoiner()
        start, end = prepared.heard_span
        while start < end:
            first = windows.frames_decoded == 0
            at_most = windows.at_most()
            stop = cut_window(prepared, start, windows.next_size(), end, at_least=first, at_most=at_most)
            audio = self.backend.decode(prepared, start, stop)
            windows.count(start, stop, prepared)
            yield joiner.join(audio, last=stop == end)
            start = stop

    def _pause_samples(self, text: str, final: bool, speed: float) -> int | None:
        """The silence after a piece, in samples (None: the model's own); faster speech
        pauses for less, as people do."""
        pause_ms = self.config.segments.sentence_pause_ms
        if final:
            pause_ms = END_PAUSE_MS
        elif pause_ms is None:
            return None
        elif not ends_sentence(text):
            pause_ms = min(CLAUSE_PAUSE_MS, pause_ms)
        return round(pause_ms * SAMPLE_RATE / 1000 / speed)

    def rendering(self, plan: SpeechPlan) -> Rendering:
        return Rendering(self, plan)

    def speak(self, text: str, voice: str | None = None, speed: float | None = None) -> Iterator[bytes]:
        """PCM16 chunks of ``STREAM_CHUNK_SECONDS`` for a whole utterance (blocking)."""
        for batch in self.rendering(self.plan(text, voice, speed)):
            yield from batch


def _ignore(_dropped: int) -> None:
    pass


class TokenBudget:
    """The model tokens one response may still spend (``MAX_UTTERANCE_TOKENS``).

    The text limits are checked before G2P; this bounds what G2P makes of the text
    (digits and symbols can come to many tokens per character) in the unit the model
    pays for.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, tokens: int) -> None:
        self.spent += tokens
        if self.spent > self.limit:
            raise SpeechError(
                "too_long",
                f"the input comes to more than {self.limit} phoneme tokens (MAX_UTTERANCE_TOKENS)",
            )


class Rendering:
    """One plan's PCM, made a batch at a time; iterate it on the model thread.

    It can be paused between any two batches (a scheduler's turn ends) and resumed
    later, and ``close`` releases the segment in progress at once (barge-in), so a
    backend's per-segment state never waits for garbage collection. The remainder of a
    segment that does not fill a chunk is carried into the next segment, so every chunk
    but the plan's very last has the configured size.
    """

    def __init__(self, pipeline: SpeechPipeline, plan: SpeechPlan) -> None:
        self.plan = plan
        self._pipeline = pipeline
        self._chunker = PcmChunker(pipeline.chunk_samples)
        self._segment: Generator[FloatAudio, None, None] | None = None
        self._next_segment = 0
        self._finished = False
        quanta = pipeline.config.scheduler
        self.windows = WindowSizes.from_bytes(quanta.priority_quantum_bytes, quanta.quantum_bytes)
        self._budget = TokenBudget(pipeline.config.segments.max_utterance_tokens)
        self.words = (
            WordClock(plan.source, pipeline.backend.vocab)
            if plan.timestamps and plan.source is not None
            else None
        )
        """The client's words timed as they are rendered, when the plan asked for it."""

    @property
    def started(self) -> bool:
        return self._next_segment > 0 or self._segment is not None

    @property
    def done(self) -> bool:
        return self._finished

    def __iter__(self) -> Rendering:
        return self

    def __next__(self) -> PcmBatch:
        """The next non-empty batch, usually one decoder window's worth; raises SpeechError
        (``synthesis_failed``) if the model fails."""
        while not self._finished:
            if self._segment is None:
                if self._next_segment >= len(self.plan.segments):
                    self._finished = True
                    tail = tuple(self._chunker.flush())
                    if tail:
                        return tail
                    break
                text = self.plan.segments[self._next_segment]
                first, last = self._next_segment == 0, self._next_segment == len(self.plan.segments) - 1
                self._segment = self._pipeline.render_segment(
                    self.plan,
                    text,
                    self.windows,
                    first=first,
                    last=last,
                    budget=self._budget,
                    clock=self.words,
                )
            audio = next(self._segment, None)
            if audio is None:
                self._segment = None
                self._next_segment += 1
                continue
            if self.words is not None:
                self.words.samples_out += audio.size
            batch = tuple(self._chunker.feed(audio))
            if batch:
                return batch
        raise StopIteration

    def close(self) -> None:
        """Stop here: the segment in progress is closed and nothing more will be made."""
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        self._finished = True
