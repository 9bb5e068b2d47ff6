"""Subword tokenizer for translation: byte-pair encoding trained with Hugging Face ``tokenizers``.

BPE (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword Units")
starts from characters and repeatedly merges the most frequent adjacent pair, so frequent words
become one token and rare ones split into pieces the model has seen. The merges are learned by
the ``tokenizers`` library (Rust); this module only chooses its pieces and fixes the conventions
the model relies on.

Notation:
    ▁ (U+2581): marks "a space came before this piece", as in SentencePiece.
        "Heute gab es." -> ▁Heute ▁gab ▁es .
    ids: token ids. The special tokens have fixed ids, the same in every vocabulary:
        <pad>=0, <bos>=1, <eos>=2, <unk>=3.
    joint: one vocabulary for both languages (source and target share ids, so the embeddings
        can be tied); separate: one vocabulary per language, each of ``vocab_size``.

Choices, and why:
    - Normalizer NFC, not NFKC: NFC makes a decomposed "ü" (u + combining diaeresis, as typed on
      some systems) the same as the precomposed one and changes nothing else. NFKC would also
      rewrite "…" to "..." (62 sentence pairs of the corpus contain "…"), so the decoded output
      would differ from the reference that BLEU compares it with.
    - Pre-tokenizer Metaspace then Punctuation: spaces become ▁ (kept, so decoding is exact) and
      punctuation is cut off words, so the vocabulary is not spent on "Büro.", "Büro," and
      "Büro?" as three tokens. ByteLevel would also round-trip, but it shows "ü" as two
      symbols ("Ã¼"), which makes the tokens unreadable in the attention pictures.
    - An initial alphabet of the characters of ordinary German and English text, so even a
      tokenizer trained on a few sentences has no <unk> for "ß" or "„".

For text with single spaces and no leading or trailing space (what the corpus loader returns)
whose characters are in the vocabulary, ``decode(encode(text)) == text``; the tests check it.
A character never seen in training and not in the alphabet becomes <unk>, which ``decode``
drops like every special token.

Use::

    tok = TranslationTokenizer.train(corpus.train, vocab_size=8000, joint=True)
    src_ids = tok.source.encode("Heute gab es eine Szene.", add_eos=True)
    tok.save(run_dir)                         # run_dir/tokenizer.json
    tok = TranslationTokenizer.load(run_dir)
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from qkv.fileio import write_text_atomic

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # in id order: the trainer gives them ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# Characters that get a token even if the training text lacks them. ▁ is the space marker.
ALPHABET = tuple(
    dict.fromkeys(
        string.ascii_letters
        + string.digits
        + string.punctuation
        + "äöüÄÖÜßéèêàâçôëïñ"
        + "„“”‚‘’«»–—…€£°§½"
        + "▁"
    )
)

JOINT_FILE = "tokenizer.json"
SOURCE_FILE, TARGET_FILE = "tokenizer-source.json", "tokenizer-target.json"


class BPETokenizer:
    """One BPE vocabulary: text <-> token ids, with the special ids fixed (see module notation).

    Build one with :meth:`train` or :meth:`load`; the constructor wraps an existing
    ``tokenizers.Tokenizer`` and checks its special tokens.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected_id:
                raise ValueError(
                    f"special token {token} must have id {expected_id}, "
                    f"got {tokenizer.token_to_id(token)}"
                )
        # Text that spells a special token ("<eos>" typed by a user) is encoded as plain
        # characters, so only encode(add_eos=True) can end a sequence. Not saved in the JSON,
        # hence set on every construction.
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer

    @classmethod
    def train(
        cls, texts: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 2
    ) -> BPETokenizer:
        """Learn a vocabulary of at most ``vocab_size`` tokens (specials and alphabet included).

        Args:
            texts: training sentences (the train split only, so valid/test stay unseen).
            vocab_size: the largest vocabulary; a small corpus may run out of merges first.
            min_frequency: a pair seen fewer times than this is never merged.
        """
        smallest = len(SPECIAL_TOKENS) + len(ALPHABET)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size ({vocab_size}) must be at least {smallest}: "
                f"{len(SPECIAL_TOKENS)} special tokens + {len(ALPHABET)} alphabet characters"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
                pre_tokenizers.Punctuation(behavior="isolated"),
            ]
        )
        # The decoder joins the pieces and turns ▁ back into spaces, dropping the first one.
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=list(ALPHABET),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        logger.info("trained BPE: %d tokens (asked for %d)", tokenizer.get_vocab_size(), vocab_size)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """The number of token ids, specials included (the embedding table's row count)."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, with ``<bos>`` first and/or ``<eos>`` last if asked."""
        return self._wrap(
            self.tokenizer.encode(text, add_special_tokens=False).ids, add_bos, add_eos
        )

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """:meth:`encode` for many texts at once (in parallel threads in the Rust library)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encodings]

    @staticmethod
    def _wrap(ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        return [BOS_ID] * add_bos + ids + [EOS_ID] * add_eos

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (padding, bos, eos, unk) are dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """:meth:`decode` for many sequences."""
        return self.tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text`` as strings ("▁Heute", "▁gab", ...), for display."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def token_to_id(self, token: str) -> int | None:
        """The id of a token, or None if it is not in the vocabulary."""
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token of an id, or None if the id is out of range."""
        return self.tokenizer.id_to_token(token_id)

    def save(self, path: str | Path) -> Path:
        """Write the whole tokenizer (normalizer, merges, vocabulary) as one JSON file."""
        path = Path(path)
        # Atomic: a run killed mid-save keeps the old file or the new one, never half.
        write_text_atomic(path, self.to_json())
        return path

    def to_json(self) -> str:
        """The text :meth:`save` writes (what a run's identity hashes)."""
        return self.tokenizer.to_str(pretty=True)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class TranslationTokenizer:
    """The source and target tokenizers of a translation model (one object if joint)."""

    source: BPETokenizer
    target: BPETokenizer

    @property
    def joint(self) -> bool:
        """True when both languages share one vocabulary."""
        return self.source is self.target

    @classmethod
    def train(
        cls,
        pairs: Iterable[tuple[str, str]],
        *,
        vocab_size: int = 8000,
        joint: bool = True,
        min_frequency: int = 2,
    ) -> TranslationTokenizer:
        """Learn the vocabularies from (source, target) training pairs.

        Args:
            pairs: the train split (never valid or test).
            vocab_size: the size of the joint vocabulary, or of each one when separate.
            joint: one vocabulary for both sides, or one per side.
            min_frequency: see :meth:`BPETokenizer.train`.
        """
        pairs = list(pairs)
        if joint:
            texts = [text for pair in pairs for text in pair]
            shared = BPETokenizer.train(texts, vocab_size=vocab_size, min_frequency=min_frequency)
            return cls(source=shared, target=shared)
        return cls(
            source=BPETokenizer.train(
                [s for s, _ in pairs], vocab_size=vocab_size, min_frequency=min_frequency
            ),
            target=BPETokenizer.train(
                [t for _, t in pairs], vocab_size=vocab_size, min_frequency=min_frequency
            ),
        )

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``tokenizer.json`` (joint) or ``tokenizer-source.json`` and
        ``tokenizer-target.json`` (separate) into ``directory``; returns the paths written.

        Files of the other layout left in ``directory`` by an earlier save are removed, so
        :meth:`load` cannot pick up a stale vocabulary.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.joint:
            stale = [directory / SOURCE_FILE, directory / TARGET_FILE]
            written = [self.source.save(directory / JOINT_FILE)]
        else:
            stale = [directory / JOINT_FILE]
            written = [
                self.source.save(directory / SOURCE_FILE),
                self.target.save(directory / TARGET_FILE),
            ]
        for path in stale:
            path.unlink(missing_ok=True)
        return written

    @classmethod
    def load(cls, directory: str | Path) -> TranslationTokenizer:
        """Read what :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        if (directory / JOINT_FILE).is_file():
            shared = BPETokenizer.load(directory / JOINT_FILE)
            return cls(source=shared, target=shared)
        if (directory / SOURCE_FILE).is_file() and (directory / TARGET_FILE).is_file():
            return cls(
                source=BPETokenizer.load(directory / SOURCE_FILE),
                target=BPETokenizer.load(directory / TARGET_FILE),
            )
        raise FileNotFoundError(
            f"no tokenizer in {directory}: expected {JOINT_FILE} (joint vocabulary) or both "
            f"{SOURCE_FILE} and {TARGET_FILE} (separate vocabularies)"
        )
