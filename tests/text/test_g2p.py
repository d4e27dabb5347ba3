"""misaki G2P offline: numbers, money, times and abbreviations are read as a person would."""

from __future__ import annotations

import re

import pytest

from krt.text.g2p import MisakiPhonemizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def american() -> MisakiPhonemizer:
    return MisakiPhonemizer("a")


def sounds(phonemes: str) -> list[str]:
    """Phonemes without stress marks and punctuation, as a list of words."""
    return re.sub(r"[,.:;!?—-]", " ", re.sub(r"[ˈˌ]", "", phonemes)).split()


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("$42.50", "forty two dollars and fifty cents"),
        ("3:30 PM", "three thirty PM"),
        ("Dr. Smith", "doctor Smith"),
        ("in 2026", "in twenty twenty six"),
    ],
)
def test_written_forms_are_read_out(american, written, spoken):
    assert sounds(american.phonemize(written)) == sounds(american.phonemize(spoken))


def test_unknown_words_fall_back_to_espeak(american):
    phonemes = american.phonemize("Zorblatt quuxifies.")
    assert phonemes and "❓" not in phonemes
    assert len(sounds(phonemes)) == 2


def test_british_differs_from_american(american):
    british = MisakiPhonemizer("b")
    assert british.phonemize("tomato") != american.phonemize("tomato")
