"""``krt bench downloads`` against a real server on loopback (fake model, computing at a
twentieth of real time, so that a download takes turns a reply can fall between)."""

from __future__ import annotations

import json

import pytest
import trio

from krt.bench.download_bench import chapter
from tests.server_harness import run_krt

pytestmark = [pytest.mark.trio, pytest.mark.slow]


async def test_the_chapter_is_paragraphs_of_about_the_length_asked():
    text = chapter(1000)
    assert 1000 <= len(text) < 1000 + len(text.split("\n\n")[0]) + 2
    assert text.count("\n\n") >= 2 and "On day 3" in text


async def test_every_figure_is_measured_in_one_run(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server(API_KEY="k", KRT_FAKE_COMPUTE_RATIO="0.05")
        done = await run_krt(
            "bench",
            "downloads",
            "--url",
            server.url,
            "--api-key",
            "k",
            "--rounds",
            "1",
            "--chars",
            "5000",
            "--seconds",
            "1.5",
            "--settle",
            "0.2",
            "--json",
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr.decode()
    figures = json.loads(done.stdout)
    assert figures["chars"] == 5000  # a download: past OpenAI's 4096
    assert figures["reply_alone_ms"] > 0 and figures["reply_beside_download_ms"] > 0
    assert figures["http_short_ttfb_ms"] > 0 and figures["http_long_ttfb_ms"] > 0
    # The fake makes audio at 20 times real time, less what its windows' context costs.
    assert 4 < figures["download_alone_xrt"] <= 20
    assert 0 < figures["download_beside_reply_xrt"] <= 20
    assert figures["busy_refusals_alone"] == figures["busy_refusals_beside_download"] == 0


async def test_a_refused_key_is_one_line(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server(API_KEY="k")
        done = await run_krt("bench", "downloads", "--url", server.url, "--api-key", "nope", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and "401" in done.stderr.decode()
