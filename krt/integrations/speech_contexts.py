"""What a TTS client of krt must remember between events: ``SpeechContexts``.

A voice-agent framework speaks in *contexts* (one LLM turn, sent a sentence at a time);
krt speaks *responses* (one ``response.create`` each, its id in use until its last event).
This module owns the mapping between the two and everything that follows from it:

- the response ids of a context (``<context>``, ``<context>#2``…) and which of them are
  still in flight, so a context ends only after its last response has;
- sentences a draining krt refused (``response.error`` with ``reconnect``) before any of
  their audio, held with their contexts and sent first, in order, on the next socket;
- where each response's audio starts within its context, counted in bytes as it arrives
  (exact, where a clock would drift), so its word times land on the context's clock;
- the alignment of krt's timed words to the input's own whitespace tokens.

It is kept free of Pipecat, websockets and asyncio (only :mod:`krt.wire.protocol` events come
in) because none of this depends on how events are carried or played: it is tested on
plain values, without a pipeline or a server, and another framework's service can reuse it.
Everything here is synchronous and finishes before the caller awaits anything, so the
caller's ``await`` points are the only places its state can change under it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from krt.wire.protocol import ResponseError, WordTiming

__all__ = ["KrtResponse", "SpeechContext", "SpeechContexts"]

PCM_BYTES_PER_SAMPLE = 2
"""The audio counted here is mono PCM16: the format a client asks krt for to play it as is."""
_TOKEN = re.compile(r"\S+")


@attrs.define(eq=False)
class KrtResponse:
    """One sentence sent to krt as one response, from its ``response.create`` to its last event."""

    response_id: str
    context_id: str
    text: str
    """What was sent as ``input``: krt's word offsets index it."""
    offset_bytes: int | None = None
    """Where the response's first sample falls in its context's audio, fixed by its
    first audio or timestamps (krt speaks a socket's responses in order, so by then the
    responses before it in the context have all their audio in). Negative once the
    context's clock restarted while this response was playing."""
    audio_bytes: int = 0
    timed_to: int = 0
    """How far into ``text`` words have been handed on: each token is timed once."""
    canceled: bool = False
    held: bool = False
    """Refused by a draining krt before any of its audio: sent again, first thing, on the
    next socket."""


@attrs.define(eq=False)
class SpeechContext:
    """One context of the framework (an LLM turn, or a sentence outside any turn)."""

    in_flight: list[str] = attrs.field(factory=list)
    """Response ids sent and not yet ended, in order."""
    created: int = 0
    """Responses made for this context so far: the next one's id suffix."""
    closed: bool = False
    """No more text comes for this context: it ends with its last response."""
    audio_bytes: int = 0
    """Audio of this context played since its clock started, for the next response's
    word offsets."""


class SpeechContexts:
    """The contexts and responses of one service, across the sockets it opens."""

    def __init__(self) -> None:
        self.responses: dict[str, KrtResponse] = {}
        """Responses krt has not ended yet (or will be sent again), in the order sent."""
        self.contexts: dict[str, SpeechContext] = {}

    # -- sending -------------------------------------------------------------------------

    def open(self, context_id: str) -> SpeechContext:
        """The context, made on its first sentence."""
        return self.contexts.setdefault(context_id, SpeechContext())

    def start_response(self, context_id: str, text: str) -> KrtResponse:
        """A new response for the next sentence of a context, in flight from now.

        The first response of a context is named after it so that a context and its
        opening sentence share one id in krt's logs; the rest are numbered, since krt
        refuses an id still in use on the socket.
        """
        context = self.open(context_id)
        context.created += 1
        response_id = context_id if context.created == 1 else f"{context_id}#{context.created}"
        response = KrtResponse(response_id, context_id, text)
        self.responses[response_id] = response
        context.in_flight.append(response_id)
        return response

    def forget(self, response_id: str) -> KrtResponse | None:
        """Stop waiting for a response: nothing more of it will come, or be sent."""
        response = self.responses.pop(response_id, None)
        context = self.contexts.get(response.context_id) if response else None
        if context is not None and response_id in context.in_flight:
            context.in_flight.remove(response_id)
        return response

    def cancel(self, response_id: str) -> bool:
        """Mark a response canceled; True when krt has it and must be told to stop."""
        response = self.responses.get(response_id)
        if response is None or response.canceled:
            return False
        if response.held:
            self.forget(response_id)  # krt never took it: there is nothing to cancel
            return False
        response.canceled = True
        return True

    def interrupt(self, context_id: str) -> list[str]:
        """Forget an interrupted context; the ids of its responses still in flight, to cancel."""
        context = self.contexts.pop(context_id, None)
        return list(context.in_flight) if context is not None else []

    def end_context_if_done(self, context_id: str, *, abandoned: bool = False) -> bool:
        """Forget a context all of whose responses have ended, once no more text comes
        for it (it was closed, or the framework ``abandoned`` it); True when it ended."""
        context = self.contexts.get(context_id)
        if context is None or context.in_flight or not (context.closed or abandoned):
            return False
        del self.contexts[context_id]
        return True

    # -- receiving -----------------------------------------------------------------------

    def playable(self, response_id: str) -> KrtResponse | None:
        """The response an event is for, unless it ended or was canceled (its late
        events are then dropped: an interrupted sentence must not be heard)."""
        response = self.responses.get(response_id)
        return None if response is None or response.canceled else response

    def hear(self, response: KrtResponse, audio_bytes: int) -> None:
        """Count audio of a response as played in its context."""
        self._place(response)
        response.audio_bytes += audio_bytes
        context = self.contexts.get(response.context_id)
        if context is not None:
            context.audio_bytes += audio_bytes

    def timed_tokens(
        self, response: KrtResponse, words: Sequence[WordTiming], sample_rate: int
    ) -> list[tuple[str, float]]:
        """krt's words as the input's tokens, each with its time in seconds on its
        context's clock (which starts at the context's first audio)."""
        offset_s = self._place(response) / (PCM_BYTES_PER_SAMPLE * sample_rate)
        return [(token, offset_s + start_ms / 1000) for token, start_ms in _tokens(response, words)]

    def hold_if_draining(self, refusal: ResponseError) -> bool:
        """Hold a sentence a draining krt refused; True when it is held.

        Only a sentence nothing of which was heard, and that nobody canceled, goes out
        again: a second start of a half-spoken sentence would be heard twice, and a
        canceled one is not wanted. A held response stays in its context's flight, so
        the context waits for it.
        """
        response = self.responses.get(refusal.response)
        if response is None or not refusal.reconnect or response.canceled or response.audio_bytes:
            return False
        response.held = True
        return True

    def only_held_left(self) -> bool:
        """Nothing on this socket is still to be heard: every response is waiting for the next one."""
        return all(response.held for response in self.responses.values())

    def restart_clock(self, context_id: str) -> None:
        """The framework finished the context's audio mid-turn and will reopen it with a
        new clock from its next audio: offsets start over, minus what a response in
        flight has already played."""
        context = self.contexts.get(context_id)
        if context is None:
            return
        context.audio_bytes = 0
        for response_id in context.in_flight:
            if (response := self.responses.get(response_id)) is not None:
                response.offset_bytes = -response.audio_bytes if response.audio_bytes else None

    # -- sockets -------------------------------------------------------------------------

    def held(self) -> list[KrtResponse]:
        """Sentences to send first on the next socket, in the order they were first sent."""
        return [response for response in self.responses.values() if response.held]

    def held_context_ids(self) -> set[str]:
        """Contexts with a sentence a draining krt refused: they outlive the socket."""
        return {response.context_id for response in self.responses.values() if response.held}

    def drop_socket(self, *, keep_held: bool) -> int:
        """Forget what died with a socket: krt ends a connection's responses with it.

        Held sentences and their contexts are kept for the next socket when
        ``keep_held`` (not when the service is ending). Returns how many responses were
        lost unfinished (neither canceled nor held), which the caller reports.
        """
        lost = sum(not (response.canceled or response.held) for response in self.responses.values())
        self.responses = {rid: r for rid, r in self.responses.items() if keep_held and r.held}
        kept = self.held_context_ids()
        self.contexts = {cid: context for cid, context in self.contexts.items() if cid in kept}
        for context in self.contexts.values():
            context.in_flight = [rid for rid in context.in_flight if rid in self.responses]
        return lost

    def _place(self, response: KrtResponse) -> int:
        if response.offset_bytes is None:
            context = self.contexts.get(response.context_id)
            response.offset_bytes = context.audio_bytes if context else 0
        return response.offset_bytes


def _tokens(response: KrtResponse, words: Sequence[WordTiming]) -> list[tuple[str, float]]:
    """krt's words as the input's whitespace-separated tokens (with their punctuation, as
    the LLM wrote them), each at the start (ms) of its first word.

    krt times words of the client's text without the marks around them ("there" of
    "there,"); Pipecat rebuilds the bot's transcript from these tokens, so a mark left
    out would be lost from the conversation. krt's character offsets make the match
    exact; when any word's offsets do not index the text sent, the words are taken as
    krt wrote them.
    """
    text = response.text
    if not all(0 <= word.char_start < word.char_end <= len(text) for word in words):
        return [(word.text.strip(), word.start_ms) for word in words if word.text.strip()]
    tokens = []
    for token in _TOKEN.finditer(text, response.timed_to):
        starts = [
            word.start_ms for word in words if word.char_start < token.end() and word.char_end > token.start()
        ]
        if starts:
            tokens.append((token[0], min(starts)))
            response.timed_to = token.end()
    return tokens
