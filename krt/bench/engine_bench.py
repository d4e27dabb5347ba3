"""``krt bench engine``: the engine floor every server figure is measured against.

Each backend is measured in a child process of its own, so its load time and resident
memory are its own and not those of a backend loaded before it in the same process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs

from krt import PCM_BYTES_PER_SECOND
from krt.engine.pipeline import SpeechPipeline
from krt.synth.backend import synthesize_whole
from krt.synth.loading import load_backend

if TYPE_CHECKING:
    from krt.config import Config
    from krt.engine.pipeline import SpeechPlan

SENTENCE = (
    "Your package left our warehouse this morning and should reach you by Friday afternoon "
    "at the very latest, weather permitting."
)
"""20 words: the sentence time to first audio is measured on, against its whole compute."""
PARAGRAPH = (
    "Thanks for calling. Your appointment with Dr. Smith is confirmed for Tuesday at 3:30 PM. "
    "The visit costs $42.50, and you can pay at the front desk. If you need to reschedule, "
    "just call us back at least a day in advance. Is there anything else I can help you with today?"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="onnx,torch", help="comma-separated: onnx, torch, fake")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    parser.add_argument("--voice", default="female")
    parser.add_argument("--json", action="store_true", help="print one JSON object per backend")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


def _rss_mb() -> float:
    """This process's current resident set, from /proc (ru_maxrss only gives the peak)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def whole_sentence_seconds(pipeline: SpeechPipeline, text: str, voice: str) -> float:
    """The raw model's floor: G2P, front end and one decode of the whole sentence."""
    started = time.perf_counter()
    plan = pipeline.plan(text, voice)
    for piece in pipeline.tokenize_segment(text):
        style = pipeline.voices.style(plan.voice, len(piece.tokens))
        synthesize_whole(pipeline.backend, piece.tokens, style, plan.speed)
    return time.perf_counter() - started


def windowed_seconds(pipeline: SpeechPipeline, text: str, voice: str) -> tuple[float, float]:
    """Through krt's rendering: (first audio, all of it), from the request."""
    started = time.perf_counter()
    first = None
    for _batch in pipeline.rendering(pipeline.plan(text, voice)):
        if first is None:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the engine produced no audio")
    return first, time.perf_counter() - started


def audio_seconds(pipeline: SpeechPipeline, plan: SpeechPlan) -> float:
    pcm_bytes = sum(len(chunk) for batch in pipeline.rendering(plan) for chunk in batch)
    return pcm_bytes / PCM_BYTES_PER_SECOND


def measure_backend(config: Config, voice: str, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    backend = load_backend(config)
    pipeline = SpeechPipeline(backend, config)
    pipeline.tokenize_segment("Warm up the phonemizer.")
    load_s = time.perf_counter() - started
    rss_loaded = _rss_mb()
    windowed_seconds(pipeline, SENTENCE, voice)  # first inference pays for lazy init
    # Alternated, so the machine's drift falls on both alike.
    whole, first, total = [], [], []
    for _ in range(repeats):
        whole.append(whole_sentence_seconds(pipeline, SENTENCE, voice))
        first_s, total_s = windowed_seconds(pipeline, SENTENCE, voice)
        first.append(first_s)
        total.append(total_s)
    whole_s, first_s, total_s = (statistics.median(values) for values in (whole, first, total))
    sentence_audio = audio_seconds(pipeline, pipeline.plan(SENTENCE, voice))
    paragraph_started = time.perf_counter()
    paragraph_bytes = sum(len(chunk) for chunk in pipeline.speak(PARAGRAPH, voice))
    paragraph_wall = time.perf_counter() - paragraph_started
    paragraph_audio = paragraph_bytes / PCM_BYTES_PER_SECOND
    return {
        "backend": backend.name,
        "device": backend.device,
        "source": backend.source,
        "voice": pipeline.plan(SENTENCE, voice).voice,
        "load_s": round(load_s, 3),
        "sentence_words": len(SENTENCE.split()),
        "sentence_audio_s": round(sentence_audio, 3),
        "whole_sentence_s": round(whole_s, 3),
        "first_window_s": round(first_s, 3),
        "first_window_ratio": round(first_s / whole_s, 3),
        "windowed_total_s": round(total_s, 3),
        "windowed_total_ratio": round(total_s / whole_s, 3),
        "paragraph_audio_s": round(paragraph_audio, 3),
        "paragraph_wall_s": round(paragraph_wall, 3),
        "paragraph_xrt": round(paragraph_audio / paragraph_wall, 2),
        "rss_loaded_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _in_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "krt",
        "--env-file",
        str(args.env_file),
        "bench",
        "engine",
        "--in-process",
        "--json",
        "--backends",
        backend,
        "--repeats",
        str(args.repeats),
        "--voice",
        args.voice,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"backend": backend, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


ROWS = [
    ("load_s", "load (s)"),
    ("whole_sentence_s", "20-word sentence, whole compute (s)"),
    ("first_window_s", "  first audio through krt (s)"),
    ("first_window_ratio", "  first audio / whole"),
    ("windowed_total_s", "  all of it through krt (s)"),
    ("windowed_total_ratio", "  all / whole"),
    ("sentence_audio_s", "  its audio (s)"),
    ("paragraph_xrt", "paragraph xRT"),
    ("paragraph_audio_s", "  paragraph audio (s)"),
    ("rss_loaded_mb", "RSS loaded (MB)"),
    ("peak_rss_mb", "peak RSS (MB)"),
]


def _print_table(results: list[dict[str, Any]]) -> None:
    names = [f"{r['backend']} ({r.get('device', '?')})" for r in results]
    print(f"{'':40}" + "".join(f"{name:>24}" for name in names))
    for key, label in ROWS:
        cells = "".join(f"{str(r.get(key, r.get('error', '-')))[-23:]:>24}" for r in results)
        print(f"{label:40}{cells}")
    for result in results:
        print(f"{result['backend']} weights: {result.get('source', result.get('error', '?'))}")


def run(args: argparse.Namespace, config: Config) -> int:
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    if args.in_process:
        for name in backends:
            chosen = attrs.evolve(config, model=attrs.evolve(config.model, backend=name))
            print(json.dumps(measure_backend(chosen, args.voice, args.repeats)))
        return 0
    results = [_in_child(name, args) for name in backends]
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        _print_table(results)
    return 1 if any("error" in r for r in results) else 0
