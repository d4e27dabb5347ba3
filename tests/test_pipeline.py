"""The engine pipeline on the fake backend: validation, segmentation, context limits, PCM."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from krt.engine.pipeline import SpeechPipeline
from krt.errors import SpeechError
from krt.synth.backend import MAX_TOKENS
from krt.synth.fake_backend import FakeBackend, SpelledPhonemizer
from tests.conftest import make_config
from tests.speech_checks import quiet_runs_ms

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class RecordingBackend(FakeBackend):
    """The fake backend, remembering the token count of every segment it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.token_counts: list[int] = []

    def synthesize(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> Iterator[np.ndarray]:
        self.token_counts.append(len(tokens))
        yield from super().synthesize(tokens, style, speed)


class RecordingPhonemizer(SpelledPhonemizer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def phonemize(self, text: str) -> str:
        self.seen.append(text)
        return super().phonemize(text)


def pcm_seconds(chunks: list[bytes]) -> float:
    return sum(len(c) for c in chunks) / 2 / 24000


def test_speak_streams_fixed_20ms_chunks(fake_pipeline):
    chunks = list(fake_pipeline.speak("Hello there. This is a demo of the fake engine."))
    assert len(chunks) > 10
    assert all(len(chunk) == 960 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 960


def test_audio_length_follows_text_length_and_speed(fake_pipeline):
    short = pcm_seconds(list(fake_pipeline.speak("Hello there.")))
    long = pcm_seconds(list(fake_pipeline.speak("Hello there. " * 6)))
    fast = pcm_seconds(list(fake_pipeline.speak("Hello there. " * 6, speed=2.0)))
    assert long > 5 * short
    assert fast == pytest.approx(long / 2, rel=0.05)


def test_default_speed_comes_from_config():
    slow = SpeechPipeline(FakeBackend(), make_config(KOKORO_SPEED="0.5"))
    normal = SpeechPipeline(FakeBackend(), make_config())
    assert pcm_seconds(list(slow.speak("one two three"))) == pytest.approx(
        2 * pcm_seconds(list(normal.speak("one two three"))), rel=0.05
    )


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"voice": "robot"}, "invalid_voice"),
        ({"speed": 3.0}, "invalid_speed"),
        ({"speed": 0.1}, "invalid_speed"),
        ({"speed": float("nan")}, "invalid_speed"),
        ({"speed": True}, "invalid_speed"),
        ({"text": "word " * 401}, "too_long"),
        ({"text": "  "}, "invalid_input"),
    ],
)
def test_bad_requests_are_refused_before_any_model_work(kwargs, code):
    backend = RecordingBackend()
    pipeline = SpeechPipeline(backend, make_config())
    text = kwargs.pop("text", "Hello there.")
    with pytest.raises(SpeechError) as caught:
        pipeline.plan(text, **kwargs)
    assert caught.value.code == code
    assert backend.token_counts == []


def test_segments_over_the_context_are_split_until_they_fit():
    backend = RecordingBackend()
    pipeline = SpeechPipeline(backend, make_config(MAX_UTTERANCE_WORDS="1000"))
    words = ["alphabet"] * 150  # ~1350 spelled "phonemes", one sentence, no punctuation
    audio = list(pipeline.rendering(pipeline.plan(" ".join(words))))
    assert audio
    assert len(backend.token_counts) >= 3
    assert max(backend.token_counts) <= MAX_TOKENS
    assert sum(backend.token_counts) >= len(" ".join(words)) - len(backend.token_counts)


def test_first_segment_is_rendered_before_the_rest_is_phonemized():
    phonemizer = RecordingPhonemizer()
    pipeline = SpeechPipeline(FakeBackend(), make_config(), phonemizer)
    plan = pipeline.plan("Hi there. This is the second sentence. And a third one.")
    next(pipeline.rendering(plan))
    assert phonemizer.seen == ["Hi there."]


def test_first_segment_is_short(fake_pipeline):
    plan = fake_pipeline.plan("Okay so here is a rather long first sentence that keeps going on and on.")
    assert len(plan.segments[0].split()) <= 8
    assert (
        " ".join(plan.segments) == "Okay so here is a rather long first sentence that keeps going on and on."
    )


def test_model_failure_is_synthesis_failed():
    class BrokenBackend(FakeBackend):
        def synthesize(self, tokens, style, speed):
            raise RuntimeError("CUDA error: device-side assert triggered")
            yield  # pragma: no cover

    pipeline = SpeechPipeline(BrokenBackend(), make_config())
    with pytest.raises(SpeechError) as caught:
        list(pipeline.speak("Hello."))
    assert caught.value.code == "synthesis_failed"
    assert "device-side assert" in caught.value.message


def test_voices_sound_different(fake_pipeline):
    female = np.frombuffer(b"".join(fake_pipeline.speak("hello", voice="female")), dtype="<i2")
    male = np.frombuffer(b"".join(fake_pipeline.speak("hello", voice="male")), dtype="<i2")
    # Same text, same length give or take where each voice's first sound crosses -50 dBFS.
    assert abs(female.size - male.size) < 0.01 * female.size
    shared = min(female.size, male.size)
    assert not np.array_equal(female[:shared], male[:shared])


def test_fake_backend_is_deterministic(fake_pipeline):
    assert b"".join(fake_pipeline.speak("Same text twice.")) == b"".join(
        fake_pipeline.speak("Same text twice.")
    )


def test_a_rendering_can_pause_between_batches_and_closing_it_frees_the_segment():
    from tests.fakes import RecordingFake

    backend = RecordingFake()
    pipeline = SpeechPipeline(backend, make_config())
    rendering = pipeline.rendering(pipeline.plan("One two three. Four five six. Seven eight nine."))
    first = next(rendering)
    assert rendering.started and not rendering.done
    assert backend.unfinished == 1  # paused mid-segment: the backend's generator is open
    rendering.close()
    assert backend.unfinished == 0
    assert rendering.done
    assert list(rendering) == []
    assert all(len(chunk) == 960 for chunk in first)


def test_a_rendering_carries_part_chunks_across_segments_and_matches_speak(fake_pipeline):
    text = "One two three. Four five six. Seven eight nine."
    batches = list(fake_pipeline.rendering(fake_pipeline.plan(text)))
    chunks = [chunk for batch in batches for chunk in batch]
    assert all(len(chunk) == 960 for chunk in chunks[:-1])  # 20 ms each but the very last
    assert 0 < len(chunks[-1]) <= 960
    assert b"".join(chunks) == b"".join(fake_pipeline.speak(text))


def test_a_response_starts_at_its_first_sound_and_sentences_are_one_pause_apart():
    for pause_ms in ("350", "100"):
        pipeline = SpeechPipeline(FakeBackend(), make_config(SENTENCE_PAUSE_MS=pause_ms))
        lead, gaps, tail = quiet_runs_ms(b"".join(pipeline.speak("Hello there. How are you?")))
        assert lead <= 60  # LEAD_PAD_SAMPLES: sound within 60 ms, not Kokoro's ~350 ms, once paced
        # The longest quiet run is the sentence break: the pause, plus the next sentence's
        # lead pad and the part of its first sound still under -50 dBFS.
        assert int(pause_ms) <= gaps[0] <= int(pause_ms) + 60
        assert tail <= 40  # END_PAUSE_MS: the caller's turn comes at once


def test_by_default_only_silence_that_cannot_cause_a_stall_is_trimmed():
    def speak(text: str, **env: str) -> bytes:
        return b"".join(SpeechPipeline(FakeBackend(), make_config(**env)).speak(text))

    for text in ("Sure, one moment.", "Hello there. How are you?"):
        lead, _gaps, tail = quiet_runs_ms(speak(text))
        raw_lead, _raw_gaps, _raw_tail = quiet_runs_ms(speak(text, TRIM_SILENCE="false"))
        assert tail <= 40  # nothing follows the end of a response
        assert lead == raw_lead  # its start stays the model's (see render_segment for why)
    two_sentences = "Hello there. How are you?"
    trimmed, raw = speak(two_sentences), speak(two_sentences, TRIM_SILENCE="false")
    lead, gaps, tail = quiet_runs_ms(trimmed)
    raw_lead, raw_gaps, _raw_tail = quiet_runs_ms(raw)
    assert tail <= 40
    assert lead == raw_lead  # a second segment follows: its compute hides behind this silence
    assert gaps[0] == raw_gaps[0]  # and the break between them is the model's own


def test_without_trimming_the_models_own_silence_is_kept():
    trimmed = b"".join(SpeechPipeline(FakeBackend(), make_config()).speak("Hello there. How are you?"))
    raw = b"".join(
        SpeechPipeline(FakeBackend(), make_config(TRIM_SILENCE="false")).speak("Hello there. How are you?")
    )
    _lead, raw_gaps, raw_tail = quiet_runs_ms(raw)
    assert raw_tail > 60  # the fake's "." token is 65 ms of silence, kept as is
    assert raw_gaps[0] < 350  # the fake's own sentence break, not SENTENCE_PAUSE_MS
    assert len(raw) != len(trimmed)


def test_pauses_shrink_with_speed_as_speech_does():
    pipeline = SpeechPipeline(FakeBackend(), make_config(SENTENCE_PAUSE_MS="400"))
    _lead, gaps, _tail = quiet_runs_ms(b"".join(pipeline.speak("Hello there. How are you?", speed=2.0)))
    assert 200 <= gaps[0] <= 200 + 60
