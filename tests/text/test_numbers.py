"""Numbers that are not plain quantities: what an LLM writes, in the words a person says.

Each case gives the text as written, what krt hands G2P, and one spoken word with the
piece of the client's text it must map back to (word timestamps return the written
words). misaki reads the digits left in the spoken form (num2words), and the tests of
the real model hear them; these check the notation around them.
"""

from __future__ import annotations

import pytest

from krt.text.normalize import normalize
from krt.text.numbers import digits

CASES = {
    "magnitudes": [
        ("It raised $3.7M last year.", "It raised 3.7 million dollars last year.", "million", "$3.7M"),
        ("It costs $12K.", "It costs 12 thousand dollars.", "thousand", "$12K"),
        ("We have 1.5B users.", "We have 1.5 billion users.", "billion", "1.5B"),
        ("A €2.3 million grant.", "A 2.3 million euros grant.", "euros", "€2.3 million"),
        ("Up 450k, 10M downloads.", "Up 450 thousand, 10 million downloads.", "million", "10M"),
        ("A 5K run, a 4K screen, $5 T-shirts.", "A 5K run, a 4K screen, $5 T-shirts.", "screen", "screen"),
    ],
    "multipliers": [
        ("It is 3x faster.", "It is 3 times faster.", "times", "3x"),
        ("A 2.5X gain.", "A 2.5 times gain.", "times", "2.5X"),
    ],
    "dimensions": [
        ("The board is 20 x 30 cm.", "The board is 20 by 30 centimeters.", "by", "20 x "),
        ("Set it to 1920x1080.", "Set it to 1920 by 1080.", "by", "1920x"),
        ("A 2×4 plank, 5 mm x 10 mm.", "A 2 by 4 plank, 5 millimeters by 10 millimeters.", "plank", "plank"),
        ("The 0x1F flag.", "The 0x1F flag.", "flag", "flag"),
    ],
    "codes": [
        ("Ticket #5123 is open.", "Ticket number five one two three is open.", "three", "#5123"),
        ("You are #3 in line.", "You are number 3 in line.", "number", "#3"),
        ("Your code is 604813.", "Your code is six zero four, eight one three.", "six", "604813"),
        ("Your PIN: 4921.", "Your PIN: four nine two one.", "nine", "4921"),
        (
            "Order A-10442, case ABX-7731.",
            "Order A-one zero four four two, case ABX-seven seven three one.",
            "two",
            "10442",
        ),
        ("Zip 94103.", "Zip nine four one zero three.", "zero", "94103"),
        ("It costs $10000 now.", "It costs $10000 now.", "now", "now"),
        ("Tracking TBA3920571.", "Tracking TBA three nine two, zero five seven one.", "three", "3920571"),
        (
            "Card ends in 4417, extension 2107.",
            "Card ends in four four one seven, extension two one zero seven.",
            "seven",
            "4417",
        ),
        (
            "Call 911 or 800-555-0175.",
            "Call nine one one or eight hundred, five five five, zero one seven five.",
            "hundred",
            "800-555-0175",
        ),
        ("Left at unit 3B, 5M users.", "Left at unit 3B, 5 million users.", "million", "5M"),
    ],
    "versions": [
        ("Update to v3.2.1 today.", "Update to version 3 point 2 point 1 today.", "point", "v3.2.1"),
        ("It is version 1.10.2.", "It is version 1 point 10 point 2.", "10", "1.10.2"),
        ("Use version 1.10 or v2, not V8.", "Use version 1 point 10 or version 2, not V8.", "point", "1.10"),
    ],
    "dates": [
        ("See you on 06/09.", "See you on June 9th.", "June", "06/09"),
        (
            "Due 12/25, 24/7 support, 1/2 cup.",
            "Due December 25th, 24/7 support, 1/2 cup.",
            "December",
            "12/25",
        ),
        ("It's Mon, Jun 9.", "It's Monday, June 9th.", "Monday", "Mon"),
        ("On 9 June 2025 or Sept 3.", "On June 9th 2025 or September 3rd.", "September", "Sept 3"),
        ("On 2024-03-15 we met.", "On March 15th, 2024 we met.", "March", "2024-03-15"),
        (
            "Back by 1/15, open Mon. through Fri.",
            "Back by January 15th, open Monday through Friday.",
            "Friday",
            "Fri.",
        ),
    ],
    "times": [
        ("Meet at 8:05 tonight.", "Meet at 8 oh 5 tonight.", "oh", "8:05"),
        ("At 8:05 PM and 14:30.", "At 8 oh 5 PM and 14 30.", "PM", "8:05 PM"),
        ("From 10:00 a.m. to 5 p.m. Then close.", "From 10 AM to 5 PM. Then close.", "AM", "10:00 a.m."),
        ("Open 3:30–4:00 PM at 9am.", "Open 3 30 to 4 PM at 9 AM.", "to", "–"),
        ("At 8:00 or 14:00.", "At 8 o'clock or 14 hundred.", "hundred", "14:00"),
    ],
    "ranges": [
        ("In 2-3 days, for $10–$20.", "In 2 to 3 days, for $10 to $20.", "to", "-"),
        (
            "Call 1-800-555-0100.",
            "Call one, eight hundred, five five five, zero one zero zero.",
            "eight",
            "1-800-555-0100",
        ),
    ],
    "units": [
        (
            "It is 4 mi. away, about 5 min. by car.",
            "It is 4 miles away, about 5 minutes by car.",
            "miles",
            "4 mi.",
        ),
        ("About 1 min. Then 3 hrs, 10 sec.", "About 1 minute. Then 3 hours, 10 seconds.", "minute", "1 min"),
        ("It weighs 12 lbs and 3 oz.", "It weighs 12 pounds and 3 ounces.", "ounces", "3 oz"),
        ("I am 6 ft 2 in tall.", "I am 6 feet 2 inches tall.", "inches", "6 ft 2 in"),
        ("It is 72° and 500 sq ft.", "It is 72 degrees and 500 square feet.", "square", "500 sq ft"),
        (
            "Take 500 mg, 2 tbsp, 2 L at 300 Mbps.",
            "Take 500 milligrams, 2 tablespoons, 2 liters at 300 megabits per second.",
            "liters",
            "2 L",
        ),
        ("The cable is 1 m long, not 5m.", "The cable is 1 meter long, not 5m.", "meter", "1 m"),
    ],
    "abbreviations": [
        ("Bring pens, paper, etc.", "Bring pens, paper, et cetera.", "cetera", "etc."),
        ("Pens, etc., and go.", "Pens, et cetera, and go.", "et", "etc."),
        ("Pens etc. Then go.", "Pens et cetera. Then go.", "et", "etc."),
        ("It is on Main St.", "It is on Main Street.", "Street", "St."),
        (
            "Meet Mr. Li at 5 Oak Ave. in the dept.",
            "Meet Mister Li at 5 Oak Avenue in the department.",
            "Avenue",
            "Ave.",
        ),
    ],
}


@pytest.mark.parametrize(
    ("written", "spoken", "word", "source"),
    [case for cases in CASES.values() for case in cases],
    ids=[f"{kind}-{index}" for kind, cases in CASES.items() for index in range(len(cases))],
)
def test_what_llms_write_is_spoken_as_a_person_reads_it_and_maps_back(written, spoken, word, source):
    normalized = normalize(written)
    assert normalized.text == spoken
    start = spoken.index(word)
    lo, hi = normalized.source_span(start, start + len(word))
    assert written[lo:hi] == source


def test_a_sentence_that_ends_on_an_abbreviation_keeps_its_full_stop():
    """The segmenter splits on it: "… etc. Then …" must stay two sentences."""
    assert normalize("We sell pens, ink, etc. Then we close.").text.count(".") == 2
    assert normalize("We sell pens, ink, etc. and more.").text.count(".") == 1


@pytest.mark.parametrize(
    ("code", "spoken"),
    [
        ("1234", "one two three four"),
        ("94103", "nine four one zero three"),
        ("604813", "six zero four, eight one three"),
        ("5550142", "five five five, zero one four two"),
        ("12345678", "one two three four, five six seven eight"),
    ],
)
def test_codes_are_read_in_the_groups_a_person_pauses_between(code, spoken):
    assert digits(code) == spoken


def test_normalizing_what_was_spoken_changes_nothing():
    for cases in CASES.values():
        for _written, spoken, _word, _source in cases:
            assert normalize(spoken).text == spoken
