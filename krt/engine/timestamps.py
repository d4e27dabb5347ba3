"""When each word of the client's own text is heard, from the model's own durations.

Kokoro's front end predicts how many frames each phoneme token lasts (speed included);
that is exactly what the decoder then renders, so summing them gives the time of every
token in the audio as played, with no second model and no guessing. Three mappings
connect those tokens to what the client wrote:

- token → G2P word: the phonemes of each word G2P read (``g2p.token_owners``);
- G2P word → the normalized text: G2P's words are pieces of it, found in order;
- normalized text → the client's input: ``Normalized.source_span``, so words that
  normalization rewrote ("$5", "Dr.", a URL) come back as the client wrote them, and
  several spoken words made from one written word become that one word.

Frames become samples where the pipeline decoded them: a piece's audio starts at its
first decoded frame, less what silence trimming dropped before the first sound, after
all the audio of the response before it.
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING

import attrs
import numpy as np

from krt import SAMPLE_RATE
from krt.synth.windows import SAMPLES_PER_FRAME
from krt.text.g2p import token_owners

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

    from krt.text.g2p import PhonemeWord
    from krt.text.normalize import Normalized

MAX_SKIP_CHARS = 64
"""How far ahead of the last word found a G2P word may be looked for in the normalized
text; one not found that close (G2P rewrote it) gets no timestamp, and the search does
not lose its place."""


WORD_EDGE_PUNCTUATION = frozenset("\"'“”‘’«»()[]{}<>,;:!?.…*_`")
"""Marks around a word that are not part of it ("Hello," is the word Hello); symbols that
are spoken ("$", "%", "#") stay."""


@attrs.frozen
class WordTime:
    """One word of the client's input and when it plays, in seconds from the response's
    first sample; ``text`` is ``input[char_start:char_end]``."""

    text: str
    start: float
    end: float
    char_start: int
    char_end: int


class WordClock:
    """One response's word times, piece by piece as the pipeline renders them.

    ``samples_out`` is kept by the rendering: the samples of the response already made,
    which is where the next piece's audio starts.
    """

    def __init__(self, normalized: Normalized, vocab: Mapping[str, int]) -> None:
        self._normalized = normalized
        self._vocab = vocab
        self._cursor = 0
        self.samples_out = 0
        self.ready: collections.deque[list[WordTime]] = collections.deque()
        """Pieces' words not yet taken (by the server, from another thread: a deque's
        append and popleft are atomic)."""

    def take(self) -> list[list[WordTime]]:
        """The word lists made since the last call, a list per piece, in order."""
        taken = []
        while self.ready:
            taken.append(self.ready.popleft())
        return taken

    def piece(
        self,
        words: Sequence[PhonemeWord],
        durations: Sequence[int],
        loudness: npt.NDArray[np.float32],
        start_frame: int,
        dropped_samples: int,
    ) -> None:
        """The words of one piece whose first ``dropped_samples`` (from ``start_frame`` on)
        were trimmed away, queued for ``take``; ``durations`` are the model's, padding
        positions included."""
        owners = token_owners(words, self._vocab)
        if len(owners) != len(durations) - 2:
            return  # not the tokens these durations were predicted for: say nothing wrong
        edges = list(itertools.accumulate(durations, initial=0))
        frames: dict[int, tuple[int, int]] = {}
        for token, owner in enumerate(owners):
            if owner is None:
                continue
            first, last = edges[token + 1], edges[token + 2]
            known = frames.get(owner)
            frames[owner] = (first, last) if known is None else (known[0], last)
        base = self.samples_out

        def seconds(frame: int) -> float:
            sample = (frame - start_frame) * SAMPLES_PER_FRAME - dropped_samples
            return (base + max(0, sample)) / SAMPLE_RATE

        timed: list[WordTime] = []
        for index, word in enumerate(words):
            span = self._locate(word.text)
            if span is None or index not in frames or not any(char.isalnum() for char in word.text):
                continue
            char_start, char_end = _client_word(self._normalized.source, *self._normalized.source_span(*span))
            first, last = _sounding(frames[index], loudness)
            timed.append(
                WordTime(
                    self._normalized.source[char_start:char_end],
                    seconds(first),
                    seconds(last),
                    char_start,
                    char_end,
                )
            )
        merged = _merge_rewritten(timed, self._normalized.source)
        if merged:
            self.ready.append(merged)

    def _locate(self, text: str) -> tuple[int, int] | None:
        """Where G2P's ``text`` is in the normalized text, after the words already found."""
        if not text:
            return None
        found = self._normalized.text.find(text, self._cursor, self._cursor + MAX_SKIP_CHARS + len(text))
        if found < 0:
            return None
        self._cursor = found + len(text)
        return found, self._cursor


def _sounding(span: tuple[int, int], loudness: npt.NDArray[np.float32]) -> tuple[int, int]:
    """A word's frames without the silence the model gives its last phoneme.

    Kokoro lengthens the phoneme before a pause with frames of silence (the last word of a
    sentence by 300-400 ms), which the pipeline then trims; ended at the model's token
    boundary, a word would end after its own audio. The front end's predicted loudness is
    above zero where there is sound and below it where there is none (checked against
    the first audible sample: they agree to within a frame).
    """
    first, last = span
    sounding = np.flatnonzero(np.asarray(loudness[first:last]) > 0)
    return (first, first + int(sounding[-1]) + 1) if sounding.size else span


def _client_word(source: str, start: int, end: int) -> tuple[int, int]:
    """The whole whitespace-separated word of ``source`` around ``[start, end)``, without
    the punctuation around it: G2P splits "$5" into "$" and "5" and "well-known" in
    three, but the client wrote one word."""
    while start > 0 and not source[start - 1].isspace():
        start -= 1
    while end < len(source) and not source[end].isspace():
        end += 1
    while start < end and source[start] in WORD_EDGE_PUNCTUATION:
        start += 1
    while end > start and source[end - 1] in WORD_EDGE_PUNCTUATION:
        end -= 1
    return start, end


def _merge_rewritten(words: list[WordTime], source: str) -> list[WordTime]:
    """Spoken words made from one written word ("five dollars" from "$5") become it."""
    merged: list[WordTime] = []
    for word in words:
        last = merged[-1] if merged else None
        if last is not None and word.char_start < last.char_end:
            start, end = last.char_start, max(last.char_end, word.char_end)
            merged[-1] = WordTime(source[start:end], last.start, max(last.end, word.end), start, end)
        else:
            merged.append(word)
    return merged
