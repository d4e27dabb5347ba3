"""``krt bench`` (load and sweep) against a real server on loopback, its figures and plots,
and ``krt metrics --plot``.

The CLI runs as a subprocess through ``trio.run_process``, so this test's Trio loop keeps
serving the in-process server (fake backend) while the tool talks to it.
"""

from __future__ import annotations

import io
import json
import time
from typing import TYPE_CHECKING

import pytest
import trio
from PIL import Image

from krt.__main__ import build_parser, main
from krt.bench.sweep import Progress, parse_levels, read_texts
from krt.bench.sweep_report import format_table, recommend
from krt.client.commands import pieces_of
from krt.client.texts import AGENT_REPLIES
from krt.metrics import plots
from krt.metrics import report as metrics
from krt.metrics.report import read_records
from tests.conftest import free_port
from tests.server_harness import run_krt

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def level(concurrency: int, p95: float | None, **fields: object) -> dict[str, object]:
    """A hand-made level summary: clean unless ``fields`` say otherwise."""
    return {
        "concurrency": concurrency,
        "texts": 10,
        "responses": 10,
        "completed": 10,
        "ttfb_p50_ms": None if p95 is None else p95 / 2,
        "ttfb_p95_ms": p95,
        "ttfb_p99_ms": None if p95 is None else p95 * 1.1,
        "first_audio_p95_ms": p95,
        "aggregate_xrt": 3.0,
        "stream_xrt_min": 3.0 / concurrency,
        "stalled_texts": 0,
        "busy": 0,
        "errors": 0,
        "stuck": 0,
        **fields,
    }


# --- against a running server ------------------------------------------------------------


@pytest.mark.trio
async def test_sweep_prints_a_row_per_level_recommends_and_draws(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server()
        done = await run_krt("bench", "--url", server.url, "--n", "6", "--sweep", "3,1,2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if "TTFB p50 ms" in line)
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(row[1] == "6" and row[-3:] == ["0", "0", "0"] for row in rows)  # busy, errors, stuck
    assert "recommended concurrency: 3" in out  # the fake backend is far under 1500 ms
    assert png_size(tmp_path / "bench-sweep.png") == (1200, 900)
    assert "Traceback" not in done.stderr.decode()
    assert len(read_records(tmp_path / "metrics.log")) == 3 * 6  # the server answered every response


@pytest.mark.trio
async def test_json_figures_are_consistent_in_single_mode(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server()
        done = await run_krt(
            "bench", "--url", server.url, "--n", "7", "--concurrency", "2", "--json", cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)  # one object, nothing else on stdout
    assert (result["mode"], result["n"], result["recommendation"], result["plot"]) == (
        "single",
        7,
        None,
        None,
    )
    [only] = result["levels"]
    assert (only["concurrency"], only["texts"], only["responses"], only["completed"]) == (2, 7, 7, 7)
    assert (only["busy"], only["errors"], only["stuck"], only["leaked_bytes"]) == (0, 0, 0, 0)
    assert 0 < only["ttfb_p50_ms"] <= only["ttfb_p95_ms"] <= only["ttfb_p99_ms"]
    assert only["first_audio_p95_ms"] == only["ttfb_p95_ms"]  # one response per text
    assert len(only["stream_xrt"]) == 2 and only["stream_xrt_min"] == min(only["stream_xrt"])
    assert only["aggregate_xrt"] > 0 and only["audio_s"] > 0
    assert not (tmp_path / "bench-sweep.png").exists()  # a single level draws only when asked


@pytest.mark.trio
async def test_sentences_mode_sends_each_sentence_as_a_response(harness, tmp_path):
    n = 5
    with trio.fail_after(60):
        server = await harness.server()
        done = await run_krt(
            "bench", "--url", server.url, "--n", str(n), "--concurrency", "2", "--mode", "sentences", "--json",
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    [only] = json.loads(done.stdout)["levels"]
    sentences = sum(len(pieces_of(AGENT_REPLIES[i], "sentences")) for i in range(n))
    assert sentences > n  # the built-in replies have several sentences
    assert (only["texts"], only["responses"], only["completed"]) == (n, sentences, sentences)
    assert len(read_records(tmp_path / "metrics.log")) == sentences
    # A later sentence waits behind the earlier ones: a text's first audio is not later than them.
    assert only["first_audio_p95_ms"] <= only["ttfb_p95_ms"]


@pytest.mark.trio
async def test_texts_file_is_spoken_and_a_bad_one_is_refused(harness, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("One. Two. Three. Four.\n\n   \nFive.\n", encoding="utf-8")
    with trio.fail_after(60):
        server = await harness.server()
        common = ("bench", "--url", server.url, "--concurrency", "1", "--mode", "sentences", "--json")
        done = await run_krt(*common, "--n", "3", "--texts", str(texts), cwd=tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        [only] = json.loads(done.stdout)["levels"]
        assert (only["texts"], only["responses"]) == (3, 4 + 1 + 4)  # the file's texts, cycled
        for bad, reason in [(tmp_path / "missing.txt", "cannot read"), (tmp_path / "empty.txt", "no texts")]:
            if bad.name == "empty.txt":
                bad.write_text("\n  \n", encoding="utf-8")
            refused = await run_krt(*common, "--texts", str(bad), cwd=tmp_path)
            assert refused.returncode == 2
            assert reason in refused.stderr.decode() and "Traceback" not in refused.stderr.decode()


@pytest.mark.trio
async def test_unreachable_server_is_one_clear_line(tmp_path):
    port = free_port()
    with trio.fail_after(30):
        done = await run_krt("bench", "--host", "127.0.0.1", "--port", str(port), "--n", "2", cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "cannot reach the server" in err and "Traceback" not in err
    assert done.stdout == b""


@pytest.mark.trio
async def test_wrong_api_key_gets_the_401_message(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server(API_KEY="right-key")
        done = await run_krt("bench", "--url", server.url, "--api-key", "wrong", "--n", "2", cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "refused the API key (HTTP 401)" in err and "Traceback" not in err


@pytest.mark.trio
async def test_refused_responses_are_counted_and_fail_the_run(harness, tmp_path):
    texts = tmp_path / "long.txt"
    texts.write_text(" ".join(["word"] * 30) + ".\n", encoding="utf-8")
    with trio.fail_after(30):
        server = await harness.server(MAX_UTTERANCE_WORDS="20")
        done = await run_krt(
            "bench", "--url", server.url, "--n", "4", "--concurrency", "2", "--texts", str(texts), "--json",
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1
    [only] = json.loads(done.stdout)["levels"]
    assert (only["completed"], only["errors"], only["ttfb_p95_ms"]) == (0, 4, None)
    assert "no response completed" in done.stderr.decode()


# --- options -------------------------------------------------------------------------------


def test_bench_options_and_the_subcommands_do_not_clobber_each_other(capsys):
    parser = build_parser()
    load = parser.parse_args(["bench", "--n", "5", "--concurrency", "3", "--mode", "sentences"])
    assert (load.bench, load.n, load.concurrency, load.mode) == (None, 5, 3, "sentences")
    server = parser.parse_args(["bench", "server", "--n", "4"])
    assert (server.bench, server.n, server.concurrency, server.backend) == ("server", 4, "1,2,4", "onnx")
    assert parser.parse_args(["bench", "server"]).n == 12  # its own default, not the sweep's 24
    engine = parser.parse_args(["bench", "engine", "--repeats", "2"])
    assert (engine.bench, engine.repeats, engine.backends) == ("engine", 2, "onnx,torch")
    for name, option in [("server", "--backend"), ("engine", "--backends")]:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["bench", name, "--help"])
        assert exit_.value.code == 0
        assert option in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "2", "--sweep", "1,2"], "not both"),
        (["--sweep", "1,x"], "whole numbers"),
        (["--sweep", "0,1"], "at least 1"),
        (["--n", "3", "--sweep", "1,4"], "between 1 and --n (3)"),
        (["--n", "0"], "at least 1"),
    ],
)
def test_bad_options_are_refused_before_connecting(argv, message, tmp_path, capsys):
    assert main(["--env-file", str(tmp_path / ".env"), "bench", "--port", "9", *argv]) == 2
    assert message in capsys.readouterr().err


def test_levels_and_texts_parsing(tmp_path):
    assert parse_levels("4, 1,2,,2") == [1, 2, 4]
    path = tmp_path / "t.txt"
    path.write_text("  A reply.  \n\nAnother one.\n", encoding="utf-8")
    assert read_texts(path) == ("A reply.", "Another one.")


# --- the recommendation --------------------------------------------------------------------


def test_recommends_the_highest_level_under_the_target():
    levels = [level(1, 200.0), level(2, 600.0), level(4, 1400.0), level(6, 2100.0)]
    result = recommend(levels, 1500)
    assert result.concurrency == 4
    assert "recommended concurrency: 4" in result.message and "MAX_CONCURRENT_JOBS=4" in result.message
    assert recommend(levels, 500).concurrency == 1
    assert recommend(levels, 2100).concurrency == 6  # the target is inclusive
    assert "highest level tried" in recommend(levels, 2100).message


@pytest.mark.parametrize("fault", ["busy", "errors", "stuck"])
def test_a_level_with_busy_errors_or_stuck_does_not_qualify(fault):
    levels = [level(1, 200.0), level(2, 300.0), level(3, 400.0, **{fault: 1})]
    assert recommend(levels, 1500).concurrency == 2


def test_a_level_without_audio_does_not_qualify_and_lower_failures_are_noted():
    levels = [level(1, 200.0), level(2, 300.0, busy=2), level(3, 400.0), level(4, None, busy=10)]
    result = recommend(levels, 1500)
    assert result.concurrency == 3
    assert "lower levels did not qualify: 2 (2 busy)" in result.message


def test_says_clearly_when_no_level_qualifies():
    result = recommend([level(1, 1600.0), level(2, 900.0, errors=1)], 1500)
    assert result.concurrency is None
    assert result.message.startswith("no concurrency qualifies")
    assert "1: p95 1600 ms" in result.message and "2: 1 errors" in result.message


def test_stalls_at_the_recommended_level_are_called_out():
    levels = [level(1, 200.0), level(2, 300.0), level(3, 400.0, stalled_texts=4, stream_xrt_min=0.9)]
    message = recommend(levels, 1500).message
    assert "4 of 10 texts stalled there" in message and "highest level without stalls is 2" in message


def test_sentences_mode_holds_the_first_audio_to_the_target():
    # Queued sentences wait behind earlier ones: their TTFB may exceed the target while
    # every text's first audio meets it.
    queued = level(2, 3000.0, first_audio_p95_ms=700.0)
    result = recommend([level(1, 200.0), queued], 1500, "sentences")
    assert result.concurrency == 2 and "p95 first audio per text 700 ms" in result.message


def test_table_has_the_first_audio_column_only_in_sentences_mode():
    levels = [level(1, 200.0), level(2, None, busy=10)]
    single, sentences = format_table(levels, "single"), format_table(levels, "sentences")
    assert "1st audio" not in single and "1st audio" in sentences
    assert len(single.splitlines()) == 3 and " - " in single.splitlines()[2]


# --- progress and plots ----------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.trio
async def test_progress_draws_a_bar_on_a_terminal_only():
    finished = level(2, 300.0) | {"wall_s": 1.5}
    for stream, live in [(Terminal(), True), (io.StringIO(), False)]:
        progress = Progress(stream, total=4)
        progress.start(2)
        progress.advance(())
        progress.finish(finished)
        text = stream.getvalue()
        assert ("[######------------------] 1/4 texts" in text) is live
        assert ("\r" in text) is live
        assert text.endswith(
            "krt bench: concurrency 2: 10 texts in 1.5 s, TTFB p95 300 ms, busy 0, errors 0\n"
        )


def test_sweep_plot_marks_faults_and_gaps(tmp_path):
    path = tmp_path / "sweep.png"
    levels = [level(1, 200.0), level(2, 900.0, stalled_texts=3), level(4, None, busy=10, aggregate_xrt=None)]
    plots.sweep_plot(path, levels, title="t", p95_target_ms=1500, recommended=1, first_audio=True)
    assert png_size(path) == (1200, 900)


def test_metrics_plot_writes_a_png_from_a_log(tmp_path):
    now = time.time()
    log = tmp_path / "metrics.log"
    lines = [
        {"ts": now - 60 * k, "ttfb_ms": 100.0 + k, "wall_s": 2.0, "audio_s": 4.0 + k % 3, "canceled": False}
        for k in range(40)
    ]
    lines.append({"ts": now - 30, "ttfb_ms": None, "wall_s": 0.1, "audio_s": 0.0, "canceled": True})
    lines.append({"ts": now - 86400 * 30, "ttfb_ms": 99.0, "wall_s": 1.0, "audio_s": 1.0, "canceled": False})
    log.write_text("\n".join(map(json.dumps, lines)) + "\n{torn\n", encoding="utf-8")
    out = tmp_path / "timeline.png"
    parser = build_parser()
    args = parser.parse_args(["metrics", "--log", str(log), "--periods", "30m,1h", "--plot", str(out)])
    assert metrics.run(args) == 0
    assert png_size(out) == (1200, 840)
    assert metrics.plot_timeline(out, [], "1h", now, log) == 0  # an empty window still draws
    assert png_size(out) == (1200, 840)
    assert metrics.plot_timeline(out, metrics.read_records(log), "1h", now, log) == 41  # not the old one
    args.plot = tmp_path / "no-such-dir" / "x.png"
    assert metrics.run(args) == 1
