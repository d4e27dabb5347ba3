from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krt.engine.segmenter import AUDIO_SECONDS_PER_CHAR, Segmenter, split_in_two
from krt.errors import SpeechError
from tests.conftest import make_config


def segmenter(**overrides: str) -> Segmenter:
    return Segmenter(make_config(**overrides).segments)


def test_short_text_is_one_segment():
    assert segmenter().split("Hello there.") == ["Hello there."]


def test_sentences_become_segments_in_order():
    text = "Hi. How are you today? I hope all is well!\nSee you soon."
    assert segmenter().split(text) == ["Hi.", "How are you today?", "I hope all is well!", "See you soon."]


def test_sentences_are_whole_unless_a_first_cut_is_configured():
    text = "Well, after the long meeting today, we decided to move the launch to next week. Bye."
    assert segmenter().split(text) == [
        "Well, after the long meeting today, we decided to move the launch to next week.",
        "Bye.",
    ]


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        ("1", "one, two three four five six."),
        ("2", "one two, three four five six."),
        ("8", "These days a chicken leg is a rare dish."),
        ("8", "one two three four five six seven, eight nine ten."),
    ],
)
def test_no_first_cut_leaves_a_piece_under_three_words(limit, text):
    pieces = segmenter(FIRST_SEGMENT_MAX_WORDS=limit).split(text)
    assert " ".join(pieces) == text
    assert all(len(piece.split()) >= 3 for piece in pieces)


def test_long_first_sentence_is_cut_at_the_last_boundary_within_the_limit():
    text = "Well, after the long meeting today, we decided to move the launch to next week. Bye."
    assert segmenter(FIRST_SEGMENT_MAX_WORDS="8").split(text) == [
        "Well, after the long meeting today,",
        "we decided to move the launch to next week.",
        "Bye.",
    ]


def test_first_segment_falls_back_to_a_word_cut_without_a_boundary():
    text = "one two three four five six seven eight nine ten eleven twelve."
    assert segmenter(FIRST_SEGMENT_MAX_WORDS="5").split(text) == [
        "one two three four five",
        "six seven eight nine ten eleven twelve.",
    ]


def test_required_boundary_waits_for_the_next_punctuation():
    text = "one two three four five six seven, eight nine ten."
    assert segmenter(FIRST_SEGMENT_MAX_WORDS="5", FIRST_SEGMENT_REQUIRE_BOUNDARY="1").split(text) == [
        "one two three four five six seven,",
        "eight nine ten.",
    ]


def test_required_boundary_without_any_punctuation_keeps_the_sentence_whole():
    text = "one two three four five six seven eight"
    assert segmenter(FIRST_SEGMENT_MAX_WORDS="5", FIRST_SEGMENT_REQUIRE_BOUNDARY="1").split(text) == [text]


def test_boundary_inside_closing_quote_counts():
    text = 'He said "wait," and then the whole room went quiet for a while.'
    assert segmenter(FIRST_SEGMENT_MAX_WORDS="6").split(text)[0] == 'He said "wait,"'


def test_custom_split_pattern():
    assert segmenter(KOKORO_SPLIT_PATTERN=r"\s*\|\s*").split("a b | c d") == ["a b", "c d"]


def test_no_words_is_invalid_input():
    with pytest.raises(SpeechError) as caught:
        segmenter().split("   \n ")
    assert caught.value.code == "invalid_input"


def test_too_many_words_is_too_long():
    with pytest.raises(SpeechError) as caught:
        segmenter(MAX_UTTERANCE_WORDS="5").split("one two three four five six")
    assert caught.value.code == "too_long"
    assert "6 words" in caught.value.message


def test_exactly_the_word_limit_is_accepted():
    assert segmenter(MAX_UTTERANCE_WORDS="5").split("one two three four five")


def test_a_word_over_the_character_limit_is_too_long_and_says_which_limit():
    with pytest.raises(SpeechError) as caught:
        segmenter().split("Please read " + "a." * 1000 + " aloud.")
    assert caught.value.code == "too_long"
    assert "2000 characters" in caught.value.message and "MAX_WORD_CHARS" in caught.value.message
    assert segmenter(MAX_WORD_CHARS="10").split("exactly 10")  # a word of 10 is fine
    with pytest.raises(SpeechError, match="MAX_WORD_CHARS"):
        segmenter(MAX_WORD_CHARS="10").split("elevenchars")


def test_text_predicted_to_play_too_long_is_refused_and_slower_speech_plays_longer():
    text = "word " * 100  # 500 characters: about 32 s at speed 1
    assert segmenter(MAX_UTTERANCE_SECONDS="40").split(text)
    with pytest.raises(SpeechError) as caught:
        segmenter(MAX_UTTERANCE_SECONDS="40").split(text, speed=0.5)
    assert caught.value.code == "too_long"
    assert "MAX_UTTERANCE_SECONDS" in caught.value.message


def test_split_in_two_prefers_sentence_then_clause_ends_near_the_middle():
    assert split_in_two("Alpha beta gamma. Delta epsilon, zeta eta theta.") == (
        "Alpha beta gamma.",
        "Delta epsilon, zeta eta theta.",
    )
    assert split_in_two("a b c, d e f g h, i j") == ("a b c,", "d e f g h, i j")


def test_split_in_two_without_punctuation_cuts_near_the_middle_word():
    head, tail = split_in_two("aa bb cc dd ee ff")
    assert (head, tail) == ("aa bb cc", "dd ee ff")


def test_split_in_two_of_a_single_word_cuts_characters():
    assert split_in_two("abcdef") == ("abc", "def")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600), st.floats(min_value=0.5, max_value=2.0))
def test_any_text_is_refused_clearly_or_split_without_losing_a_word(text, speed):
    config = make_config(MAX_UTTERANCE_WORDS="40", MAX_WORD_CHARS="16", MAX_UTTERANCE_SECONDS="20").segments
    try:
        segments, refused = Segmenter(config).split(text, speed), None
    except SpeechError as error:
        segments, refused = [], error.code
    words = text.split()
    if refused is not None:
        assert refused in ("too_long", "invalid_input")
        return
    assert [word for segment in segments for word in segment.split()] == words
    assert 0 < len(words) <= 40 and max(map(len, words)) <= 16
    assert len(text) * AUDIO_SECONDS_PER_CHAR / speed <= 20
