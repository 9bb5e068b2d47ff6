"""SentencePiece tokenizers of Marian (OPUS-MT) translation models.

A Marian checkpoint folder tokenises with two SentencePiece models, ``source.spm``
and ``target.spm``, whose pieces are then looked up in ``vocab.json`` (one vocabulary
for both sides, the usual case) or in ``vocab.json`` and ``target_vocab.json``
(separate vocabularies). The ids are the vocabulary's, not the SentencePiece models'
own: the model's embedding rows follow ``vocab.json``. This is what
``transformers.MarianTokenizer`` does, without its optional punctuation
normalisation (Moses, only applied when ``sacremoses`` is installed).

:class:`SentencePieceTokenizer` has the interface of
:class:`qkv.data.bpe.TranslationTokenizer` that translation uses (``source`` and
``target`` with ``encode``, ``encode_batch``, ``decode``, ``id_to_token``,
``vocab_size``; ``joint``; ``save`` and ``load`` of a folder), so that a
:class:`~qkv.tasks.translation.Translator` works with either.

Notation: V vocabulary size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.fileio import atomic_write, write_text_atomic

__all__ = [
    "SOURCE_SPM",
    "TARGET_SPM",
    "TARGET_VOCAB_FILE",
    "TOKENIZER_CONFIG",
    "VOCAB_FILE",
    "SentencePieceTokenizer",
    "SentencePieceVocabulary",
    "is_sentencepiece_folder",
]

SOURCE_SPM, TARGET_SPM = "source.spm", "target.spm"
VOCAB_FILE, TARGET_VOCAB_FILE = "vocab.json", "target_vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
EOS, UNK, PAD = "</s>", "<unk>", "<pad>"
#: SentencePiece's word-start mark.
WORD_START = "\u2581"


def is_sentencepiece_folder(directory: str | Path) -> bool:
    """True when ``directory`` holds a Marian tokenizer (``source.spm``)."""
    return (Path(directory) / SOURCE_SPM).is_file()


class SentencePieceVocabulary:
    """One side: a SentencePiece model and the vocabulary its pieces are looked up in.

    ``model_proto``: the bytes of the ``.spm`` file. ``vocab``: piece -> id, with
    ``</s>``, ``<unk>`` and ``<pad>`` in it. ``language_codes``: pieces such as
    ``>>fr<<`` a multilingual model reads at the start of a source sentence.
    """

    def __init__(self, model_proto: bytes, vocab: Mapping[str, int], *, name: str = "") -> None:
        import sentencepiece

        self.name = name or "vocabulary"
        missing = [token for token in (EOS, UNK, PAD) if token not in vocab]
        if missing:
            raise ValueError(f"{self.name}: special tokens {missing} are not in the vocabulary")
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"{self.name}: the ids are not 0..{len(ids) - 1}, each once")
        self.model_proto = bytes(model_proto)
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(self.model_proto)
        except RuntimeError as error:
            raise ValueError(f"{self.name}: not a SentencePiece model ({error})") from None
        self.vocab = dict(vocab)
        self.pieces = {i: piece for piece, i in self.vocab.items()}
        self.eos_id, self.unk_id, self.pad_id = (self.vocab[t] for t in (EOS, UNK, PAD))
        self.special_ids = frozenset((self.eos_id, self.unk_id, self.pad_id))
        self.language_codes = [p for p in self.vocab if p.startswith(">>") and p.endswith("<<")]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text``; a leading language code (``>>fr<<``) stays whole."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        return code + list(self.processor.encode(text, out_type=str))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, unknown pieces as ``<unk>``; ``add_eos`` appends
        ``</s>``. Marian has no bos token: ``add_bos`` is refused."""
        if add_bos:
            raise ValueError(
                "Marian vocabularies have no bos token (the decoder starts with <pad>)"
            )
        ids = [self.vocab.get(piece, self.unk_id) for piece in self.tokens(text)]
        return ids + [self.eos_id] * add_eos

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens (``</s>``, ``<unk>``, ``<pad>``) left out, as
        ``MarianTokenizer.decode(ids, skip_special_tokens=True)``."""
        pieces = [self.pieces[i] for i in ids if i not in self.special_ids and i in self.pieces]
        text = self.processor.decode_pieces(pieces) if pieces else ""
        return text.replace(WORD_START, " ").strip()

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.pieces.get(token_id)

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary({self.name}, vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class SentencePieceTokenizer:
    """The source and target sides of a Marian model; ``joint`` when both look their
    pieces up in one ``vocab.json`` (the two ``.spm`` models may still differ).
    ``config``: the ``tokenizer_config.json`` read (languages, model_max_length), kept
    and written back."""

    source: SentencePieceVocabulary
    target: SentencePieceVocabulary
    joint: bool = True
    config: Mapping[str, Any] | None = None

    @property
    def pad_id(self) -> int:
        return self.source.pad_id

    @property
    def eos_id(self) -> int:
        return self.source.eos_id

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceTokenizer:
        """Read ``source.spm``, ``target.spm``, ``vocab.json`` (and ``target_vocab.json``
        when ``tokenizer_config.json`` says ``separate_vocabs``) from ``directory``."""
        directory = Path(directory)
        config_path = directory / TOKENIZER_CONFIG
        config: dict[str, Any] = {}
        if config_path.is_file():
            config = _read_json(config_path)
        separate = bool(config.get("separate_vocabs", False))
        names = [SOURCE_SPM, TARGET_SPM, VOCAB_FILE] + [TARGET_VOCAB_FILE] * separate
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: no {', '.join(missing)} (a Marian tokenizer)")
        vocab = _read_vocab(directory / VOCAB_FILE)
        target_vocab = _read_vocab(directory / TARGET_VOCAB_FILE) if separate else vocab
        source = SentencePieceVocabulary(
            (directory / SOURCE_SPM).read_bytes(), vocab, name=str(directory / SOURCE_SPM)
        )
        target = SentencePieceVocabulary(
            (directory / TARGET_SPM).read_bytes(), target_vocab, name=str(directory / TARGET_SPM)
        )
        if (source.eos_id, source.pad_id) != (target.eos_id, target.pad_id):
            raise ValueError(
                f"{directory}: </s> and <pad> have different ids in the source and target "
                "vocabularies"
            )
        return cls(source, target, joint=not separate, config=config)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``source.spm``, ``target.spm``, ``vocab.json`` (and
        ``target_vocab.json`` when separate) and ``tokenizer_config.json`` into
        ``directory``, each atomically; returns the paths written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, side in ((SOURCE_SPM, self.source), (TARGET_SPM, self.target)):
            with atomic_write(directory / name) as tmp:
                Path(tmp).write_bytes(side.model_proto)
            written.append(directory / name)
        vocabularies = [(VOCAB_FILE, self.source.vocab)]
        if not self.joint:
            vocabularies.append((TARGET_VOCAB_FILE, self.target.vocab))
        else:
            (directory / TARGET_VOCAB_FILE).unlink(missing_ok=True)
        for name, vocab in vocabularies:
            write_text_atomic(directory / name, json.dumps(vocab, ensure_ascii=False, indent=2))
            written.append(directory / name)
        config = {
            "tokenizer_class": "MarianTokenizer",
            "model_max_length": 512,
            **dict(self.config or {}),
            "separate_vocabs": not self.joint,
            "eos_token": EOS,
            "unk_token": UNK,
            "pad_token": PAD,
        }
        write_text_atomic(directory / TOKENIZER_CONFIG, json.dumps(config, indent=2) + "\n")
        written.append(directory / TOKENIZER_CONFIG)
        return written

    def sha256(self) -> str:
        """A digest of the models and vocabularies (a run records it to refuse a
        resumed run whose tokenizer changed)."""
        digest = hashlib.sha256()
        sides = [self.source] if self.joint and self.source is self.target else [
            self.source, self.target
        ]  # fmt: skip
        for side in sides:
            digest.update(side.model_proto)
            digest.update(json.dumps(side.vocab, sort_keys=True).encode())
        return digest.hexdigest()

    @staticmethod
    def vocabulary_from_pieces(pieces: Iterable[str]) -> dict[str, int]:
        """A vocabulary laid out as Marian's: ``</s>`` 0, ``<unk>`` 1, the pieces in
        order (SentencePiece's own control pieces left out), ``<pad>`` last."""
        vocab = {EOS: 0, UNK: 1}
        for piece in pieces:
            if piece not in vocab and piece not in ("<s>", PAD):
                vocab[piece] = len(vocab)
        vocab[PAD] = len(vocab)
        return vocab


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    bad = [k for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{path}: ids must be integers, not for {bad[:5]}")
    return vocab
