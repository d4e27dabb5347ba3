"""Voice packs and the names clients use for them.

Clients speak of ``female`` and ``male``; operators map those to concrete Kokoro voice
ids. Which ids exist depends on the weight source (the hub has ``af_heart`` and
friends, the packaged export only five voices), so the catalog is built by the backend
that loaded the weights and the defaults follow it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import attrs
import numpy as np
import numpy.typing as npt

from krt.config import STAND_INS_BY_GENDER, STAND_INS_OFF, parse_voice_map
from krt.errors import ModelUnavailableError, SpeechError

log = logging.getLogger(__name__)

StylePack = npt.NDArray[np.float32]
"""(510, 1, 256): one style vector per phoneme-sequence length."""

KOKORO_V1_VOICES = (
    *("af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole"),
    *("af_nova", "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir"),
    *("am_liam", "am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma"),
    *("bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george", "bm_lewis", "ef_dora"),
    *("em_alex", "em_santa", "ff_siwis", "hf_alpha", "hf_beta", "hm_omega", "hm_psi", "if_sara"),
    *("im_nicola", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "pf_dora"),
    *("pm_alex", "pm_santa", "zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian"),
    *("zm_yunxi", "zm_yunxia", "zm_yunyang"),
)
"""Kokoro-82M v1.0's voice packs (hexgrad/Kokoro-82M, ``voices/``): the names clients
written for other Kokoro servers ask for. The second letter is the voice's gender."""


def stand_ins_for(setting: str, packs: Mapping[str, StylePack]) -> dict[str, str]:
    """Which Kokoro v1.0 names the weights lack are spoken, and by which voice
    (``KOKORO_VOICE_STAND_INS``): by the default voice of the same gender, by none, or as
    an operator's ``name=voice`` list says. A name the weights have is always its pack."""
    if setting == STAND_INS_OFF:
        return {}
    if setting == STAND_INS_BY_GENDER:
        wanted = {name: "female" if name[1] == "f" else "male" for name in KOKORO_V1_VOICES}
    else:
        wanted = parse_voice_map(setting)
    return {name: voice for name, voice in wanted.items() if name not in packs}


BLEND_PART = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$")
MAX_BLEND_WEIGHT = 100.0
"""Weights are relative, so nothing is lost by a bound; without one, "9" × 400 parses as
infinity and the normalised blend is NaN: a voice that speaks silence."""
MAX_BLEND_VOICES = 8


def parse_blend(spec: str) -> list[tuple[str, float]]:
    """``a(2)+b(1)`` → [(a, 2/3), (b, 1/3)]; a plain name is a blend of one.

    The syntax is Kokoro-FastAPI's, which voice-agent builders already know. Kokoro
    itself blends voices by averaging their packs, which is what weights mean here.
    Each weight must be a number in (0, ``MAX_BLEND_WEIGHT``]; ValueError says which is not.
    """
    chunks = spec.split("+")
    if len(chunks) > MAX_BLEND_VOICES:
        raise ValueError(f"a blend has at most {MAX_BLEND_VOICES} voices")
    parts: list[tuple[str, float]] = []
    for chunk in chunks:
        match = BLEND_PART.match(chunk)
        if match is None:
            raise ValueError(f"{chunk.strip()!r} is not NAME or NAME(WEIGHT)")
        weight = float(match.group(2)) if match.group(2) else 1.0
        if not 0 < weight <= MAX_BLEND_WEIGHT:  # also refuses inf and nan
            shown = match.group(2) if len(match.group(2) or "") <= 12 else match.group(2)[:12] + "…"
            raise ValueError(
                f"the weight of {match.group(1)!r} ({shown}) must be more than 0 and at most {MAX_BLEND_WEIGHT:g}"
            )
        parts.append((match.group(1), weight))
    total = sum(weight for _name, weight in parts)
    return [(name, weight / total) for name, weight in parts]


@attrs.frozen
class VoiceCatalog:
    """The voices a backend can speak, and what ``female``/``male`` mean for it.

    A voice is a pack name or a blend of packs (``jm_kumo(4)+jf_gongitsune(1)``).
    """

    packs: Mapping[str, StylePack]
    female: str
    male: str
    stand_ins: Mapping[str, str] = attrs.field(factory=dict)
    """Voice names the weights lack, and what speaks each (see :func:`stand_ins_for`)."""
    _stood_in: dict[str, str] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    """Each of ``stand_ins`` resolved to a pack or blend, once, when the catalog is made."""
    _announced: set[str] = attrs.field(factory=set, eq=False, repr=False)
    """Stand-ins already logged: an operator reads each once, not once per request."""

    def __attrs_post_init__(self) -> None:
        for role, voice in (("female", self.female), ("male", self.male)):
            try:
                self._check(voice)
            except SpeechError as exc:
                raise ModelUnavailableError(
                    f"DEFAULT_VOICE_{role.upper()}={voice!r} cannot be used: {exc.message}"
                ) from None
        for name, voice in self.stand_ins.items():
            try:
                self._stood_in[name] = self._resolve_known(voice)
            except SpeechError as exc:
                raise ModelUnavailableError(
                    f"KOKORO_VOICE_STAND_INS: {name}={voice} cannot be used: {exc.message}"
                ) from None

    def standing_in(self, setting: str) -> VoiceCatalog:
        """This catalog with the stand-ins ``KOKORO_VOICE_STAND_INS`` asks for."""
        return attrs.evolve(self, stand_ins=stand_ins_for(setting, self.packs))

    def stood_in(self) -> dict[str, str]:
        """Each stood-in name and the voice (pack or blend) it is spoken with."""
        return dict(self._stood_in)

    @property
    def names(self) -> list[str]:
        return sorted(self.packs)

    def _check(self, voice: str) -> str:
        try:
            parts = parse_blend(voice)
        except ValueError as exc:
            raise SpeechError("invalid_voice", f"bad voice {voice!r}: {exc}") from None
        unknown = [name for name, _weight in parts if name not in self.packs]
        if unknown:
            raise SpeechError(
                "invalid_voice",
                f"unknown voice {unknown[0]!r}; use female, male, one of: {', '.join(self.names)}, "
                "or a blend such as name(2)+name(1)",
            )
        return voice

    def resolve(self, requested: str | None) -> str:
        """The voice for ``female``/``male``/a name/a blend, a stood-in name as its
        stand-in; SpeechError lists the valid ones."""
        name = (requested or "female").strip()
        if name in self._stood_in:
            resolved = self._stood_in[name]
            if name not in self._announced:
                self._announced.add(name)
                log.info(
                    "voice %r is not in these weights: it is spoken as %s (%s); "
                    "KOKORO_VOICE_STAND_INS changes this",
                    name,
                    self.stand_ins[name],
                    resolved,
                )
            return resolved
        if "+" in name and any(part in self.stand_ins for part, _weight in _blend_or_none(name)):
            shares: dict[str, float] = {}
            for voice, share in parse_blend(name):
                for part, weight in parse_blend(self.resolve(voice)):
                    shares[part] = shares.get(part, 0.0) + weight * share
            return self._check("+".join(f"{part}({weight:.6f})" for part, weight in shares.items()))
        return self._resolve_known(name)

    def _resolve_known(self, name: str) -> str:
        if name == "female":
            return self.female
        if name == "male":
            return self.male
        return self._check(name)

    def style(self, voice: str, token_count: int) -> npt.NDArray[np.float32]:
        """The (1, 256) style row Kokoro expects: row ``token_count - 1`` of the (blended) pack."""
        mixed = np.zeros(256, dtype=np.float32)
        for name, weight in parse_blend(voice):
            pack = self.packs[name]
            row = min(max(token_count, 1), pack.shape[0]) - 1
            mixed += weight * np.asarray(pack[row], dtype=np.float32).reshape(-1)
        return mixed.reshape(1, -1)


def _blend_or_none(spec: str) -> list[tuple[str, float]]:
    try:
        return parse_blend(spec)
    except ValueError:
        return []  # _check says what is wrong with it


def with_defaults(
    packs: Mapping[str, StylePack], female: str, male: str, preferred: tuple[str, str]
) -> VoiceCatalog:
    """A catalog whose unset defaults fall back to the weight source's preferred voices."""
    return VoiceCatalog(packs=dict(packs), female=female or preferred[0], male=male or preferred[1])
