"""Errors a caller can act on, each carrying the protocol code the server will send."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krt.protocol import ResponseErrorCode


class SpeechError(Exception):
    """A request krt will not or could not speak; ``code`` is the ``response.error`` code."""

    def __init__(self, code: ResponseErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ResponseErrorCode = code
        self.message = message


class ModelUnavailableError(RuntimeError):
    """The model or its voices cannot be loaded; the message says what to install or set."""
