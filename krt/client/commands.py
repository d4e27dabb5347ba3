"""What the command-line tools that talk to a server share: options, modes, one-line errors.

The ``client``, ``warmup``, ``tpm`` and ``bench`` commands all speak to a running
server the same way; the shared parts live here, in the client library, so that tools
and benches never import each other.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from krt import SAMPLE_RATE
from krt.client.speech import SessionRefused, SpeechClient, open_speech_client
from krt.client.target import describe_connection_error
from krt.media.codecs import NATIVE, OUTPUT_FORMATS, SAMPLE_RATES, OutputAudio, UnsupportedOutput
from krt.text.sentences import split_sentences

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Iterator

    from krt.client.target import Target


class ToolError(Exception):
    """A failure a tool reports in one line, without a traceback."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``'s groups, however nested (Trio's nurseries wrap them),
    so a tool can find the ToolError among them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def reportable(exc: BaseException) -> ToolError | OSError | None:
    """The failure a tool reports in one line (a refusal, a connection that failed), found
    inside Trio's exception groups; None for anything else, a bug, which should raise."""
    return next((leaf for leaf in leaves(exc) if isinstance(leaf, ToolError | OSError)), None)


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["single", "sentences"],
        default="single",
        help="single: the text as one response; sentences: one response per sentence",
    )
    parser.add_argument("--voice", default="female", help="female, male, a voice id or a blend")
    parser.add_argument("--speed", type=float, help="0.5–2.0 (default: the server's KOKORO_SPEED)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="pcm", help="audio format to ask for (default pcm)"
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=SAMPLE_RATES,
        default=SAMPLE_RATE,
        metavar="HZ",
        help=f"sample rate to ask for (default {SAMPLE_RATE}; one of {', '.join(map(str, SAMPLE_RATES))})",
    )


def output_of(args: argparse.Namespace) -> OutputAudio:
    try:
        return OutputAudio(args.format, args.sample_rate)
    except UnsupportedOutput as exc:
        raise ToolError(str(exc)) from None


def pieces_of(text: str, mode: str) -> list[str]:
    """What to send as separate responses."""
    if mode == "single":
        return [text.strip()]
    return [sentence.strip() for sentence in split_sentences(text) if sentence.strip()]


@asynccontextmanager
async def connected(
    target: Target, *, output: OutputAudio = NATIVE, **options: bool
) -> AsyncIterator[SpeechClient]:
    """A SpeechClient on ``target``; a refused or failed connection (or a format the
    server will not give) becomes a ToolError."""
    try:
        async with open_speech_client(target.url, api_key=target.api_key, output=output, **options) as client:
            yield client
    except* Exception as group:
        for exc in group.exceptions:
            if isinstance(exc, SessionRefused):
                raise ToolError(f"the server refused the audio format: {exc}") from None
            message = describe_connection_error(exc, target)
            if message is not None:
                raise ToolError(message) from None
        raise
