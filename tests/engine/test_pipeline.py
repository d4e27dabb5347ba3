"""The engine pipeline on the fake backend: validation, segmentation, context limits, PCM."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pytest

from krt.engine.pipeline import LEAD_FRAMES, TAIL_FRAMES, SpeechPipeline
from krt.errors import SpeechError
from krt.synth.backend import MAX_TOKENS
from krt.synth.fake_backend import FakeBackend, SpelledPhonemizer
from krt.synth.windows import (
    CONTEXT_FRAMES,
    SAMPLES_PER_FRAME,
    SEAM_SAMPLES,
    PreparedSegment,
    WindowJoiner,
    WindowRequest,
    context_span,
    decode_window,
)
from tests.conftest import make_config
from tests.speech_checks import quiet_runs_ms

if TYPE_CHECKING:
    from collections.abc import Sequence


class RecordingBackend(FakeBackend):
    """The fake backend, remembering every segment it prepared and every window it decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.token_counts: list[int] = []
        self.prepared: list[PreparedSegment] = []
        self.windows: list[tuple[PreparedSegment, int, int]] = []

    def prepare(self, tokens: Sequence[int], style: np.ndarray, speed: float) -> PreparedSegment:
        self.token_counts.append(len(tokens))
        segment = super().prepare(tokens, style, speed)
        self.prepared.append(segment)
        return segment

    def decode_windows(self, windows: Sequence[WindowRequest]) -> list[np.ndarray]:
        self.windows.extend((window.segment, window.start, window.stop) for window in windows)
        return super().decode_windows(windows)

    def spans(self, segment: PreparedSegment) -> list[tuple[int, int]]:
        return [
            (start, stop)
            for decoded, start, stop in self.windows
            if decoded.decoder_inputs is segment.decoder_inputs  # the same segment, heard in part
        ]


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


def test_a_response_past_its_token_budget_ends_too_long_before_the_model_sees_the_rest():
    backend = RecordingBackend()
    first = "This first sentence is within the budget."
    pipeline = SpeechPipeline(backend, make_config())
    first_tokens = len(pipeline.tokenize_segment(first)[0].tokens)
    limited = SpeechPipeline(backend, make_config(MAX_UTTERANCE_TOKENS=str(first_tokens + 5)))
    rendering = limited.rendering(
        limited.plan(f"{first} The second one takes it over. A third is never read.")
    )
    audio = []
    with pytest.raises(SpeechError) as caught:
        audio.extend(itertools.chain.from_iterable(rendering))  # keeps what came before the error
    assert caught.value.code == "too_long" and "MAX_UTTERANCE_TOKENS" in caught.value.message
    assert audio, "what fits the budget is spoken"
    assert backend.token_counts == [first_tokens]


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


def test_sentences_are_whole_by_default_and_a_configured_first_cut_leaves_no_fragment():
    text = "Okay so here is a rather long first sentence that keeps going on and on."
    whole = SpeechPipeline(FakeBackend(), make_config()).plan(text)
    assert whole.segments == (text,)
    cut = SpeechPipeline(FakeBackend(), make_config(FIRST_SEGMENT_MAX_WORDS="8")).plan(text)
    assert len(cut.segments[0].split()) <= 8
    assert " ".join(cut.segments) == text
    almost = "These days a chicken leg is a rare dish."  # 9 words: a cut at 8 would orphan "dish."
    assert SpeechPipeline(FakeBackend(), make_config(FIRST_SEGMENT_MAX_WORDS="8")).plan(almost).segments == (
        almost,
    )


def test_model_failure_is_synthesis_failed():
    class BrokenBackend(FakeBackend):
        def decode_windows(self, windows):
            raise RuntimeError("CUDA error: device-side assert triggered")

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


def test_a_rendering_makes_a_window_per_batch_and_closing_it_stops_all_model_work():
    backend = RecordingBackend()
    pipeline = SpeechPipeline(backend, make_config())
    rendering = pipeline.rendering(pipeline.plan("One two three four five six seven eight nine ten eleven."))
    first = next(rendering)
    assert rendering.started and not rendering.done
    assert len(backend.windows) == 1  # one window, not the whole sentence
    rendering.close()
    assert rendering.done
    assert list(rendering) == []
    assert len(backend.windows) == 1
    assert all(len(chunk) == 960 for chunk in first)


def test_windows_cover_the_audible_frames_once_in_order_starting_small_and_growing():
    backend = RecordingBackend()
    config = make_config(PRIORITY_QUANTUM_BYTES=str(6 * 1200), SCHED_QUANTUM_BYTES=str(40 * 1200))
    pipeline = SpeechPipeline(backend, config)
    text = "The first sentence is long enough for several windows of the decoder to be cut from it. And a second."
    list(pipeline.rendering(pipeline.plan(text)))
    assert len(backend.prepared) == 2
    for index, segment in enumerate(backend.prepared):
        spans = backend.spans(segment)
        # Contiguous, in order, each frame once: from just before the first sound (the
        # silent lead is not decoded) to just after the last, never the whole silent tail.
        assert all(stop == next_start for (_, stop), (next_start, _) in itertools.pairwise(spans))
        assert spans[0][0] == segment.lead_frames - LEAD_FRAMES
        assert spans[-1][1] == segment.frames - segment.tail_frames + TAIL_FRAMES
        if index == 0:
            sizes = [stop - start for start, stop in spans]
            assert len(sizes) >= 3
            assert sizes[0] <= 6 + 1  # the first window is the priority quantum (cut may move ±25 %)
            assert max(sizes) <= 40 + 20  # later ones grow to the quantum (the last may absorb a sliver)
            assert sizes[1] > sizes[0]


def test_a_windowed_decode_joins_into_the_whole_decode_on_the_fake():
    backend = FakeBackend()
    segment = backend.prepare(list(range(1, 40)), backend.voices.style("fake_female", 39), 1.0)
    whole = backend.decode(segment, 0, segment.frames)
    joiner = WindowJoiner()
    cuts = [0, 7, 19, 50, segment.frames]
    joined = np.concatenate(
        [
            joiner.join(backend.decode(segment, a, b), last=b == segment.frames)
            for a, b in itertools.pairwise(cuts)
        ]
    )
    np.testing.assert_allclose(joined, whole, atol=1e-6)


def test_the_last_heard_window_of_a_segment_carries_no_seam():
    """A window's seam samples are crossfaded into the next window; after the last frame
    that will be heard there is none, so the window stops there, its context still whole."""
    segment = PreparedSegment(100, (30, 40, 30), np.zeros(100), None).hearing_only(28, 72)
    assert context_span(48, 72, segment) == (48 - CONTEXT_FRAMES, 72 + CONTEXT_FRAMES)

    spans: list[tuple[int, int]] = []

    def decode_span(windows: Sequence[WindowRequest]) -> list[np.ndarray]:
        spans.extend((window.lo, window.hi) for window in windows)
        return [np.ones(window.span_frames * SAMPLES_PER_FRAME, dtype=np.float32) for window in windows]

    # The last heard window carries no seam: nothing heard follows it.
    assert decode_window(decode_span, segment, 48, 72).size == 24 * SAMPLES_PER_FRAME
    assert decode_window(decode_span, segment, 28, 48).size == 20 * SAMPLES_PER_FRAME + SEAM_SAMPLES
    assert spans == [context_span(48, 72, segment), context_span(28, 48, segment)]


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


def test_by_default_a_response_starts_at_its_first_sound_with_natural_sentence_pauses():
    backend = RecordingBackend()
    pipeline = SpeechPipeline(backend, make_config())
    lead, gaps, tail = quiet_runs_ms(b"".join(pipeline.speak("Hello there. How are you?")))
    assert lead <= 60
    assert 350 <= gaps[0] <= 350 + 60  # SENTENCE_PAUSE_MS's default
    assert tail <= 40
    # The silence was never decoded: only the frames between the padding positions.
    for segment in backend.prepared:
        decoded = sum(stop - start for start, stop in backend.spans(segment))
        assert (
            decoded == segment.frames - segment.lead_frames - segment.tail_frames + LEAD_FRAMES + TAIL_FRAMES
        )


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
