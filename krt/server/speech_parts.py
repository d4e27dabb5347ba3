"""An HTTP speech request's text, spoken as parts one after another into one body.

``POST /v1/audio/speech`` takes up to ``OPENAI_MAX_INPUT_CHARS`` characters (a chapter, an
article), far more than one response may cost. So its text is cut into parts of whole
sentences (:func:`krt.text.parts.parts`), and each part is planned and admitted only
when the one before it is spoken. The first part is short (:data:`FIRST_PART_CHARS`), so
a long input's first bytes leave as soon as a short input's. Then:

- up to :data:`REPLY_CHARS` (OpenAI's own limit) the request is a reply, perhaps played
  as it arrives: its first part is admitted like any request (a busy server says 429
  before anything is sent) and its later parts as accepted work, fed like the first;
- past it, the request is a *download* (a chapter, an article): every part runs in the
  engine's background (``Engine.admit(background=True)``), taking only the turns no
  real-time stream is due for. It never delays a voice agent's reply by more than the
  window in progress, never makes one busy, and is itself never refused.

One part's text and at most one part's audio buffer are held at a time, so memory stays
flat however long the text; a client that hangs up cancels the part in the engine at
once, and no later part is ever planned.

The parts end on sentence pauses (``SpeechPlan.continues``), so the body sounds like one
response, and it is one: one encoder, one head, one metrics line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from krt.engine.segmenter import AUDIO_SECONDS_PER_CHAR, check_longest_word
from krt.errors import SpeechError
from krt.text.parts import parts

if TYPE_CHECKING:
    from collections.abc import Hashable

    from krt.config import SegmentConfig
    from krt.engine.facade import Engine, Job, SpeechPlan

REPLY_CHARS = 4096
"""The longest input spoken as a reply (OpenAI's limit on ``input``); longer is a download."""
FIRST_PART_CHARS = 200
"""A first part of a sentence or two: planned and admitted as fast as a short input."""
PART_CHARS = 400
"""Later parts: a paragraph, under every per-response limit at their defaults (at ~8
model tokens a character, the most notation reaches, 400 characters stay under
``MAX_UTTERANCE_TOKENS``' 3300)."""
MOST_TOKENS_PER_CHAR = 8


def part_chars(limits: SegmentConfig) -> int:
    """The longest part the per-response limits let through, up to :data:`PART_CHARS`."""
    return max(
        1,
        min(
            PART_CHARS,
            limits.max_utterance_words,
            limits.max_utterance_tokens // MOST_TOKENS_PER_CHAR,
            int(limits.max_utterance_seconds / AUDIO_SECONDS_PER_CHAR),
        ),
    )


def check_words(text: str, limits: SegmentConfig) -> None:
    """Refuse, before anything is spoken, a word no part could take (``MAX_WORD_CHARS``):
    found in part 40, it would cut a download short after minutes of audio."""
    check_longest_word(text.split(), limits)


class SpokenParts:
    """The parts of one request's text, each planned and admitted when its turn comes."""

    def __init__(
        self,
        engine: Engine,
        text: str,
        voice: str,
        speed: float,
        label: str,
        limits: SegmentConfig,
    ) -> None:
        self._engine = engine
        self._voice = voice
        self._speed = speed
        self._label = label
        most = part_chars(limits)
        self.download = len(text) > REPLY_CHARS
        """Spoken in the background, from its first part on."""
        self._parts = parts(text, min(FIRST_PART_CHARS, most), most)
        self._next: str | None = next(self._parts, None)
        self.spoken = 0
        """Parts planned so far."""

    def first(self, client: Hashable) -> tuple[SpeechPlan, Job]:
        """Plan and admit the first part (SpeechError: a bad voice or speed; ``busy`` for
        a reply the engine cannot start in time)."""
        plan = self._plan()
        assert plan is not None, "the request's input has words (checked when parsed)"
        job = self._engine.admit(plan, self._label, paced=False, client=client, background=self.download)
        return plan, job

    def following(self) -> Job | None:
        """The next part, admitted as accepted work (or in the background, for a download),
        so never refused; None when all are spoken."""
        plan = self._plan()
        if plan is None:
            return None
        return self._engine.admit(
            plan,
            f"{self._label}#{self.spoken}",
            paced=False,
            accepted=not self.download,
            background=self.download,
        )

    def _plan(self) -> SpeechPlan | None:
        """The next part's plan, skipping parts with nothing to speak (a line of "***"
        between chapters), unless no part has any."""
        while self._next is not None:
            text, self._next = self._next, next(self._parts, None)
            try:
                plan = self._engine.plan(text, self._voice, self._speed, continues=self._next is not None)
            except SpeechError as error:
                if error.code != "invalid_input" or (self._next is None and not self.spoken):
                    raise
                continue
            self.spoken += 1
            return plan
        return None
