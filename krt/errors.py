"""Errors a caller can act on, each carrying the protocol code the server will send."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krt.wire.protocol import ResponseErrorCode


class SpeechError(Exception):
    """A request krt will not or could not speak; ``code`` is the ``response.error`` code."""

    def __init__(
        self,
        code: ResponseErrorCode,
        message: str,
        *,
        retry_after: float | None = None,
        reconnect: bool = False,
    ) -> None:
        super().__init__(message)
        self.code: ResponseErrorCode = code
        self.message = message
        self.retry_after = retry_after
        """For ``busy``: seconds after which the same request is predicted to be taken in
        (its place is kept for its client until shortly after); None when unknown."""
        self.reconnect = reconnect
        """This replica is draining: the same request on a new connection (which a load
        balancer gives to another replica) is taken, so a client resends it, not fails."""


class ModelUnavailableError(RuntimeError):
    """The model or its voices cannot be loaded; the message says what to install or set."""
