"""One JSON line per response: the record the server writes on its hot path.

The log is JSON Lines so that it can be appended to cheaply, tailed, grepped and read
back even when the server died mid-write: a torn or foreign line costs that line only.
Field names and order follow the seed deployment's ``logs/metrics.log`` (``ts, request_id,
ttfb_ms, wall_s, audio_s, rtf, xrt, kbps, canceled``) with ``voice, backend, queue_ms``
after them, so tools written for the seed's log keep working on ours. Reading the log back
(``krt metrics``) lives in ``report``, so the server never loads numpy's percentiles or plots.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

import attrs

from krt import PCM_BYTES_PER_SECOND

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)


def _finite_non_negative(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """Reject NaN, infinities and negative numbers: they would poison every later summary."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@attrs.frozen
class ResponseRecord:
    """What one response cost and delivered; the derived rates are computed, never stored twice."""

    ts: float = attrs.field(validator=_finite_non_negative)
    """Unix time when the response ended (finished or canceled)."""
    request_id: str
    ttfb_ms: float | None = attrs.field(validator=_finite_non_negative)
    """None when no audio was produced (canceled before the first audio)."""
    wall_s: float = attrs.field(validator=_finite_non_negative)
    """From receiving ``response.create`` to the end."""
    audio_s: float = attrs.field(validator=_finite_non_negative)
    """Seconds of audio sent."""
    canceled: bool
    voice: str
    backend: str
    queue_ms: float = attrs.field(validator=_finite_non_negative)
    """Time waiting for the engine before the response's first window started."""

    @property
    def rtf(self) -> float | None:
        """Wall time per second of audio; undefined (None) when no audio was sent."""
        return _ratio(self.wall_s, self.audio_s)

    @property
    def xrt(self) -> float | None:
        """Seconds of audio per second of wall time; None only for a zero wall time."""
        return _ratio(self.audio_s, self.wall_s)

    @property
    def kbps(self) -> float | None:
        """Average bitrate of the PCM16 we sent over the response's wall time."""
        return _ratio(self.audio_s * PCM_BYTES_PER_SECOND * 8 / 1000, self.wall_s)

    def log_fields(self) -> dict[str, Any]:
        """The log line's fields, in the seed's order, derived ones computed before rounding."""
        return {
            "ts": round(self.ts, 3),
            "request_id": self.request_id,
            "ttfb_ms": round_or_none(self.ttfb_ms, 1),
            "wall_s": round(self.wall_s, 3),
            "audio_s": round(self.audio_s, 3),
            "rtf": round_or_none(self.rtf, 3),
            "xrt": round_or_none(self.xrt, 3),
            "kbps": round_or_none(self.kbps, 1),
            "canceled": self.canceled,
            "voice": self.voice,
            "backend": self.backend,
            "queue_ms": round(self.queue_ms, 1),
        }


class MetricsLog:
    """Appends one JSON line per response to a file.

    ``append`` is a plain blocking write, and the server calls it from its event loop:
    one line of ~250 bytes per response, into the page cache, takes microseconds, far less
    than handing it to a worker thread would. The file is opened per line (``O_APPEND``, one
    ``write``) so a log removed or rotated under a running server is simply recreated, and
    two processes sharing the file (local disk) append whole lines. Not locked: call it
    from one thread at a time. A failing write (full disk, a directory where the file
    should be) is logged as a warning and costs that line only, never the response.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: ResponseRecord) -> None:
        """Write one line; a full disk or a bad path costs the line, never the response."""
        line = json.dumps(record.log_fields(), allow_nan=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as log:
                log.write(line)
        except OSError as exc:
            logger.warning("metrics line for %s not written to %s: %s", record.request_id, self.path, exc)
