"""Numbers that are not plain quantities, rewritten into forms misaki reads right.

misaki verbalises numbers with num2words, and reads "$42.50", "3.7", "9th" and "2026"
well; what it gets wrong is the notation around them. "$3.7M" became "three dollars
and seven cents em", "8:05" kept a colon between "eight" and "zero five", "1920x1080" an
"ex", "Ticket #5123" a quantity with no "number". So these rules do not verbalise: they
turn the notation into words and leave the numbers as digits for num2words ("$3.7M" →
"3.7 million dollars", "8:05" → "8 oh 5", "06/09" → "June 9th"), except where a person
reads digits one by one (codes, long digit strings), which num2words cannot know.

Each rule is ``(pattern, speaker)``; ``krt.text.normalize`` runs them, in this order,
inside its one alternation per pass. Spoken forms contain none of the notation a rule
matches, so normalizing twice is normalizing once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_SPOKEN_DIGITS = 24
"""A digit string is read digit by digit up to this many; the rest is counted, not read."""
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
MONTH_BY_PREFIX = {month[:3].lower(): month for month in MONTHS}
WEEKDAYS = {
    "mon": "Monday",
    "tue": "Tuesday",
    "tues": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "thur": "Thursday",
    "thurs": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}
CURRENCIES = {"$": "dollars", "€": "euros", "£": "pounds"}
MAGNITUDES = {
    "k": "thousand",
    "thousand": "thousand",
    "m": "million",
    "mm": "million",
    "mn": "million",
    "million": "million",
    "b": "billion",
    "bn": "billion",
    "billion": "billion",
    "t": "trillion",
    "tn": "trillion",
    "trillion": "trillion",
}
UNITS = {
    "km": ("kilometer", "kilometers"),
    "kg": ("kilogram", "kilograms"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "ml": ("milliliter", "milliliters"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "yd": ("yard", "yards"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "mph": ("mile per hour", "miles per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "ms": ("millisecond", "milliseconds"),
    "sec": ("second", "seconds"),
    "secs": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "mg": ("milligram", "milligrams"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "gal": ("gallon", "gallons"),
    "mbps": ("megabit per second", "megabits per second"),
    "gbps": ("gigabit per second", "gigabits per second"),
    "kwh": ("kilowatt hour", "kilowatt hours"),
    "gb": ("gigabyte", "gigabytes"),
    "mb": ("megabyte", "megabytes"),
    "kb": ("kilobyte", "kilobytes"),
    "tb": ("terabyte", "terabytes"),
    "ghz": ("gigahertz", "gigahertz"),
    "mhz": ("megahertz", "megahertz"),
    "sq ft": ("square foot", "square feet"),
    "°c": ("degree Celsius", "degrees Celsius"),
    "°f": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
}
"""Unit abbreviations after a number, in any case: (one, many)."""
SPACED_UNITS = {"m": ("meter", "meters"), "L": ("liter", "liters"), "W": ("watt", "watts")}
"""One-letter units, only as written here and after a space: "5m" may be minutes or
millions, "5 M users" is no length."""
CODE_WORDS = ("code", "pin", "otp", "passcode", "password", "extension", "ext.", "ends in")
"""A number right after one of these (and "is" or a colon) is read digit by digit."""

Speaker = Callable[["re.Match[str]"], str]

NUMBER_START = r"[\dA-Zv$€£#+(\-–—]"
"""Every rule here starts at one of these: a digit, a currency or a sign, a capital (a
month or a weekday), "v" (a version), or the dash of a range."""

_GOES_ON = r"(?=[ \t]+[^\sA-Z]|[,;:!?)\]])"
SENTENCE_GOES_ON = re.compile(_GOES_ON)
"""After an abbreviation's period: what follows is more of the same sentence (a capital
letter, a line break or the end mean the period also ended the sentence)."""


def digits(number: str) -> str:
    """Digit by digit, in the groups a person reads a code in, separated by commas (a
    pause): up to five digits at once, six and seven as three and the rest ("six zero
    four, eight one three"), longer ones in fours."""
    spoken = [DIGIT_WORDS[int(digit)] for digit in number[:MAX_SPOKEN_DIGITS]]
    first = len(spoken) if len(spoken) <= 5 else 3 if len(spoken) <= 7 else 4
    cuts = [0, *range(first, len(spoken), 4 if first == 4 else len(spoken)), len(spoken)]
    text = ", ".join(" ".join(spoken[start:stop]) for start, stop in itertools.pairwise(cuts) if stop > start)
    if len(number) > MAX_SPOKEN_DIGITS:
        text += f", and {len(number) - MAX_SPOKEN_DIGITS} more digits"
    return text


def keeps_period(match: re.Match[str], spoken: str) -> str:
    """``spoken`` for an abbreviation that ends in a period, with the period kept where it
    also ends the sentence ("… paper, etc." or "about 5 min. Then"): dropping it would
    join two sentences into one breath."""
    if not match.group(0).endswith(".") or SENTENCE_GOES_ON.match(match.string, match.end()):
        return spoken
    return spoken + "."


def ordinal(day: int) -> str:
    """9 → "9th", 21 → "21st", 12 → "12th": what num2words reads as an ordinal."""
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _date(month: int, day: int) -> str:
    return f"{MONTHS[month - 1]} {ordinal(day)}"


def _iso_date(match: re.Match[str]) -> str:
    year, month, day = (int(part) for part in match.group(0).split("-"))
    return f"{_date(month, day)}, {year}"


def _slashed_date(match: re.Match[str]) -> str:
    """Month first as in the US, unless the first number cannot be a month."""
    first, second, year = (int(part) for part in match.group(0).split("/"))
    month, day = (first, second) if first <= 12 else (second, first)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match.group(0).replace("/", " ")
    return f"{_date(month, day)}, {year}"


def _month_day(match: re.Match[str]) -> str:
    """ "06/09", "Jun 9", "9 June": what a person reads as "June ninth"."""
    groups = match.groupdict()
    month, day = groups.get("month") or groups["m"], groups.get("day") or groups["d"]
    number = int(month) if month.isdigit() else MONTHS.index(MONTH_BY_PREFIX[month[:3].lower()]) + 1
    return _date(number, int(day))


def _weekday(match: re.Match[str]) -> str:
    return keeps_period(match, WEEKDAYS[match.group("weekday").lower()])


def _clock(match: re.Match[str]) -> str:
    """ "8:05" → "8 oh 5", "3:30 PM" → "3 30 PM", "10:00 a.m." → "10 AM", "14:00" → "14 hundred"."""
    hour, minutes = int(match.group("hour")), match.group("minutes")
    half = _half_day(match)
    if minutes == "00":
        spoken = f"{hour}" if half else f"{hour} hundred" if hour == 0 or hour > 12 else f"{hour} o'clock"
    elif minutes.startswith("0"):
        spoken = f"{hour} oh {minutes[1]}"
    else:
        spoken = f"{hour} {minutes}"
    return keeps_period(match, spoken + half)


def _hour(match: re.Match[str]) -> str:
    return keeps_period(match, f"{int(match.group('hour'))}{_half_day(match)}")


def _half_day(match: re.Match[str]) -> str:
    half = match.groupdict().get("half")
    return "" if half is None else " AM" if half[0] in "aA" else " PM"


def _money_magnitude(match: re.Match[str]) -> str:
    """ "$3.7M" → "3.7 million dollars"; "1.5B" → "1.5 billion"."""
    spoken = f"{match.group('amount')} {MAGNITUDES[match.group('magnitude').lower()]}"
    currency = match.groupdict().get("currency")
    return f"{spoken} {CURRENCIES[currency]}" if currency else spoken


def _times(match: re.Match[str]) -> str:
    return f"{match.group('factor')} times"


def _by(match: re.Match[str]) -> str:
    """ "20 x 30" → "20 by 30"; "5 mm x 10 mm" → "5 millimeters by 10 millimeters"."""
    return f"{_unit(match) if match.group('unit') else match.group('side')} by "


def _to(match: re.Match[str]) -> str:
    return "to " if match.string[match.start() - 1] in " \t" else " to "


def _numbered(match: re.Match[str]) -> str:
    """ "#5123" → "number five one two three"; "#3" → "number 3"."""
    number = match.group("number")
    return f"number {digits(number) if len(number) >= 4 else number}"


def _digit_by_digit(match: re.Match[str]) -> str:
    return digits(match.group("code"))


def _spaced_digits(match: re.Match[str]) -> str:
    return " " + digits(match.group("code"))


def _version(match: re.Match[str]) -> str:
    """ "v3.2.1" → "version 3 point 2 point 1": each part is a whole number ("1.10" is
    "one point ten", not one and a tenth)."""
    spoken = " point ".join(match.group("parts").split("."))
    return f"version {spoken}" if match.groupdict().get("v") else spoken


def _counted(amount: str, one: str, many: str) -> str:
    return f"{amount} {one if amount == '1' else many}"


def _unit(match: re.Match[str]) -> str:
    amount = match.groupdict().get("amount") or match.group("side")
    return _counted(amount, *UNITS[re.sub(r"[ \t]+", " ", match.group("unit").lower())])


def _spaced_unit(match: re.Match[str]) -> str:
    return _counted(match.group("amount"), *SPACED_UNITS[match.group("unit")])


def _feet_inches(match: re.Match[str]) -> str:
    return (
        f"{_counted(match.group('feet'), 'foot', 'feet')} {_counted(match.group('inches'), 'inch', 'inches')}"
    )


_MONTH_NAME = "|".join(
    [*MONTHS, "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sept", "Sep", "Oct", "Nov", "Dec"]
)
_DAY = r"(?P<day>[12]\d|3[01]|0?[1-9])"
_HALF = r"(?P<half>(?i:a\.m\.|p\.m\.|am|pm))(?![\w])"
_NUMBER = r"\d+(?:\.\d+)?"
_UNIT_NAMES = "|".join(
    re.escape(unit).replace(r"\ ", r"[ \t]") for unit in sorted(UNITS, key=len, reverse=True)
)
_CODE_AFTER = "|".join(
    f"(?<=(?i:{word}){tail})" for word in CODE_WORDS for tail in (" ", ": ", " is ", " is: ", " number ")
)

DATES_AND_TIMES: tuple[tuple[str, Speaker], ...] = (
    (r"\b\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b", _iso_date),
    (r"\b\d{1,2}/\d{1,2}/\d{4}\b", _slashed_date),
    # "06/09", "12/25", "1/15", but not "1/2" or "3/4" (fractions) or "24/7".
    (
        r"(?<![\d/])(?:(?P<month>0[1-9]|1[0-2])/(?P<day>[12]\d|3[01]|0[1-9])|(?P<m>[1-9])/(?P<d>1[3-9]|2\d|3[01]))(?![\d/])",
        _month_day,
    ),
    (rf"\b(?P<month>{_MONTH_NAME})\.?[ \t]+{_DAY}(?![\d:]|st|nd|rd|th)", _month_day),
    (rf"\b{_DAY}(?:st|nd|rd|th)?[ \t]+(?P<month>{_MONTH_NAME})\b", _month_day),
    (
        rf"\b(?P<weekday>{'|'.join(day.capitalize() for day in WEEKDAYS)})(?:\.|\b(?=,?[ \t]+(?:{_MONTH_NAME}|\d)))",
        _weekday,
    ),
    (rf"(?<![\d:.])(?P<hour>[01]?\d|2[0-3]):(?P<minutes>[0-5]\d)(?:[ \t]?{_HALF}|(?![\w:]))", _clock),
    (rf"\b(?P<hour>1[0-2]|0?[1-9])[ \t]?{_HALF}", _hour),
)
"""Dates and clock times: before the numbers below, which would take their parts."""

NUMBER_RULES: tuple[tuple[str, Speaker], ...] = (
    # Magnitudes: "$3.7M", "$12K", "1.5B", "$2.3 million".
    (
        rf"(?P<currency>[$€£])(?P<amount>{_NUMBER})[ \t]?(?P<magnitude>(?i:k|mm|mn|m|bn|b|tn|t)"
        r"|thousand|million|billion|trillion)(?![\w-])",
        _money_magnitude,
    ),
    # "12K" but not "4K" (a screen) or "5K" (a race).
    (r"(?<![\w.])(?P<amount>\d+\.\d+|\d{2,})(?P<magnitude>[kK])(?![\w-])", _money_magnitude),
    # "10M downloads", "1.5B", "5M users", but not "unit 3B".
    (
        r"(?<![\w.])(?P<amount>\d+\.\d+|\d{2,}|\d(?=[MB][ \t]+[a-z]+s\b))(?P<magnitude>MM|M|B|bn)(?![\w-])",
        _money_magnitude,
    ),
    # Dimensions, then multipliers: "20 x 30", "1920x1080", "3x faster".
    (
        rf"(?<![\w.])(?!0[xX])(?P<side>{_NUMBER})(?:[ \t]?(?=[A-Za-z°])(?P<unit>(?i:{_UNIT_NAMES})))?[ \t]*[xX×][ \t]*(?=\d)",
        _by,
    ),
    (rf"(?<![\w.])(?P<factor>{_NUMBER})[xX×](?![\w])", _times),
    # Ranges: "$10–$20", "2-3 days", "3:30–4:00".
    (r"(?:(?<=\d)|(?<=\d[ \t]))[–—][ \t]*(?=[$€£]?\d)|(?<=\d)-(?=[$€£]?\d)", _to),
    # Numbers that are not quantities.
    (r"#[ \t]?(?P<number>\d+)\b", _numbered),
    (rf"(?=\d{{3}})(?:{_CODE_AFTER})(?P<code>\d{{3,}})\b", _digit_by_digit),
    (r"(?<=[A-Za-z]-)(?P<code>\d{4,})\b", _digit_by_digit),
    (r"(?<=[A-Z])(?P<code>\d{4,})\b", _spaced_digits),  # TBA3920571
    (r"(?<![$€£.,\d])\b(?P<code>\d{5,}|911)\b(?![.,]\d)", _digit_by_digit),
    (r"\b(?P<v>v)(?P<parts>\d+(?:\.\d+)*)\b(?!\.\d)", _version),
    (r"(?<![\w.])(?P<parts>\d+\.\d+\.\d+)(?![\w]|\.\d)", _version),
    (r"(?<=(?i:version) )(?P<parts>\d+\.\d+)(?![\w]|\.\d)", _version),
    # Units: "6 ft 2 in", "4 mi.", "5 min.", "30°C".
    (rf"\b(?P<feet>\d+)[ \t]?(?=f)ft\.?[ \t]?(?P<inches>\d+)[ \t]?in\b(?:\.{_GOES_ON})?", _feet_inches),
    (
        rf"(?P<amount>{_NUMBER})[ \t]?(?=[A-Za-z°])(?P<unit>(?i:{_UNIT_NAMES}))(?:(?<=°)|\b)(?:(?<=[A-Za-z])\.{_GOES_ON})?",
        _unit,
    ),
    (rf"(?P<amount>{_NUMBER})[ \t](?P<unit>[mLW])\b(?![.'-]\w)", _spaced_unit),
)
"""Every other number misaki misreads, in the order they are tried at one position."""
