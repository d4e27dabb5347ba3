"""Where sentences and clauses end in text, by its punctuation alone.

The engine plans its segments by these rules, the server's input buffer cuts streamed
text by them, and the client library splits a text into one response per sentence:
the same rules in one place, below all three, so none imports another for them.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]])\s+")
"""Whitespace after a sentence-ending mark (and any closing quote or bracket)."""
CLAUSE_PUNCTUATION = ",;:—–)]}"
SENTENCE_PUNCTUATION = ".!?…"
TRAILING_CLOSERS = "\"'”’»)]}"


def split_sentences(text: str) -> list[str]:
    """Complete sentences and, last, whatever follows the final sentence end (maybe "")."""
    return SENTENCE_END.split(text)


def cut_run_on(text: str, *, last_word_complete: bool = False) -> tuple[str, str]:
    """Cut a long piece with no sentence end after its last clause mark; without one,
    before its last word, which may still be growing, unless more text is known to follow
    it (``last_word_complete``), then the whole piece. Returns (to speak now, to keep)."""
    words = text.split(" ")
    for index in range(len(words) - 1, 0, -1):
        if ends_with_boundary(words[index - 1], CLAUSE_PUNCTUATION):
            return " ".join(words[:index]), " ".join(words[index:])
    if last_word_complete:
        return text, ""
    return " ".join(words[:-1]), words[-1]


def ends_sentence(text: str) -> bool:
    """Whether ``text`` ends with a sentence mark (closing quotes and brackets allowed)."""
    return ends_with_boundary(text.rstrip(), SENTENCE_PUNCTUATION)


def count_words(text: str) -> int:
    return len(text.split())


def ends_with_boundary(word: str, boundaries: str) -> bool:
    """Whether ``word`` ends with one of ``boundaries``, closing quotes and brackets aside."""
    stripped = word.rstrip(TRAILING_CLOSERS)
    return bool(stripped) and stripped[-1] in boundaries
