"""What the command-line tools that talk to a server share: options, modes, one-line errors.

The ``client``, ``warmup``, ``tpm`` and ``bench`` commands all speak to a running
server the same way; the shared parts live here, in the client library, so that tools
and benches never import each other.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from krt.client.speech import SpeechClient, open_speech_client
from krt.client.target import describe_connection_error
from krt.engine.segmenter import split_sentences

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator

    from krt.client.target import Target


class ToolError(Exception):
    """A failure a tool reports in one line, without a traceback."""


def add_mode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["single", "sentences"],
        default="single",
        help="single: the text as one response; sentences: one response per sentence",
    )
    parser.add_argument("--voice", default="female", help="female, male, a voice id or a blend")
    parser.add_argument("--speed", type=float, help="0.5–2.0 (default: the server's KOKORO_SPEED)")


def pieces_of(text: str, mode: str) -> list[str]:
    """What to send as separate responses."""
    if mode == "single":
        return [text.strip()]
    return [sentence.strip() for sentence in split_sentences(text) if sentence.strip()]


@asynccontextmanager
async def connected(target: Target, **options: bool) -> AsyncIterator[SpeechClient]:
    """A SpeechClient on ``target``; a refused or failed connection becomes a ToolError."""
    try:
        async with open_speech_client(target.url, api_key=target.api_key, **options) as client:
            yield client
    except* Exception as group:
        for exc in group.exceptions:
            message = describe_connection_error(exc, target)
            if message is not None:
                raise ToolError(message) from None
        raise
