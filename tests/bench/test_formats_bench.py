"""``krt bench formats`` against a real server on loopback (fake model)."""

from __future__ import annotations

import json

import pytest
import trio

from tests.server_harness import run_krt

pytestmark = [pytest.mark.trio, pytest.mark.slow]


async def test_every_variant_is_timed_in_one_run(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server(API_KEY="k")
        done = await run_krt(
            "bench", "formats", "--url", server.url, "--api-key", "k", "--rounds", "1", "--json", cwd=tmp_path
        )
    assert done.returncode == 0, done.stderr.decode()
    rows = {row["variant"]: row for row in json.loads(done.stdout)["variants"]}
    assert set(rows) == {
        "websocket pcm",
        "websocket opus",
        "websocket mulaw 8 kHz",
        "http pcm",
        "http opus",
        "http mp3",
    }
    assert rows["websocket pcm"]["vs_websocket_pcm"] == 1.0
    assert all(0 < row["ttfb_p50_ms"] <= row["ttfb_p95_ms"] for row in rows.values())


async def test_a_refused_key_is_one_line(harness, tmp_path):
    with trio.fail_after(60):
        server = await harness.server(API_KEY="k")
        done = await run_krt("bench", "formats", "--url", server.url, "--api-key", "nope", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and "401" in done.stderr.decode()
