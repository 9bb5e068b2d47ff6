"""BERT's WordPiece tokenizer, through Hugging Face ``tokenizers`` (Rust).

WordPiece (Wu et al. 2016; BERT section 3, "Input/Output Representations") splits
each word into the longest pieces found in a fixed vocabulary, greedily from the
left; a piece that continues a word is written with ``##``:
``"embeddings" -> em ##bed ##ding ##s``. The tokenizing itself, and training a new
vocabulary, are the ``tokenizers`` library's; this module assembles BERT's
pipeline from its parts and fixes the conventions the model relies on:

- normalizer ``BertNormalizer``: clean control characters, space around CJK
  characters, lowercase and strip accents (``strip_accents=None`` follows
  ``lowercase``, as in the original code) — as the checkpoint says;
- pre-tokenizer ``BertPreTokenizer``: split on whitespace and punctuation;
- post-processor: ``[CLS] A [SEP]`` for one sentence, ``[CLS] A [SEP] B [SEP]`` for
  a pair, with segment (token type) 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``.

Truncation is ``longest_first`` (for a pair, take tokens from the longer side
first), the default of Hugging Face's ``truncation=True``; padding is to the
longest sequence of the batch, on the right, with ``[PAD]``.

Notation:
    b   batch size (number of sentences or pairs)
    L   length of the longest encoded sequence in the batch, specials included

Use::

    tok = WordPieceTokenizer.from_pretrained("path/to/checkpoint")  # tokenizer.json or vocab.txt
    batch = tok.encode(["The cat sat.", "Hello"], max_length=128)   # Encoded, tensors (b, L)
    batch = tok.encode(["Question?"], ["Answer."])                  # sentence pairs
    tok = WordPieceTokenizer.train(texts, vocab_size=8192)          # a new vocabulary
    tok.save(run_dir)                 # tokenizer.json, vocab.txt, tokenizer_config.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tokenizer_trainers
from torch import Tensor

from qkv.fileio import write_text_atomic

__all__ = ["SPECIAL_TOKENS", "Encoded", "WordPieceTokenizer"]

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
#: In the id order a newly trained vocabulary gives them (0..4). Google's vocabularies
#: have [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; the ids are always looked up.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)

TOKENIZER_FILE, VOCAB_FILE, CONFIG_FILE = "tokenizer.json", "vocab.txt", "tokenizer_config.json"


@dataclass
class Encoded:
    """A padded batch, ready for :class:`~qkv.models.bert.BertModel`: ``model(**enc.as_dict())``.

    Shape: every field ``(b, L)``; ``attention_mask`` is boolean, ``True`` = real
    token (the convention of :mod:`qkv.masks`), ``token_type_ids`` is 0 for
    sentence A, 1 for sentence B.
    """

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device) -> Encoded:
        return Encoded(*(t.to(device) for t in self.as_dict().values()))

    def as_dict(self) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids,
            "token_type_ids": self.token_type_ids,
            "attention_mask": self.attention_mask,
        }


def _bert_pipeline(
    tokenizer: Tokenizer, *, lowercase: bool, strip_accents: bool | None, chinese_chars: bool
) -> Tokenizer:
    """Give a WordPiece ``tokenizer`` BERT's normalizer, pre-tokenizer and decoder."""
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_template(tokenizer: Tokenizer) -> None:
    """``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]``, segment 1 for ``B [SEP]``."""
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


class WordPieceTokenizer:
    """Text <-> BERT token ids. Build one with :meth:`from_pretrained`, :meth:`from_vocab`
    or :meth:`train`; the constructor wraps a ``tokenizers.Tokenizer`` holding a
    WordPiece model and checks that it has BERT's five special tokens.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the vocabulary lacks BERT's special tokens {missing}")
        # A tokenizer.json may carry its own truncation and padding (all-MiniLM-L6-v2's
        # pads every input to 128): encode() sets both for each call instead.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if tokenizer.post_processor is None:
            _add_template(tokenizer)
        self.tokenizer = tokenizer

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path) -> WordPieceTokenizer:
        """Load ``tokenizer.json`` or ``vocab.txt``: a file, or a checkpoint directory
        holding one (``tokenizer.json`` preferred: it records the normalizer)."""
        path = Path(path)
        if path.is_dir():
            if (path / TOKENIZER_FILE).is_file():
                path = path / TOKENIZER_FILE
            elif (path / VOCAB_FILE).is_file():
                path = path / VOCAB_FILE
            else:
                raise FileNotFoundError(f"no {TOKENIZER_FILE} or {VOCAB_FILE} in {path}")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(path))
            if not isinstance(tokenizer.model, models.WordPiece):
                raise ValueError(
                    f"{path} holds a {type(tokenizer.model).__name__} model, not WordPiece"
                )
            return cls(tokenizer)
        return cls.from_vocab(path)

    @classmethod
    def from_vocab(
        cls,
        path: str | Path,
        *,
        lowercase: bool | None = None,
        strip_accents: bool | None = None,
        chinese_chars: bool | None = None,
    ) -> WordPieceTokenizer:
        """A tokenizer from a ``vocab.txt`` (one token a line, the line number is the id).

        ``lowercase``, ``strip_accents`` and ``chinese_chars`` default to what a
        ``tokenizer_config.json`` beside the file says (``do_lower_case``,
        ``strip_accents``, ``tokenize_chinese_chars``), else to the uncased BERT
        settings: lowercase, strip accents, split CJK characters.
        """
        path = Path(path)
        settings: dict[str, Any] = {}
        if (path.parent / CONFIG_FILE).is_file():
            settings = json.loads((path.parent / CONFIG_FILE).read_text())
        if lowercase is None:
            lowercase = bool(settings.get("do_lower_case", True))
        if strip_accents is None:
            strip_accents = settings.get("strip_accents")
        if chinese_chars is None:
            chinese_chars = bool(settings.get("tokenize_chinese_chars", True))
        model = models.WordPiece.from_file(str(path), unk_token=UNK)
        tokenizer = _bert_pipeline(
            Tokenizer(model),
            lowercase=lowercase,
            strip_accents=strip_accents,
            chinese_chars=chinese_chars,
        )
        # Special tokens are matched before normalizing, so "[CLS]" typed in a text is
        # the special token (BERT's own tokenizer does the same), never lowercased.
        tokenizer.add_special_tokens(
            [t for t in SPECIAL_TOKENS if model.token_to_id(t) is not None]
        )
        _add_template(tokenizer)
        return cls(tokenizer)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int = 8192,
        min_frequency: int = 2,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        limit_alphabet: int = 1000,
    ) -> WordPieceTokenizer:
        """Learn a new vocabulary of at most ``vocab_size`` tokens from ``texts``.

        The special tokens get ids 0..4 in the order of :data:`SPECIAL_TOKENS`, so
        ``[PAD]`` is 0 as :class:`~qkv.models.bert.BertConfig` expects.
        ``limit_alphabet`` keeps the most frequent characters only, so a stray
        emoji does not cost a token of its own.
        """
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(
                f"vocab_size ({vocab_size}) must exceed the {len(SPECIAL_TOKENS)} specials"
            )
        tokenizer = _bert_pipeline(
            Tokenizer(models.WordPiece(unk_token=UNK)),
            lowercase=lowercase,
            strip_accents=strip_accents,
            chinese_chars=True,
        )
        trainer = tokenizer_trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            limit_alphabet=limit_alphabet,
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        _add_template(tokenizer)
        logger.info(
            "trained WordPiece: %d tokens (asked for %d)", tokenizer.get_vocab_size(), vocab_size
        )
        return cls(tokenizer)

    def save(self, directory: str | Path, *, model_max_length: int | None = None) -> None:
        """Write ``tokenizer.json``, ``vocab.txt`` and a ``tokenizer_config.json`` into
        ``directory``, so both qkv and ``transformers.AutoTokenizer`` can load it.

        ``model_max_length``: the truncation length the model was trained with, recorded
        in ``tokenizer_config.json`` (Hugging Face truncates to it by default).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Each file atomically: a run killed mid-save never leaves half a vocabulary.
        write_text_atomic(directory / TOKENIZER_FILE, self.tokenizer.to_str(pretty=True))
        vocab = sorted(
            self.tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]
        )
        if [i for _, i in vocab] != list(range(len(vocab))):
            raise ValueError("token ids are not contiguous; cannot write vocab.txt")
        write_text_atomic(directory / VOCAB_FILE, "".join(f"{token}\n" for token, _ in vocab))
        normalizer = json.loads(self.tokenizer.to_str())["normalizer"] or {}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": normalizer.get("lowercase", True),
            "strip_accents": normalizer.get("strip_accents"),
            "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True),
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
        }
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        write_text_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    # -- the vocabulary ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the embedding table's rows), specials included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        assert token_id is not None  # checked in __init__
        return token_id

    @property
    def pad_id(self) -> int:
        return self._id(PAD)

    @property
    def unk_id(self) -> int:
        return self._id(UNK)

    @property
    def cls_id(self) -> int:
        return self._id(CLS)

    @property
    def sep_id(self) -> int:
        return self._id(SEP)

    @property
    def mask_id(self) -> int:
        return self._id(MASK)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the five special tokens, sorted: never masked, never a random replacement."""
        return tuple(sorted(self._id(t) for t in SPECIAL_TOKENS))

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        *,
        max_length: int | None = 512,
    ) -> Encoded:
        """Encode sentences (or sentence pairs) into a padded batch of tensors.

        Args:
            texts: one sentence, or a batch of them (sentence A).
            pairs: sentence B of each pair, as many as ``texts``; ``None`` for single sentences.
            max_length: longest encoded sequence, ``[CLS]``/``[SEP]`` included; longer
                inputs are truncated (``longest_first``). ``None``: no truncation.

        Shape: ``texts`` of length ``b`` -> :class:`Encoded` of ``(b, L)`` tensors,
        ``L`` = the longest encoding in the batch (at most ``max_length``).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if isinstance(pairs, str):
            pairs = [pairs]
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs")
        if not texts:
            raise ValueError("nothing to encode: texts is empty")
        if max_length is not None and max_length < 3 + (pairs is not None):
            raise ValueError(f"max_length ({max_length}) leaves no room beside [CLS] and [SEP]")
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_type_id=0, pad_token=PAD)
        try:
            inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
            encodings = self.tokenizer.encode_batch(inputs)
        finally:
            self.tokenizer.no_truncation()
            self.tokenizer.no_padding()
        return Encoded(
            input_ids=torch.tensor([e.ids for e in encodings], dtype=torch.long),  # (b, L)
            token_type_ids=torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
            attention_mask=torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool),
        )

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without ``[CLS]``/``[SEP]``, untruncated (for packing
        pretraining text into sequences, :func:`qkv.data.mlm.pack_sequences`)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text`` with ``[CLS]``/``[SEP]``, for display."""
        return self.tokenizer.encode(text).tokens

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``##`` pieces are joined back onto their word."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size})"
