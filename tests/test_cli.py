"""``krt say`` as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import subprocess
import sys
import wave


def krt(*args: str, stdin: str | None = None, env_file: str = "/nonexistent/.env", **env: str):
    import os

    environment = {**os.environ, "KRT_BACKEND": "fake", **env}
    return subprocess.run(
        [sys.executable, "-m", "krt", "--env-file", env_file, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_say_writes_a_24khz_wav(tmp_path):
    out = tmp_path / "hello.wav"
    done = krt("say", "Hello there. This is a demo.", "-o", str(out))
    assert done.returncode == 0, done.stderr
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() > 24000
    assert "realtime" in done.stderr


def test_say_reads_stdin(tmp_path):
    out = tmp_path / "stdin.wav"
    done = krt("say", "-o", str(out), stdin="Text from a pipe.")
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 44


def test_list_voices_shows_the_mapping():
    done = krt("say", "--list-voices")
    assert done.returncode == 0
    assert "female -> fake_female" in done.stdout
    assert "fake_male" in done.stdout


def test_unknown_voice_is_a_clear_error_listing_voices(tmp_path):
    done = krt("say", "Hi.", "-o", str(tmp_path / "x.wav"), "--voice", "nobody")
    assert done.returncode == 2
    assert "invalid_voice" in done.stderr and "fake_female" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.wav").exists()


def test_bad_config_names_the_variable(tmp_path):
    done = krt("say", "Hi.", "-o", str(tmp_path / "x.wav"), KOKORO_SPEED="9")
    assert done.returncode == 2
    assert "KOKORO_SPEED='9'" in done.stderr and "Traceback" not in done.stderr


def test_env_file_is_read(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DEFAULT_VOICE_FEMALE=fake_male\n")
    done = krt("say", "--list-voices", env_file=str(env_file))
    assert "female -> fake_male" in done.stdout


def test_missing_output_is_a_usage_error():
    done = krt("say", "Hi.")
    assert done.returncode == 2 and "--out" in done.stderr
