"""``krt bench capacity``: agents joining at random, retrying a ``busy`` when told, and the
search for the largest stream count that keeps first audio in time with no stall."""

from __future__ import annotations

import json
import re

import pytest
import trio

from krt.bench.capacity import format_table, passes, search
from tests.bench.test_sweep import png_size
from tests.server_harness import run_krt

pytestmark = [pytest.mark.trio, pytest.mark.slow]


def level(streams: int, *, ok: bool) -> dict[str, object]:
    return {
        "streams": streams,
        "replies": 4 * streams,
        "spoken": 4 * streams,
        "first_audio_p50_ms": 300.0,
        "first_audio_p95_ms": 600.0 if ok else 2400.0,
        "longest_silence_ms": 0.0,
        "stalled": 0,
        "busy": 0,
        "refused_twice": 0,
        "errors": 0,
        "replies_per_s": 1.0,
        "audio_per_s": 3.0,
        "wall_s": 10.0,
    }


async def test_the_search_doubles_until_a_count_fails_then_bisects():
    ran: list[int] = []

    async def run(count: int) -> dict[str, object]:
        ran.append(count)
        return level(count, ok=count <= 5)

    levels, best = await search(run, 16, 1500.0, None)
    assert best == 5
    assert ran == [1, 2, 4, 8, 6, 5]
    assert [row["streams"] for row in levels] == [1, 2, 4, 5, 6, 8]
    table = format_table(levels, 1500.0).splitlines()
    assert table[0].split()[0] == "streams" and len(table) == 7
    assert [line.split()[-1] for line in table[1:]] == ["yes", "yes", "yes", "yes", "no", "no"]


async def test_a_stall_or_an_unspoken_reply_fails_a_count_whatever_its_latency():
    assert passes(level(2, ok=True), 1500.0)
    assert not passes({**level(2, ok=True), "stalled": 1}, 1500.0)
    assert not passes({**level(2, ok=True), "errors": 1}, 1500.0)
    ran: list[int] = []

    async def run(count: int) -> dict[str, object]:
        ran.append(count)
        return level(count, ok=True)

    _levels, best = await search(run, 6, 1500.0, None)
    assert (best, ran) == (6, [1, 2, 4, 6])  # every count passes: the search stops at the most


async def test_busy_replies_are_retried_when_told_and_counted_against_a_real_server(harness, tmp_path):
    """One stream at a time and no queue: at three streams two replies are refused, come
    back when the refusal says, and are spoken; their wait counts in first audio."""
    with trio.fail_after(90):
        server = await harness.server(
            KRT_FAKE_COMPUTE_RATIO="0.05", MAX_CONCURRENT_JOBS="1", MAX_QUEUED_REQUESTS="0"
        )
        done = await run_krt(
            "bench", "capacity", "--url", server.url, "--streams", "1,3", "--replies", "1",
            "--spread", "0", "--json", "--plot", str(tmp_path / "capacity.png"), cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    alone, three = result["levels"]
    assert (alone["streams"], alone["spoken"], alone["busy"]) == (1, 1, 0)
    assert (three["streams"], three["spoken"], three["errors"]) == (3, 3, 0)
    assert three["busy"] >= 2  # everyone asked at once: one is taken, the others told when
    assert three["first_audio_p95_ms"] > alone["first_audio_p95_ms"]
    assert three["stalled"] == 0
    assert png_size(tmp_path / "capacity.png") == (1200, 900)
    assert "Traceback" not in done.stderr.decode()


async def test_a_client_that_never_reads_does_not_hold_up_the_agents(harness, tmp_path):
    """One stream at a time, and a hung client (asks for ~40 s of audio, never reads)
    attached first. The agent is refused while the hung stream still looks like a
    listener, told to come back within twice the SLA, and by then the server has parked
    the hung stream: both replies are spoken within seconds, long before the server would
    give up on the hung socket (60 s here) or the hung reply would end."""
    with trio.fail_after(60):
        server = await harness.server(
            KRT_FAKE_COMPUTE_RATIO="0.05",
            MAX_CONCURRENT_JOBS="1",
            WS_SEND_TIMEOUT="60",
            QUEUE_WAIT_SLA_MS="1000",
        )
        done = await run_krt(
            "bench", "capacity", "--url", server.url, "--streams", "1", "--replies", "2",
            "--spread", "0", "--non-readers", "1", "--json", "--plot", str(tmp_path / "capacity.png"),
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    (agent,) = json.loads(done.stdout)["levels"]
    assert (agent["non_readers"], agent["spoken"], agent["errors"], agent["stalled"]) == (1, 2, 0, 0)
    assert agent["first_audio_p95_ms"] < 5_000
    assert "1 non-reading clients attached" in done.stderr.decode()


async def test_the_bench_names_a_batching_servers_capacity_at_each_batch_size(harness, tmp_path):
    """A server whose model calls cost like a GPU's (a launch each, a little per window)
    decoding up to four windows a call: the bench names the capacity its warm-up measured
    at one, two and four windows a call, rising, and four agents are all served with no stall."""
    with trio.fail_after(90):
        server = await harness.server(
            KRT_FAKE_COMPUTE_RATIO="0.01", KRT_FAKE_LAUNCH_SECONDS="0.05", KRT_BATCH_WINDOWS="4"
        )
        done = await run_krt(
            "bench", "capacity", "--url", server.url, "--streams", "4", "--replies", "1",
            "--spread", "0", "--json", "--plot", str(tmp_path / "capacity.png"), cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    (four,) = result["levels"]
    assert (four["spoken"], four["errors"], four["stalled"]) == (4, 0, 0)
    described = re.search(
        r"up to 4 windows a call \(audio s/s by windows: 1: (\S+), 2: (\S+), 4: (\S+)\)", result["server"]
    )
    assert described is not None, result["server"]
    one, two, four_at_once = (float(rate) for rate in described.groups())
    assert one < two < four_at_once
