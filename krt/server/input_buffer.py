"""Incremental input (``input.append``) cut into the pieces that are spoken as responses.

Pure: no I/O and no clock of its own (the session passes the time in), so every rule
here is tested with plain values. Complete sentences are spoken at once; the rest waits
for more text, for ``input.commit``, or for ``FLUSH_IDLE_MS`` without an append. A stream
that never ends a sentence is still cut once it holds ``MAX_INCREMENTAL_WORDS`` words,
at its last clause mark if it has one, so a run-on LLM reply is spoken as it comes
rather than refused as too long at the end; one huge append is cut as many times as it
takes, so no piece holds more than ``MAX_INCREMENTAL_WORDS`` words.
"""

from __future__ import annotations

import re

from krt.text.sentences import count_words, cut_run_on, split_sentences

MAX_INCREMENTAL_WORDS = 40
"""Buffered text with no sentence end is spoken once it has this many words."""


class InputBuffer:
    def __init__(self, idle_seconds: float, max_words: int = MAX_INCREMENTAL_WORDS) -> None:
        self.idle_seconds = idle_seconds
        self.max_words = max_words
        self._text = ""
        self._last_append = 0.0

    @property
    def pending(self) -> bool:
        """Whether there is text to speak that has not been handed out yet."""
        return bool(self._text.strip())

    def append(self, text: str, now: float) -> list[str]:
        """Add text; return the pieces to speak now, in order (stripped, none empty)."""
        self._last_append = now
        *complete, rest = split_sentences(self._text + text)
        while count_words(rest) >= self.max_words:
            window, overflow = _first_words(rest, self.max_words)
            head, kept = cut_run_on(window, last_word_complete=bool(overflow))
            if not head.strip():
                break
            complete.append(head)
            rest = kept + overflow
        self._text = rest
        return [piece.strip() for piece in complete if piece.strip()]

    def take(self) -> str:
        """Everything buffered (on commit, idle or session end), emptying the buffer."""
        text, self._text = self._text.strip(), ""
        return text

    def clear(self) -> None:
        """Forget buffered text (barge-in)."""
        self._text = ""

    def flush_due(self) -> float | None:
        """When buffered text is due to be spoken for want of more; None when there is none."""
        return self._last_append + self.idle_seconds if self.pending else None


def _first_words(text: str, count: int) -> tuple[str, str]:
    """``text`` split after its ``count``-th word; the second part keeps its leading space,
    so a non-empty second part means that word is complete."""
    match = re.match(rf"\s*(?:\S+\s+){{{count - 1}}}\S+", text)
    if match is None:
        return text, ""
    return text[: match.end()], text[match.end() :]
