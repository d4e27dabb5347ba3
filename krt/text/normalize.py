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
wrote. Numbers that are not plain quantities (magnitudes, codes, versions, dates, clock
times, ranges, units) have their rules in ``krt.text.numbers``, which leaves the digits
to misaki and its num2words; the phonenumbers library validates numbers by country but
does not say how to read them, so phone numbers are read here, in their groups.
"""

from __future__ import annotations

import re

import attrs

from krt.text.numbers import DATES_AND_TIMES, NUMBER_RULES, NUMBER_START, Speaker, digits, keeps_period

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
    "dept.": "department",
    "ave.": "Avenue",
    "blvd.": "Boulevard",
    "apt.": "apartment",
    "ext.": "extension",
    "est.": "estimated",
    "prof.": "Professor",
    "mt.": "Mount",
}
"""Abbreviations with one reading; "St." and "Dr." depend on what follows them."""
TITLES = frozenset(
    {"mr.", "mrs.", "ms.", "jr.", "sr.", "e.g.", "i.e.", "vs.", "approx.", "prof.", "mt.", "est."}
)
"""Abbreviations whose period is not taken for a full stop: a sentence hardly ends on
them, and what follows them is often a capital ("Martin Luther King Jr. Day")."""


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


def _words_of(part: str) -> str:
    """A URL or address part: letters and digits as words, "dot" for dots, the rest a space."""
    pieces = []
    for token in re.split(r"(\.)", part):
        if token == ".":
            pieces.append("dot")
        else:
            words = re.sub(r"[^A-Za-z0-9]+", " ", token).split()
            pieces.extend(digits(word) if word.isdigit() and len(word) > 4 else word for word in words)
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
    spoken = ", ".join("eight hundred" if group == "800" else digits(group) for group in groups)
    return ("plus " if match.group(0).startswith("+") else "") + spoken


def _abbreviation(match: re.Match[str]) -> str:
    written = match.group(0).lower()
    spoken = ABBREVIATIONS[written]
    if match.group(0)[0].isupper():  # "Est. delivery" begins a sentence
        spoken = spoken[0].upper() + spoken[1:]
    return spoken if written in TITLES else keeps_period(match, spoken)


def _title(match: re.Match[str]) -> str:
    """ "St." and "Dr." before a name are titles; after one, a street or a drive."""
    word = match.group("title").lower()
    before_name = match.group("next") is not None
    if before_name:
        return "Saint" if word == "st" else "Doctor"
    return keeps_period(match, "Street" if word == "st" else "Drive")


def _nothing(_match: re.Match[str]) -> str:
    return ""


def _space(_match: re.Match[str]) -> str:
    return " "


def _percent(match: re.Match[str]) -> str:
    return f"{match.group('share')} percent"


def _link_text(match: re.Match[str]) -> str:
    return match.group("label")


MARKUP_AND_ADDRESSES: tuple[tuple[str, Speaker], ...] = (
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
    (r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+", _email),
    (
        r"\b(?i:https?://|www\.)[^\s<>\"']{1,2000}?(?=[.,;:!?)\]]*(?:\s|$))",
        _url,
    ),
    (  # a bare domain: "example.com/help", "status.example.org"
        r"(?<![\w.@/-])(?:[A-Za-z0-9-]{1,63}\.){1,8}(?i:com|org|net|io|dev|ai|app|co|edu|gov|us|uk|me|info)\b"
        r"(?:/[^\s<>\"']{0,2000}?)?(?=[.,;:!?)\]]*(?:\s|$))",
        _url,
    ),
)
NUMBERS: tuple[tuple[str, Speaker], ...] = (
    # Numbers misaki misreads (krt.text.numbers).
    *DATES_AND_TIMES,
    (
        r"(?=[+(\d])(?:\+\d{1,3}[ .-]?|\b1[ .-])?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b|\b\d{3}-\d{4}\b",
        _phone,
    ),
    (r"(?P<share>\d+(?:\.\d+)?)[ \t]?%", _percent),
    *NUMBER_RULES,
)
ABBREVIATIONS_READ: tuple[tuple[str, Speaker], ...] = (
    # Abbreviations, so their dots neither end a sentence nor get read.
    (r"\b(?P<title>St|Dr)\.(?=(?P<next>[ \t]+[A-Z])?)", _title),
    (
        r"(?<![A-Za-z])(?=[ABDEIJMPSVabdeijmpsv])(?i:(?:mrs|mr|ms|jr|sr|etc|vs|approx|dept|ave|blvd|apt|ext|est|prof|mt)\.|e\.g\.|i\.e\.)",
        _abbreviation,
    ),
)
RULES = (*MARKUP_AND_ADDRESSES, *NUMBERS, *ABBREVIATIONS_READ)
"""Every rule, in the order they are tried at one position."""
_RULE_PATTERNS = tuple(re.compile(pattern) for pattern, _speaker in RULES)


def _alternation(rules: tuple[tuple[str, Speaker], ...], first: int) -> str:
    return "|".join(
        f"(?P<r{first + index}>{re.sub(r'[(][?]P<[a-z_0-9]+>', '(?:', pattern)})"
        for index, (pattern, _speaker) in enumerate(rules)
    )


_PATTERN = re.compile(
    "|".join(
        (
            _alternation(MARKUP_AND_ADDRESSES, 0),
            f"(?={NUMBER_START})(?:{_alternation(NUMBERS, len(MARKUP_AND_ADDRESSES))})",
            _alternation(ABBREVIATIONS_READ, len(MARKUP_AND_ADDRESSES) + len(NUMBERS)),
        )
    )
)
"""Every rule in one alternation, so one scan finds the leftmost match of any. The number
rules sit behind one look at the next character, which most characters (lower-case
letters) fail, so a scan costs little more than before they were added. Rules name their
groups, which must be unique in one pattern, so the alternation drops the names and the
rule that matched is run again at the same place (same pattern, same place, same match)
for its speaker to read them."""


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
        rule = int(str(match.lastgroup)[1:])  # the only named groups are the rules' own
        start, end = match.span()
        own = _RULE_PATTERNS[rule].match(text, start)
        if own is None or own.end() != end:  # cannot happen: the same pattern at the same place
            continue
        spoken = RULES[rule][1](own)
        out.append(text[copied_to:start])
        length += start - copied_to
        rewrites.append((length, length + len(spoken), start, end))
        out.append(spoken)
        length += len(spoken)
        copied_to = end
    out.append(text[copied_to:])
    return "".join(out), tuple(rewrites)
