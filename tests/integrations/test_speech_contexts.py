"""A TTS client's bookkeeping on plain values: which response is which sentence of which
context, what a draining krt's refusal keeps for the next socket, and where each word
falls on its context's clock. No pipeline, no socket: the events are krt's own."""

from __future__ import annotations

import pytest

from krt.integrations.speech_contexts import SpeechContexts
from krt.wire.protocol import DRAINING_REASON, ResponseError, WordTiming

RATE = 24_000
SECOND = 2 * RATE
"""Bytes of one second of mono PCM16 at ``RATE``."""


def draining_refusal(response_id: str) -> ResponseError:
    return ResponseError(response_id, "busy", DRAINING_REASON, reconnect=True)


def word(text: str, spoken: str, start_ms: float, after: int = 0) -> WordTiming:
    """krt's timing of ``spoken``, found in ``text`` from ``after`` on."""
    start = text.index(spoken, after)
    return WordTiming(spoken, start_ms, start_ms + 100, start, start + len(spoken))


# --- response ids and contexts -------------------------------------------------------------


def test_a_contexts_first_response_is_named_after_it_and_the_rest_are_numbered():
    speech = SpeechContexts()
    ids = [speech.start_response("turn", text).response_id for text in ("One.", "Two.", "Three.")]
    assert ids == ["turn", "turn#2", "turn#3"]
    assert speech.start_response("other", "Hi.").response_id == "other"
    assert speech.contexts["turn"].in_flight == ["turn", "turn#2", "turn#3"]


def test_a_context_ends_only_once_closed_and_every_response_has_ended():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.start_response("turn", "Two.")
    speech.forget("turn")
    assert not speech.end_context_if_done("turn")  # turn#2 is still being spoken
    speech.forget("turn#2")
    assert not speech.end_context_if_done("turn")  # more text may come
    speech.open("turn").closed = True
    assert speech.end_context_if_done("turn")
    assert "turn" not in speech.contexts
    assert not speech.end_context_if_done("turn")  # it ends once


def test_an_abandoned_context_ends_with_its_last_response_though_never_closed():
    speech = SpeechContexts()
    speech.start_response("quiet", "One.")
    assert not speech.end_context_if_done("quiet", abandoned=True)
    speech.forget("quiet")
    assert speech.end_context_if_done("quiet", abandoned=True)


def test_an_interrupted_context_is_forgotten_and_its_responses_in_flight_are_named_for_cancelling():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.start_response("turn", "Two.")
    speech.forget("turn")
    assert speech.interrupt("turn") == ["turn#2"]
    assert "turn" not in speech.contexts
    assert speech.interrupt("turn") == []


def test_a_canceled_response_is_told_to_krt_once_and_its_late_events_are_not_played():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    assert speech.playable("turn") is not None
    assert speech.cancel("turn")
    assert not speech.cancel("turn")
    assert speech.playable("turn") is None
    assert "turn" in speech.responses  # still awaited: krt's response.canceled ends it
    assert not speech.cancel("never-sent")


# --- a draining krt ------------------------------------------------------------------------


def test_a_sentence_a_draining_krt_refused_unheard_is_held_and_keeps_its_context_waiting():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.start_response("turn", "Two.")
    assert speech.hold_if_draining(draining_refusal("turn#2"))
    assert [response.response_id for response in speech.held()] == ["turn#2"]
    assert speech.held_context_ids() == {"turn"}
    speech.forget("turn")
    speech.open("turn").closed = True
    assert not speech.end_context_if_done("turn")  # turn#2 is still to be spoken
    assert speech.only_held_left()


def test_only_a_draining_refusal_is_held_not_busy_for_load():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    assert not speech.hold_if_draining(ResponseError("turn", "busy", "queue full", retry_after_ms=500))
    assert speech.held() == []


def test_a_refused_sentence_already_partly_heard_is_not_held_lest_it_be_heard_twice():
    speech = SpeechContexts()
    response = speech.start_response("turn", "One.")
    speech.hear(response, 4800)
    assert not speech.hold_if_draining(draining_refusal("turn"))
    assert speech.held() == []


def test_a_refused_sentence_already_canceled_is_not_held():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.cancel("turn")
    assert not speech.hold_if_draining(draining_refusal("turn"))
    assert speech.held() == []


def test_canceling_a_held_sentence_forgets_it_without_telling_krt():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.hold_if_draining(draining_refusal("turn"))
    assert not speech.cancel("turn")  # krt never took it
    assert speech.responses == {}
    assert speech.contexts["turn"].in_flight == []


def test_a_new_socket_gets_the_held_sentences_first_in_order_and_new_ones_after_them():
    speech = SpeechContexts()
    speech.start_response("a", "A one.")
    speech.start_response("b", "B one.")
    speech.start_response("a", "A two.")
    speech.start_response("c", "C one.")
    for response_id in ("a#2", "b"):
        speech.hold_if_draining(draining_refusal(response_id))

    lost = speech.drop_socket(keep_held=True)

    assert lost == 2  # "a" and "c" died with the socket
    assert [response.response_id for response in speech.held()] == ["b", "a#2"]
    assert set(speech.contexts) == {"a", "b"}
    assert speech.contexts["a"].in_flight == ["a#2"]
    # The next sentence of a held context does not reuse an id of the old socket.
    assert speech.start_response("a", "A three.").response_id == "a#3"
    assert list(speech.responses) == ["b", "a#2", "a#3"]


def test_a_service_that_ends_forgets_held_sentences_too():
    speech = SpeechContexts()
    speech.start_response("turn", "One.")
    speech.start_response("turn", "Two.")
    speech.hold_if_draining(draining_refusal("turn#2"))
    speech.cancel("turn")
    assert speech.drop_socket(keep_held=False) == 0  # one canceled, one held: none lost
    assert speech.responses == {}
    assert speech.contexts == {}


# --- the context's clock -------------------------------------------------------------------


def test_each_responses_words_come_after_the_audio_of_the_responses_before_it_in_the_context():
    speech = SpeechContexts()
    first = speech.start_response("turn", "Hello.")
    second = speech.start_response("turn", "Goodbye.")
    speech.hear(first, SECOND)
    speech.hear(first, SECOND // 2)
    # Timestamps come before their audio: the second response is placed on them.
    assert speech.timed_tokens(second, [word("Goodbye.", "Goodbye", 200)], RATE) == [
        ("Goodbye.", pytest.approx(1.7))
    ]
    speech.hear(second, SECOND)
    third = speech.start_response("turn", "Again.")
    assert speech.timed_tokens(third, [word("Again.", "Again", 0)], RATE) == [("Again.", pytest.approx(2.5))]


def test_a_responses_place_is_fixed_by_its_first_audio_not_moved_by_its_own():
    speech = SpeechContexts()
    response = speech.start_response("turn", "One two.")
    speech.hear(response, SECOND)
    words = [word("One two.", "two", 700)]
    assert speech.timed_tokens(response, words, RATE) == [("two.", pytest.approx(0.7))]


def test_a_restarted_context_clock_counts_from_zero_less_what_the_playing_response_had_played():
    speech = SpeechContexts()
    text = "One two three."
    playing = speech.start_response("turn", text)
    waiting = speech.start_response("turn", "Next.")
    speech.hear(playing, SECOND // 2)

    speech.restart_clock("turn")
    speech.hear(playing, SECOND // 2)

    assert speech.timed_tokens(playing, [word(text, "three", 800)], RATE) == [("three.", pytest.approx(0.3))]
    assert speech.timed_tokens(waiting, [word("Next.", "Next", 0)], RATE) == [("Next.", pytest.approx(0.5))]


def test_a_response_not_yet_heard_at_a_clock_restart_starts_the_new_clock():
    speech = SpeechContexts()
    text = "Two words."
    first = speech.start_response("turn", "One.")
    second = speech.start_response("turn", text)
    speech.hear(first, SECOND)
    # Placed by its first timestamps, before any of its audio, after the first's second.
    assert speech.timed_tokens(second, [word(text, "Two", 0)], RATE) == [("Two", pytest.approx(1.0))]
    speech.forget("turn")

    speech.restart_clock("turn")  # the framework reopens the context on its next audio
    speech.hear(second, SECOND)

    assert speech.timed_tokens(second, [word(text, "words", 500)], RATE) == [("words.", pytest.approx(0.5))]


# --- words ---------------------------------------------------------------------------------


def test_words_become_the_inputs_own_tokens_with_their_punctuation_at_their_first_words_start():
    text = 'It\'s "well-known": a $5 fee, right?'
    speech = SpeechContexts()
    response = speech.start_response("turn", text)
    words = [
        word(text, "It's", 0),
        word(text, "well", 300),
        word(text, "known", 450),
        word(text, "a", 900),
        word(text, "$5", 1000),  # spoken "five dollars": still one word of the input
        word(text, "fee", 1600),
        word(text, "right", 2000),
    ]
    tokens = speech.timed_tokens(response, words, RATE)
    assert tokens == [
        ("It's", 0.0),
        ('"well-known":', 0.3),
        ("a", 0.9),
        ("$5", 1.0),
        ("fee,", 1.6),
        ("right?", 2.0),
    ]
    assert " ".join(token for token, _ in tokens) == text


def test_each_token_is_handed_on_once_across_the_segments_of_a_response():
    text = "First part, then one more part."
    speech = SpeechContexts()
    response = speech.start_response("turn", text)
    head = [word(text, "First", 0), word(text, "part", 300)]
    tail = [
        word(text, "then", 700),
        word(text, "one", 900),
        word(text, "more", 1000),
        word(text, "part", 1400, 20),
    ]
    assert [token for token, _ in speech.timed_tokens(response, head, RATE)] == ["First", "part,"]
    assert [token for token, _ in speech.timed_tokens(response, tail, RATE)] == [
        "then",
        "one",
        "more",
        "part.",
    ]


def test_words_whose_offsets_do_not_index_the_text_are_taken_as_krt_wrote_them():
    speech = SpeechContexts()
    response = speech.start_response("turn", "Hi there.")
    words = [
        WordTiming(" Hi", 0, 100, 0, 0),
        WordTiming("there ", 200, 300, 40, 45),
        WordTiming(" ", 300, 300, 0, 0),
    ]
    assert speech.timed_tokens(response, words, RATE) == [("Hi", 0.0), ("there", 0.2)]
