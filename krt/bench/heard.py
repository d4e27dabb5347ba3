"""Word error between what was meant and what a listener wrote down.

The speech set's references are spoken forms ("three point seven million dollars");
Whisper writes what it hears in written forms ("$3.7 million", "8:05", "555-0142").
Both are brought to one canonical form before words are compared: Whisper's own English
normalizer (OpenAI's, from ``whisper-normalizer``), after a few rewrites of the notation
it leaves alone (clock times, digit groups, addresses, unit symbols). Every rewrite is
applied to both sides alike, so it cannot favour one way of speaking over another: a
voice that says "three dollars and seven cents em" is still heard as wrong.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from krt.text.numbers import ordinal

if TYPE_CHECKING:
    from collections.abc import Sequence

NOTATION = (
    (re.compile(r"(?<=\d):(?=\d\d)"), ""),  # 8:05 → 805, as "eight oh five" normalizes
    (re.compile(r"(?<=\d)(?:-|,? )(?=\d)"), ""),  # 555-0142, "5, 1, 2, 3": one code
    (re.compile(r"(?i)(?<=\d) ?([ap])\.? ?m\b\.?"), r" \1 m"),  # 9am, 9 a.m. → 9 a m
    (re.compile(r"(?i)(?<=[a-z0-9])\.(?=[a-z])"), " dot "),  # example.com
    (re.compile(r"(?<=\w)/(?=\w)"), " slash "),
    (re.compile(r"(?<=\w)@(?=\w)"), " at "),
    (re.compile(r"#(?=\s?\d)"), " number "),
    (re.compile(r"°F\b"), " degrees fahrenheit"),
    (re.compile(r"°C\b"), " degrees celsius"),
    (re.compile(r"°"), " degrees"),
    (re.compile(r"(?i)\betc\b\.?"), "et cetera"),
)
"""Written notation → words, before Whisper's normalizer (which drops these symbols)."""
UNIT_WORDS = {
    "cm": "centimeters",
    "mm": "millimeters",
    "km": "kilometers",
    "kg": "kilograms",
    "lb": "pounds",
    "lbs": "pounds",
    "oz": "ounces",
    "mi": "miles",
    "ft": "feet",
    "mph": "miles per hour",
    "ms": "milliseconds",
    "min": "minutes",
    "mins": "minutes",
    "hr": "hours",
    "hrs": "hours",
    "gb": "gigabytes",
    "mb": "megabytes",
    "ghz": "gigahertz",
}
"""Lower-case unit symbols Whisper writes after a number for the words it heard."""
_UNIT = re.compile(rf"(?<=\d) ?({'|'.join(UNIT_WORDS)})\b")
ORDINAL_WORDS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
]
ORDINALS = {word: ordinal(number) for number, word in enumerate(ORDINAL_WORDS, start=1)} | {
    "thirtieth": "30th"
}
"""Ordinal words Whisper's normalizer leaves as words ("june ninth") and digits it
writes as digits ("June 9th")."""


@functools.cache
def _whisper_normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def heard_words(text: str) -> list[str]:
    """``text`` in the canonical form both sides are compared in, as words."""
    for pattern, replacement in NOTATION:
        text = pattern.sub(replacement, text)
    text = _UNIT.sub(lambda match: " " + UNIT_WORDS[match.group(1)], text)
    normalized: str = _whisper_normalizer()(text)
    return [ORDINALS.get(word, word) for word in normalized.split()]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits from ``reference`` to ``hypothesis``, words in ``reference``)."""
    ref = heard_words(reference)
    return edit_distance(ref, heard_words(hypothesis)), len(ref)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences."""
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
    return row[-1]
