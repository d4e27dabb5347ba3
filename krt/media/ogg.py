"""Ogg pages (RFC 3533) of one logical stream: written whole, read back in any pieces.

krt frames its Opus packets itself (see :mod:`krt.media.codecs` for why), and its client reads
them back delta by delta; both directions live here, with Ogg's own CRC.
"""

from __future__ import annotations

import struct


class OggPager:
    """Ogg pages of one logical stream: each call puts whole packets in one page."""

    def __init__(self, serial: int) -> None:
        self._serial = serial
        self._sequence = 0

    def page(self, packets: list[bytes], granule: int, *, first: bool = False, last: bool = False) -> bytes:
        lacing = b"".join(_lacing(len(packet)) for packet in packets)
        assert len(lacing) <= 255, "a page holds at most 255 lacing values"
        header_type = (0x02 if first else 0) | (0x04 if last else 0)
        header = struct.pack(
            "<4sBBqIIIB", b"OggS", 0, header_type, granule, self._serial, self._sequence, 0, len(lacing)
        )
        self._sequence += 1
        body = header + lacing + b"".join(packets)
        checksum = ogg_crc(body)
        return body[:22] + struct.pack("<I", checksum) + body[26:]


def _lacing(size: int) -> bytes:
    """A packet's segment table entries: 255 per full segment, then the remainder (maybe 0)."""
    return b"\xff" * (size // 255) + bytes([size % 255])


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, unreflected, no final xor): not zlib's."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


class OggReader:
    """Packets out of Ogg pages fed in any pieces (a page may span two deltas)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        packets = []
        while len(self._buffer) >= 27:
            if not self._buffer.startswith(b"OggS"):
                raise ValueError("not an Ogg stream (no page starts here)")
            segments = self._buffer[26]
            header_size = 27 + segments
            if len(self._buffer) < header_size:
                break
            lacing = self._buffer[27:header_size]
            if len(self._buffer) < header_size + sum(lacing):
                break
            position = header_size
            for size in lacing:
                self._partial += self._buffer[position : position + size]
                position += size
                if size < 255:
                    packets.append(self._partial)
                    self._partial = b""
            self._buffer = self._buffer[position:]
        return packets
