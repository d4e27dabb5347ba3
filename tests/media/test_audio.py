from __future__ import annotations

import wave

import numpy as np

from krt.media.audio import (
    AUDIBLE_THRESHOLD,
    EDGE_FADE_SAMPLES,
    LEAD_PAD_SAMPLES,
    PcmChunker,
    pcm16_to_float,
    shape_segment,
    soft_limit,
    to_pcm16,
    trim_silence,
    write_wav,
)


def test_soft_limit_leaves_normal_speech_alone_and_never_exceeds_full_scale():
    quiet = np.linspace(-0.9, 0.9, 1001, dtype=np.float32)
    assert np.array_equal(soft_limit(quiet), quiet)
    loud = np.array([1.05, -1.5, 4.0, -40.0], dtype=np.float32)
    limited = soft_limit(loud)
    assert np.all(np.abs(limited) <= 1.0)
    assert np.all(np.sign(limited) == np.sign(loud))
    assert limited[0] < limited[2]  # still monotonic: louder input stays louder
    pcm = np.frombuffer(to_pcm16(loud), dtype="<i2")
    assert pcm.tolist()[:2] == [round(limited[0] * 32767), round(limited[1] * 32767)]
    assert pcm[2] == 32767 and pcm[3] == -32767  # saturates, never wraps around


def test_nan_and_inf_become_silence_not_a_burst():
    pcm = to_pcm16(np.array([np.nan, np.inf, -np.inf, 0.5], dtype=np.float32))
    samples = np.frombuffer(pcm, dtype="<i2")
    assert samples.tolist()[:3] == [0, 0, 0]
    assert samples[3] == round(0.5 * 32767)


def test_pcm16_round_trip_is_little_endian_and_accurate():
    audio = np.array([0.0, 0.25, -0.25, 0.5], dtype=np.float32)
    pcm = to_pcm16(audio)
    assert pcm[2:4] == (8192).to_bytes(2, "little", signed=True)
    assert np.allclose(pcm16_to_float(pcm), audio, atol=1 / 32767)


def test_chunker_emits_fixed_size_chunks_and_carries_the_remainder():
    chunker = PcmChunker(480)
    first = list(chunker.feed(np.zeros(1000, dtype=np.float32)))
    second = list(chunker.feed(np.zeros(500, dtype=np.float32)))
    tail = list(chunker.flush())
    assert [len(c) for c in first] == [960, 960]
    assert [len(c) for c in second] == [960, 960, 960][: len(second)]
    assert sum(len(c) for c in first + second + tail) == 1500 * 2
    assert all(len(c) == 960 for c in first + second)
    assert len(tail) == 1 and len(tail[0]) == (1500 % 480) * 2


def test_shaped_segment_starts_and_ends_at_silence_and_keeps_every_sample():
    chunks = [
        np.full(1000, 0.5, dtype=np.float32),
        np.full(50, 0.5, dtype=np.float32),
        np.full(700, 0.5, dtype=np.float32),
    ]
    shaped = np.concatenate(list(shape_segment(iter(chunks))))
    assert shaped.size == 1750
    assert shaped[0] == 0.0 and abs(shaped[-1]) < 1e-6
    assert np.allclose(shaped[EDGE_FADE_SAMPLES:-EDGE_FADE_SAMPLES], 0.5)
    assert np.all(np.diff(shaped[:EDGE_FADE_SAMPLES]) >= 0)


def test_joined_segments_have_no_click():
    """A segment that ends at full amplitude followed by one that starts there must not jump."""
    loud = [np.full(2000, 0.8, dtype=np.float32)]
    joined = np.concatenate([*shape_segment(iter(loud)), *shape_segment(iter(loud))])
    assert np.max(np.abs(np.diff(joined))) < 0.05


def test_shaping_lets_the_first_chunk_out_before_the_segment_ends():
    def backend_chunks():
        yield np.full(4800, 0.1, dtype=np.float32)
        raise AssertionError("shape_segment asked for the second chunk before yielding the first")

    assert next(shape_segment(backend_chunks())).size == 4800 - EDGE_FADE_SAMPLES


def test_wav_file_header(tmp_path):
    path = tmp_path / "x.wav"
    write_wav(path, to_pcm16(np.zeros(2400, dtype=np.float32)))
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (
            1,
            2,
            24000,
            2400,
        )


def utterance(lead_ms: int, sound_ms: int, gap_ms: int, tail_ms: int) -> np.ndarray:
    """Kokoro's shape: silence, a sound, a pause inside the sentence, a sound, silence."""
    quiet = 0.001  # -60 dBFS: below the audible threshold, but not digital zero
    t = np.arange(sound_ms * 24, dtype=np.float32) / 24_000
    sound = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.concatenate(
        [np.full(n * 24, quiet, dtype=np.float32) for n in (lead_ms,)]
        + [sound, np.full(gap_ms * 24, quiet, dtype=np.float32), sound]
        + [np.full(tail_ms * 24, quiet, dtype=np.float32)]
    )


def in_chunks(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[start : start + size] for start in range(0, audio.size, size)]


def test_trimming_starts_at_the_first_sound_and_ends_with_exactly_the_pause_asked_for():
    audio = utterance(lead_ms=350, sound_ms=300, gap_ms=90, tail_ms=500)
    trimmed = np.concatenate(list(trim_silence([audio], lead=True, tail_samples=24 * 200)))
    loud = np.flatnonzero(np.abs(trimmed) > AUDIBLE_THRESHOLD)
    assert trimmed.size - (loud[-1] + 1) == 24 * 200  # the tail is the pause, exactly
    # Everything from the first sound to the last, the pause inside the sentence with it,
    # is the model's own audio, untouched.
    heard = np.flatnonzero(np.abs(audio) > AUDIBLE_THRESHOLD)
    np.testing.assert_array_equal(trimmed[loud[0] : loud[-1] + 1], audio[heard[0] : heard[-1] + 1])
    assert loud[0] == LEAD_PAD_SAMPLES


def test_a_pause_longer_than_the_models_silence_is_padded_with_zeros():
    audio = utterance(lead_ms=10, sound_ms=100, gap_ms=0, tail_ms=50)
    trimmed = np.concatenate(list(trim_silence([audio], lead=True, tail_samples=24 * 400)))
    assert np.all(trimmed[-24 * 350 :] == 0.0)
    assert np.flatnonzero(np.abs(trimmed) > AUDIBLE_THRESHOLD)[-1] == trimmed.size - 24 * 400 - 1


def test_trimming_gives_the_same_audio_however_the_backend_chunks_it():
    audio = utterance(lead_ms=350, sound_ms=250, gap_ms=120, tail_ms=480)
    whole = np.concatenate(list(trim_silence([audio], lead=True, tail_samples=24 * 300)))
    for size in (1, 7, 480, 600 * 4, 12_000, audio.size):
        pieces = list(trim_silence(in_chunks(audio, size), lead=True, tail_samples=24 * 300))
        np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_the_first_sound_leaves_with_the_chunk_that_holds_it():
    audio = utterance(lead_ms=350, sound_ms=250, gap_ms=120, tail_ms=480)
    chunks = in_chunks(audio, 24 * 400)  # the first chunk holds the first 50 ms of sound
    first = next(trim_silence(iter(chunks), lead=True, tail_samples=0))
    assert np.abs(first).max() > AUDIBLE_THRESHOLD


def test_a_segment_with_no_audible_sample_is_dropped_whole():
    silence = np.full(24_000, 0.001, dtype=np.float32)
    assert list(trim_silence(in_chunks(silence, 4800), lead=True, tail_samples=24 * 300)) == []


def test_each_end_can_be_left_as_the_model_made_it():
    audio = utterance(lead_ms=350, sound_ms=250, gap_ms=120, tail_ms=480)
    chunks = in_chunks(audio, 4800)
    untouched = np.concatenate(list(trim_silence(chunks, lead=False, tail_samples=None)))
    np.testing.assert_array_equal(untouched, audio)
    head_only = np.concatenate(list(trim_silence(chunks, lead=True, tail_samples=None)))
    assert head_only.size == audio.size - (24 * 350 + 1) + LEAD_PAD_SAMPLES  # sin(0) is silent too
    np.testing.assert_array_equal(head_only[-24 * 480 :], audio[-24 * 480 :])
    tail_only = np.concatenate(list(trim_silence(chunks, lead=False, tail_samples=24 * 100)))
    np.testing.assert_array_equal(tail_only[: 24 * 350], audio[: 24 * 350])
    assert tail_only.size < audio.size - 24 * 300
