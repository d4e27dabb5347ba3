"""Kokoro's 24 kHz PCM16 → the format and rate a client asked for, one stream at a time.

A voice agent on a telephone line wants 8 kHz G.711; a browser or a bandwidth-bound
client wants Opus; a pipeline running at 16 or 48 kHz wants that rate. Converting on the
server, per response, spares every client a resampler and a codec of its own.

Each response gets one :class:`StreamEncoder`, fed the response's PCM as it is made. Both
stages keep state across chunks, so chunk joins leave no seam: the resampler (soxr, a
stateful stream) carries its filter history, and the Opus encoder its frames. Whatever an
``encode`` call returns is playable on its own once appended to what came before, so a
delta leaves the server the moment its PCM would have; nothing waits for a page or a
block to fill.

Codecs come from PyAV, which ships them in its wheels (never an ffmpeg subprocess). The
Ogg framing around Opus is written here rather than by PyAV's Ogg muxer: that muxer
either holds packets back until a page is full (up to a second) or, told to flush every
packet, spends a 28-byte page header on each 20 ms packet (~30 % over the audio at
32 kb/s). Writing the pages ourselves puts each delta's packets in exactly one page.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING, Literal, get_args

import attrs
import numpy as np

from krt import SAMPLE_RATE
from krt.media.ogg import OggPager, OggReader
from krt.wire.protocol import AudioFormat

if TYPE_CHECKING:
    import av.audio.codeccontext

    from krt.config import EncodingConfig

FileFormat = Literal["mp3", "aac", "flac", "wav"]
"""Formats the OpenAI speech endpoint offers as well: files, but streamed as encoded."""
SpeechFormat = AudioFormat | FileFormat
OUTPUT_FORMATS: tuple[str, ...] = get_args(AudioFormat)
"""What a WebSocket session may ask for."""
ALL_FORMATS: tuple[str, ...] = (*OUTPUT_FORMATS, *get_args(FileFormat))
_MUXED = {"mp3": ("mp3", "libmp3lame"), "aac": ("adts", "aac"), "flac": ("flac", "flac")}
"""PyAV container and codec of each file format muxed by PyAV (Opus and WAV are framed here)."""
COMPRESSED_BITRATE = 64_000
"""MP3 and AAC bitrate: transparent for one voice at 24 kHz."""
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""Rates a client may ask for: telephony, wideband, CD family and Kokoro's own."""
OPUS_SAMPLE_RATES = (8000, 16000, 24000, 48000)
"""Of ``SAMPLE_RATES``, those Opus can encode (it has no 22.05 or 44.1 kHz mode)."""
MAX_PACKETS_PER_PAGE = 100
"""2 s of 20 ms Opus packets: a page's lacing table (255 entries) always has room."""
OPUS_GRANULE_RATE = 48_000
"""Ogg/Opus counts positions at 48 kHz whatever the input rate (RFC 7845 §4)."""


class UnsupportedOutput(ValueError):
    """A format and rate krt cannot produce; the message names what it can."""


@attrs.frozen
class OutputAudio:
    """What a client hears: the format and rate of its ``response.output_audio.delta``."""

    format: SpeechFormat = "pcm"
    sample_rate: int = SAMPLE_RATE

    def __attrs_post_init__(self) -> None:
        if self.format not in ALL_FORMATS:
            raise UnsupportedOutput(
                f"audio format {self.format!r} is not supported; use one of {', '.join(ALL_FORMATS)}"
            )
        if self.sample_rate not in SAMPLE_RATES:
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise UnsupportedOutput(f"sample_rate {self.sample_rate} is not supported; use one of {rates}")
        if self.format == "opus" and self.sample_rate not in OPUS_SAMPLE_RATES:
            rates = ", ".join(map(str, OPUS_SAMPLE_RATES))
            raise UnsupportedOutput(f"opus cannot encode {self.sample_rate} Hz; use one of {rates}")

    @property
    def played_rate(self) -> int:
        """The rate a player decodes it at: Opus always decodes at 48 kHz."""
        return OPUS_GRANULE_RATE if self.format == "opus" else self.sample_rate

    @property
    def is_native(self) -> bool:
        """Kokoro's own PCM: passed through untouched, at no cost."""
        return self.format == "pcm" and self.sample_rate == SAMPLE_RATE


NATIVE = OutputAudio()


class StreamEncoder:
    """One response's audio, converted chunk by chunk with no seams; not thread-safe.

    ``encode`` takes 24 kHz PCM16 and returns the bytes to send now (maybe none yet, while
    the resampler fills its filter); ``finish`` returns the rest, once, at the end of the
    response. A response that is cancelled is simply dropped.
    """

    def __init__(self, output: OutputAudio, encoding: EncodingConfig) -> None:
        import soxr

        self.output = output
        self._resampler = (
            None
            if output.sample_rate == SAMPLE_RATE
            else soxr.ResampleStream(SAMPLE_RATE, output.sample_rate, 1, dtype="int16", quality="HQ")
        )
        self._codec: _Codec | None = None
        if output.format in ("mulaw", "alaw"):
            self._codec = _G711(output.format, output.sample_rate)
        elif output.format == "opus":
            self._codec = _OggOpus(output.sample_rate, encoding)
        elif output.format == "wav":
            self._codec = _StreamingWav(output.sample_rate)
        elif output.format in _MUXED:
            self._codec = _Muxed(output.format, output.sample_rate)

    def encode(self, pcm: bytes) -> bytes:
        return self._convert(np.frombuffer(pcm, dtype="<i2"), last=False)

    def finish(self) -> bytes:
        """Everything still held: the resampler's tail and the codec's last frames."""
        return self._convert(np.zeros(0, dtype="<i2"), last=True)

    def _convert(self, samples: np.ndarray, *, last: bool) -> bytes:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        if self._codec is None:
            return samples.astype("<i2", copy=False).tobytes()
        return self._codec.encode(np.ascontiguousarray(samples, dtype=np.int16), last=last)


class _Codec:
    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        raise NotImplementedError


def _audio_encoder(codec: str, sample_rate: int) -> av.audio.codeccontext.AudioCodecContext:
    import av

    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = sample_rate
    context.format = "s16"
    context.layout = "mono"
    return context


def _frame(samples: np.ndarray, sample_rate: int, pts: int | None = None) -> av.AudioFrame:
    import av

    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    return frame


class _G711(_Codec):
    def __init__(self, law: str, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._context = _audio_encoder(f"pcm_{law}", sample_rate)

    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        packets = list(self._context.encode(_frame(samples, self._sample_rate))) if samples.size else []
        if last:
            packets += self._context.encode(None)
        return b"".join(bytes(packet) for packet in packets)


class _OggOpus(_Codec):
    """Opus packets from PyAV's libopus, framed as an Ogg stream (RFC 3533, RFC 7845)."""

    def __init__(self, sample_rate: int, encoding: EncodingConfig) -> None:
        self._sample_rate = sample_rate
        self._context = _audio_encoder("libopus", sample_rate)
        self._context.bit_rate = encoding.opus_bitrate
        self._context.options = {"application": encoding.opus_application}
        self._context.open()
        self._pre_skip: int = struct.unpack_from("<H", self._context.extradata or b"", 10)[0]
        self._pages = OggPager(serial=random.getrandbits(32))
        self._samples_in = 0
        self._samples_out = 0
        """Input samples the packets made so far cover (the encoder lags its input)."""
        self._started = False

    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        out = b""
        if not self._started:
            self._started = True
            out += self._pages.page([bytes(self._context.extradata or b"")], granule=0, first=True)
            out += self._pages.page([_opus_tags()], granule=0)
        packets = []
        if samples.size:
            packets += self._context.encode(_frame(samples, self._sample_rate, self._samples_in))
            self._samples_in += samples.size
        if last:
            packets += self._context.encode(None)
        for start in range(0, len(packets), MAX_PACKETS_PER_PAGE):
            group = packets[start : start + MAX_PACKETS_PER_PAGE]
            self._samples_out += sum(packet.duration or 0 for packet in group)
            ends = last and start + MAX_PACKETS_PER_PAGE >= len(packets)
            # A page's position counts every sample its packets decode to, the encoder's
            # priming (pre-skip) included; the last page's is where the input ends rather
            # than where the padded final frame does, so a player drops the padding
            # (RFC 7845 §4.3, §4.4).
            granule = (
                self._end_granule() if ends else self._samples_out * OPUS_GRANULE_RATE // self._sample_rate
            )
            out += self._pages.page([bytes(packet) for packet in group], granule=granule, last=ends)
        if last and not packets:
            out += self._pages.page([], granule=self._end_granule(), last=True)
        return out

    def _end_granule(self) -> int:
        return self._pre_skip + self._samples_in * OPUS_GRANULE_RATE // self._sample_rate


class _StreamingWav(_Codec):
    """A WAV header whose sizes say "unknown" (0xFFFFFFFF), then the PCM as it comes: the
    length is not known when the header must leave, and players read such a stream to its
    end."""

    def __init__(self, sample_rate: int) -> None:
        self._header: bytes | None = (
            b"RIFF"
            + struct.pack("<I", 0xFFFFFFFF)
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data"
            + struct.pack("<I", 0xFFFFFFFF)
        )

    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        header, self._header = self._header or b"", None
        return header + samples.astype("<i2", copy=False).tobytes()


class _Sink:
    """Where PyAV's muxer writes; each ``encode`` takes what it wrote since the last."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class _Muxed(_Codec):
    """MP3, ADTS AAC or FLAC through PyAV's muxer into memory, as frames are encoded.

    The output has no seek: the muxer's trailer (FLAC's total length) is left unwritten,
    which players accept for a stream.
    """

    def __init__(self, format_: str, sample_rate: int) -> None:
        import av

        container_format, codec = _MUXED[format_]
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=container_format)
        stream = self._container.add_stream(codec, rate=sample_rate)
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._stream.layout = "mono"
        if format_ != "flac":
            self._stream.bit_rate = COMPRESSED_BITRATE
        self._sample_rate = sample_rate
        self._samples_in = 0

    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        if samples.size:
            frame = _frame(samples, self._sample_rate, self._samples_in)
            self._samples_in += samples.size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if last:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        return self._sink.take()


def _opus_tags() -> bytes:
    vendor = b"krt"
    return b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)


def decode(data: bytes, output: OutputAudio) -> tuple[np.ndarray, int]:
    """A whole stream of ``output`` back to float samples and their rate, through PyAV.

    The inverse of :class:`StreamEncoder` for clients that save or measure what they got
    (``krt client``, the tests). Opus decodes at 48 kHz whatever rate it was encoded at.
    """
    import io

    import av

    if output.format == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, output.sample_rate
    raw = output.format in ("mulaw", "alaw")
    options = {"sample_rate": str(output.sample_rate), "ch_layout": "mono"} if raw else {}
    demuxer = {"opus": "ogg", "mp3": "mp3", "aac": "aac", "flac": "flac", "wav": "wav"}.get(
        output.format, output.format
    )
    with av.open(io.BytesIO(data), mode="r", format=demuxer, options=options) as container:
        stream = container.streams.audio[0]
        frames = [_float_samples(frame) for frame in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    return (np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)), rate


def _float_samples(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray().reshape(-1)
    if np.issubdtype(samples.dtype, np.integer):  # G.711 decodes to s16, Opus to float
        return (samples.astype(np.float32) / 32768.0).astype(np.float32)
    return samples.astype(np.float32)


class StreamDecoder:
    """Deltas of one response back to float samples as they arrive (krt's own client).

    A client measures what a caller hears (how long each delta plays, when the first
    sound comes) on the decoded audio; :func:`decode` is the whole-stream check that also
    trims Opus's padding by its last page's position, which a live player cannot know yet.
    """

    def __init__(self, output: OutputAudio) -> None:
        import av

        self.output = output
        self.sample_rate = output.played_rate
        self._context: av.AudioCodecContext | None = None
        if output.format in ("mulaw", "alaw", "opus"):
            codec = "libopus" if output.format == "opus" else f"pcm_{output.format}"
            context = av.CodecContext.create(codec, "r")
            assert isinstance(context, av.AudioCodecContext)
            context.sample_rate = self.sample_rate
            context.layout = "mono"
            self._context = context
        self._pages = OggReader()
        self._pre_skip = 0
        self._odd_byte = b""

    def decode(self, data: bytes) -> np.ndarray:
        if self._context is None:
            data, self._odd_byte = self._odd_byte + data, b""
            if len(data) % 2:
                data, self._odd_byte = data[:-1], data[-1:]
            return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)
        packets = [data] if self.output.format != "opus" else self._audio_packets(data)
        frames = [frame for packet in packets for frame in self._decode_packet(packet)]
        samples = np.concatenate([_float_samples(f) for f in frames]) if frames else np.zeros(0, np.float32)
        skipped = min(self._pre_skip, samples.size)
        self._pre_skip -= skipped
        return samples[skipped:]

    def _decode_packet(self, packet: bytes) -> list[av.AudioFrame]:
        import av

        assert self._context is not None
        return list(self._context.decode(av.Packet(packet)))

    def _audio_packets(self, data: bytes) -> list[bytes]:
        """Opus packets of the pages in ``data``; the two header packets set the decoder up."""
        packets = []
        for packet in self._pages.feed(data):
            if packet.startswith(b"OpusHead"):
                self._pre_skip = struct.unpack_from("<H", packet, 10)[0]
            elif not packet.startswith(b"OpusTags"):
                packets.append(packet)
        return packets
