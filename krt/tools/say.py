"""``krt say``: speak text into a WAV file with the engine alone, no server."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from krt import PCM_BYTES_PER_SECOND
from krt.engine.pipeline import SpeechPipeline
from krt.media.audio import write_wav
from krt.synth.loading import load_backend

if TYPE_CHECKING:
    import argparse

    from krt.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", default="-", help="text to speak; '-' or nothing reads stdin")
    parser.add_argument("-o", "--out", type=Path, help="WAV file to write (24 kHz mono PCM16)")
    parser.add_argument("--voice", help="female, male or a voice id (see --list-voices)")
    parser.add_argument("--speed", type=float, help="0.5–2.0; default KOKORO_SPEED")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx", "fake"], help="overrides KRT_BACKEND")
    parser.add_argument("--list-voices", action="store_true", help="print the voices and exit")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.backend:
        config = attrs.evolve(config, model=attrs.evolve(config.model, backend=args.backend))
    if not args.list_voices and args.out is None:
        print("krt say: give -o/--out FILE.wav (or --list-voices)", file=sys.stderr)
        return 2
    backend = load_backend(config)
    if args.list_voices:
        catalog = backend.voices
        print(f"female -> {catalog.female}\nmale -> {catalog.male}")
        for name in catalog.names:
            print(name)
        return 0
    text = sys.stdin.read() if args.text == "-" else args.text
    pipeline = SpeechPipeline(backend, config)
    started = time.perf_counter()
    pcm = b"".join(pipeline.speak(text, args.voice, args.speed))
    elapsed = time.perf_counter() - started
    write_wav(args.out, pcm)
    seconds = len(pcm) / PCM_BYTES_PER_SECOND
    print(
        f"wrote {args.out}: {seconds:.2f} s of audio in {elapsed:.2f} s "
        f"({seconds / elapsed:.1f}x realtime, {backend.name} on {backend.device})",
        file=sys.stderr,
    )
    return 0
