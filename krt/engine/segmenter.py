"""Text → the segments the model speaks one at a time.

Segments follow the split pattern (sentences by default), because Kokoro phrases a
whole sentence better than pieces of it: a sentence cut short loses words at the cut.
The first audio does not wait for a whole sentence anyway, since segments are decoded in
windows. An operator may still cut the first segment short (``FIRST_SEGMENT_MAX_WORDS``),
preferably at a natural pause, but no cut leaves a piece of fewer than
``MIN_FRAGMENT_WORDS`` words: a lone word or two is what Kokoro garbles. A segment must
also fit the model's context (510 phoneme tokens), which only the phonemizer can tell:
``split_in_two`` gives the pipeline the best place to halve an oversize piece.
"""

from __future__ import annotations

import re

import attrs

from krt.config import SegmentConfig
from krt.errors import SpeechError
from krt.text.sentences import CLAUSE_PUNCTUATION, SENTENCE_PUNCTUATION, ends_with_boundary

MIN_FRAGMENT_WORDS = 3
"""Fewest words on either side of a first-segment cut."""
AUDIO_SECONDS_PER_CHAR = 0.065
"""Kokoro speaks about 15 characters of English text per second at speed 1: how long a
text not yet synthesized will play, for admission, scheduling and the length limit alike."""


def predicted_audio_seconds(text_chars: int, speed: float) -> float:
    """How long ``text_chars`` characters of text will play at ``speed``, before any G2P."""
    return text_chars * AUDIO_SECONDS_PER_CHAR / speed


def check_longest_word(words: list[str], limits: SegmentConfig) -> None:
    """Refuse a word (characters between spaces) over ``MAX_WORD_CHARS``: one "word" of
    thousands of symbols costs G2P and the model seconds for nothing."""
    longest = max((len(word) for word in words), default=0)
    if longest > limits.max_word_chars:
        raise SpeechError(
            "too_long",
            f"input has a word of {longest} characters; the limit is {limits.max_word_chars} (MAX_WORD_CHARS)",
        )


@attrs.frozen
class Segmenter:
    config: SegmentConfig
    _pattern: re.Pattern[str] = attrs.field(init=False)

    @_pattern.default
    def _compile(self) -> re.Pattern[str]:
        return re.compile(self.config.split_pattern)

    def check_length(self, text: str, speed: float = 1.0) -> None:
        """Refuse text that is empty, or that would cost more than the limits allow.

        All three are checked before any G2P, on the text alone: words, the longest word
        (a single "word" of thousands of symbols is what makes G2P and the model spend
        seconds on nothing), and the audio it will make. What G2P makes of the text is
        bounded later, in tokens (``MAX_UTTERANCE_TOKENS``).
        """
        words = text.split()
        config = self.config
        if not words:
            raise SpeechError("invalid_input", "input has no words to speak")
        if len(words) > config.max_utterance_words:
            raise SpeechError(
                "too_long",
                f"input has {len(words)} words; the limit is {config.max_utterance_words} (MAX_UTTERANCE_WORDS)",
            )
        check_longest_word(words, config)
        seconds = predicted_audio_seconds(len(text), speed)
        if seconds > config.max_utterance_seconds:
            raise SpeechError(
                "too_long",
                f"input would play for about {seconds:.0f} s; the limit is "
                f"{config.max_utterance_seconds:g} s (MAX_UTTERANCE_SECONDS)",
            )

    def split(self, text: str, speed: float = 1.0) -> list[str]:
        """Segments in speaking order; the first one short, the rest by the split pattern."""
        self.check_length(text, speed)
        pieces = [piece.strip() for piece in self._pattern.split(text) if piece and piece.strip()]
        first, rest = self._cut_first(pieces[0])
        return [first, *([rest] if rest else []), *pieces[1:]]

    def _cut_first(self, piece: str) -> tuple[str, str]:
        words = piece.split()
        if self.config.first_max_words is None:
            return piece, ""
        limit = max(MIN_FRAGMENT_WORDS, self.config.first_max_words)
        if len(words) < limit + MIN_FRAGMENT_WORDS:
            return piece, ""
        boundaries = self.config.first_boundaries
        cut = next(
            (
                index
                for index in range(limit, MIN_FRAGMENT_WORDS - 1, -1)
                if ends_with_boundary(words[index - 1], boundaries)
            ),
            0,
        )
        if not cut:
            if self.config.first_require_boundary:
                cut = next(
                    (
                        i
                        for i in range(limit + 1, len(words) - MIN_FRAGMENT_WORDS + 1)
                        if ends_with_boundary(words[i - 1], boundaries)
                    ),
                    len(words),
                )
            else:
                cut = limit
        return " ".join(words[:cut]), " ".join(words[cut:])


def split_in_two(text: str) -> tuple[str, str]:
    """Halve a piece too long for the model's context at its most natural cut.

    Prefers sentence ends, then clause punctuation, then any space, each time the one
    nearest the middle so that both halves shrink; a single enormous "word" is cut by
    characters as a last resort.
    """
    middle = len(text) / 2
    words = text.split(" ")
    if len(words) < 2:
        half = max(1, len(text) // 2)
        return text[:half], text[half:]
    offsets = []
    position = 0
    for word in words[:-1]:
        position += len(word) + 1
        offsets.append((position, word))
    for marks in (SENTENCE_PUNCTUATION, CLAUSE_PUNCTUATION, None):
        candidates = [pos for pos, word in offsets if marks is None or ends_with_boundary(word, marks)]
        if candidates:
            cut = min(candidates, key=lambda pos: abs(pos - middle))
            return text[:cut].strip(), text[cut:].strip()
    raise AssertionError("unreachable: a text with two words has a space")
