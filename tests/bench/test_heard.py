"""Scoring what a listener wrote down against what a person would say."""

from __future__ import annotations

import pytest

from krt.bench.heard import word_errors


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("it raised three point seven million dollars", "It raised $3.7 million."),
        ("forty two dollars and fifty cents", "$42.50"),
        ("june ninth", "June 9th"),
        ("eight oh five p m", "8:05 PM"),
        ("nine a m", "9am"),
        ("fourteen thirty", "14:30"),
        ("ticket number five one two three", "Ticket #5-1-2-3."),
        ("six zero four eight one three", "604 813"),
        ("five five five zero one four two", "555-0142"),
        ("twenty by thirty centimeters", "20 by 30 cm"),
        ("seventy two degrees fahrenheit", "72°F"),
        ("example dot com slash help", "example.com/help"),
        ("pens paper et cetera", "Pens, paper, etc."),
        ("doctor smith", "Dr. Smith"),
    ],
)
def test_a_written_form_of_what_was_said_is_no_error(spoken, written):
    assert word_errors(spoken, written)[0] == 0


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("three point seven million dollars", "$3.07 M"),  # "three dollars and seven cents em"
        ("four miles", "4 me"),  # "four mee"
        ("june ninth", "6 0 9"),  # "six zero nine"
        ("three times faster", "3 x faster"),  # "three ex faster"
        ("version three point two point one", "version 3 2 1"),
    ],
)
def test_a_misreading_still_counts_however_it_is_written(spoken, written):
    assert word_errors(spoken, written)[0] > 0


def test_errors_are_counted_in_words_of_the_reference():
    edits, words = word_errors(
        "the birch canoe slid on the smooth planks", "the birch canoe slid on smooth planks"
    )
    assert (edits, words) == (1, 8)
