"""The metrics log and ``krt metrics`` summaries, on tmp files and an explicit clock."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time

import attrs
import pytest

from krt.metrics.record import MetricsLog, ResponseRecord
from krt.metrics.report import (
    DEFAULT_LOG_PATH,
    DEFAULT_PERIODS,
    PeriodSummary,
    add_arguments,
    configured_log_path,
    format_summary,
    load_records,
    parse_period,
    parse_periods,
    read_records,
    run,
    summarize,
)

NOW = 1_700_000_000.0
LINE_FIELDS = [
    "ts",
    "request_id",
    "ttfb_ms",
    "wall_s",
    "audio_s",
    "rtf",
    "xrt",
    "kbps",
    "canceled",
    "voice",
    "backend",
    "queue_ms",
]


def response(**overrides) -> ResponseRecord:
    fields = {
        "ts": NOW,
        "request_id": "resp_1",
        "ttfb_ms": 120.0,
        "wall_s": 2.0,
        "audio_s": 4.0,
        "canceled": False,
        "voice": "af_heart",
        "backend": "onnx",
        "queue_ms": 3.0,
    }
    return ResponseRecord(**{**fields, **overrides})


def line(ts: float, ttfb_ms: float | None, wall_s: float, audio_s: float, canceled: bool = False) -> dict:
    """A record as read back from the log (only the fields summaries use, plus ts)."""
    return {"ts": ts, "ttfb_ms": ttfb_ms, "wall_s": wall_s, "audio_s": audio_s, "canceled": canceled}


# --- the log line -------------------------------------------------------------------------


def test_records_round_trip_with_every_field_in_order(tmp_path):
    path = tmp_path / "metrics.log"
    log = MetricsLog(path)
    log.append(
        response(
            ts=NOW + 0.12345,
            request_id="resp_a",
            ttfb_ms=123.456,
            wall_s=1.23456,
            audio_s=2.46912,
            queue_ms=7.06,
            voice="am_michael",
            backend="torch",
        )
    )
    log.append(response(request_id="resp_b", ttfb_ms=None, audio_s=0.0, canceled=True))

    first, second = read_records(path)
    assert list(first) == LINE_FIELDS
    assert first == {
        "ts": 1_700_000_000.123,
        "request_id": "resp_a",
        "ttfb_ms": 123.5,
        "wall_s": 1.235,
        "audio_s": 2.469,
        "rtf": 0.5,
        "xrt": 2.0,
        "kbps": 768.0,
        "canceled": False,
        "voice": "am_michael",
        "backend": "torch",
        "queue_ms": 7.1,
    }
    assert second["request_id"] == "resp_b"
    assert second["ttfb_ms"] is None
    assert second["canceled"] is True
    assert path.read_text().count("\n") == 2


def test_derived_rates():
    record = response(wall_s=2.0, audio_s=4.0)
    # 4 s of PCM16 at 24 kHz = 192000 bytes = 1536 kbit, over 2 s.
    assert (record.rtf, record.xrt, record.kbps) == (0.5, 2.0, 768.0)
    slow = response(wall_s=3.0, audio_s=1.5)
    assert (slow.rtf, slow.xrt, slow.kbps) == (2.0, 0.5, 192.0)
    fields = response(wall_s=0.7, audio_s=1.0).log_fields()
    # 384 kbit of audio in 0.7 s; rates rounded on the line only.
    assert (fields["rtf"], fields["xrt"], fields["kbps"]) == (0.7, 1.429, 548.6)


def test_derived_rates_without_audio_or_wall_time():
    silent = response(ttfb_ms=None, wall_s=0.25, audio_s=0.0, canceled=True)
    assert silent.rtf is None
    assert silent.xrt == 0.0
    assert silent.kbps == 0.0
    instant = response(ttfb_ms=None, wall_s=0.0, audio_s=0.0)
    assert (instant.rtf, instant.xrt, instant.kbps) == (None, None, None)
    fields = instant.log_fields()
    assert (fields["rtf"], fields["xrt"], fields["kbps"]) == (None, None, None)


@pytest.mark.parametrize(
    "overrides", [{"wall_s": -1.0}, {"audio_s": math.nan}, {"ttfb_ms": math.inf}, {"queue_ms": -0.1}]
)
def test_impossible_values_are_refused(overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        response(**overrides)


def test_log_directory_is_created_on_first_write_and_again_after_removal(tmp_path):
    path = tmp_path / "logs" / "nested" / "metrics.log"
    log = MetricsLog(path)
    assert not path.parent.exists()
    log.append(response(request_id="one"))
    assert [r["request_id"] for r in read_records(path)] == ["one"]
    shutil.rmtree(tmp_path / "logs")
    log.append(response(request_id="two"))
    assert [r["request_id"] for r in read_records(path)] == ["two"]


def test_append_adds_to_an_existing_log(tmp_path):
    path = tmp_path / "metrics.log"
    MetricsLog(path).append(response(request_id="old"))
    MetricsLog(path).append(response(request_id="new"))
    assert [r["request_id"] for r in read_records(path)] == ["old", "new"]


def test_corrupt_and_blank_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.log"
    good = json.dumps(response().log_fields())
    path.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"",
                b"   ",
                b"{not json",
                b"[1, 2]",
                b'{"request_id": "no ts"}',
                b'{"ts": "yesterday"}',
                b"\xff\xfe garbage",
                good[: len(good) // 2].encode(),  # a line torn by a crash
                good.encode(),
            ]
        )
    )
    loaded = load_records(path)
    assert len(loaded.records) == 2
    assert loaded.skipped == 6
    assert read_records(path) == loaded.records


# --- periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("24h", 86400.0),
        ("3d", 259200.0),
        ("1.5h", 5400.0),
        (" 6h ", 21600.0),
    ],
)
def test_parse_period(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "30x", "-5m", "0m", "30 m", "1e3s", "30M", "h1"])
def test_parse_period_rejects(text):
    with pytest.raises(ValueError, match="invalid period"):
        parse_period(text)


def test_parse_periods():
    assert parse_periods("30m, 1h,,6h") == ["30m", "1h", "6h"]
    assert parse_periods(DEFAULT_PERIODS) == ["30m", "1h", "6h", "24h", "3d"]
    with pytest.raises(ValueError, match="at least one"):
        parse_periods(" , ")
    with pytest.raises(ValueError, match="'2x'"):
        parse_periods("30m,2x")


# --- summaries ----------------------------------------------------------------------------

SPREAD = [
    line(NOW - 1800, 100.0, wall_s=2.0, audio_s=4.0),  # exactly on the 30m edge: inside
    line(NOW - 600, 200.0, wall_s=1.0, audio_s=3.0),
    line(NOW - 300, 300.0, wall_s=1.0, audio_s=1.0),
    line(NOW - 120, 400.0, wall_s=4.0, audio_s=2.0),
    line(NOW - 60, 500.0, wall_s=1.0, audio_s=0.5, canceled=True),
    line(NOW - 30, None, wall_s=0.2, audio_s=0.0, canceled=True),
    line(NOW - 3000, 1000.0, wall_s=5.0, audio_s=10.0),  # in 1h, not 30m
    line(NOW - 4 * 86400, 50.0, wall_s=1.0, audio_s=1.0),  # older than 3d
    line(NOW + 5, 9999.0, wall_s=1.0, audio_s=1.0),  # after `now`: in no window
]


def test_summaries_over_windows():
    half_hour, hour, week = summarize(SPREAD, ["30m", "1h", "7d"], now=NOW)

    assert half_hour == PeriodSummary(
        period="30m",
        count=6,
        canceled=2,
        cancel_rate=pytest.approx(1 / 3),
        # ttfbs 100..500: linear p95 at rank 3.8 = 400 + 0.8*100; p99 at 3.96.
        ttfb_p50_ms=pytest.approx(300.0),
        ttfb_p95_ms=pytest.approx(480.0),
        ttfb_p99_ms=pytest.approx(496.0),
        # xRT of the four finished responses with audio: 2, 3, 1, 0.5.
        mean_xrt=pytest.approx(1.625),
        audio_s=pytest.approx(10.5),
    )
    # ttfbs 100..500 and 1000: p50 between 300 and 400; p95 at rank 4.75 = 500 + 0.75*500.
    assert (hour.count, hour.canceled) == (7, 2)
    assert (hour.ttfb_p50_ms, hour.ttfb_p95_ms, hour.ttfb_p99_ms) == pytest.approx((350.0, 875.0, 975.0))
    assert hour.mean_xrt == pytest.approx(1.7)
    assert hour.cancel_rate == pytest.approx(2 / 7)
    assert week.count == 8
    assert week.ttfb_p50_ms == pytest.approx(300.0)


def test_empty_window_has_no_figures():
    (recent,) = summarize(SPREAD, ["10s"], now=NOW)
    assert recent == PeriodSummary("10s", 0, 0, None, None, None, None, None, 0.0)
    assert summarize([], ["30m", "1h"], now=NOW) == [
        PeriodSummary("30m", 0, 0, None, None, None, None, None, 0.0),
        PeriodSummary("1h", 0, 0, None, None, None, None, None, 0.0),
    ]


def test_window_of_only_canceled_responses():
    records = [line(NOW - 5, None, 0.1, 0.0, canceled=True), line(NOW - 4, 80.0, 0.3, 0.2, canceled=True)]
    (summary,) = summarize(records, ["1m"], now=NOW)
    assert (summary.count, summary.canceled, summary.cancel_rate) == (2, 2, 1.0)
    assert summary.ttfb_p50_ms == summary.ttfb_p99_ms == 80.0
    assert summary.mean_xrt is None


def test_summaries_tolerate_odd_field_values():
    odd = {"ts": NOW, "ttfb_ms": "fast", "canceled": "yes", "audio_s": None, "wall_s": True}
    (summary,) = summarize([odd, {"no": "ts"}, line(NOW, 10.0, 1.0, 2.0)], ["1m"], now=NOW)
    assert (summary.count, summary.canceled) == (2, 0)
    assert summary.ttfb_p50_ms == 10.0
    assert summary.mean_xrt == 2.0
    assert summary.audio_s == 2.0


def test_summaries_accept_a_one_shot_iterable():
    (summary,) = summarize(iter(SPREAD), ["1h"], now=NOW)
    assert summary.count == 7


def test_summaries_refuse_a_bad_period():
    with pytest.raises(ValueError, match="invalid period"):
        summarize(SPREAD, ["30m", "soon"], now=NOW)


def test_format_summary_aligns_columns_and_marks_missing_values():
    table = format_summary(summarize(SPREAD, ["30m", "10s"], now=NOW))
    header, half_hour, empty = table.splitlines()
    assert len(header) == len(half_hour) == len(empty)
    assert header.split() == [
        "period",
        "count",
        "canceled",
        "cancel_rate",
        "ttfb_p50_ms",
        "ttfb_p95_ms",
        "ttfb_p99_ms",
        "mean_xrt",
        "audio_s",
    ]
    assert half_hour.split() == ["30m", "6", "2", "33.3%", "300.0", "480.0", "496.0", "1.62", "10.5"]
    assert empty.split() == ["10s", "0", "0", "-", "-", "-", "-", "-", "-"]
    # Numbers are right-aligned under their headers.
    assert half_hour.index("480.0") + len("480.0") == header.index("ttfb_p95_ms") + len("ttfb_p95_ms")


# --- the command --------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="krt metrics")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults(tmp_path, monkeypatch):
    args = parse()
    assert (args.periods, args.log, args.json) == (DEFAULT_PERIODS, None, False)
    monkeypatch.delenv("KRT_METRICS_LOG", raising=False)
    assert configured_log_path(tmp_path / "no.env") == DEFAULT_LOG_PATH  # where the server writes by default


def write_recent_log(path):
    """Records relative to the real clock, minutes apart so that `run`'s own clock cannot matter."""
    now = time.time()
    log = MetricsLog(path)
    log.append(response(ts=now - 60, request_id="a", ttfb_ms=100.0))
    log.append(response(ts=now - 120, request_id="b", ttfb_ms=300.0))
    log.append(response(ts=now - 180, request_id="c", ttfb_ms=None, audio_s=0.0, canceled=True))
    log.append(response(ts=now - 7200, request_id="d", ttfb_ms=900.0))


def test_cli_prints_a_table(tmp_path, capsys):
    path = tmp_path / "metrics.log"
    write_recent_log(path)
    assert run(parse("--log", str(path), "--periods", "30m,6h")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, half_hour, six_hours = out.splitlines()
    assert header.startswith("period")
    assert half_hour.split()[:5] == ["30m", "3", "1", "33.3%", "200.0"]
    assert six_hours.split()[:5] == ["6h", "4", "1", "25.0%", "300.0"]


def test_cli_prints_json_per_period(tmp_path, capsys):
    path = tmp_path / "metrics.log"
    write_recent_log(path)
    with path.open("a") as log:
        log.write("{torn\n")
    assert run(parse("--log", str(path), "--periods", "30m,6h", "--json")) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(text) for text in out.splitlines()]
    assert [row["period"] for row in rows] == ["30m", "6h"]
    assert set(rows[0]) == {field.name for field in attrs.fields(PeriodSummary)}
    assert (rows[0]["count"], rows[0]["ttfb_p50_ms"], rows[0]["mean_xrt"]) == (3, 200.0, 2.0)
    assert rows[1]["cancel_rate"] == 0.25
    assert rows[0]["cancel_rate"] == 0.3333  # rounded for reading, like the log lines
    assert "skipped 1 unreadable line" in err


def test_cli_missing_log_prints_one_line_and_an_empty_table(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "metrics.log"
    assert run(parse("--log", str(missing), "--periods", "30m,1h")) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert str(missing) in err
    assert "no metrics log" in err
    assert [row.split() for row in out.splitlines()[1:]] == [
        ["30m", "0", "0", "-", "-", "-", "-", "-", "-"],
        ["1h", "0", "0", "-", "-", "-", "-", "-", "-"],
    ]
    assert not missing.parent.exists()


def test_cli_bad_periods_exit_2_before_reading_the_log(tmp_path, capsys):
    assert run(parse("--log", str(tmp_path / "missing.log"), "--periods", "30m,fortnight")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "invalid period 'fortnight'" in err
    assert "no metrics log" not in err


def test_cli_unreadable_log_exits_1(tmp_path, capsys):
    assert run(parse("--log", str(tmp_path), "--periods", "30m")) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"cannot read {tmp_path}" in err
