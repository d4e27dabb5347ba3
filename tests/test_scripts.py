"""The operator scripts (scripts/*.sh) as an operator runs them: real bash, real processes.

The start/stop round trip runs the repo's own scripts on a real ``krt serve`` (fake backend)
with its log dir and ``.env`` redirected into a temporary directory (``KRT_LOG_DIR``,
``KRT_ENV_FILE``) and a free port. Readiness is the script's own bounded ``/readyz`` poll;
the tests never sleep. Anything that really deletes files runs on a copy of the scripts in a
temporary tree, never on this checkout. Every server a test starts is killed in teardown.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from krt.config import load_config, read_dotenv
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
RUN_TIMEOUT = 60
START_TIMEOUT = 60  # the script's own readiness bound; the subprocess gets more

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or shutil.which("bash") is None or shutil.which("curl") is None,
        reason="the scripts target Linux pods with bash and curl",
    ),
]

MACHINE_WIDE = [
    "--drop-caches",
    "--clear-shm",
    "--clear-tmp",
    "--kill-jupyter",
    "--kill-sessions",
    "--purge-system",
    "--docker-prune",
    "--gpu-reset",
    "--self-remove",
]


def run_script(
    name: str, *args: str, env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT, root: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run scripts/NAME from ``cwd`` (not the repo root: the scripts must find it themselves)."""
    return subprocess.run(
        ["bash", str(root / "scripts" / name), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def process_gone(pid: int) -> bool:
    """Gone or a zombie (pid 1 in a container may never reap an orphan)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def is_krt_serve(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return b"serve" in argv and any(arg.endswith(b"krt") for arg in argv)


def readyz(port: int) -> int | None:
    """The status of GET /readyz, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return None


def base_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("KRT_") or name in {"API_KEY", "RUNPOD_API_KEY", "RUNPOD_POD_ID"}:
            del env[name]
    env.update(
        KRT_LOG_DIR=str(tmp_path / "logs"),
        KRT_ENV_FILE=str(tmp_path / "krt.env"),
        KRT_BACKEND="fake",
        KRT_METRICS_LOG=str(tmp_path / "logs" / "metrics.log"),
        KRT_CACHE_DIR=str(tmp_path / "krt-cache"),
        KRT_DRAIN_SECONDS="5",
        LOG_LEVEL="INFO",
    )
    return env


class Servers:
    """Starts servers with scripts/start.sh and kills whatever is left of them afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = base_env(tmp_path)
        self.pid_file = tmp_path / "logs" / "server.pid"
        self.pids: set[int] = set()

    def start(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return run_script(
                "start.sh",
                *args,
                "--timeout",
                str(START_TIMEOUT),
                env=self.env,
                cwd=self.tmp_path,
                timeout=START_TIMEOUT + 30,
            )
        finally:
            self.remember()  # even when start.sh hangs, its server is killed in teardown

    def stop(self) -> subprocess.CompletedProcess[str]:
        return run_script("stop.sh", env=self.env, cwd=self.tmp_path)

    def remember(self) -> None:
        if self.pid_file.exists():
            self.pids.add(int(self.pid_file.read_text().strip()))

    def kill_all(self) -> None:
        self.remember()
        for pid in self.pids:
            if not process_gone(pid) and is_krt_serve(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def servers(tmp_path: Path):
    running = Servers(tmp_path)
    try:
        yield running
    finally:
        running.kill_all()


def test_start_ready_stop_round_trip(servers: Servers) -> None:
    port = free_port()
    started = servers.start("--port", str(port), "--host", "127.0.0.1")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"http://127.0.0.1:{port}" in started.stdout
    pid = int(servers.pid_file.read_text().strip())
    assert is_krt_serve(pid)
    assert readyz(port) == 200
    log = (servers.tmp_path / "logs" / "server.log").read_text()
    assert "===== krt start" in log and f"port={port}" in log
    assert "krt.server.app: ready" in log

    stopped = servers.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert process_gone(pid)
    assert not servers.pid_file.exists()
    assert readyz(port) is None
    log = (servers.tmp_path / "logs" / "server.log").read_text()
    assert "SIGTERM: draining" in log, "stop.sh must drain with SIGTERM, not kill"

    again = servers.stop()
    assert again.returncode == 0
    assert "not running" in again.stdout


def test_start_refuses_a_second_copy(servers: Servers) -> None:
    port = free_port()
    first = servers.start("--port", str(port))
    assert first.returncode == 0, first.stdout + first.stderr
    pid = int(servers.pid_file.read_text().strip())

    second = servers.start("--port", str(free_port()))
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert int(servers.pid_file.read_text().strip()) == pid
    assert servers.pids == {pid}, "a second server was started"
    assert readyz(port) == 200

    stopped = servers.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert process_gone(pid)


def test_start_refuses_a_port_in_use(servers: Servers) -> None:
    if shutil.which("ss") is None:
        pytest.skip("start.sh checks the port with ss")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = servers.start("--port", str(busy.getsockname()[1]))
    assert result.returncode != 0
    assert "already in use" in result.stderr
    assert not servers.pid_file.exists()


def test_start_reports_a_server_that_dies(servers: Servers) -> None:
    servers.env["KRT_BACKEND"] = "no-such-backend"
    result = servers.start("--port", str(free_port()))
    assert result.returncode != 0
    assert "exited" in result.stderr
    assert "KRT_BACKEND='no-such-backend'" in result.stderr, "the log's tail must be shown"
    assert not servers.pid_file.exists()


def test_stop_leaves_a_reused_pid_alone(servers: Servers) -> None:
    servers.pid_file.parent.mkdir(parents=True)
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as bystander:
        try:
            servers.pid_file.write_text(f"{bystander.pid}\n")
            result = servers.stop()
            assert result.returncode == 0, result.stdout + result.stderr
            assert bystander.poll() is None, "stop.sh killed a process that is not krt"
            assert not servers.pid_file.exists()
        finally:
            bystander.kill()


def test_stop_removes_a_stale_pid_file(servers: Servers) -> None:
    servers.pid_file.parent.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "pass"]) as finished:
        finished.wait(timeout=RUN_TIMEOUT)
    servers.pid_file.write_text(f"{finished.pid}\n")
    result = servers.stop()
    assert result.returncode == 0
    assert "not running" in result.stdout
    assert not servers.pid_file.exists()


def env_key(path: Path) -> str:
    return read_dotenv(path)["API_KEY"]


def test_setup_writes_a_private_env_with_a_strong_fresh_key(tmp_path: Path) -> None:
    repo_env = ROOT / ".env"
    repo_env_before = repo_env.read_bytes() if repo_env.exists() else None
    keys = []
    for name in ("one", "two"):
        env = base_env(tmp_path / name)
        env["KRT_SKIP_INSTALL"] = "1"
        env_file = tmp_path / name / ".env"
        env["KRT_ENV_FILE"] = str(env_file)
        result = run_script("setup.sh", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        key = env_key(env_file)
        assert len(key) >= 32
        assert key != "dev-key"
        assert key in result.stdout, "the new key is printed once"
        assert "RUNPOD_TCP_PORT" in env_file.read_text()
        assert load_config(environ={}, dotenv=env_file).auth.api_key == key
        keys.append(key)
    assert keys[0] != keys[1]
    assert (repo_env.read_bytes() if repo_env.exists() else None) == repo_env_before


def test_setup_keeps_an_existing_env_and_rotates_only_the_key(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env["KRT_SKIP_INSTALL"] = "1"
    env_file = tmp_path / ".env"
    env["KRT_ENV_FILE"] = str(env_file)
    assert run_script("setup.sh", env=env, cwd=tmp_path).returncode == 0
    with env_file.open("a") as extra:
        extra.write("KRT_DRAIN_SECONDS=12\n")
    before = env_file.read_text()

    kept = run_script("setup.sh", env=env, cwd=tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "Keeping" in kept.stdout
    assert env_file.read_text() == before

    rotated = run_script("setup.sh", "--rotate-key", env=env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = env_file.read_text()
    old_key, new_key = read_dotenv_text(before)["API_KEY"], env_key(env_file)
    assert new_key != old_key and len(new_key) >= 32
    assert new_key in rotated.stdout
    assert [line for line in after.splitlines() if not line.startswith("API_KEY=")] == [
        line for line in before.splitlines() if not line.startswith("API_KEY=")
    ]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def read_dotenv_text(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#") and "=" in line
    )


def test_stop_waits_as_long_as_the_env_file_drain_allows(servers: Servers) -> None:
    """KRT_DRAIN_SECONDS comes from KRT_ENV_FILE when the environment has none."""
    del servers.env["KRT_DRAIN_SECONDS"]
    Path(servers.env["KRT_ENV_FILE"]).write_text("KRT_DRAIN_SECONDS=2.5\n")
    port = free_port()
    assert servers.start("--port", str(port)).returncode == 0
    stopped = servers.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "up to 13s" in stopped.stdout  # ceil(2.5) + 10


def copied_tree(tmp_path: Path) -> Path:
    """A stand-in repo with the real scripts, a fake .venv, logs and a .env.

    purge_pod.sh works on the tree it lives in, so a broken dry run or refusal deletes this
    copy, never the checkout the tests run from.
    """
    repo = tmp_path / "repo"
    shutil.copytree(SCRIPTS, repo / "scripts")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "marker").write_text("venv\n")
    (repo / "logs").mkdir()
    (repo / "logs" / "server.log").write_text("old log\n")
    (repo / ".env").write_text("API_KEY=keep-me-please-keep-me-please-keep\n")
    return repo


def purge_env(tmp_path: Path) -> dict[str, str]:
    """base_env with HOME and every cache the aggressive purge knows about inside tmp_path."""
    env = base_env(tmp_path)
    for name in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "MODEL_NAME"):
        env.pop(name, None)
    home = tmp_path / "home"
    env.update(HOME=str(home), PIP_CACHE_DIR=str(home / ".cache" / "pip"))
    for cache in ("pip", "torch", "huggingface/hub/models--hexgrad--Kokoro-82M"):
        (home / ".cache" / cache).mkdir(parents=True)
        (home / ".cache" / cache / "blob").write_text("cached\n")
    return env


def test_purge_dry_run_lists_and_removes_nothing(servers: Servers) -> None:
    tmp_path = servers.tmp_path
    port = free_port()
    assert servers.start("--port", str(port)).returncode == 0
    pid = int(servers.pid_file.read_text().strip())
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)  # same KRT_LOG_DIR: the copy sees the running server's pid file
    cache = tmp_path / "krt-cache"
    cache.mkdir()
    (cache / "weights.onnx").write_bytes(b"x" * 1000)
    home_cache = tmp_path / "home" / ".cache"
    before = sorted(str(path) for path in tmp_path.rglob("*") if path.is_file())

    result = run_script(
        "purge_pod.sh", "--port", str(port), "--aggressive", "--dry-run", env=env, cwd=tmp_path, root=repo
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for path in [
        repo / ".venv",
        tmp_path / "logs",
        cache,
        home_cache / "pip",
        home_cache / "torch",
        home_cache / "huggingface" / "hub" / "models--hexgrad--Kokoro-82M",
    ]:
        assert f"would remove {path} (" in out
    assert "scripts/stop.sh" in out and str(pid) in out
    assert "nothing was changed" in out

    assert sorted(str(path) for path in tmp_path.rglob("*") if path.is_file()) == before
    assert (cache / "weights.onnx").read_bytes() == b"x" * 1000
    assert not process_gone(pid)
    assert readyz(port) == 200
    assert servers.stop().returncode == 0


# What a machine-wide step would run; stubs that only record a call stand in for them, so a
# refusal that fails to refuse is caught here instead of wiping /tmp or resetting a GPU.
MACHINE_TOOLS = ["sync", "sh", "find", "pgrep", "tmux", "screen", "apt-get", "docker", "podman"]
MACHINE_TOOLS += ["nvidia-smi", "runpodctl", "curl"]
READ_ONLY_CALLS = ("pgrep ", "tmux list-sessions", "screen -ls")  # the plan may look around


def stub_tools(tmp_path: Path, env: dict[str, str]) -> Path:
    calls = tmp_path / "calls.log"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in MACHINE_TOOLS:
        stub = stubs / tool
        stub.write_text(f'#!/bin/bash\necho "{tool} $*" >> {calls}\n')
        stub.chmod(0o755)
    env["PATH"] = f"{stubs}:{env['PATH']}"
    env.update(RUNPOD_API_KEY="not-a-real-key", RUNPOD_POD_ID="not-a-real-pod")
    return calls


@pytest.mark.parametrize("flag", MACHINE_WIDE)
def test_purge_refuses_machine_wide_flags_without_yes(tmp_path: Path, flag: str) -> None:
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    calls = stub_tools(tmp_path, env)
    before = sorted(str(path) for path in tmp_path.rglob("*"))

    result = run_script("purge_pod.sh", flag, "--clean-files", env=env, cwd=tmp_path, root=repo)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--yes" in result.stderr
    assert "nothing was done" in result.stderr
    assert "would" in result.stderr, "the refusal prints the plan"
    ran = calls.read_text().splitlines() if calls.exists() else []
    assert [call for call in ran if not call.startswith(READ_ONLY_CALLS)] == [], "a refused purge acted"
    assert sorted(str(path) for path in tmp_path.rglob("*") if path != calls) == before


def test_purge_machine_wide_flags_run_with_yes(tmp_path: Path) -> None:
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    calls = stub_tools(tmp_path, env)
    # Flags whose real commands would be harmless should the stubs ever be bypassed.
    result = run_script(
        "purge_pod.sh", "--purge-system", "--drop-caches", "--yes", env=env, cwd=tmp_path, root=repo
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [call.split()[0] for call in calls.read_text().splitlines()] == ["apt-get", "find", "sync", "sh"]


def test_purge_help_names_every_flag(tmp_path: Path) -> None:
    result = run_script("purge_pod.sh", "--help", env=base_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    for flag in [*MACHINE_WIDE, "--port", "--clean-files", "--aggressive", "--yes", "--dry-run"]:
        assert flag in result.stdout


def test_purge_clean_files_removes_runtime_files_and_keeps_env(tmp_path: Path) -> None:
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    del env["KRT_LOG_DIR"], env["KRT_ENV_FILE"]
    env["KRT_METRICS_LOG"] = str(tmp_path / "elsewhere" / "metrics.log")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "metrics.log").write_text("{}\n")
    cache = tmp_path / "krt-cache"
    cache.mkdir()
    (cache / "weights.onnx").write_text("w")

    result = run_script("purge_pod.sh", "--clean-files", env=env, cwd=tmp_path, root=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (repo / ".venv").exists()
    assert not (repo / "logs").exists()
    assert not cache.exists()
    assert not (tmp_path / "elsewhere" / "metrics.log").exists()
    assert (repo / ".env").read_text().startswith("API_KEY=keep-me")
    assert (repo / "scripts" / "purge_pod.sh").exists()
    assert (tmp_path / "home" / ".cache" / "pip" / "blob").exists(), "only --aggressive clears pip's cache"


def test_purge_aggressive_also_clears_the_caches(tmp_path: Path) -> None:
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    result = run_script("purge_pod.sh", "--aggressive", env=env, cwd=tmp_path, root=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (repo / ".venv").exists()
    assert not (tmp_path / "home" / ".cache" / "pip").exists()
    assert not (tmp_path / "home" / ".cache" / "torch").exists()
    assert not (tmp_path / "home" / ".cache" / "huggingface" / "hub" / "models--hexgrad--Kokoro-82M").exists()
    assert (tmp_path / "home" / ".cache" / "huggingface" / "hub").exists()


def test_purge_refuses_to_remove_a_dangerous_cache_dir(tmp_path: Path) -> None:
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    env["KRT_CACHE_DIR"] = str(repo)  # a mistake that must not take the repo with it
    result = run_script("purge_pod.sh", "--clean-files", env=env, cwd=tmp_path, root=repo)
    assert result.returncode == 1
    assert "refusing to remove" in result.stderr
    assert (repo / "scripts" / "purge_pod.sh").exists()


def test_purge_port_stops_the_listener(tmp_path: Path) -> None:
    if not any(shutil.which(tool) for tool in ("ss", "fuser", "lsof")):
        pytest.skip("needs ss, fuser or lsof")
    repo = copied_tree(tmp_path)
    env = purge_env(tmp_path)
    listener_code = (
        "import socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", listener_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as listener:
        try:
            assert listener.stdout is not None
            port = int(listener.stdout.readline())
            result = run_script("purge_pod.sh", "--port", str(port), env=env, cwd=tmp_path, root=repo)
            assert result.returncode == 0, result.stdout + result.stderr
            assert listener.wait(timeout=RUN_TIMEOUT) == -signal.SIGTERM
            assert (repo / ".venv" / "bin" / "marker").exists(), "--port alone removes no files"
        finally:
            listener.kill()


def read_until(stream: IO[bytes] | None, needle: str, timeout: float) -> str:
    """Read a pipe until ``needle`` shows up or ``timeout`` passes; what was read."""
    assert stream is not None
    fd = stream.fileno()
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while needle not in seen and (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk.decode(errors="replace")
    return seen


def test_tail_bg_logs_follows_the_log(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    log = tmp_path / "logs" / "server.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {n}\n" for n in range(10)))
    with subprocess.Popen(
        ["bash", str(SCRIPTS / "tail_bg_logs.sh"), "-n", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as tail:
        try:
            first = read_until(tail.stdout, "line 9\n", RUN_TIMEOUT)
            assert first == "line 8\nline 9\n"
            with log.open("a") as more:
                more.write("appended\n")
            assert read_until(tail.stdout, "appended\n", RUN_TIMEOUT) == "appended\n"
        finally:
            tail.kill()


def test_just_lists_the_operator_recipes() -> None:
    just = shutil.which("just") or str(ROOT / ".venv" / "bin" / "just")
    if not Path(just).exists():
        pytest.skip("just is not installed")
    result = subprocess.run(
        [just, "--justfile", str(ROOT / "justfile"), "--summary"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert {"start", "stop", "logs", "purge"} <= set(result.stdout.split())


@pytest.mark.parametrize("name", ["setup.sh", "start.sh", "stop.sh", "tail_bg_logs.sh", "purge_pod.sh"])
def test_every_script_helps_when_called_by_a_relative_path(tmp_path: Path, name: str) -> None:
    # Relative to the repo's parent, so the path no longer resolves once the script cds to the root.
    relative = f"{ROOT.name}/scripts/{name}"
    result = subprocess.run(
        ["bash", relative, "--help"],
        env=base_env(tmp_path),
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"scripts/{name}" in result.stdout or "tail -F" in result.stdout
    assert result.stderr == ""


def test_gpu_figures_serves_batched_then_single_and_sums_up_the_figures(tmp_path: Path) -> None:
    """The GPU run, prepared and run here on the fake backend costing like a GPU (a launch
    each model call): both servers come up, both benches run, and the summary names the
    capacity at each batch size and the streams each server kept in time."""
    env = {
        **os.environ,
        "KRT_BACKEND": "fake",
        "KRT_FAKE_COMPUTE_RATIO": "0.01",
        "KRT_FAKE_LAUNCH_SECONDS": "0.02",
        "BATCH_WINDOWS": "4",
        "MAX_STREAMS": "1",
        "REPLIES": "1",
        "P95_MS": "3000",
        "PORT": str(free_port()),
        "OUT_DIR": str(tmp_path / "figures"),
        "KRT": str(Path(sys.executable).parent / "krt"),
        "PYTHON": sys.executable,
    }
    done = run_script("gpu_figures.sh", env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "figures" / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("GPU: ")
    batched, single = summary[1:]
    assert batched.startswith(
        "batched: fake on cpu, up to 4 windows a call; audio s per model s by windows a call: 1: "
    )
    assert ", 2: " in batched and ", 4: " in batched
    assert single.startswith("single: fake on cpu, up to 1 windows a call")
    assert "1 streams under p95 3000 ms with no stall" in batched
    assert (tmp_path / "figures" / "capacity-batched.png").stat().st_size > 0
