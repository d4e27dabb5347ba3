"""Text normalization: what LLMs write, read aloud the way a person would."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krt.text.normalize import normalize
from krt.text.numbers import MAX_SPOKEN_DIGITS


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        (
            "See https://www.example.com/support/reset-password?utm_source=chat today.",
            "See example dot com slash support slash reset password today.",
        ),
        ("Mail jane.doe@example.co.uk now.", "Mail jane dot doe at example dot co dot uk now."),
        ("Call 555-0142.", "Call five five five, zero one four two."),
        ("Call (555) 123-4567.", "Call five five five, one two three, four five six seven."),
        ("Call +44 20 7946 0958 today.", "Call +44 20 7946 0958 today."),  # not a pattern krt knows
        ("Meet Dr. Smith at 12 Main St. at noon.", "Meet Doctor Smith at 12 Main Street at noon."),
        ("St. Louis, e.g. in May, vs. Mr. Brown", "Saint Louis, for example in May, versus Mister Brown"),
        ("**Bold**, *it*, `code` and ~~gone~~ 🎉👍!", "Bold, it, code and gone !"),
        ("# Plan\n- first item\n2. second item", "Plan\nfirst item\nsecond item"),
        ("See [the docs](https://x.com/a) please.", "See the docs please."),
        (
            "It is 50% off, 5km away at 30°C.",
            "It is 50 percent off, 5 kilometers away at 30 degrees Celsius.",
        ),
        ("On 2024-03-15 we met.", "On March 15th, 2024 we met."),
        (
            "Due 3/15/2024 or 15/3/2024, not 13/13/2024.",
            "Due March 15th, 2024 or March 15th, 2024, not 13 13 2024.",
        ),
        ("snake_case stays, _emphasis_ goes", "snake_case stays, emphasis goes"),
        (
            "It costs $42.50 in 2026, on the 21st.",
            "It costs $42.50 in 2026, on the 21st.",
        ),  # misaki reads these
    ],
)
def test_what_llms_write_is_read_the_way_a_person_would(written, spoken):
    assert normalize(written).text == spoken


def test_long_digit_strings_are_read_digit_by_digit_and_bounded():
    spoken = normalize("Order " + "7" * 4000 + " shipped.").text
    assert spoken.count("seven") == MAX_SPOKEN_DIGITS
    assert f"and {4000 - MAX_SPOKEN_DIGITS} more digits" in spoken
    assert len(spoken) < 300


def test_every_spoken_piece_maps_back_to_what_the_client_wrote():
    written = "Hi **there**, mail ann@example.com or see www.example.org/help now."
    normalized = normalize(written)
    spoken = normalized.text
    for word, source in (
        ("there", "**there**"),
        ("ann", "ann@example.com"),
        ("help", "www.example.org/help"),
    ):
        start = spoken.index(word)
        lo, hi = normalized.source_span(start, start + len(word))
        assert lo <= written.index(source) + len(source) and hi >= written.index(source)
        assert (
            source in written[min(lo, written.index(source)) : max(hi, written.index(source) + len(source))]
        )
    # Untouched words map to themselves.
    start = spoken.index("now")
    assert normalized.source_span(start, start + 3) == (written.index("now"), written.index("now") + 3)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_normalization_never_raises_stays_bounded_and_is_idempotent(text):
    once = normalize(text).text
    assert len(once) <= 8 * len(text) + 32
    assert normalize(once).text == once


LLM_ALPHABET = st.sampled_from(
    [
        *"abcXYZ019 .,-_*#`~@/:%()[]+\n$€xX×–KMBv",
        *("http://", "www.", "Dr.", "St.", "e.g.", "etc.", "🎉", "555-0142", "km", "°C", "°"),
        *("mi.", "min.", "ft", "in", "a.m.", "PM", "06/09", "8:05", "1.5", "Jun", "Mon", "version "),
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LLM_ALPHABET, max_size=60).map("".join))
def test_markup_and_addresses_mixed_at_random_still_settle_in_one_normalization(text):
    once = normalize(text)
    assert normalize(once.text).text == once.text
    assert len(once.text) <= 8 * len(text) + 32
    assert once.source_span(0, len(once.text))[1] <= len(text)
