"""A long text (a chapter, an article) as parts the engine speaks one after another.

A download of a whole chapter is not one response: one plan of 100,000 characters would
be normalized and held whole before its first sound, and the limits that bound what one
response may cost (words, tokens, seconds) are sized for what a person says in a turn.
So it is cut into *parts*, each a few sentences, each planned only when the one before it
is spoken: its first part as soon as a short input, and never more than one part's text
in the engine.

A part ends where a sentence or a line ends, never after an abbreviation that does not
end one ("Dr. Smith", "J. R. R. Tolkien"): the two halves would be spoken with a full
stop's pause between them. A sentence longer than a part is cut after its last clause
mark that fits, else its last space, as a speaker would breathe.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from krt.text.normalize import ABBREVIATIONS, TITLES
from krt.text.sentences import CLAUSE_PUNCTUATION, SENTENCE_END

if TYPE_CHECKING:
    from collections.abc import Iterator

PART_END = re.compile(rf"{SENTENCE_END.pattern}|\s*\n\s*")
"""Where a part may end: after a sentence mark, or at a line break (a heading, a list item)."""
NOT_AN_END = frozenset({*ABBREVIATIONS, *TITLES, "dr.", "st.", "no.", "vol.", "fig.", "ch."})
"""Words after whose period the sentence goes on."""
INITIAL = re.compile(r"(?:^|\s)(?:[A-Z]\.)+$")
"""An initial ("J.", "U.S.") at the end of the text before a break."""


def parts(text: str, first_chars: int, most_chars: int) -> Iterator[str]:
    """``text`` as parts of at most ``most_chars`` characters (the first at most
    ``first_chars``), in order, each made of whole sentences where a sentence fits;
    stripped, none empty. Together they hold every word of ``text``, once."""
    limit = first_chars
    start = 0  # where the part being gathered begins
    fits = 0  # where it can end at the last break that keeps it within its limit
    for end in _breaks(text):
        if end - start <= limit:
            fits = end
            continue
        if fits > start:  # the sentences so far make a part; the next one starts another
            piece, start = text[start:fits].strip(), fits
            if piece:
                yield piece
                limit = most_chars
        while end - start > limit:  # one sentence longer than a part: cut inside it
            cut = _cut_inside(text, start, start + limit)
            piece, start = text[start:cut].strip(), cut
            if piece:
                yield piece
                limit = most_chars
        fits = end
    last = text[start:].strip()
    if last:
        yield last


def _breaks(text: str) -> Iterator[int]:
    """Where a part may end, in order, and the end of the text."""
    for match in PART_END.finditer(text):
        before = text[: match.start()]
        if "\n" not in match.group() and _ends_in_abbreviation(before):
            continue
        yield match.end()
    yield len(text)


def _ends_in_abbreviation(before: str) -> bool:
    word = before[-12:].rsplit(None, 1)[-1] if before.strip() else ""
    return word.lower() in NOT_AN_END or bool(INITIAL.search(before[-12:]))


def _cut_inside(text: str, start: int, stop: int) -> int:
    """Where to cut ``text[start:stop]``, a piece of one long sentence: after its last
    clause mark followed by a space, else at its last space, else at ``stop``."""
    window = text[start:stop]
    clause = max(window.rfind(f"{mark} ") for mark in CLAUSE_PUNCTUATION)
    if clause > 0:
        return start + clause + 1
    space = window.rfind(" ")
    return start + space if space > 0 else stop
