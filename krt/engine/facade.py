"""The engine as the server sees it: plan a request, stream its PCM, describe the model.

Sessions, the HTTP routes and the benches talk to this class only. What lies behind it
(the pipeline, the backend and its voice catalog, the scheduler and the model runner)
can change without the server noticing, and the server can never reach into a backend
and, say, call the model on the event loop by accident.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from krt import PCM_BYTES_PER_SECOND
from krt.engine.pipeline import MAX_SPEED, MIN_SPEED, PcmBatch, SpeechPlan, supply_together
from krt.engine.runner import ThreadRunner
from krt.engine.scheduler import EngineStatistics, Job, Scheduler
from krt.engine.segmenter import predicted_audio_seconds
from krt.engine.timestamps import WordTime

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence
    from contextlib import AbstractAsyncContextManager

    from krt.config import AdmissionConfig, Config
    from krt.engine.pipeline import Rendering, SpeechPipeline, WindowDecoder
    from krt.engine.runner import ModelRunner

__all__ = [
    "MAX_SPEED",
    "MIN_SPEED",
    "Engine",
    "EngineInfo",
    "EngineStatistics",
    "Job",
    "PcmBatch",
    "SpeechPlan",
    "WordTime",
    "predicted_audio_seconds",
]
"""What the server may use of the engine (an import contract holds it to this module)."""

log = logging.getLogger(__name__)

WARM_UP_TEXT = (
    "Warming up the model with one long sentence, so that the engine can measure how fast it "
    "decodes windows of speech before the first caller is waiting for one."
)
"""One sentence long enough for windows with context on both sides, as under load: a
shorter one overstates the capacity admission then counts on."""
BATCH_WARM_UP_SENTENCES = (
    "Sure, I can help with that.",
    "Your order left our warehouse this morning and should reach you by Friday afternoon.",
    "Thanks for waiting.",
    "I have moved your appointment to Tuesday at ten thirty, and you will get a reminder the evening before.",
    "Is there anything else I can do for you today?",
    "The refund goes back to the card you paid with.",
    "Got it.",
    "Your current balance is one hundred twenty dollars, due at the end of the month.",
)
"""Sentences of the lengths a voice agent says, which streams speak in turn when the
warm-up measures batches: windows of different sentences often decode spans of different
lengths, which cannot share a call, and identical copies of one sentence (which always
could) would overstate what batching gives."""


@attrs.frozen
class EngineInfo:
    """What is loaded, in the words ``/readyz`` (and an operator) reads."""

    backend: str
    """onnx, torch or fake."""
    device: str
    weights: str
    """Where the weights came from."""
    female: str
    """The voice ``female`` speaks with."""
    male: str
    voices: tuple[str, ...]
    """Every voice pack a request may name or blend."""
    stand_ins: dict[str, str] = attrs.field(factory=dict)
    """Kokoro v1.0 names the weights lack, and the voice each is spoken with."""


class Engine:
    """One model shared by every connection, behind admission and fair turns."""

    def __init__(self, pipeline: SpeechPipeline, config: Config, runner: ModelRunner | None = None) -> None:
        self._pipeline = pipeline
        self._runner = runner if runner is not None else ThreadRunner()
        self._scheduler = Scheduler(self._runner, config.admission, pipeline.backend)

    def plan(
        self,
        text: str,
        voice: str | None = None,
        speed: float | None = None,
        *,
        timestamps: bool = False,
        continues: bool = False,
    ) -> SpeechPlan:
        """Validate a request and cut its text; raises SpeechError with the protocol code.
        With ``timestamps`` its job's :meth:`~krt.engine.scheduler.Job.take_words` times
        the client's words; with ``continues`` more speech follows it in the same audio
        (a long download's next part), so it ends with the pause between sentences."""
        return self._pipeline.plan(text, voice, speed, timestamps=timestamps, continues=continues)

    def resolve_voice(self, voice: str | None) -> str:
        """The voice id (or blend) a name stands for; SpeechError ``invalid_voice`` lists the valid ones."""
        return self._pipeline.voices.resolve(voice)

    def resolve_speed(self, speed: float | None) -> float:
        """The speed a request gets (its own, else ``KOKORO_SPEED``); SpeechError ``invalid_speed``."""
        return self._pipeline.resolve_speed(speed)

    def describe(self) -> EngineInfo:
        backend, voices = self._pipeline.backend, self._pipeline.voices
        return EngineInfo(
            backend.name,
            backend.device,
            backend.source,
            voices.female,
            voices.male,
            tuple(voices.names),
            voices.stood_in(),
        )

    def stream(
        self, plan: SpeechPlan, label: str, *, paced: bool = True, client: Hashable | None = None
    ) -> AbstractAsyncContextManager[Job]:
        """Admit ``plan`` and yield its job; iterate the job for PCM batches, in order, and
        say what its reader has read with :meth:`~krt.engine.scheduler.Job.mark_read`.

        Raises SpeechError ``busy`` when refused. Leaving the block for any reason (the
        last batch read, a cancel scope, a disconnect) withdraws the job: nothing more is
        computed for it and anything still in flight is discarded. ``paced=False`` is for
        downloads, made as fast as the turns other streams do not need allow. ``client``
        (a socket, an address) is who a ``busy`` refusal keeps a place for.
        """
        return self._scheduler.stream(self._pipeline.rendering(plan), label, paced=paced, client=client)

    def admit(
        self,
        plan: SpeechPlan,
        label: str,
        *,
        paced: bool = True,
        accepted: bool = False,
        client: Hashable | None = None,
        background: bool = False,
    ) -> Job:
        """Admit ``plan`` now, before its client is told the response exists: SpeechError
        ``busy`` when refused, unless ``accepted`` (a response queued behind another on the
        same socket, whose stream the engine already took in: it waits its turn, it is
        never refused). A refusal says when to come back and keeps that place for
        ``client`` (a socket, an address). ``paced=False`` is for downloads, as in
        :meth:`stream`; ``background`` for a long download's later parts, which are never
        refused and take only the turns no other job is due for. The job takes turns from
        now on, or once the schedule fits it; whoever admitted it must :meth:`hold` it or
        :meth:`withdraw` it."""
        return self._scheduler.admit(
            self._pipeline.rendering(plan),
            label,
            paced=paced,
            accepted=accepted,
            client=client,
            background=background,
        )

    def hold(self, job: Job) -> AbstractAsyncContextManager[Job]:
        """Iterate an admitted job for its PCM; leaving the block for any reason withdraws it."""
        return self._scheduler.hold(job)

    def withdraw(self, job: Job) -> None:
        """Drop a job admitted and never held (its response was cancelled while queued);
        harmless on a job already withdrawn."""
        self._scheduler.withdraw(job)

    def forecast(
        self, streams: Sequence[tuple[Job | None, Sequence[SpeechPlan]]], horizon: float
    ) -> list[list[float]]:
        """Seconds from now until each response ends, as the engine's schedule predicts it
        (``math.inf`` past ``horizon``): for each stream, its job in the engine (or None)
        and then each plan queued behind it on the same socket; every other job in the
        engine competes. What a drain decides with."""
        return self._scheduler.forecast(streams, horizon)

    def statistics(self) -> EngineStatistics:
        return self._scheduler.statistics()

    @property
    def admission(self) -> AdmissionConfig:
        """The admission knobs in force (an operator may have changed them since start)."""
        return self._scheduler.admission

    def set_admission(self, admission: AdmissionConfig) -> None:
        """Apply new admission knobs now; streams already admitted carry on."""
        self._scheduler.reconfigure(admission)

    async def warm_up(self, text: str = WARM_UP_TEXT) -> None:
        """Synthesize before the server says it is ready: the first call pays for lazy
        initialisation (seconds on CPU), so a second one measures the real speed, which
        admission then sizes the engine with: how long a first window takes, and how many
        audio seconds the later windows make per second."""
        # Built directly, not through plan(): the warm-up must not depend on request limits
        # such as MAX_UTTERANCE_WORDS.
        plan = SpeechPlan(self._pipeline.voices.female, self._pipeline.resolve_speed(None), (text,))
        first_window = first_audio = later = later_compute = 0.0
        later_frames = 0
        for attempt in ("first", "second"):
            rendering = self._pipeline.rendering(plan)
            started = trio.current_time()
            first_batch = await self._runner.run(_first_batch, rendering)
            first_window = trio.current_time() - started
            first_audio = sum(map(len, first_batch or ())) / PCM_BYTES_PER_SECOND
            first_frames = rendering.windows.frames_decoded
            later = await self._runner.run(_drain_seconds, rendering)
            later_compute = trio.current_time() - started - first_window
            later_frames = rendering.windows.frames_decoded - first_frames
            log.info(
                "engine warm-up, %s run: first window in %.3f s, then %.2f s of audio in %.3f s",
                attempt,
                first_window,
                later,
                later_compute,
            )
        measured = later > 0 and later_compute > 0 and later_frames > 0
        capacity = later / later_compute if measured else None
        self._scheduler.calibrate(
            first_window,
            capacity,
            later_compute / later_frames if measured else None,
            first_audio,
            await self._batched_capacity(plan, capacity),
        )
        stats = self._scheduler.statistics()
        log.info(
            "engine capacity %s audio s per s (by windows a turn): %d streams at once",
            ", ".join(f"{size}: {capacity:.2f}" for size, capacity in stats.capacity_by_batch),
            stats.slots,
        )

    async def _batched_capacity(self, plan: SpeechPlan, capacity: float | None) -> dict[int, float]:
        """The capacity at 2, 4, … windows a turn: ``capacity`` (one window a turn, on the
        warm-up sentence) times how much more audio per second a turn of that many
        windows makes than a turn of one, both on the same mix of sentences."""
        if capacity is None or self._pipeline.backend.batch_windows <= 1:
            return {}
        single = await self._batch_capacity(plan, 1)
        batched = {size: await self._batch_capacity(plan, size) for size in self._batch_sizes()}
        if not single:
            return {}
        return {size: capacity * rate / single for size, rate in batched.items() if rate}

    def _batch_sizes(self) -> list[int]:
        """The batch sizes the warm-up measures beyond one: 2, 4, … and the largest."""
        most = self._pipeline.backend.batch_windows
        sizes = [2**power for power in range(1, most.bit_length()) if 2**power < most]
        return [*sizes, most] if most > 1 else []

    async def _batch_capacity(self, plan: SpeechPlan, size: int) -> float | None:
        """Audio seconds per model second with ``size`` streams decoded together, their
        first windows left out (as at one window a turn); None if nothing was made. Each
        stream speaks ``BATCH_WARM_UP_SENTENCES`` from a sentence of its own, in ``plan``'s
        voice."""
        sentences = BATCH_WARM_UP_SENTENCES
        renderings = [
            self._pipeline.rendering(
                attrs.evolve(
                    plan,
                    segments=tuple(sentences[(stream + k) % len(sentences)] for k in range(len(sentences))),
                )
            )
            for stream in range(size)
        ]
        backend = self._pipeline.backend
        await self._runner.run(_together, renderings, backend)
        started = trio.current_time()
        made = await self._runner.run(_drain_together, renderings, backend)
        compute = trio.current_time() - started
        log.info("engine warm-up, %d windows a turn: %.2f s of audio in %.3f s", size, made, compute)
        return made / compute if made > 0 and compute > 0 else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine loop; runs until cancelled (a model call in progress is abandoned to
        its thread)."""
        await self._scheduler.run(task_status=task_status)


def _first_batch(rendering: Rendering) -> PcmBatch | None:
    return next(rendering, None)


def _drain_seconds(rendering: Rendering) -> float:
    """Render the rest of ``rendering``; the seconds of audio it made."""
    return sum(sum(map(len, batch)) for batch in rendering) / PCM_BYTES_PER_SECOND


def _together(renderings: Sequence[Rendering], decoder: WindowDecoder) -> float:
    """One batch of each rendering not done, their windows decoded together; the seconds
    of audio made."""
    live = [rendering for rendering in renderings if not rendering.done]
    windows = [(rendering, window) for rendering in live if (window := rendering.next_window()) is not None]
    for _group in supply_together(decoder, windows):
        pass
    return sum(sum(map(len, next(rendering, ()))) for rendering in live) / PCM_BYTES_PER_SECOND


def _drain_together(renderings: Sequence[Rendering], decoder: WindowDecoder) -> float:
    """The rest of ``renderings``, a window of each at a time decoded together; the seconds of audio made."""
    made = 0.0
    while not all(rendering.done for rendering in renderings):
        made += _together(renderings, decoder)
    return made
