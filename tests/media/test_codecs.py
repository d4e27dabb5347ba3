"""Every output format and rate decodes back (PyAV) to the audio that went in: the right
length, the spectrum kept below the new Nyquist, nothing folded down from above it, and
no seam where chunks join."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from krt import SAMPLE_RATE
from krt.config import EncodingConfig
from krt.media.codecs import (
    OPUS_SAMPLE_RATES,
    SAMPLE_RATES,
    OutputAudio,
    StreamDecoder,
    StreamEncoder,
    UnsupportedOutput,
    decode,
)
from krt.media.ogg import ogg_crc

ALL_OUTPUTS = [
    *(OutputAudio("pcm", rate) for rate in SAMPLE_RATES),
    *(OutputAudio(law, rate) for law in ("mulaw", "alaw") for rate in SAMPLE_RATES),  # type: ignore[arg-type]
    *(OutputAudio("opus", rate) for rate in OPUS_SAMPLE_RATES),
]


FILE_OUTPUTS = [OutputAudio(format_) for format_ in ("mp3", "aac", "flac", "wav")]  # type: ignore[arg-type]


def tone(seconds: float, *frequencies: float, amplitude: float = 0.25) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in frequencies)  # type: ignore[return-value]


def pcm16(audio: np.ndarray) -> bytes:
    return np.round(audio * 32767).astype("<i2").tobytes()


def encode_in_chunks(output: OutputAudio, pcm: bytes, sizes: list[int]) -> list[bytes]:
    """The deltas a client would get for ``pcm`` cut into chunks of ``sizes`` samples (cycled)."""
    encoder = StreamEncoder(output, EncodingConfig())
    deltas, position, index = [], 0, 0
    while position < len(pcm):
        size = 2 * sizes[index % len(sizes)]
        deltas.append(encoder.encode(pcm[position : position + size]))
        position += size
        index += 1
    deltas.append(encoder.finish())
    return deltas


def level_db(audio: np.ndarray, rate: int, frequency: float) -> float:
    """Level of one frequency (a Hann-windowed DFT bin), in dB relative to full scale."""
    window = np.hanning(audio.size)
    spectrum = np.abs(np.fft.rfft(audio * window)) / (window.sum() / 2)
    bin_ = round(frequency * audio.size / rate)
    return float(20 * np.log10(spectrum[bin_ - 2 : bin_ + 3].max() + 1e-12))


@pytest.mark.parametrize("output", ALL_OUTPUTS, ids=lambda o: f"{o.format}-{o.sample_rate}")
def test_every_format_and_rate_decodes_back_to_the_same_length(output):
    seconds = 1.37  # not a whole number of Opus frames or resampler blocks
    deltas = encode_in_chunks(output, pcm16(tone(seconds, 440)), [4800, 1200, 333])
    samples, rate = decode(b"".join(deltas), output)
    assert rate == (48_000 if output.format == "opus" else output.sample_rate)
    assert abs(samples.size - seconds * rate) < 1
    # and it is the tone, not silence or noise
    assert level_db(samples, rate, 440) == pytest.approx(20 * np.log10(0.25), abs=1.0)


@pytest.mark.parametrize("output", FILE_OUTPUTS, ids=lambda o: o.format)
def test_file_formats_stream_and_decode_back(output):
    """The OpenAI endpoint's formats: bytes leave as the PCM comes (not all at the end),
    and the whole decodes to the tone, as long as the input but for MP3's and AAC's
    encoder delay and padding (under two of their frames)."""
    seconds = 1.37
    deltas = encode_in_chunks(output, pcm16(tone(seconds, 440)), [4800])
    assert sum(map(len, deltas[:-1])) > 0.5 * len(b"".join(deltas))
    samples, rate = decode(b"".join(deltas), output)
    assert rate == 24000
    assert 0 <= samples.size - seconds * rate < (2 * 1152 if output.format in ("mp3", "aac") else 1)
    middle = samples[rate // 4 : -rate // 4]  # clear of the encoder delay at the start
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(0.25, rel=0.12)  # the tone's amplitude, ±1 dB


@pytest.mark.parametrize("rate", [8000, 16000, 22050])
def test_resampling_keeps_the_band_below_the_new_nyquist_and_folds_nothing_down(rate):
    kept, removed = 0.3 * rate / 2, 1.5 * rate / 2  # 1.5 × Nyquist would alias to 0.5 × Nyquist
    output = OutputAudio("pcm", rate)
    samples, _ = decode(b"".join(encode_in_chunks(output, pcm16(tone(2.0, kept, removed)), [2400])), output)
    assert level_db(samples, rate, kept) == pytest.approx(20 * np.log10(0.25), abs=0.5)
    assert level_db(samples, rate, rate - removed) < -70  # where an alias would land


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_chunk_joins_leave_no_seam(rate):
    """However the PCM is cut, the output is the same as resampling it whole, to within
    the float rounding of soxr's blocks (a few LSB, -80 dBFS): the resampler's state
    carries across chunks. A seam would be a step of thousands of LSB."""
    output = OutputAudio("pcm", rate)
    pcm = pcm16(tone(1.0, 440, 3000))
    whole = b"".join(encode_in_chunks(output, pcm, [len(pcm)]))
    for sizes in ([4800], [1, 7, 600, 2399], [960, 9600]):
        chunked = b"".join(encode_in_chunks(output, pcm, sizes))
        difference = np.abs(
            np.frombuffer(chunked, "<i2").astype(int) - np.frombuffer(whole, "<i2").astype(int)
        )
        assert len(chunked) == len(whole) and difference.max() <= 3


def ogg_pages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(header type, granule, whole page) of each page; fails on anything between pages."""
    pages, position = [], 0
    while position < len(data):
        assert data[position : position + 4] == b"OggS", f"no page at byte {position}"
        header_type, granule = data[position + 5], struct.unpack_from("<q", data, position + 6)[0]
        segments = data[position + 26]
        size = 27 + segments + sum(data[position + 27 : position + 27 + segments])
        pages.append((header_type, granule, data[position : position + size]))
        position += size
    return pages


def test_every_opus_delta_is_whole_ogg_pages_and_a_prefix_plays():
    """A delta never splits a page, so a player can start on what it has; each page's
    checksum holds; only the first begins and only the last ends the stream."""
    output = OutputAudio("opus", 24000)
    deltas = encode_in_chunks(output, pcm16(tone(1.0, 440)), [2400])
    assert all(deltas[:-1]), "every 100 ms of PCM leaves as Opus at once"
    pages = [page for delta in deltas for page in ogg_pages(delta)]
    assert pages[0][0] == 0x02 and pages[-1][0] == 0x04
    assert all(header_type == 0 for header_type, _, _ in pages[1:-1])
    for _, _, page in pages:
        zeroed = page[:22] + b"\0\0\0\0" + page[26:]
        assert struct.unpack_from("<I", page, 22)[0] == ogg_crc(zeroed)
    granules = [granule for _, granule, _ in pages]
    assert granules == sorted(granules)
    prefix, _ = decode(b"".join(deltas[:5]), output)
    assert prefix.size >= 0.4 * 48_000 - 960  # the first 0.5 s, less the encoder's lookahead


def test_ogg_crc_matches_the_reference_value():
    # The CRC of "123456789" in Ogg's variant (CRC-32/MPEG-2 without its init and xorout).
    assert ogg_crc(b"123456789") == 0x89A1897F


def test_opus_bitrate_is_what_the_operator_set():
    pcm = pcm16(tone(3.0, 220, 440, 880))
    sizes = {}
    for bitrate in (12000, 64000):
        encoder = StreamEncoder(OutputAudio("opus", 24000), EncodingConfig(opus_bitrate=bitrate))
        sizes[bitrate] = len(encoder.encode(pcm) + encoder.finish())
    assert sizes[12000] * 8 / 3 == pytest.approx(12000, rel=0.35)
    assert sizes[64000] > 3 * sizes[12000]


@pytest.mark.parametrize(
    ("format_", "rate", "named"),
    [("opus", 22050, "8000, 16000, 24000, 48000"), ("pcm", 11025, "22050"), ("ogg", 24000, "alaw")],
)
def test_an_unsupported_output_says_what_is_supported(format_, rate, named):
    with pytest.raises(UnsupportedOutput, match=named):
        OutputAudio(format_, rate)


@pytest.mark.parametrize("output", ALL_OUTPUTS, ids=lambda o: f"{o.format}-{o.sample_rate}")
def test_a_live_player_decodes_the_deltas_in_any_pieces(output):
    """What krt's client does with each delta as it arrives (to time the first sound and
    each delta's length): pieces cut anywhere, even mid-page or mid-sample, decode to the
    same audio as the whole stream; only Opus's final padding (under one frame) is extra,
    since a live player cannot know where the stream will end."""
    data = b"".join(encode_in_chunks(output, pcm16(tone(1.0, 440)), [4800]))
    whole, rate = decode(data, output)
    decoder = StreamDecoder(output)
    live = np.concatenate([decoder.decode(data[i : i + 333]) for i in range(0, len(data), 333)])
    assert decoder.sample_rate == rate
    padding = live.size - whole.size
    assert 0 <= padding < (960 if output.format == "opus" else 1)
    assert np.abs(live[: whole.size] - whole).max() < 0.05  # libopus vs ffmpeg's own Opus decoder
