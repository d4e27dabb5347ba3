"""A long text cut into the parts a download speaks one after another."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krt.text.parts import parts

CHAPTER = " ".join(f"Sentence number {n} of the chapter ends here." for n in range(1, 40))


def test_parts_are_whole_sentences_within_their_limits():
    cut = list(parts(CHAPTER, 60, 200))
    assert len(cut[0]) <= 60 and all(len(part) <= 200 for part in cut)
    assert all(part.endswith("ends here.") for part in cut)
    assert " ".join(cut) == CHAPTER
    assert len(cut) >= len(CHAPTER) // 200  # packed, not a sentence a part


def test_a_short_text_is_one_part():
    assert list(parts("Hello there. How are you?", 200, 400)) == ["Hello there. How are you?"]


@pytest.mark.parametrize(
    ("sentence", "abbreviation"),
    [
        ("We met Dr. Smith at noon and talked.", "Dr."),
        ("A book by J. R. R. Tolkien sat on the shelf.", "R."),
        ("He lives at 5 Main St. in the old town.", "St."),
        ("Bring fruit, e.g. apples, and more.", "e.g."),
    ],
)
def test_a_part_never_ends_after_an_abbreviation(sentence, abbreviation):
    """Cut after "Dr." the two halves would be spoken a full stop apart: the part ends
    at the sentence before, though the cut after the abbreviation would fit."""
    text = f"Hello. {sentence} Bye now."
    fits_the_cut = text.index(abbreviation) + len(abbreviation) + 1
    assert list(parts(text, fits_the_cut, 400)) == ["Hello.", f"{sentence} Bye now."]


def test_lines_end_parts_where_no_sentence_mark_does():
    text = "Chapter One\n\n" + "\n".join(f"- item number {n}" for n in range(30))
    cut = list(parts(text, 40, 100))
    assert cut[0].startswith("Chapter One")
    assert all(len(part) <= 100 for part in cut)
    assert all(part.split("\n")[-1].startswith("- item") for part in cut[1:])


def test_a_sentence_longer_than_a_part_is_cut_at_its_clauses_then_its_spaces():
    clauses = ", ".join(f"and then clause {n} went on" for n in range(20)) + "."
    cut = list(parts(clauses, 50, 100))
    assert all(part.endswith((",", ".")) for part in cut)
    words = " ".join(["word"] * 100)
    cut = list(parts(words, 50, 100))
    assert all(len(part) <= 100 and set(part.split()) == {"word"} for part in cut)
    assert list(parts("x" * 250, 100, 100)) == ["x" * 100, "x" * 100, "x" * 50]


TEXT = st.lists(st.sampled_from([*"ab .,!?\n", "Dr. ", "J. ", " e.g. ", "word "]), max_size=200).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, first=st.integers(1, 80), most=st.integers(1, 200))
def test_every_word_is_in_exactly_one_part_in_order(text, first, most):
    cut = list(parts(text, first, max(first, most)))
    assert all(part and part == part.strip() for part in cut)
    assert all(len(part) <= max(first, most) for part in cut)
    assert "".join("".join(cut).split()) == "".join(text.split())
