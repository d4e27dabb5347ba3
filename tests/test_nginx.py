"""Two krt replicas behind a real nginx running ``deploy/nginx/krt.conf``; one is drained
mid-load (SIGTERM) while ``krt bench`` streams through nginx.

nginx is Debian's package, installed here when the machine lacks it (CI starts bare).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from krt.metrics.report import read_records
from tests.conftest import free_port
from tests.debian import debian_binary
from tests.server_harness import WS_PATH

pytestmark = [pytest.mark.trio, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
KEY = "nginx-test-key"


def nginx_binary() -> str:
    return debian_binary("nginx", "nginx")


def nginx_config(root: Path, port: int, replicas: list[int]) -> Path:
    """The shipped krt.conf, unchanged but for its listen port, with these replicas."""
    (root / "krt").mkdir(parents=True)
    (root / "logs").mkdir()
    shipped = (DEPLOY / "krt.conf").read_text()
    assert "listen 8080;" in shipped
    (root / "krt" / "krt.conf").write_text(shipped.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    upstream = "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in replicas)
    (root / "krt" / "krt-upstream.conf").write_text(upstream)
    main = root / "nginx.conf"
    main.write_text(
        f"""worker_processes 1;
error_log {root}/logs/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include krt/krt.conf;
}}
"""
    )
    return main


async def test_a_drained_replica_loses_nothing_behind_nginx(start_krt, nursery, tmp_path):
    """Load through nginx onto two replicas; SIGTERM one mid-load. Every response it had
    accepted completes, new sockets go to the other, and the bench sees no error."""
    with trio.fail_after(90):
        replicas = []
        for name in ("a", "b"):
            replicas.append(
                await start_krt(
                    KRT_BACKEND="fake",
                    KRT_FAKE_COMPUTE_RATIO="0.1",
                    KRT_DRAIN_SECONDS="30",
                    KRT_ADMIN_SOCKET="",
                    KRT_METRICS_LOG=str(tmp_path / f"{name}.log"),
                    API_KEY=KEY,
                )
            )
        a, b = replicas
        port = free_port()
        config = nginx_config(tmp_path / "nginx", port, [a.port, b.port])
        nginx = await trio.lowlevel.open_process(
            [nginx_binary(), "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while (await status_of(port)) != 200:  # noqa: ASYNC110  (nginx gives no event to wait on)
                await trio.sleep(0.05)
            # The playground page and its worklet come through the same name.
            assert [await status_of(port, path) for path in ("/", "/playground/pcm-player.js")] == [200, 200]
            bench = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-m", "krt", "--env-file", str(tmp_path / "none.env"), "bench"),
                    *("--url", f"ws://127.0.0.1:{port}{WS_PATH}", "--api-key", KEY),
                    *("--concurrency", "4", "--n", "16", "--mode", "sentences", "--json"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
            output = trio.open_memory_channel[bytes](1)
            nursery.start_soon(read_all, bench, output[0])
            while len(records(tmp_path / "a.log")) < 3:  # noqa: ASYNC110  (a is mid-load: another process)
                await trio.sleep(0.05)
            signalled = time.time()
            a.process.send_signal(signal.SIGTERM)
            report = json.loads(await output[1].receive())
            assert await bench.wait() == 0
            assert await a.process.wait() == 0, a.log
        finally:
            nginx.send_signal(signal.SIGQUIT)
            with trio.move_on_after(5):
                await nginx.wait()
            if nginx.returncode is None:
                nginx.kill()

    [level] = report["levels"]
    assert (level["errors"], level["busy"], level["stuck"], level["leaked_bytes"]) == (0, 0, 0, 0)
    assert level["completed"] == level["responses"] > 0
    on_a, on_b = records(tmp_path / "a.log"), records(tmp_path / "b.log")
    assert not any(record["canceled"] for record in on_a + on_b)  # every accepted response finished
    assert all(record["ts"] < signalled + 30 for record in on_a)
    assert any(record["ts"] > signalled for record in on_b)  # the new work went to b
    assert len(on_a) + len(on_b) == level["responses"]  # nothing spoken twice, nothing lost


def records(path: Path) -> list[dict]:
    return read_records(path) if path.exists() else []


async def status_of(port: int, path: str = "/readyz") -> int:
    try:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = await stream.receive_some(64)
    except OSError:
        return 0
    return int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0


async def read_all(process: trio.Process, into: trio.MemorySendChannel[bytes]) -> None:
    assert process.stdout is not None
    data = bytearray()
    async for chunk in process.stdout:
        data += chunk
    await into.send(bytes(data))
