"""What voice agents are sent, rewritten as a person would read it aloud, before G2P.

LLM replies carry URLs, e-mail addresses, phone numbers, long digit strings,
abbreviations, percentages, markdown and emoji. Misaki reads a URL symbol by symbol (a
148-character URL became 15 s of audio), treats "Dr." as a sentence end and reads
"555-0142" as a subtraction. Each rule here is a regular expression and a spoken form;
everything else is copied unchanged. Rules run in left-to-right passes, each linear in the text;
no spoken form matches a rule again, but removing markup can join what it separated
("w*ww.", "555🎉-0142"), so passes repeat until one changes nothing (at most
``MAX_PASSES``): normalizing twice is normalizing once.

Every rewritten piece remembers where it came from (``Normalized.source_span``), so
that later features (word timestamps) can map what was spoken back to what the client
wrote. Numbers in ordinary prose ("$42.50", "3:30 PM", "2026") are left to misaki, which
reads them well; only the forms it misreads are rewritten. All of it is hand-written:
the phonenumbers library validates numbers by country but does not say how to read them,
and the speaking rules are a few lines each.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_SPOKEN_DIGITS = 24
"""A digit string is read digit by digit up to this many; the rest is counted, not read."""
ABBREVIATIONS = {
    "mr.": "Mister",
    "mrs.": "Missus",
    "ms.": "Miz",
    "jr.": "Junior",
    "sr.": "Senior",
    "etc.": "et cetera",
    "e.g.": "for example",
    "i.e.": "that is",
    "vs.": "versus",
    "approx.": "approximately",
}
"""Abbreviations with one reading; "St." and "Dr." depend on what follows them."""
UNITS = {
    "km": "kilometers",
    "kg": "kilograms",
    "cm": "centimeters",
    "mm": "millimeters",
    "mph": "miles per hour",
    "kph": "kilometers per hour",
    "ms": "milliseconds",
    "gb": "gigabytes",
    "mb": "megabytes",
    "kb": "kilobytes",
    "tb": "terabytes",
    "ghz": "gigahertz",
    "mhz": "megahertz",
    "°c": "degrees Celsius",
    "°f": "degrees Fahrenheit",
}
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


MAX_PASSES = 4
"""Passes over the text at most: a pass after the first only reads what removing markup
joined in the pass before, so one or two more suffice for any text but a contrived one,
which is then spoken as the last pass left it."""

Rewrite = tuple[int, int, int, int]
"""(start, end) in a pass's output and (start, end) in its input of one rewritten piece."""


@attrs.frozen
class Normalized:
    """The text to speak, and where each rewritten piece of it came from."""

    text: str
    source: str
    passes: tuple[tuple[Rewrite, ...], ...]
    """The rewrites of each pass, in order."""

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """The characters of ``source`` that ``text[start:end]`` was made from."""
        for rewrites in reversed(self.passes):
            start, end = _to_input(rewrites, start, at_end=False), _to_input(rewrites, end, at_end=True)
        return start, end


def _to_input(rewrites: tuple[Rewrite, ...], position: int, *, at_end: bool) -> int:
    shift = 0
    for out_start, out_end, in_start, in_end in rewrites:
        if position < out_start or (position == out_start and at_end):
            break
        if position < out_end or (position == out_end and at_end):
            return in_end if at_end else in_start
        shift = in_end - out_end
    return position + shift


Speaker = Callable[["re.Match[str]"], str]


def _digits(digits: str) -> str:
    """Digit by digit, in groups of up to four separated by commas (a pause)."""
    spoken = [DIGIT_WORDS[int(digit)] for digit in digits[:MAX_SPOKEN_DIGITS]]
    groups = [" ".join(spoken[index : index + 4]) for index in range(0, len(spoken), 4)]
    text = ", ".join(groups)
    if len(digits) > MAX_SPOKEN_DIGITS:
        text += f", and {len(digits) - MAX_SPOKEN_DIGITS} more digits"
    return text


def _words_of(part: str) -> str:
    """A URL or address part: letters and digits as words, "dot" for dots, the rest a space."""
    pieces = []
    for token in re.split(r"(\.)", part):
        if token == ".":
            pieces.append("dot")
        else:
            words = re.sub(r"[^A-Za-z0-9]+", " ", token).split()
            pieces.extend(_digits(word) if word.isdigit() and len(word) > 4 else word for word in words)
    return " ".join(piece for piece in pieces if piece)


def _url(match: re.Match[str]) -> str:
    address = re.sub(r"^(?:https?://)?(?:www\.)?", "", match.group(0), flags=re.IGNORECASE)
    address = re.split(r"[?#]", address, maxsplit=1)[0].rstrip("/")
    host, _, path = address.partition("/")
    spoken = [_words_of(host)]
    spoken += [f"slash {_words_of(segment)}" for segment in path.split("/") if _words_of(segment)]
    return " ".join(spoken)


def _email(match: re.Match[str]) -> str:
    user, _, domain = match.group(0).partition("@")
    return f"{_words_of(user)} at {_words_of(domain)}"


def _phone(match: re.Match[str]) -> str:
    groups = [group for group in re.split(r"\D+", match.group(0)) if group]
    spoken = ", ".join(_digits(group) for group in groups)
    return ("plus " if match.group(0).startswith("+") else "") + spoken


def _abbreviation(match: re.Match[str]) -> str:
    return ABBREVIATIONS[match.group(0).lower()]


def _title(match: re.Match[str]) -> str:
    """ "St." and "Dr." before a name are titles; after one, a street or a drive."""
    word = match.group("title").lower()
    before_name = match.group("next") is not None
    if word == "st":
        return "Saint" if before_name else "Street"
    return "Doctor" if before_name else "Drive"


def _percent(match: re.Match[str]) -> str:
    return f"{match.group('share')} percent"


def _unit(match: re.Match[str]) -> str:
    return f"{match.group('amount')} {UNITS[match.group('unit').lower()]}"


def _iso_date(match: re.Match[str]) -> str:
    year, month, day = (int(part) for part in match.group(0).split("-"))
    return f"{MONTHS[month - 1]} {day}, {year}"


def _slashed_date(match: re.Match[str]) -> str:
    """Month first as in the US, unless the first number cannot be a month."""
    first, second, year = (int(part) for part in match.group(0).split("/"))
    month, day = (first, second) if first <= 12 else (second, first)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match.group(0).replace("/", " ")
    return f"{MONTHS[month - 1]} {day}, {year}"


def _nothing(_match: re.Match[str]) -> str:
    return ""


def _space(_match: re.Match[str]) -> str:
    return " "


def _link_text(match: re.Match[str]) -> str:
    return match.group("label")


RULES: tuple[tuple[str, Speaker], ...] = (
    # Markdown that LLMs emit and nobody reads aloud.
    (r"(?m:^[ \t]*```[^\n]*$)", _nothing),  # code fences (the code itself is kept)
    (r"(?m:^[ \t]*#{1,6}[ \t]+)", _nothing),  # headings
    (r"(?m:^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+)", _nothing),  # list markers
    (r"\[(?P<label>[^\]\n]{1,200})\]\([^)\s]{1,2000}\)", _link_text),  # [label](url)
    (r"[*`~]+", _nothing),  # emphasis, inline code, strikethrough
    (r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", _nothing),  # _emphasis_, not snake_case
    # Emoji and their joiners.
    (r"[\U0001F000-\U0001FAFF\u2600-\u27BF\uFE0F\u200D\u20E3]+", _nothing),
    # Addresses.
    (r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+", _email),
    (
        r"\b(?i:https?://|www\.)[^\s<>\"']{1,2000}?(?=[.,;:!?)\]]*(?:\s|$))",
        _url,
    ),
    # Numbers misaki misreads.
    (r"\b\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b", _iso_date),
    (r"\b\d{1,2}/\d{1,2}/\d{4}\b", _slashed_date),
    (
        r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b|\b\d{3}-\d{4}\b",
        _phone,
    ),
    (r"\b\d{7,}\b", lambda match: _digits(match.group(0))),
    (r"(?P<share>\d+(?:\.\d+)?)[ \t]?%", _percent),
    (
        r"(?P<amount>\d+(?:\.\d+)?)[ \t]?(?P<unit>(?i:km|kg|cm|mm|mph|kph|ms|gb|mb|kb|tb|ghz|mhz|°c|°f))\b",
        _unit,
    ),
    # Abbreviations, so their dots neither end a sentence nor get read.
    (r"\b(?P<title>St|Dr)\.(?=(?P<next>[ \t]+[A-Z])?)", _title),
    (r"(?<![A-Za-z])(?i:mrs|mr|ms|jr|sr|etc|vs|approx)\.|\b(?i:e\.g\.|i\.e\.)", _abbreviation),
)
_PATTERN = re.compile("|".join(f"(?P<r{index}>{pattern})" for index, (pattern, _) in enumerate(RULES)))


def normalize(text: str) -> Normalized:
    """``text`` as it should be read aloud, with where each rewrite came from."""
    passes: list[tuple[Rewrite, ...]] = []
    spoken = text
    for _ in range(MAX_PASSES):
        rewritten, rewrites = _one_pass(spoken)
        if not rewrites or rewritten == spoken:
            break
        passes.append(rewrites)
        spoken = rewritten
    return Normalized(spoken, text, tuple(passes))


def _one_pass(text: str) -> tuple[str, tuple[Rewrite, ...]]:
    out: list[str] = []
    rewrites: list[Rewrite] = []
    copied_to = 0
    length = 0
    for match in _PATTERN.finditer(text):
        rule = next(index for index in range(len(RULES)) if match.group(f"r{index}") is not None)
        spoken = RULES[rule][1](match)
        start, end = match.span()
        out.append(text[copied_to:start])
        length += start - copied_to
        rewrites.append((length, length + len(spoken), start, end))
        out.append(spoken)
        length += len(spoken)
        copied_to = end
    out.append(text[copied_to:])
    return "".join(out), tuple(rewrites)
