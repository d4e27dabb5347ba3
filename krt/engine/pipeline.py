"""Text → validated plan → audio, one segment at a time, on the model thread.

Planning is cheap and happens before any model work, so a request that is too long, or
names a voice or speed we cannot use, is refused at once with its protocol code.
Phonemizing is deferred to the segment being rendered: the first segment's audio does
not wait for the G2P of the whole paragraph. A segment whose phonemes exceed the
model's context is halved at its most natural cut and rendered as several.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import attrs

from krt.audio import FloatAudio, PcmChunker, chunk_samples_for, shape_segment
from krt.engine.segmenter import Segmenter, split_in_two
from krt.errors import SpeechError
from krt.g2p import Phonemizer, tokenize
from krt.synth.backend import MAX_TOKENS, Backend

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from krt.config import Config

log = logging.getLogger(__name__)

MIN_SPEED = 0.5
MAX_SPEED = 2.0


@attrs.frozen
class SpeechPlan:
    """What will be spoken: resolved voice and speed, and the text of each segment."""

    voice: str
    speed: float
    segments: tuple[str, ...]


@attrs.frozen
class TokenizedSegment:
    text: str
    phonemes: str
    tokens: tuple[int, ...]


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

    def plan(self, text: str, voice: str | None = None, speed: float | None = None) -> SpeechPlan:
        """Validate a request and cut its text; raises SpeechError with the protocol code."""
        resolved_voice = self.backend.voices.resolve(voice)
        resolved_speed = check_speed(self.config.voices.speed if speed is None else speed)
        return SpeechPlan(resolved_voice, resolved_speed, tuple(self.segmenter.split(text)))

    def tokenize_segment(self, text: str) -> list[TokenizedSegment]:
        """Phonemes of one segment, split further until every piece fits the context."""
        phonemes = self.phonemizer.phonemize(text)
        tokens = tokenize(phonemes, self.backend.vocab)
        if len(tokens) <= MAX_TOKENS:
            return [TokenizedSegment(text, phonemes, tuple(tokens))] if tokens else []
        head, tail = split_in_two(text)
        log.debug("segment of %d tokens split in two", len(tokens))
        return [*self.tokenize_segment(head), *self.tokenize_segment(tail)]

    def render_segment(self, plan: SpeechPlan, text: str) -> Generator[FloatAudio, None, None]:
        """Shaped float audio of one planned segment, chunk by chunk as the model yields it.

        Any failure on the way (G2P, voice styling, the model) fails this response as
        ``synthesis_failed``; it must never take the engine loop with it.
        """
        try:
            for piece in self.tokenize_segment(text):
                style = self.backend.voices.style(plan.voice, len(piece.tokens))
                yield from shape_segment(self.backend.synthesize(piece.tokens, style, plan.speed))
        except SpeechError:
            raise
        except Exception as exc:
            log.exception("synthesis failed on %r", text[:80])
            raise SpeechError("synthesis_failed", f"the model failed on this segment: {exc}") from exc

    def render(self, plan: SpeechPlan) -> Iterator[FloatAudio]:
        for text in plan.segments:
            yield from self.render_segment(plan, text)

    def speak(self, text: str, voice: str | None = None, speed: float | None = None) -> Iterator[bytes]:
        """PCM16 chunks of ``STREAM_CHUNK_SECONDS`` for a whole utterance (blocking)."""
        plan = self.plan(text, voice, speed)
        chunker = PcmChunker(self.chunk_samples)
        for audio in self.render(plan):
            yield from chunker.feed(audio)
        yield from chunker.flush()
