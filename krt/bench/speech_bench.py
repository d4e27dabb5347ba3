"""``krt bench speech``: how well what LLMs write is heard, kind by kind, against the raw model.

Each reply of the LLM-text set (``krt.bench.speech_set``) is spoken through krt's engine
(normalization, G2P, windows) and by the raw model (misaki's phonemes of the text as
written, decoded whole), in the same voice; Whisper base writes down both, and the word
error against the reply's spoken form is summed per kind. The same run also measures each
voice's median pitch, so the defaults can be chosen by ear and still sound as their
name says (``--kinds ordinary,agent --no-raw --voices …``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from krt.bench.heard import word_errors
from krt.bench.speech_set import KINDS, replies_of
from krt.engine.pipeline import SpeechPipeline
from krt.media.audio import to_pcm16
from krt.synth.backend import synthesize_whole
from krt.synth.loading import load_backend
from krt.text.g2p import tokenize

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator

    from krt.bench.speech_set import Reply
    from krt.config import Config

SAMPLE_RATE = 24_000
PROGRESS_EVERY = 20
"""Replies between two progress lines on stderr: a whole run takes the better part of an hour."""
PITCH_RANGE_HZ = (60.0, 400.0)
MALE_PITCH_BELOW_HZ = 165.0
"""A voice called ``male`` must have a median F0 below this (typical adult male speech is
85–155 Hz, female 165–255 Hz)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument(
        "--voices",
        default="female,male",
        help="comma-separated voices or blends (';' separates blends with commas)",
    )
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="speak each reply in one voice, the voices in turn (half the time of all voices for two)",
    )
    parser.add_argument(
        "--per-kind", type=int, default=0, help="at most this many replies of each kind (0: all)"
    )
    parser.add_argument("--no-raw", action="store_true", help="krt only: skip the raw model")
    parser.add_argument("--show", action="store_true", help="print every reply krt was misheard on")
    parser.add_argument("--json", action="store_true", help="print one JSON object per voice")


def median_f0_hz(pcm: bytes, rate: int = SAMPLE_RATE) -> float:
    """Median pitch over voiced 40 ms frames, by autocorrelation: enough to tell a male
    voice from a female one, which is all it is used for."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32767.0
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    low, high = int(rate / PITCH_RANGE_HZ[1]), int(rate / PITCH_RANGE_HZ[0])
    loud = 10 ** (-35 / 20)
    pitches = []
    for start in range(0, audio.size - frame, hop):
        window = audio[start : start + frame] - audio[start : start + frame].mean()
        if np.sqrt(np.mean(window**2)) < loud:
            continue
        correlation = np.correlate(window, window, mode="full")[frame - 1 :]
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.5 * correlation[0]:  # clearly periodic: voiced
            pitches.append(rate / lag)
    return float(np.median(pitches)) if pitches else float("nan")


def raw_model_pcm(pipeline: SpeechPipeline, text: str, voice: str) -> bytes:
    """What the model says with no krt around it: misaki's phonemes of the text as written,
    decoded whole in one call, its own silences kept."""
    backend = pipeline.backend
    tokens = tokenize(pipeline.phonemizer.phonemize(text), backend.vocab)
    style = backend.voices.style(backend.voices.resolve(voice), len(tokens))
    return to_pcm16(synthesize_whole(backend, tokens, style, 1.0))


def _spoken_pairs(
    replies: tuple[Reply, ...], voices: list[str], alternate: bool
) -> Iterator[tuple[Reply, str]]:
    for index, reply in enumerate(replies):
        if alternate:
            yield reply, voices[index % len(voices)]
        else:
            yield from ((reply, voice) for voice in voices)


def _first_of_each_kind(replies: tuple[Reply, ...], count: int) -> tuple[Reply, ...]:
    taken: dict[str, int] = defaultdict(int)
    kept = []
    for reply in replies:
        if taken[reply.kind] < count:
            taken[reply.kind] += 1
            kept.append(reply)
    return tuple(kept)


def _split_voices(spec: str) -> list[str]:
    return [voice.strip() for voice in spec.split(";" if ";" in spec else ",") if voice.strip()]


def measure(config: Config, args: argparse.Namespace) -> list[dict[str, Any]]:
    from krt.bench.whisper import Listener

    replies = replies_of(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    if args.per_kind:
        replies = _first_of_each_kind(replies, args.per_kind)
    voices = _split_voices(args.voices)
    backend = load_backend(config)
    pipeline = SpeechPipeline(backend, config)
    listener = Listener(config.model.cache_dir, threads=config.model.cpu_threads or os.cpu_count() or 1)
    # errors[voice][kind][path] = [edits, words]
    errors: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [0, 0]))
    )
    pitches: dict[str, list[float]] = defaultdict(list)
    resolved = {voice: pipeline.voices.resolve(voice) for voice in voices}

    def raw(text: str, voice: str) -> bytes:
        return raw_model_pcm(pipeline, text, voice)

    def through_krt(text: str, voice: str) -> bytes:
        return b"".join(pipeline.speak(text, voice))

    paths: dict[str, Callable[[str, str], bytes]] = {"krt": through_krt}
    if not args.no_raw:
        paths["raw"] = raw
    started = time.monotonic()
    pairs = list(_spoken_pairs(replies, voices, args.alternate))
    for first in range(0, len(pairs), PROGRESS_EVERY):
        batch = pairs[first : first + PROGRESS_EVERY]
        for path, speak in paths.items():
            for reply, voice in batch:
                pcm = speak(reply.text, voice)
                heard = listener.transcribe(pcm)
                edits, words = word_errors(reply.spoken, heard)
                tally = errors[voice][reply.kind][path]
                tally[0] += edits
                tally[1] += words
                if path == "krt":
                    pitches[voice].append(median_f0_hz(pcm))
                    if args.show and edits:
                        print(f"[{voice} {reply.kind}] {reply.text!r}\n    heard {heard!r}", file=sys.stderr)
        done = first + len(batch)
        print(f"{done}/{len(pairs)} replies in {time.monotonic() - started:.0f} s", file=sys.stderr)
    elapsed = time.monotonic() - started
    results = []
    for voice in voices:
        kinds = {
            kind: {path: round(edits / max(1, words), 3) for path, (edits, words) in by_path.items()}
            | {
                "words": by_path["krt"][1],
                "edits": {path: edits for path, (edits, _words) in by_path.items()},
            }
            for kind, by_path in errors[voice].items()
        }
        totals = {
            path: round(
                sum(errors[voice][kind][path][0] for kind in errors[voice])
                / max(1, sum(errors[voice][kind][path][1] for kind in errors[voice])),
                3,
            )
            for path in paths
        }
        results.append(
            {
                "voice": voice,
                "resolved": resolved[voice],
                "median_f0_hz": round(float(np.nanmedian(pitches[voice])), 1) if pitches[voice] else None,
                "kinds": kinds,
                "all": totals,
                "seconds": round(elapsed, 1),
            }
        )
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    for result in results:
        f0 = result["median_f0_hz"]
        print(f"\n{result['voice']} = {result['resolved']}  (median F0 {f0} Hz)")
        print(f"{'kind':16}{'words':>7}{'krt WER':>10}{'raw WER':>10}")
        for kind, row in result["kinds"].items():
            raw = row.get("raw")
            print(f"{kind:16}{row['words']:>7}{row['krt']:>10.3f}{'' if raw is None else f'{raw:.3f}':>10}")
        raw_all = result["all"].get("raw")
        print(
            f"{'all':16}{'':>7}{result['all']['krt']:>10.3f}{'' if raw_all is None else f'{raw_all:.3f}':>10}"
        )


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        results = measure(config, args)
    except ValueError as exc:
        print(f"krt bench speech: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        _print_table(results)
    return 0
