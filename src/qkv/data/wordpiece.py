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

The same class reads the ``tokenizer.json`` of a RoBERTa (byte-level BPE, ``<s> A </s>``,
``<s> A </s></s> B </s>``) or an XLM-RoBERTa (Unigram, SentencePiece-style) checkpoint:
the ``tokenizers`` library runs the pipeline the file records, and the special tokens'
names come from ``tokenizer_config.json`` (``cls_token``, ``sep_token``, ``pad_token``,
``unk_token``, ``mask_token``; RoBERTa's ``<s> </s> <pad> <unk> <mask>`` when it says
nothing), so every id a task uses is looked up, never assumed.

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
#: The roles of the special tokens, in the order of :data:`SPECIAL_TOKENS`.
ROLES = ("pad", "unk", "cls", "sep", "mask")
#: Role -> token of BERT's vocabularies, and of RoBERTa's and XLM-RoBERTa's (the BPE and
#: Unigram ones), for a ``tokenizer_config.json`` that does not name them.
BERT_SPECIALS = dict(zip(ROLES, SPECIAL_TOKENS, strict=True))
ROBERTA_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}

TOKENIZER_FILE, VOCAB_FILE, CONFIG_FILE = "tokenizer.json", "vocab.txt", "tokenizer_config.json"
#: RoBERTa's vocabulary files where a folder has no tokenizer.json.
BPE_VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


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


def _add_template(tokenizer: Tokenizer, cls: str = CLS, sep: str = SEP) -> None:
    """``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]``, segment 1 for ``B [SEP]``."""
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )


def _token_name(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string, or an
    ``AddedToken`` object with its ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _specials_of(settings: dict[str, Any], defaults: dict[str, str]) -> dict[str, str]:
    """Role -> token, as ``tokenizer_config.json`` names them, else ``defaults``."""
    return {
        role: _token_name(settings.get(f"{role}_token")) or default
        for role, default in defaults.items()
    }


def _prefix_space(pre_tokenizer: Any) -> bool:
    """Set ``add_prefix_space`` in every ByteLevel step of a serialised pre-tokenizer;
    whether there was one to set."""
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel" and not pre_tokenizer.get("add_prefix_space"):
        pre_tokenizer["add_prefix_space"] = True
        return True
    steps = pre_tokenizer.get("pretokenizers") or []
    return any([_prefix_space(step) for step in steps])


def _read_settings(path: Path) -> dict[str, Any]:
    """The ``tokenizer_config.json`` beside ``path`` (a file), or ``{}``."""
    file = path.parent / CONFIG_FILE
    if not file.is_file():
        return {}
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as cause:
        raise ValueError(f"{file}: not valid JSON ({cause})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(settings).__name__}")
    return settings


class WordPieceTokenizer:
    """Text <-> token ids of a BERT-family model. Build one with :meth:`from_pretrained`,
    :meth:`from_vocab` or :meth:`train`; the constructor wraps a ``tokenizers.Tokenizer``
    (WordPiece for BERT, byte-level BPE for RoBERTa, Unigram for XLM-RoBERTa) and checks
    that it has the five special tokens ``specials`` names (role -> token: ``pad``,
    ``unk``, ``cls``, ``sep``, ``mask``; default BERT's ``[PAD]`` ...).

    ``tokenizer_class``: what ``tokenizer_config.json`` records for ``transformers``
    (default ``BertTokenizer``).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        specials: dict[str, str] | None = None,
        *,
        tokenizer_class: str = "BertTokenizer",
    ) -> None:
        specials = dict(BERT_SPECIALS if specials is None else specials)
        if sorted(specials) != sorted(ROLES):
            raise ValueError(f"specials must name the roles {list(ROLES)}, got {sorted(specials)}")
        missing = [t for t in specials.values() if tokenizer.token_to_id(t) is None]
        if missing:
            family = "BERT's " if specials == BERT_SPECIALS else ""
            raise ValueError(f"the vocabulary lacks {family}special tokens {missing}")
        # A tokenizer.json may carry its own truncation and padding (all-MiniLM-L6-v2's
        # pads every input to 128): encode() sets both for each call instead.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if tokenizer.post_processor is None and isinstance(tokenizer.model, models.WordPiece):
            _add_template(tokenizer, specials["cls"], specials["sep"])
        elif tokenizer.post_processor is None:
            # RoBERTa's layout, the one the BPE and Unigram checkpoints were trained on.
            cls_token, sep_token = specials["cls"], specials["sep"]
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{cls_token} $A {sep_token}",
                pair=f"{cls_token} $A {sep_token} {sep_token} $B {sep_token}",
                special_tokens=[
                    (cls_token, tokenizer.token_to_id(cls_token)),
                    (sep_token, tokenizer.token_to_id(sep_token)),
                ],
            )
        self.tokenizer = tokenizer
        self.specials = specials
        self.tokenizer_class = tokenizer_class
        self._word_tokenizer: Tokenizer | None = None

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path) -> WordPieceTokenizer:
        """Load ``tokenizer.json`` or ``vocab.txt``: a file, or a checkpoint directory
        holding one (``tokenizer.json`` preferred: it records the normalizer).

        A ``tokenizer.json`` holds a WordPiece (BERT), BPE (RoBERTa) or Unigram
        (XLM-RoBERTa) model; the special tokens are those ``tokenizer_config.json``
        beside it names, else BERT's for WordPiece and RoBERTa's for the others."""
        path = Path(path)
        if path.is_dir():
            if (path / TOKENIZER_FILE).is_file():
                path = path / TOKENIZER_FILE
            elif (path / VOCAB_FILE).is_file():
                path = path / VOCAB_FILE
            elif (path / BPE_VOCAB_FILE).is_file() and (path / MERGES_FILE).is_file():
                return cls.from_bpe_files(path)
            else:
                raise FileNotFoundError(
                    f"no {TOKENIZER_FILE}, {VOCAB_FILE} or {BPE_VOCAB_FILE} and {MERGES_FILE} "
                    f"in {path}"
                )
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.suffix == ".json":
            tokenizer = Tokenizer.from_file(str(path))
            settings = _read_settings(path)
            if isinstance(tokenizer.model, models.WordPiece):
                defaults, default_class = BERT_SPECIALS, "BertTokenizer"
            elif isinstance(tokenizer.model, models.BPE):
                defaults, default_class = ROBERTA_SPECIALS, "RobertaTokenizer"
            elif isinstance(tokenizer.model, models.Unigram):
                defaults, default_class = ROBERTA_SPECIALS, "XLMRobertaTokenizer"
            else:
                raise ValueError(
                    f"{path} holds a {type(tokenizer.model).__name__} model, "
                    "not WordPiece, BPE or Unigram"
                )
            specials = _specials_of(settings, defaults)
            missing = [t for t in specials.values() if tokenizer.token_to_id(t) is None]
            if missing:
                raise ValueError(f"{path}: the vocabulary lacks the special tokens {missing}")
            name = settings.get("tokenizer_class")
            return cls(
                tokenizer,
                specials,
                tokenizer_class=name if isinstance(name, str) and name else default_class,
            )
        return cls.from_vocab(path)

    @classmethod
    def from_bpe_files(cls, directory: str | Path) -> WordPieceTokenizer:
        """RoBERTa's tokenizer from the ``vocab.json`` and ``merges.txt`` of a folder
        without ``tokenizer.json`` (older checkpoints): byte-level BPE, no space added
        before the text, ``<s> A </s>`` and ``<s> A </s></s> B </s>``; special tokens
        as ``tokenizer_config.json`` names them, else RoBERTa's."""
        directory = Path(directory)
        settings = _read_settings(directory / BPE_VOCAB_FILE)
        specials = _specials_of(settings, ROBERTA_SPECIALS)
        try:
            model = models.BPE.from_file(
                str(directory / BPE_VOCAB_FILE), str(directory / MERGES_FILE)
            )
        except Exception as error:  # the library's own message names no file
            raise ValueError(
                f"{directory}: {BPE_VOCAB_FILE} and {MERGES_FILE} are not a BPE vocabulary "
                f"({error})"
            ) from None
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens(
            [t for t in specials.values() if model.token_to_id(t) is not None]
        )
        missing = [t for t in specials.values() if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"{directory / BPE_VOCAB_FILE}: the vocabulary lacks the special tokens {missing}"
            )
        tokenizer.post_processor = processors.RobertaProcessing(
            (specials["sep"], tokenizer.token_to_id(specials["sep"])),
            (specials["cls"], tokenizer.token_to_id(specials["cls"])),
        )
        name = settings.get("tokenizer_class")
        return cls(
            tokenizer,
            specials,
            tokenizer_class=name if isinstance(name, str) and name else "RobertaTokenizer",
        )

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
        if not isinstance(self.tokenizer.model, models.WordPiece):
            # BPE and Unigram: tokenizer.json is the whole tokenizer; no vocab.txt.
            settings: dict[str, Any] = {"tokenizer_class": self.tokenizer_class}
            settings.update({f"{role}_token": token for role, token in self.specials.items()})
            # RoBERTa's <s>/</s> are also its bos/eos; transformers wants them named.
            settings.update(bos_token=self.specials["cls"], eos_token=self.specials["sep"])
            if model_max_length is not None:
                settings["model_max_length"] = model_max_length
            write_text_atomic(directory / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
            return
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

    @property
    def word_tokenizer(self) -> Tokenizer:
        """The tokenizer for text already split into words (``is_pretokenized=True``):
        this one, except that a byte-level BPE (RoBERTa) reads every word as if a space
        came before it, as it reads the words inside running text. Without the space the
        first-word pieces (``Hello`` rather than ``ĠHello``) would stand for every word;
        ``transformers`` asks for ``add_prefix_space=True`` for the same reason."""
        if self._word_tokenizer is None:
            spec = json.loads(self.tokenizer.to_str())
            self._word_tokenizer = (
                Tokenizer.from_str(json.dumps(spec))
                if _prefix_space(spec.get("pre_tokenizer"))
                else self.tokenizer
            )
        return self._word_tokenizer

    # -- the vocabulary ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the embedding table's rows), specials included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, role: str) -> int:
        token_id = self.tokenizer.token_to_id(self.specials[role])
        assert token_id is not None  # checked in __init__
        return token_id

    @property
    def pad_id(self) -> int:
        return self._id("pad")

    @property
    def unk_id(self) -> int:
        return self._id("unk")

    @property
    def cls_id(self) -> int:
        """``[CLS]`` (RoBERTa: ``<s>``), the first token of every input."""
        return self._id("cls")

    @property
    def sep_id(self) -> int:
        """``[SEP]`` (RoBERTa: ``</s>``), the last token of every input."""
        return self._id("sep")

    @property
    def mask_id(self) -> int:
        return self._id("mask")

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the five special tokens, sorted: never masked, never a random replacement."""
        return tuple(sorted({self._id(role) for role in ROLES}))

    def num_special_tokens(self, pair: bool = False) -> int:
        """How many special tokens an input gets: 2 for one sentence, 3 (BERT) or 4
        (RoBERTa's ``</s></s>`` between the two) for a pair."""
        return self.tokenizer.num_special_tokens_to_add(pair)

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
        if max_length is not None and max_length <= self.num_special_tokens(pairs is not None):
            raise ValueError(f"max_length ({max_length}) leaves no room beside [CLS] and [SEP]")
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer.enable_padding(
            pad_id=self.pad_id, pad_type_id=0, pad_token=self.specials["pad"]
        )
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
        kind = type(self.tokenizer.model).__name__
        return f"WordPieceTokenizer({kind}, vocab_size={self.vocab_size})"
