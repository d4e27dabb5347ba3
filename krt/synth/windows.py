"""Decoding a segment in frame windows, the unit krt streams and schedules.

Kokoro's front end (text → per-token durations, aligned features, pitch and noise) and
its decoder's frame-rate blocks are ~10 % of its compute; the vocoder's generator that
turns those frames into audio is the rest, and it works on a frame sequence of 600
samples (25 ms) per frame. So a backend *prepares* a segment once (everything up to the
generator, over the whole segment) and then *decodes* frame windows of it on request:
the first audio of a sentence can leave after a small window, and a turn on the shared
model is a window, not a sentence.

A window decoded alone is not the same audio as the same frames inside a whole decode
(see ``shared/VOCODING.md``): the generator's instance normalisation uses the statistics
of what it is given, and its harmonic source starts at phase zero. Two things keep the
joins inaudible here. Each window is decoded with ``CONTEXT_FRAMES`` of its neighbours
on both sides, which are thrown away; and consecutive windows overlap by
``SEAM_SAMPLES``, crossfaded by :class:`WindowJoiner`. The pipeline also cuts windows
where the voice is quietest (``PreparedSegment.loudness``), where a change of timbre or
phase is least audible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

if TYPE_CHECKING:
    from krt.media.audio import FloatAudio

SAMPLES_PER_FRAME = 600
"""Audio samples the decoder makes per frame (25 ms at 24 kHz)."""
CONTEXT_FRAMES = 16
"""Frames (0.4 s) decoded on each side of a window and thrown away. Each window normalises
with its own statistics, so it needs some of its neighbours to sound like the whole
decode. Measured with an offline Whisper (tiny.en) through ``krt``'s pipeline on 26
sentences × both default voices (onnx): mean WER 0.199 with 16 frames, 0.206 with 32,
0.202 for the raw model's whole decode; joined windows sit 1.8–2.6 dB (log-mel) from
the whole decode with either, and no seam clicks. With a first window of only 24 frames
fewer frames did hurt (male voice: 0.33 with 8, 0.27 with 16, 0.195 with 32, 0.19
whole), which is why the first window is 48. Each frame of context costs capacity: at
16 the engine decodes ~1.37× the frames it sends, at 32 ~1.65×.

The silence trimmed at a segment's edges is context too, though nobody hears it. Taking
less of it was measured (onnx, both default voices, log-mel against the whole decode):
with 16, 8, 4, 0 frames of the lead silence before the first window, its first 0.2 s
sit 2.43, 3.02, 3.48, 4.23 dB from the whole decode (10 sentences); and a segment's
sound ends 19-29 frames before its end (inside the last phoneme's long duration and the
punctuation's), but decoding only to just past that with 16, 4, 0 frames of what follows
puts the last 0.2 s 3.0, 4.9, 7.2 dB away (6 sentences). So every window keeps its
whole context, and the frames after the sound are decoded, then trimmed."""
SEAM_SAMPLES = 240
"""Overlap of consecutive windows, crossfaded (10 ms): long enough to hide a step in
level or phase, short enough not to smear a consonant."""


@attrs.frozen(eq=False)
class PreparedSegment:
    """A segment after the front end: everything the decoder needs, and what the
    scheduler and the pipeline need to know about its frames."""

    frames: int
    """Decoder frames in the segment (its audio is ``frames * SAMPLES_PER_FRAME`` samples)."""
    durations: tuple[int, ...]
    """Frames per input position, the two padding positions included; they sum to ``frames``."""
    loudness: Any
    """One value per frame, larger where the voice is louder (the predicted noise
    energy for Kokoro): where a window boundary is least audible."""
    decoder_inputs: Any
    """The backend's own decoder inputs; nothing outside the backend reads them."""
    heard: tuple[int, int] | None = None
    """The frames [first, end) anyone will hear (None: all of them). The pipeline trims
    the silent padding at a segment's edges: windows cover only these frames (their
    context may reach beyond), and the last of them carries no seam."""

    @property
    def lead_frames(self) -> int:
        """Frames of the leading padding position: the silence before the first sound."""
        return self.durations[0] if self.durations else 0

    @property
    def tail_frames(self) -> int:
        """Frames of the trailing padding position: the silence after the last sound."""
        return self.durations[-1] if len(self.durations) > 1 else 0

    @property
    def heard_span(self) -> tuple[int, int]:
        return self.heard if self.heard is not None else (0, self.frames)

    def hearing_only(self, first: int, end: int) -> PreparedSegment:
        """This segment, of which only frames [first, end) will be heard."""
        if not 0 <= first < end <= self.frames:
            raise ValueError(f"[{first}, {end}) is outside the segment's {self.frames} frames")
        return attrs.evolve(self, heard=(first, end))


SPAN_BUCKET_FRAMES = 160
"""On a backend that decodes windows of several streams in one call, every decoded span is
a multiple of this many frames (4 s) where the segment has the frames: spans of equal
length stack into one generator call without padding. One bucket holds every window
size the scheduler makes while streams share the model, context included: first windows
of 48-60 frames (75-92 decoded), second ones of 72-96 (104-128) and later ones of 90-120
(122-152), so a newcomer's first window rides in the same call as the windows of
streams already playing. The frames added are more context, never less; they cost
arithmetic, which a GPU decoding small windows has to spare (such a call is bound by its
kernel launches). A segment shorter than the bucket (a short sentence, common in a voice
agent's reply) is decoded whole, in one call with the spans of its own length only.
Padding it past its end was measured, and is not done: on torch, 10 agent sentences ×
both default voices, padded to 160 frames with copies of their last frame, sit 9.7 dB
(log-mel, mean; 20.6 at worst) from their own whole decode, against ~2-3 dB for a window
with its context: the generator's instance norms take the padding into their
statistics. Stacking short sentences needs those norms masked."""


@attrs.frozen
class WindowRequest:
    """One window to decode: the frames [start, stop) of ``segment`` that will be kept, and
    the span [lo, hi) around them that is actually decoded (see ``context_span``)."""

    segment: PreparedSegment
    start: int
    stop: int
    lo: int
    hi: int

    @property
    def span_frames(self) -> int:
        return self.hi - self.lo


def context_span(
    start: int, stop: int, segment: PreparedSegment, *, bucketed: bool = False
) -> tuple[int, int]:
    """The frames [lo, hi) actually decoded for the window [start, stop) of ``segment``:
    ``CONTEXT_FRAMES`` more on each side, where the segment has them, heard or not. With
    ``bucketed`` the span then grows to a multiple of ``SPAN_BUCKET_FRAMES``, by more
    context after the window and then before it, as far as the segment allows."""
    lo, hi = max(0, start - CONTEXT_FRAMES), min(segment.frames, stop + CONTEXT_FRAMES)
    if bucketed:
        short = -(hi - lo) % SPAN_BUCKET_FRAMES
        after = min(short, segment.frames - hi)
        lo, hi = lo - min(short - after, lo), hi + after
    return lo, hi


def window_request(
    segment: PreparedSegment, start: int, stop: int, *, bucketed: bool = False
) -> WindowRequest:
    """The window [start, stop) of ``segment`` and the span decoded for it."""
    if not 0 <= start < stop <= segment.frames:
        raise ValueError(f"window [{start}, {stop}) is outside the segment's {segment.frames} frames")
    return WindowRequest(segment, start, stop, *context_span(start, stop, segment, bucketed=bucketed))


def window_audio(window: WindowRequest, span_audio: FloatAudio) -> FloatAudio:
    """The audio of the window's frames out of its decoded span, plus ``SEAM_SAMPLES`` of
    what follows when more of the segment will be heard (the part :class:`WindowJoiner`
    crossfades into the next window)."""
    begin = (window.start - window.lo) * SAMPLES_PER_FRAME
    seam = SEAM_SAMPLES if window.stop < window.segment.heard_span[1] else 0
    end = (window.stop - window.lo) * SAMPLES_PER_FRAME + seam
    return np.asarray(span_audio[begin:end], dtype=np.float32)


SpanDecoder = Callable[[Sequence[WindowRequest]], "list[FloatAudio]"]
"""A backend's raw decode: the audio of each window's whole decoded span [lo, hi), for
windows whose spans are all one length, in one model call (stacked, on a backend that
batches)."""


def decode_windows(
    decode_spans: SpanDecoder, windows: Sequence[WindowRequest], batch: int
) -> list[FloatAudio]:
    """The audio of each window (as :func:`window_audio` cuts it), in order: the windows
    grouped by span length, up to ``batch`` of them per call of ``decode_spans``."""
    groups: dict[int, list[int]] = {}
    for index, window in enumerate(windows):
        groups.setdefault(window.span_frames, []).append(index)
    audio: list[FloatAudio | None] = [None] * len(windows)
    for members in groups.values():
        for first in range(0, len(members), max(1, batch)):
            chunk = members[first : first + max(1, batch)]
            spans = decode_spans([windows[index] for index in chunk])
            for index, span_audio in zip(chunk, spans, strict=True):
                audio[index] = window_audio(windows[index], span_audio)
    assert all(piece is not None for piece in audio), "every window is in one group"
    return [piece for piece in audio if piece is not None]


def decode_window(
    decode_spans: SpanDecoder, segment: PreparedSegment, start: int, stop: int, *, bucketed: bool = False
) -> FloatAudio:
    """The audio of frames [start, stop) of ``segment``, decoded alone with its context."""
    (audio,) = decode_windows(decode_spans, [window_request(segment, start, stop, bucketed=bucketed)], 1)
    return audio


class WindowJoiner:
    """Joins the windows of one segment, in order, into continuous audio.

    Each window but the last carries ``SEAM_SAMPLES`` beyond its end; they are held back
    and crossfaded with the start of the next window, so what comes out is exactly the
    segment's samples, once each.
    """

    def __init__(self) -> None:
        self._held: FloatAudio | None = None
        fade_in = np.linspace(0.0, 1.0, SEAM_SAMPLES + 2, dtype=np.float32)[1:-1]
        self._fade_in = fade_in
        self._fade_out = np.ascontiguousarray(fade_in[::-1])

    def join(self, window: FloatAudio, *, last: bool) -> FloatAudio:
        """The audio of ``window`` that is final now (``last``: the segment's last window)."""
        audio = np.array(window, dtype=np.float32)
        if self._held is not None:
            overlap = min(len(self._held), len(audio))
            audio[:overlap] = (
                audio[:overlap] * self._fade_in[:overlap] + self._held[:overlap] * self._fade_out[:overlap]
            )
            self._held = None
        if last:
            return audio
        self._held = audio[-SEAM_SAMPLES:].copy()
        return audio[:-SEAM_SAMPLES]


CUT_SLACK = 0.25
"""How far (as a fraction of the asked size) a window's end may move to find a quiet frame."""


def cut_window(
    segment: PreparedSegment,
    start: int,
    size: int,
    end: int | None = None,
    *,
    at_least: bool = False,
    at_most: int | None = None,
) -> int:
    """Where a window of about ``size`` frames from ``start`` should end (exclusive).

    At the quietest frame up to ``CUT_SLACK`` before the asked end (after it, with
    ``at_least``: a first window must not come out shorter than asked, or its audio would
    not cover the next window's compute), so the join falls in a pause or a quiet
    consonant rather than mid-vowel; at ``end`` (default: the segment's end) when what
    would be left after the window is less than half a window, so a segment never ends
    with a sliver decoded mostly as context, unless that makes the window longer than
    ``at_most`` (a player that cannot wait for more).
    """
    end = segment.frames if end is None else end
    size = max(1, size)
    if end - start <= size + size // 2 and (at_most is None or end - start <= at_most):
        return end
    slack = int(size * CUT_SLACK)
    lo, hi = (start + size, start + size + slack) if at_least else (start + size - slack, start + size)
    hi = min(hi, end - size // 2)
    if hi <= lo:
        return start + size
    loudness = np.asarray(segment.loudness, dtype=np.float32)[lo : hi + 1]
    return lo + int(np.argmin(loudness))
