"""``krt client``, ``krt warmup`` and ``krt tpm`` against a real server on loopback (fake model)."""

from __future__ import annotations

import wave

import pytest
import trio

from krt.metrics.report import read_records
from tests.conftest import free_port
from tests.server_harness import run_krt

pytestmark = [pytest.mark.trio, pytest.mark.slow]


def wav_seconds(path) -> float:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        return wav.getnframes() / 24000


async def test_client_writes_the_wav_and_reports_timings(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--text",
            "Hello there. This is a demo.",
            "--out",
            "hello.wav",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        assert "TTFB ms" in out and "completed" in out
        assert wav_seconds(tmp_path / "hello.wav") > 1.0
        [record] = read_records(tmp_path / "metrics.log")
        assert record["audio_s"] == pytest.approx(wav_seconds(tmp_path / "hello.wav"), abs=0.01)


@pytest.mark.parametrize(("format_", "rate"), [("mulaw", 8000), ("opus", 16000)])
async def test_client_asks_for_a_format_and_writes_what_it_heard(harness, tmp_path, format_, rate):
    """The client decodes the deltas as a player would: a WAV at the rate heard (Opus
    plays at 48 kHz), as long as the audio the server logged, and TTFB/xRT from it."""
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--format",
            format_,
            "--sample-rate",
            str(rate),
            "--text",
            "Hello there. This is a demo of the formats.",
            "--out",
            "heard.wav",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr.decode()
        [record] = read_records(tmp_path / "metrics.log")
        with wave.open(str(tmp_path / "heard.wav")) as wav:
            assert wav.getframerate() == (48000 if format_ == "opus" else rate)
            seconds = wav.getnframes() / wav.getframerate()
        assert seconds == pytest.approx(record["audio_s"], abs=0.025)  # at most an Opus frame of padding
        assert f"{seconds:.2f} s of audio ({format_} at {rate} Hz)" in done.stdout.decode()


async def test_client_explains_an_unsupported_format(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--format",
            "opus",
            "--sample-rate",
            "44100",
            "--text",
            "Hi.",
            cwd=tmp_path,
        )
        assert done.returncode == 1
        assert "opus cannot encode 44100 Hz" in done.stderr.decode()


async def test_client_sentences_mode_sends_one_response_per_sentence(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--mode",
            "sentences",
            "--text",
            "One. Two is here. And three!",
            "--out",
            "s.wav",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().count("completed") == 3
        assert len(read_records(tmp_path / "metrics.log")) == 3


async def test_client_incremental_streams_input_like_an_llm(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server(FLUSH_IDLE_MS="100")
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--incremental",
            "--out",
            "inc.wav",
            "--text",
            "Streaming tokens work. They arrive a few words at a time",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().count("completed") == 2  # a sentence at once, the rest on commit
        assert wav_seconds(tmp_path / "inc.wav") > 1.0


async def test_client_cancel_after_barges_in(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server(KRT_FAKE_COMPUTE_RATIO="0.05")
        text = " ".join(f"Sentence {n} keeps the model busy for a while." for n in range(12))
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--text",
            text,
            "--cancel-after",
            "300",
            "--out",
            "cut.wav",
            cwd=tmp_path,
        )
        assert "canceled" in done.stdout.decode()
        assert wav_seconds(tmp_path / "cut.wav") < 0.5 * 0.065 * len(text)


async def test_client_reads_the_key_from_env_file_and_explains_a_refusal(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server(API_KEY="right-key")
        port = server.port
        (tmp_path / ".env").write_text(
            f"API_KEY=wrong-key\nRUNPOD_TCP_HOST=127.0.0.1\nRUNPOD_TCP_PORT={port}\n"
        )
        refused = await run_krt("client", "--text", "Hi.", cwd=tmp_path)
        assert refused.returncode == 1
        assert "refused the API key" in refused.stderr.decode()
        assert "Traceback" not in refused.stderr.decode()
        (tmp_path / ".env").write_text(
            f"API_KEY=right-key\nRUNPOD_TCP_HOST=127.0.0.1\nRUNPOD_TCP_PORT={port}\n"
        )
        accepted = await run_krt("client", "--text", "Hi.", "--out", "ok.wav", cwd=tmp_path)
        assert accepted.returncode == 0, accepted.stderr.decode()


async def test_client_explains_an_unreachable_server(tmp_path):
    with trio.fail_after(30):
        port = free_port()
        done = await run_krt(
            "client", "--host", "127.0.0.1", "--port", str(port), "--text", "Hi.", cwd=tmp_path
        )
        assert done.returncode == 1
        assert "cannot reach the server" in done.stderr.decode()
        assert "Traceback" not in done.stderr.decode()


async def test_warmup_speaks_both_voices_and_saves_wavs(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt("warmup", "--url", server.url, "--save", "warm", cwd=tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        saved = sorted((tmp_path / "warm").glob("*.wav"))
        assert len(saved) == 6  # three texts, female and male
        assert all(wav_seconds(path) > 0.5 for path in saved)
        voices = {record["voice"] for record in read_records(tmp_path / "metrics.log")}
        assert len(voices) == 2


@pytest.mark.parametrize("mode", ["single", "sentences"])
async def test_tpm_counts_completed_transactions(harness, tmp_path, mode):
    from krt.client.commands import pieces_of
    from krt.client.texts import AGENT_REPLIES

    with trio.fail_after(30):
        server = await harness.server(KRT_FAKE_COMPUTE_RATIO="0.01")
        done = await run_krt("tpm", "--url", server.url, "--mode", mode, "--duration", "3", cwd=tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        transactions = int(out.split("transactions: ")[1].split()[0])
        assert transactions >= 1
        completed = [r for r in read_records(tmp_path / "metrics.log") if not r["canceled"]]
        sizes = [len(pieces_of(text, mode)) for text in AGENT_REPLIES]
        counted = sum(sizes[n % len(sizes)] for n in range(transactions))
        # every counted transaction's responses completed; at most one more partial one
        assert counted <= len(completed) <= counted + max(sizes)
        assert "TPM" in out


async def test_tpm_explains_an_unreachable_server_in_one_line(tmp_path):
    with trio.fail_after(30):
        port = free_port()
        done = await run_krt("tpm", "--port", str(port), "--duration", "1", cwd=tmp_path)
        assert done.returncode == 1
        assert "cannot reach the server" in done.stderr.decode()
        assert "Traceback" not in done.stderr.decode()


async def test_metrics_reads_the_log_the_server_was_told_to_write(tmp_path):
    with trio.fail_after(30):
        log = tmp_path / "elsewhere" / "metrics.log"
        log.parent.mkdir()
        log.write_text(
            '{"ts": 9999999999, "request_id": "x", "ttfb_ms": 12.0, "wall_s": 1.0, "audio_s": 2.0, '
            '"canceled": false}\n'
        )
        (tmp_path / ".env").write_text(f"KRT_METRICS_LOG={log}\n")
        done = await run_krt("metrics", "--json", "--periods", "1h", cwd=tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        assert "no metrics log" not in done.stderr.decode()


async def test_pasted_urls_become_websocket_urls():
    from krt.client.target import websocket_url

    route = "/v1/audio/speech/stream/ws"
    assert websocket_url("http://pod:8000") == f"ws://pod:8000{route}"
    assert websocket_url("https://pod.example/") == f"wss://pod.example{route}"
    assert websocket_url("pod:8000") == f"ws://pod:8000{route}"
    assert websocket_url("wss://proxy/tts/ws?x=1") == "wss://proxy/tts/ws?x=1"


async def test_client_shows_the_servers_reason_and_writes_no_empty_wav(harness, tmp_path):
    with trio.fail_after(30):
        server = await harness.server()
        done = await run_krt(
            "client",
            "--url",
            server.url,
            "--text",
            "Hi.",
            "--voice",
            "robot",
            "--out",
            "none.wav",
            cwd=tmp_path,
        )
        assert done.returncode == 1
        assert "invalid_voice" in done.stderr.decode() and "fake_female" in done.stderr.decode()
        assert not (tmp_path / "none.wav").exists()
