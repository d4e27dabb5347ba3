"""The LLM-text set: enough replies of every kind, and references a word error rate can use."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from krt.bench.speech_set import KINDS, REPLIES, Reply, replies_of
from tests.speech_checks import HARVARD_SENTENCES

MINIMUM = {
    "money": 20,
    "magnitudes": 20,
    "dimensions": 15,
    "codes": 20,
    "versions": 15,
    "dates": 20,
    "times": 15,
    "units": 20,
    "abbreviations": 15,
    "lists": 15,
    "markdown": 15,
    "urls": 20,
    "ordinary": 40,
    "agent": 40,
}
PLAIN_KINDS = ("ordinary", "agent")
"""Kinds with nothing to interpret: said exactly as written."""
PLAIN_LOOKING_KINDS = ("lists", "markdown")
"""Kinds whose words can be read as written once markers and markup are dropped."""
WORDS = re.compile(r"[a-z]+(?:'[a-z]+)*(?: [a-z]+(?:'[a-z]+)*)*")


def as_written(text: str) -> str:
    return " ".join(re.sub(r"[^a-z']+", " ", text.lower()).split())


def test_the_kinds_are_the_stated_ones_in_order() -> None:
    assert tuple(MINIMUM) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_its_minimum_number_of_replies(kind: str) -> None:
    count = sum(reply.kind == kind for reply in REPLIES)
    assert count >= MINIMUM[kind]


def test_every_reply_is_of_a_known_kind_grouped_in_kind_order() -> None:
    assert {reply.kind for reply in REPLIES} <= set(KINDS)
    kinds_in_order = list(dict.fromkeys(reply.kind for reply in REPLIES))
    assert kinds_in_order == list(KINDS)


def test_texts_are_unique() -> None:
    repeated = [text for text, count in Counter(reply.text for reply in REPLIES).items() if count > 1]
    assert repeated == []


def test_texts_are_short_replies() -> None:
    bad = [reply.text for reply in REPLIES if not reply.text.strip() or len(reply.text) > 200]
    assert bad == []


def test_spoken_is_lower_case_words_and_single_spaces_only() -> None:
    bad = [reply.spoken for reply in REPLIES if not WORDS.fullmatch(reply.spoken)]
    assert bad == []


@pytest.mark.parametrize("kind", PLAIN_KINDS)
def test_plain_kinds_are_spoken_as_written(kind: str) -> None:
    bad = [reply for reply in replies_of([kind]) if reply.spoken != as_written(reply.text)]
    assert bad == []


def test_other_kinds_each_give_the_reader_something_to_interpret() -> None:
    """A reply of, say, ``money`` that reads the same as its plain words measures nothing."""
    interpreted = [kind for kind in KINDS if kind not in (*PLAIN_KINDS, *PLAIN_LOOKING_KINDS)]
    bad = [reply for reply in replies_of(interpreted) if reply.spoken == as_written(reply.text)]
    assert bad == []


def test_plain_looking_kinds_carry_markers_or_markup() -> None:
    bad = [
        reply.text
        for reply in replies_of(PLAIN_LOOKING_KINDS)
        if not re.search(r"[\n*_`#>\[\]]|[^\x00-\x7f]|\bfirst\b", reply.text, re.IGNORECASE)
    ]
    assert bad == []


def test_ordinary_sentences_are_not_the_ones_the_intelligibility_tests_use() -> None:
    assert not {reply.text for reply in replies_of(["ordinary"])} & set(HARVARD_SENTENCES)


def test_replies_of_gives_the_replies_of_those_kinds_in_order() -> None:
    chosen = replies_of(["times", "money"])
    assert chosen == tuple(reply for reply in REPLIES if reply.kind in {"money", "times"})
    assert chosen[0].kind == "money"
    assert replies_of("urls") == replies_of(["urls"])
    assert replies_of(KINDS) == REPLIES
    assert replies_of([]) == ()
    assert all(isinstance(reply, Reply) for reply in chosen)


def test_replies_of_refuses_an_unknown_kind_by_name() -> None:
    with pytest.raises(ValueError, match="'emoji'"):
        replies_of(["money", "emoji"])
