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

import collections
import functools
import logging
import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

from krt import SAMPLE_RATE
from krt.engine.segmenter import Segmenter, split_in_two
from krt.engine.timestamps import WordClock
from krt.errors import SpeechError
from krt.media.audio import FloatAudio, PcmChunker, chunk_samples_for, shape_segment, trim_silence
from krt.synth.backend import MAX_TOKENS, Backend
from krt.synth.windows import (
    CONTEXT_FRAMES,
    CUT_SLACK,
    SAMPLES_PER_FRAME,
    PreparedSegment,
    WindowJoiner,
    WindowRequest,
    cut_window,
    window_request,
)
from krt.text.g2p import PhonemeWord, Phonemizer, joined_phonemes, tokenize
from krt.text.normalize import Normalized, normalize
from krt.text.sentences import ends_sentence

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from krt.config import Config
    from krt.synth.voices import VoiceCatalog

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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

    def stay_small(self) -> None:
        """Keep every window at the first one's size: a background job's (a download's),
        so a stream arriving while it has the model waits for no more than that."""
        self._max = self._next

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

    def count(self, window: WindowRequest) -> None:
        """Note ``window`` as decoded."""
        self.frames_decoded += window.span_frames
        self._left_in_segment = window.segment.heard_span[1] - window.stop


class WindowCursor:
    """How far the decode of one prepared segment has come: the frames it will hear, cut
    into windows as ``WindowSizes`` says, joined in order. The next window can be known
    before it is decoded (``peek``), so the engine can decode the windows of several
    streams together."""

    def __init__(self, segment: PreparedSegment, *, bucketed: bool) -> None:
        self.segment = segment
        self._start, self._end = segment.heard_span
        self._bucketed = bucketed
        self._joiner = WindowJoiner()

    @property
    def done(self) -> bool:
        return self._start >= self._end

    def peek(self, windows: WindowSizes) -> WindowRequest:
        """The window ``take`` would return now."""
        return self._window(windows, windows.at_most(), windows.peek())

    def take(self, windows: WindowSizes) -> WindowRequest:
        """The next window, its size taken from ``windows``."""
        at_most = windows.at_most()
        return self._window(windows, at_most, windows.next_size())

    def _window(self, windows: WindowSizes, at_most: int | None, size: int) -> WindowRequest:
        first = windows.frames_decoded == 0
        stop = cut_window(self.segment, self._start, size, self._end, at_least=first, at_most=at_most)
        return window_request(self.segment, self._start, stop, bucketed=self._bucketed)

    def join(self, window: WindowRequest, audio: FloatAudio) -> FloatAudio:
        """What of ``window``'s decoded audio is final now (see :class:`WindowJoiner`)."""
        self._start = window.stop
        return self._joiner.join(audio, last=window.stop == self._end)


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
    continues: bool = False
    """More speech follows it in the same audio (a long download's next part): its last
    sentence ends with the pause between sentences, not the short end of a response."""


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
        self.voices: VoiceCatalog = backend.voices.standing_in(config.voices.stand_ins)
        """The backend's voices, and the Kokoro names the weights lack spoken by others."""

    def resolve_speed(self, requested: float | None) -> float:
        """The speed a request gets: its own, checked, else ``KOKORO_SPEED``."""
        return check_speed(self.config.voices.speed if requested is None else requested)

    def plan(
        self,
        text: str,
        voice: str | None = None,
        speed: float | None = None,
        *,
        timestamps: bool = False,
        continues: bool = False,
    ) -> SpeechPlan:
        """Validate a request and cut its text; raises SpeechError with the protocol code."""
        resolved_voice = self.voices.resolve(voice)
        resolved_speed = self.resolve_speed(speed)
        normalized = normalize(text)  # the limits apply to what will be spoken
        segments = tuple(self.segmenter.split(normalized.text, resolved_speed))
        return SpeechPlan(resolved_voice, resolved_speed, segments, normalized, timestamps, continues)

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

    def start_piece(
        self,
        plan: SpeechPlan,
        piece: TokenizedSegment,
        decode: Callable[[WindowRequest], FloatAudio],
        windows: WindowSizes,
        *,
        first: bool,
        last: bool,
        clock: WordClock | None = None,
    ) -> PieceAudio:
        """The front end on one piece of a segment, and how its audio will be made.

        The front end runs now (it is cheap); its durations say where the silence before
        the first sound and after the last is, and with ``TRIM_SILENCE`` those frames are
        never decoded: the response starts within ``LEAD_PAD_SAMPLES`` of its first sound,
        sentences are separated by ``SENTENCE_PAUSE_MS`` and the response ends
        ``END_PAUSE_MS`` after its last sound. The piece's audio is then made a window at
        a time (``windows`` says how big, ``decode`` decodes one), shaped at its edges.
        With a ``clock``, the piece's words are timed just before its first audio leaves.
        """
        style = self.backend.voices.style(plan.voice, len(piece.tokens))
        prepared = self.backend.prepare(piece.tokens, style, plan.speed)
        trim = self.config.segments.trim_silence
        pause = self._pause_samples(piece.text, last and not plan.continues, plan.speed) if trim else None
        lead = trim and (self.config.segments.sentence_pause_ms is not None or first)
        start, end = self._frames_to_decode(prepared, lead=lead, tail=pause is not None)
        prepared = prepared.hearing_only(start, end)
        cursor = WindowCursor(prepared, bucketed=self.backend.batch_windows > 1)
        time_words = (
            functools.partial(clock.piece, piece.words, prepared.durations, prepared.loudness, start)
            if clock is not None
            else _ignore
        )
        windowed = _joined_windows(cursor, windows, decode)
        audio = shape_segment(
            trim_silence(windowed, lead=lead, tail_samples=pause, on_first_sound=time_words)
        )
        return PieceAudio(cursor, audio)

    @staticmethod
    def _frames_to_decode(prepared: PreparedSegment, *, lead: bool, tail: bool) -> tuple[int, int]:
        """[start, end) of ``prepared``'s frames worth decoding: the silent padding frames
        at either end are skipped where they will be trimmed anyway."""
        start = max(0, prepared.lead_frames - LEAD_FRAMES) if lead else 0
        end = prepared.frames - max(0, prepared.tail_frames - TAIL_FRAMES) if tail else prepared.frames
        return start, max(end, start + 1)

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


def _joined_windows(
    cursor: WindowCursor, windows: WindowSizes, decode: Callable[[WindowRequest], FloatAudio]
) -> Iterator[FloatAudio]:
    """The joined audio of a piece's heard frames, a window at a time."""
    while not cursor.done:
        window = cursor.take(windows)
        audio = decode(window)
        windows.count(window)
        yield cursor.join(window, audio)


@attrs.define(eq=False)
class PieceAudio:
    """One prepared piece of a segment: where its decode is, and its audio as it leaves
    (shaped, trimmed), pulled a window at a time."""

    cursor: WindowCursor
    audio: Generator[FloatAudio, None, None]


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

    The window the next batch starts with can be asked for first (``next_window``) and
    its audio handed in (``supply``), decoded together with other streams' windows;
    whatever else the batch needs it decodes itself.

    Any failure on the way (G2P, voice styling, the model) fails the response as
    ``synthesis_failed``; it must never take the engine loop with it. A response whose
    tokens overrun ``MAX_UTTERANCE_TOKENS`` ends as ``too_long`` before the model sees
    the piece that overran it.
    """

    def __init__(self, pipeline: SpeechPipeline, plan: SpeechPlan) -> None:
        self.plan = plan
        self._pipeline = pipeline
        self._chunker = PcmChunker(pipeline.chunk_samples)
        self._pieces: collections.deque[tuple[TokenizedSegment, bool, bool]] = collections.deque()
        """Pieces of the segment in progress not started yet, each with whether it is the
        plan's first and its last."""
        self._piece: PieceAudio | None = None
        self._next_segment = 0
        self._finished = False
        self._held: collections.deque[FloatAudio] = collections.deque()
        """Audio a finished piece let go while ``next_window`` looked past it."""
        self._supplied: tuple[WindowRequest, FloatAudio] | None = None
        self._failed: Exception | None = None
        """What failed starting the next piece while ``next_window`` looked past a finished
        one: raised once what that one let go has been taken."""
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
        return self._next_segment > 0 or self._piece is not None

    @property
    def done(self) -> bool:
        return self._finished

    def __iter__(self) -> Rendering:
        return self

    def __next__(self) -> PcmBatch:
        """The next non-empty batch, usually one decoder window's worth (all the audio up
        to a supplied window's, when one is waiting); raises SpeechError if the model
        fails."""
        chunks: list[bytes] = []
        while not self._finished:
            audio = self._failing_as_synthesis(self._pull)
            if audio is None:
                self._finished = True
                chunks.extend(self._chunker.flush())
                break
            chunks.extend(self._chunker.feed(audio))
            if chunks and self._supplied is None:
                break
        if chunks:
            return tuple(chunks)
        raise StopIteration

    def next_window(self) -> WindowRequest | None:
        """The window the next batch decodes first, running the front end of the next
        piece when that comes first; None when the next batch needs no model call (the
        plan is ending). Call it just before that batch: the window's size follows
        ``windows`` as it is now."""
        return self._failing_as_synthesis(self._next_window)

    def supply(self, window: WindowRequest, audio: FloatAudio) -> None:
        """The decoded audio of ``window`` (what ``next_window`` returned), for the next batch."""
        self._supplied = (window, audio)

    def _next_window(self) -> WindowRequest | None:
        if self._finished or self._failed is not None:
            return None
        while True:
            if self._piece is None:
                try:
                    if not self._start_piece():
                        return None
                except Exception as exc:
                    if not self._held:
                        raise
                    self._failed = exc  # the end of the last piece is heard first
                    return None
            assert self._piece is not None
            if not self._piece.cursor.done:
                return self._piece.cursor.peek(self.windows)
            self._held.extend(self._leaving(self._piece.audio))  # what it held back leaves now
            self._piece = None

    def _pull(self) -> FloatAudio | None:
        """The next audio that is final, starting pieces as needed; None at the plan's end."""
        if self._held:
            return self._held.popleft()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        while True:
            if self._piece is None and not self._start_piece():
                return None
            assert self._piece is not None
            for audio in self._leaving(self._piece.audio):
                return audio
            self._piece = None

    def _leaving(self, audio: Iterator[FloatAudio]) -> Iterator[FloatAudio]:
        """``audio`` as it leaves a piece, counted for the word clock."""
        for chunk in audio:
            if self.words is not None:
                self.words.samples_out += chunk.size
            yield chunk

    def _start_piece(self) -> bool:
        """Start the next piece (the front end on it); False when the plan is done."""
        while not self._pieces:
            if self._next_segment >= len(self.plan.segments):
                return False
            index = self._next_segment
            pieces = self._pipeline.tokenize_segment(self.plan.segments[index])
            self._next_segment += 1
            for number, piece in enumerate(pieces):
                first = index == 0 and number == 0
                last = index == len(self.plan.segments) - 1 and number == len(pieces) - 1
                self._pieces.append((piece, first, last))
        piece, first, last = self._pieces.popleft()
        self._budget.spend(len(piece.tokens))
        self._piece = self._pipeline.start_piece(
            self.plan, piece, self._decode, self.windows, first=first, last=last, clock=self.words
        )
        return True

    def _decode(self, window: WindowRequest) -> FloatAudio:
        """The audio of ``window``: the one supplied, else decoded now, alone."""
        supplied, self._supplied = self._supplied, None
        if supplied is not None:
            if supplied[0] == window:
                return supplied[1]
            log.debug("a window decoded together was not the one needed: %s, not %s", supplied[0], window)
        return self._pipeline.backend.decode_windows([window])[0]

    def _failing_as_synthesis(self, step: Callable[[], _T]) -> _T:
        try:
            return step()
        except SpeechError:
            self.close()
            raise
        except Exception as exc:
            segments = self.plan.segments[max(0, self._next_segment - 1) : self._next_segment]
            log.exception("synthesis failed on %r", segments[0][:80] if segments else "")
            self.close()
            raise SpeechError("synthesis_failed", f"the model failed on this segment: {exc}") from exc

    def close(self) -> None:
        """Stop here: the segment in progress is closed and nothing more will be made."""
        if self._piece is not None:
            self._piece.audio.close()
            self._piece = None
        self._pieces.clear()
        self._held.clear()
        self._supplied = None
        self._finished = True


class WindowDecoder(Protocol):
    """What of a backend decoding windows together needs (``Backend`` is one)."""

    @property
    def batch_windows(self) -> int: ...

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[FloatAudio]: ...


def supply_together(
    decoder: WindowDecoder, windows: Sequence[tuple[Rendering, WindowRequest]]
) -> Iterator[list[Rendering]]:
    """Decode the windows of several renderings (each what its ``next_window`` said) in
    as few model calls as their span lengths allow, and supply each to its rendering.

    Yields each group of one span length once supplied, the group of the first window
    first, so those renderings' batches can leave before the next group is decoded. A
    group whose call fails is yielded unsupplied: each rendering then decodes its window
    alone, so one bad input fails only its own response.
    """
    groups: dict[int, list[tuple[Rendering, WindowRequest]]] = {}
    for rendering, window in windows:
        groups.setdefault(window.span_frames, []).append((rendering, window))
    for group in groups.values():
        try:
            decoded = decoder.decode_windows([window for _rendering, window in group])
            supplies = list(zip(group, decoded, strict=True))
        except Exception:
            log.exception("%d windows decoded together failed; each is decoded alone", len(group))
        else:
            for (rendering, window), audio in supplies:
                rendering.supply(window, audio)
        yield [rendering for rendering, _window in group]
