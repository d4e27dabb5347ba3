"""Incremental input's rules on plain values: what is spoken at once, what waits, and until when."""

from __future__ import annotations

import pytest

from krt.server.input_buffer import MAX_INCREMENTAL_WORDS, InputBuffer

IDLE = 0.16


def test_complete_sentences_come_out_at_once_in_order_and_the_rest_is_kept():
    buffer = InputBuffer(IDLE)
    assert buffer.append("One. Two! Three? Four", 0.0) == ["One.", "Two!", "Three?"]
    assert buffer.pending
    assert buffer.take() == "Four"


def test_a_sentence_split_across_appends_comes_out_whole():
    buffer = InputBuffer(IDLE)
    assert buffer.append("Hel", 0.0) == []
    assert buffer.append("lo there. Wor", 0.1) == ["Hello there."]
    assert buffer.append("ld", 0.2) == []
    assert buffer.take() == "World"


def test_a_sentence_end_is_confirmed_by_the_whitespace_after_it():
    # "3." might go on as "3.5": a final mark waits for what follows.
    buffer = InputBuffer(IDLE)
    assert buffer.append("It costs 3.", 0.0) == []
    assert buffer.append("5 dollars. And", 0.1) == ["It costs 3.5 dollars."]
    assert buffer.append(" that is it.", 0.2) == []
    assert buffer.append(" ", 0.3) == ["And that is it."]
    assert not buffer.pending


def test_pieces_are_stripped_and_closing_quotes_stay_with_their_sentence():
    buffer = InputBuffer(IDLE)
    assert buffer.append('  He said "Stop."   Then   ', 0.0) == ['He said "Stop."']
    assert buffer.take() == "Then"


def test_a_run_on_is_cut_at_max_words_after_its_last_clause_mark():
    buffer = InputBuffer(IDLE, max_words=6)
    assert buffer.append("one two, three four, five", 0.0) == []  # 5 words: kept
    assert buffer.append(" six", 0.1) == ["one two, three four,"]
    assert buffer.take() == "five six"


def test_a_run_on_without_a_clause_mark_is_cut_before_its_last_word_which_may_still_grow():
    buffer = InputBuffer(IDLE, max_words=6)
    assert buffer.append("alpha bravo charlie delta echo fox", 0.0) == ["alpha bravo charlie delta echo"]
    assert buffer.append("trot", 0.1) == []
    assert buffer.take() == "foxtrot"


def test_the_default_limit_is_max_incremental_words():
    buffer = InputBuffer(IDLE)
    words = [f"w{n}" for n in range(MAX_INCREMENTAL_WORDS)]
    assert buffer.append(" ".join(words[:-1]), 0.0) == []
    assert buffer.append(" " + words[-1], 0.1) == [" ".join(words[:-1])]
    assert buffer.take() == words[-1]


def test_take_empties_the_buffer_and_clear_forgets_it():
    buffer = InputBuffer(IDLE)
    buffer.append("some words", 0.0)
    assert buffer.take() == "some words"
    assert buffer.take() == ""
    assert buffer.flush_due() is None
    buffer.append("barged over", 1.0)
    buffer.clear()
    assert not buffer.pending
    assert buffer.take() == ""
    assert buffer.flush_due() is None


def test_flush_due_is_none_while_there_is_nothing_to_speak():
    buffer = InputBuffer(IDLE)
    assert buffer.flush_due() is None
    buffer.append("   ", 1.0)
    assert buffer.flush_due() is None
    buffer.append("Done. ", 2.0)  # spoken at once: nothing left to wait for
    assert buffer.flush_due() is None


def test_every_append_restarts_the_idle_deadline():
    buffer = InputBuffer(IDLE)
    buffer.append("a", 1.0)
    assert buffer.flush_due() == pytest.approx(1.16)
    buffer.append(" b", 1.1)
    assert buffer.flush_due() == pytest.approx(1.26)
    buffer.append(" c. d", 5.0)  # a sentence out, and the rest waits from this append
    assert buffer.flush_due() == pytest.approx(5.16)


def test_one_huge_append_with_no_sentence_end_is_cut_into_pieces_none_over_the_limit():
    buffer = InputBuffer(0.16, max_words=40)
    words = [f"word{n}" for n in range(500)]
    pieces = buffer.append(" ".join(words), now=0.0)
    assert len(pieces) >= 12
    assert all(0 < len(piece.split()) <= 40 for piece in pieces)
    assert " ".join([*pieces, buffer.take()]).split() == words  # nothing lost, nothing reordered
