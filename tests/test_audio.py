from __future__ import annotations

import wave

import numpy as np

from krt.audio import (
    EDGE_FADE_SAMPLES,
    PcmChunker,
    pcm16_to_float,
    shape_segment,
    soft_limit,
    to_pcm16,
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
