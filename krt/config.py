"""The whole of krt's configuration: one frozen tree, read once from env + ``.env``.

Every knob is an attrs field whose metadata names its environment variable, so the
names users type (the seed deployment's, kept verbatim) live next to the typed value
the code reads, and a bad value can be reported by the variable's name. Environment
variables win over ``.env``, as in every dotenv tool.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

BackendName = Literal["auto", "torch", "onnx", "fake"]
LangCode = Literal["a", "b"]
OnnxGenerator = Literal["fp32", "int8"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
OpusApplication = Literal["audio", "voip", "lowdelay"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A knob has a value krt cannot use; the message names the variable and what is allowed."""


def knob(env: str, default: T, help: str, validator: Any = None) -> T:
    """Declare one field of the tree: its variable, default and a one-line meaning."""
    result: T = attrs.field(default=default, validator=validator, metadata={"env": env, "help": help})
    return result


def _between(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], float], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")

    return check


def _at_least(low: float) -> Callable[[Any, attrs.Attribute[Any], float], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < low:
            raise ValueError(f"must be at least {low}")

    return check


def _regex(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from exc


@attrs.frozen
class AuthConfig:
    api_key: str = knob("API_KEY", "", "When set, clients must present this key (query or Bearer).")


@attrs.frozen
class LoggingConfig:
    level: LogLevel = knob("LOG_LEVEL", "INFO", "Log level of the server and tools.")


@attrs.frozen
class ModelConfig:
    backend: BackendName = knob(
        "KRT_BACKEND", "auto", "Engine backend; auto = torch on CUDA, onnx on CPU. fake is for tests."
    )
    model_name: str = knob(
        "MODEL_NAME", "hexgrad/Kokoro-82M", "Hugging Face repo used by torch when reachable."
    )
    model_dir: Path | None = knob(
        "KRT_MODEL_DIR", None, "Local dir with kokoro-v1_0.pth, config.json, voices/*.pt (torch)."
    )
    onnx_model: Path | None = knob(
        "KRT_ONNX_MODEL", None, "A Kokoro ONNX file to use instead of the packaged one."
    )
    onnx_generator: OnnxGenerator = knob(
        "KRT_ONNX_GENERATOR",
        "fp32",
        "onnx: run the vocoder's generator dequantized to fp32 (faster on CPUs without VNNI) or as int8.",
    )
    voices_path: Path | None = knob(
        "KRT_VOICES", None, "Voice packs: an .npz file or a dir of .pt/.npy packs."
    )
    cache_dir: Path = knob(
        "KRT_CACHE_DIR", Path.home() / ".cache" / "krt", "Where joined and converted weights are kept."
    )
    lang_code: LangCode = knob("LANG_CODE", "a", "a = American English, b = British English.")
    cpu_threads: int = knob("KRT_CPU_THREADS", 0, "Threads for CPU inference; 0 = all cores.", _at_least(0))
    fake_compute_ratio: float = knob(
        "KRT_FAKE_COMPUTE_RATIO",
        0.0,
        "fake backend only: seconds of compute per second of audio.",
        _at_least(0),
    )
    fake_launch_seconds: float = knob(
        "KRT_FAKE_LAUNCH_SECONDS",
        0.0,
        "fake backend only: seconds every model call costs besides its audio (a GPU's launches).",
        _at_least(0),
    )
    fake_stall_word: str = knob(
        "KRT_FAKE_STALL_WORD",
        "",
        "fake backend only: a model call on a segment with this word never ends (a stuck model).",
    )


DEFAULT_OPENAI_VOICE_MAP = (
    "alloy=female,ash=male,ballad=male,coral=female,echo=male,fable=male,nova=female,"
    "onyx=male,sage=female,shimmer=female,verse=male,marin=female,cedar=male"
)
"""OpenAI's voice names, by the voice each one sounds like most."""


def parse_voice_map(text: str) -> dict[str, str]:
    """``name=voice,name=voice`` → {name: voice}; ValueError naming the bad entry."""
    mapping = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, voice = (piece.strip() for piece in entry.partition("="))
        if not sep or not name or not voice:
            raise ValueError(f"{entry!r} is not name=voice")
        mapping[name] = voice
    return mapping


def _voice_map(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        parse_voice_map(value)
    except ValueError as exc:
        raise ValueError(f"is not a list of name=voice ({exc})") from exc


STAND_INS_BY_GENDER = "gender"
STAND_INS_OFF = "off"


def _stand_ins(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in (STAND_INS_BY_GENDER, STAND_INS_OFF):
        _voice_map(_, attribute, value)


@attrs.frozen
class VoiceConfig:
    female: str = knob("DEFAULT_VOICE_FEMALE", "", "Voice id for 'female'; empty = the weight source's best.")
    male: str = knob("DEFAULT_VOICE_MALE", "", "Voice id for 'male'; empty = the weight source's best.")
    speed: float = knob(
        "KOKORO_SPEED", 1.0, "Default speech speed; requests may override.", _between(0.5, 2.0)
    )
    stand_ins: str = knob(
        "KOKORO_VOICE_STAND_INS",
        STAND_INS_BY_GENDER,
        (
            "Kokoro v1.0 voice names the weights lack (af_heart, am_michael, … with the packaged "
            "weights): `gender` speaks each with the default voice of its gender, `off` refuses "
            "them, or name=voice (comma-separated) names a stand-in for each."
        ),
        _stand_ins,
    )
    openai_voices: str = knob(
        "OPENAI_VOICE_MAP",
        DEFAULT_OPENAI_VOICE_MAP,
        "OpenAI voice names → krt voices for /v1/audio/speech (name=voice, comma-separated).",
        _voice_map,
    )


@attrs.frozen
class SegmentConfig:
    split_pattern: str = knob(
        "KOKORO_SPLIT_PATTERN", r"(?<=[.!?…])\s+|\n+", "Regex that cuts text into segments.", _regex
    )
    first_max_words: int | None = knob(
        "FIRST_SEGMENT_MAX_WORDS",
        None,
        (
            "Cut the first sentence after at most this many words; empty = never. Sentences are "
            "spoken whole by default (the first audio comes from the first decoder window, not a "
            "shortened sentence); a cut never leaves a piece under 3 words."
        ),
        attrs.validators.optional(_at_least(1)),
    )
    first_boundaries: str = knob(
        "FIRST_SEGMENT_BOUNDARIES", ",;:.!?—", "Characters that make a natural cut for the first segment."
    )
    first_require_boundary: bool = knob(
        "FIRST_SEGMENT_REQUIRE_BOUNDARY", False, "Only cut the first segment at a boundary, never mid-clause."
    )
    max_utterance_words: int = knob(
        "MAX_UTTERANCE_WORDS", 400, "A response with more words is refused as too_long.", _at_least(1)
    )
    max_word_chars: int = knob(
        "MAX_WORD_CHARS",
        128,
        (
            "A response with a longer word (characters between spaces) is refused as too_long: one "
            '"word" of thousands of symbols costs G2P and the model seconds for nothing.'
        ),
        _at_least(8),
    )
    max_utterance_seconds: float = knob(
        "MAX_UTTERANCE_SECONDS",
        240.0,
        (
            "A response predicted to play longer (≈ 15 characters per second at speed 1) is refused "
            "as too_long."
        ),
        _between(1.0, 3600.0),
    )
    max_utterance_tokens: int = knob(
        "MAX_UTTERANCE_TOKENS",
        3300,
        (
            "A response whose phonemes come to more model tokens (≈ 14 per second of audio, so about "
            "`MAX_UTTERANCE_SECONDS`) ends as too_long when it gets there; digits and symbols can "
            "make many tokens per character."
        ),
        _at_least(1),
    )
    trim_silence: bool = knob(
        "TRIM_SILENCE",
        True,
        (
            "Skip the silence Kokoro puts around each segment (~350 ms before, ~500 ms after): those "
            "frames, known from the model's own durations, are never decoded. A response starts "
            "within 60 ms of its first sound and ends 40 ms after its last."
        ),
    )
    sentence_pause_ms: int | None = knob(
        "SENTENCE_PAUSE_MS",
        350,
        (
            "Silence between two sentences of one response (a mid-sentence cut: 120 ms), divided by "
            "the speed; empty keeps the model's own (~0.8 s)."
        ),
        attrs.validators.optional(_between(0, 5000)),
    )


@attrs.frozen
class StreamConfig:
    chunk_seconds: float = knob(
        "STREAM_CHUNK_SECONDS", 0.02, "PCM chunk size the engine hands out.", _between(0.005, 1.0)
    )
    prime_stream: bool = knob(
        "PRIME_STREAM", False, "Send PRIME_BYTES of zeros first to defeat proxy buffering."
    )
    prime_bytes: int = knob("PRIME_BYTES", 960, "Size of the primer.", _at_least(0))
    flush_idle_ms: int = knob(
        "FLUSH_IDLE_MS", 160, "Incremental input is flushed after this idle time.", _at_least(0)
    )


@attrs.frozen
class WebSocketConfig:
    first_chunk_immediate: bool = knob("WS_FIRST_CHUNK_IMMEDIATE", True, "Send the first audio at once.")
    buffer_bytes: int = knob(
        "WS_BUFFER_BYTES", 9600, "Flush buffered PCM once this many bytes wait.", _at_least(2)
    )
    flush_every: int = knob(
        "WS_FLUSH_EVERY", 10, "Flush after this many engine chunks regardless.", _at_least(1)
    )
    send_timeout: float = knob(
        "WS_SEND_TIMEOUT",
        5.0,
        "Longest a send may block, or audio go unacknowledged by the client, before it is dropped (seconds).",
        _at_least(0.01),
    )
    long_send_log_ms: int = knob("WS_LONG_SEND_LOG_MS", 200, "Warn when a send takes longer.", _at_least(0))
    ping_interval: float = knob(
        "WS_PING_INTERVAL",
        20.0,
        "Ping an idle connection this often (seconds; 0 = never): proxies keep it open, a dead peer is found.",
        _at_least(0),
    )
    idle_timeout: float = knob(
        "WS_IDLE_TIMEOUT",
        300.0,
        "Close a connection with no client event and nothing in flight for this long (seconds; 1000 'idle').",
        _at_least(1),
    )


@attrs.frozen
class AdmissionConfig:
    max_concurrent_jobs: int = knob(
        "MAX_CONCURRENT_JOBS",
        4,
        (
            "Hard ceiling on streams synthesizing at once; below it, the schedule decides (docs/architecture.md: admission by forecast)."
        ),
        _at_least(1),
    )
    max_queued_requests: int = knob(
        "MAX_QUEUED_REQUESTS", 16, "Requests allowed to wait behind the running ones.", _at_least(0)
    )
    queue_wait_sla_ms: int = knob(
        "QUEUE_WAIT_SLA_MS",
        4000,
        "Refuse with busy when the schedule cannot give a request its first turn within this.",
        _at_least(0),
    )
    queue_maxsize: int = knob("QUEUE_MAXSIZE", 256, "Safety cap on internal engine jobs.", _at_least(1))


@attrs.frozen
class SchedulerConfig:
    quantum_bytes: int = knob(
        "SCHED_QUANTUM_BYTES",
        144000,
        (
            "Largest decoder window (PCM bytes, 3 s) a stream makes in one turn while others wait; a "
            "stream alone on the model may take 1.5× that."
        ),
        _at_least(2),
    )
    priority_quantum_bytes: int = knob(
        "PRIORITY_QUANTUM_BYTES",
        57600,
        (
            "A response's first decoder window (PCM bytes, 1.2 s); later ones double up to "
            "`SCHED_QUANTUM_BYTES`."
        ),
        _at_least(2),
    )
    batch_windows: int = knob(
        "KRT_BATCH_WINDOWS",
        1,
        (
            "Most windows of different streams decoded in one model call (torch; try 8 on CUDA, and "
            "measure with `scripts/gpu_figures.sh`)."
        ),
        _at_least(1),
    )


@attrs.frozen
class DeviceConfig:
    device: str = knob("KOKORO_DEVICE", "", "Torch device (cuda:0, cpu); empty = CUDA when available.")
    gpu_memory_fraction: float = knob(
        "KOKORO_GPU_MEMORY_FRACTION", 0.0, "Per-process CUDA memory cap; 0 = no cap.", _between(0.0, 1.0)
    )


@attrs.frozen
class EncodingConfig:
    opus_bitrate: int = knob("OPUS_BITRATE", 32000, "Bitrate of Ogg/Opus output.", _at_least(6000))
    opus_application: OpusApplication = knob("OPUS_APPLICATION", "audio", "Opus encoder application.")


@attrs.frozen
class ServerConfig:
    drain_seconds: float = knob(
        "KRT_DRAIN_SECONDS", 30.0, "On SIGTERM/SIGINT, how long in-flight responses may finish.", _at_least(0)
    )
    metrics_log: Path = knob("KRT_METRICS_LOG", Path("logs/metrics.log"), "One JSON line per response.")
    openai_max_input_chars: int = knob(
        "OPENAI_MAX_INPUT_CHARS",
        100_000,
        (
            "Longest `input` POST /v1/audio/speech takes (OpenAI's is 4096). A long one is a "
            "streamed download, spoken a few sentences at a time in the engine's idle turns, "
            "after real-time streams."
        ),
        _at_least(1),
    )
    playground: bool = knob(
        "KRT_PLAYGROUND",
        True,
        "Serve the browser playground at `/` (a public page; its WebSocket still needs `API_KEY`).",
    )
    admin_socket: str = knob(
        "KRT_ADMIN_SOCKET",
        "run/krt-admin.sock",
        "Unix socket (mode 0600) that `krt console` attaches to; empty turns it off.",
    )


@attrs.frozen
class Config:
    """Everything krt reads from its environment, validated, immutable after start."""

    auth: AuthConfig = attrs.field(factory=AuthConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    model: ModelConfig = attrs.field(factory=ModelConfig)
    voices: VoiceConfig = attrs.field(factory=VoiceConfig)
    segments: SegmentConfig = attrs.field(factory=SegmentConfig)
    stream: StreamConfig = attrs.field(factory=StreamConfig)
    websocket: WebSocketConfig = attrs.field(factory=WebSocketConfig)
    admission: AdmissionConfig = attrs.field(factory=AdmissionConfig)
    scheduler: SchedulerConfig = attrs.field(factory=SchedulerConfig)
    device: DeviceConfig = attrs.field(factory=DeviceConfig)
    encoding: EncodingConfig = attrs.field(factory=EncodingConfig)
    server: ServerConfig = attrs.field(factory=ServerConfig)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(raw: str, kind: Any) -> Any:
    """Turn the text of one variable into the field's type, or raise ValueError saying why."""
    text = raw.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    if kind == int | None:
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number, or empty") from None
    if kind == Path | None:
        return Path(text).expanduser() if text else None
    if kind is Path:
        return Path(text).expanduser()
    if getattr(kind, "__origin__", None) is Literal:
        allowed = get_args(kind)
        for option in allowed:
            if text.lower() == option.lower():
                return option
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return raw


def _build_group(group: Any, values: Mapping[str, str]) -> Any:
    attrs.resolve_types(group)
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(group):
        env = field.metadata["env"]
        if env not in values:
            continue
        raw = values[env]
        try:
            value = _parse(raw, field.type)
            if field.validator is not None:
                field.validator(None, field, value)
        except ValueError as exc:
            raise ConfigError(f"{env}={raw!r} is not allowed: {exc}") from None
        kwargs[field.name] = value
    return group(**kwargs)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines the way common dotenv tools do (comments, quotes, ``export``)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").strip()
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_config(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Config:
    """Read the tree from ``.env`` overlaid by the process environment; raise ConfigError on a bad value."""
    values = read_dotenv(dotenv) if dotenv is not None else {}
    values.update(os.environ if environ is None else environ)
    groups: dict[str, Any] = {field.name: field.type for field in attrs.fields(attrs.resolve_types(Config))}
    return Config(**{name: _build_group(group, values) for name, group in groups.items()})


def iter_knobs() -> list[tuple[str, str, Any, str]]:
    """(group, variable, default, meaning) for every knob, for docs and ``krt config``."""
    rows = []
    for group_field in attrs.fields(attrs.resolve_types(Config)):
        group: Any = group_field.type
        for field in attrs.fields(group):
            rows.append((group_field.name, field.metadata["env"], field.default, field.metadata["help"]))
    return rows


def knob_table() -> str:
    """Every knob as a Markdown table (variable, default, meaning): the one in
    ``docs/configuration.md``, which a test holds to this."""
    home = str(Path.home())
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for _group, env, default, meaning in iter_knobs():
        if default is None or default == "":
            shown = ""
        elif isinstance(default, bool):
            shown = f"`{int(default)}`"
        else:
            text = str(default)
            shown = "`" + ("~" + text[len(home) :] if text.startswith(home + "/") else text) + "`"
        cells = (f"`{env}`", shown, meaning)
        lines.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m krt.config: the table docs/configuration.md holds
    print(knob_table(), end="")
