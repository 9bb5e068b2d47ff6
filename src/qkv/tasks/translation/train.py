"""Train a translator: the Ding dictionary's sentence pairs (:mod:`qkv.data.translation`)
or the user's own parallel corpus (:mod:`qkv.data.parallel`), a joint BPE vocabulary
trained on the training split (:mod:`qkv.data.bpe`), batches grouped by length
(:mod:`qkv.data.batching`), the shared training engine (:mod:`qkv.train`), validation
loss and greedy BLEU while training.

A user's corpus is streamed, never held as Python text: one pass trains the BPE
vocabulary, one more tokenises it into compact id arrays (:class:`EncodedPairs`), and the
batches of each epoch are padded from those arrays only when the engine asks for them.

A run directory (:mod:`qkv.train.rundir`: locked, never overwritten by accident) holds
``run.json`` (what defines the run: the recipe, the languages, the data files with their
sizes and SHA-256), ``tokenizer.json``, ``checkpoints/step-*/`` (weights, the model
configuration, the recipe, the languages and where the data came from), ``metrics.csv``
and ``loss_curves.png``.

Fine-tuning a Marian (OPUS-MT) folder (``start_from``): the folder's model and
SentencePiece tokenizer replace the recipe's model and the BPE training (the recipe
still gives the optimiser, the steps and the batches); the run directory holds the
tokenizer's files (``source.spm``, ``target.spm``, ``vocab.json``) instead of
``tokenizer.json``, and :func:`qkv.convert.marian.save_pretrained` writes the result
back as a Marian folder.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qkv.data.alternatives import expand_pairs
from qkv.data.batching import Seq2SeqBatch, token_batches
from qkv.data.bpe import BOS_ID, EOS_ID, PAD_ID, UNK_ID, BPETokenizer, TranslationTokenizer
from qkv.data.parallel import (
    EncodedPairs,
    EncodedPairsBuilder,
    ParallelData,
    ParallelFile,
    SkippedLines,
)
from qkv.data.sentencepiece import SentencePieceTokenizer
from qkv.data.translation import Direction, load_translation
from qkv.models.transformer import Transformer
from qkv.tasks.translation.presets import PRESETS, TranslationPreset
from qkv.tasks.translation.translator import FAMILY, Translator, load_run_tokenizer, score
from qkv.train import Trainer, TrainResult
from qkv.train.checkpoint import list_checkpoints
from qkv.train.losses import seq2seq_loss
from qkv.train.rundir import IDENTITY_FILE, RunDirError, check_run_dir, open_run_dir

__all__ = [
    "EpochBatches",
    "encode_pairs",
    "epoch_batches",
    "tokenizer_sha256",
    "train_translator",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
Tokenizer = TranslationTokenizer | SentencePieceTokenizer
#: (pad, bos, eos) of qkv's BPE vocabularies; a Marian model has its own.
BPE_IDS = (PAD_ID, BOS_ID, EOS_ID)

# Pairs tokenised per call of the Rust tokenizer: large enough for its threads, small
# enough that the chunk's Python lists stay a few megabytes.
_CHUNK = 8192


class _PairEncoder:
    """Tokenises pairs chunk by chunk into an :class:`EncodedPairs`; pairs with an empty
    side or longer than ``max_len`` (with the tokens collation adds) are left out."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len
        self.builder = EncodedPairsBuilder(
            max(tokenizer.source.vocab_size, tokenizer.target.vocab_size)
        )
        self.pending: list[Pair] = []
        self.dropped = 0

    def add(self, pair: Pair) -> None:
        self.pending.append(pair)
        if len(self.pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        sources = self.tokenizer.source.encode_batch([s for s, _ in self.pending])
        targets = self.tokenizer.target.encode_batch([t for _, t in self.pending])
        self.pending = []
        # +1 for the eos (source) or bos/eos (target) that collation adds.
        keep = [
            i
            for i, (s, t) in enumerate(zip(sources, targets, strict=True))
            if 0 < len(s) + 1 <= self.max_len and 0 < len(t) + 1 <= self.max_len
        ]
        self.dropped += len(sources) - len(keep)
        self.builder.add([sources[i] for i in keep], [targets[i] for i in keep])

    def finish(self, what: str = "pairs") -> EncodedPairs:
        self._flush()
        if self.dropped:
            logger.info(
                "%s: left out %d pairs with an empty side or longer than %d tokens",
                what,
                self.dropped,
                self.max_len - 1,
            )
        return self.builder.build()


def encode_pairs(pairs: Iterable[Pair], tokenizer: Tokenizer, max_len: int) -> EncodedPairs:
    """Token ids of each (source, target) pair, in compact arrays; pairs with an empty
    side or longer than ``max_len`` (with the tokens collation adds) are left out.
    ``pairs`` is read once, chunk by chunk, so it may be a generator over a large file."""
    encoder = _PairEncoder(tokenizer, max_len)
    for pair in pairs:
        encoder.add(pair)
    return encoder.finish()


def collate_encoded(
    encoded: EncodedPairs, indices: Sequence[int], special_ids: tuple[int, int, int] = BPE_IDS
) -> Seq2SeqBatch:
    """The :class:`Seq2SeqBatch` of pairs ``indices`` (what
    :func:`qkv.data.batching.collate_pairs` makes of the same ids), padded from the arrays
    directly. ``special_ids``: the model's (pad, bos, eos). Shapes: src ``(b, longest
    source + 1)``, tgt_in/tgt_out ``(b, longest target + 1)``."""
    pad_id, bos_id, eos_id = special_ids
    if len(indices) == 0:
        raise ValueError("a batch needs at least one pair")
    rows = np.asarray(indices, dtype=np.int64)
    b, every = len(rows), np.arange(len(rows))
    padded = []
    for ids, offsets in (
        (encoded.source_ids, encoded.source_offsets),
        (encoded.target_ids, encoded.target_offsets),
    ):
        starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
        columns = np.arange(int(lengths.max()))
        inside = columns[None, :] < lengths[:, None]  # (b, longest): a row's own ids
        positions = (starts[:, None] + columns[None, :])[inside]
        padded.append((ids[positions].astype(np.int64), inside, lengths))
    (src_ids, src_inside, src_len), (tgt_ids, tgt_inside, tgt_len) = padded
    src = np.full((b, src_inside.shape[1] + 1), pad_id, dtype=np.int64)
    src[:, :-1][src_inside] = src_ids
    src[every, src_len] = eos_id
    tgt_in = np.full((b, tgt_inside.shape[1] + 1), pad_id, dtype=np.int64)
    tgt_in[:, 0] = bos_id
    tgt_in[:, 1:][tgt_inside] = tgt_ids
    tgt_out = np.full_like(tgt_in, pad_id)
    tgt_out[:, :-1][tgt_inside] = tgt_ids
    tgt_out[every, tgt_len] = eos_id
    return Seq2SeqBatch(
        torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), pad_id
    )


class EpochBatches(Sequence[Seq2SeqBatch]):
    """The batches of one epoch, padded only when read (a whole epoch of padded tensors
    would take far more memory than the ids)."""

    def __init__(
        self, encoded: EncodedPairs, groups: list[list[int]], ids: tuple[int, int, int] = BPE_IDS
    ) -> None:
        self.encoded, self.groups, self.ids = encoded, groups, ids

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [collate_encoded(self.encoded, g, self.ids) for g in self.groups[index]]
        return collate_encoded(self.encoded, self.groups[index], self.ids)

    def __iter__(self) -> Iterator[Seq2SeqBatch]:
        for group in self.groups:
            yield collate_encoded(self.encoded, group, self.ids)


def epoch_batches(
    encoded: EncodedPairs, max_tokens: int, seed: int, ids: tuple[int, int, int] = BPE_IDS
) -> Callable[[int], EpochBatches]:
    """The engine's ``batches(epoch)``: pairs grouped by length into batches of at most
    ``max_tokens`` tokens, padding included, in an order fixed by (seed, epoch).
    ``ids``: the model's (pad, bos, eos)."""
    longest = np.maximum(encoded.source_lengths(), encoded.target_lengths()) + 1
    lengths = longest.tolist()

    def batches(epoch: int) -> EpochBatches:
        groups = token_batches(lengths, max_tokens, seed=seed, epoch=epoch)
        return EpochBatches(encoded, groups, ids)

    return batches


@torch.inference_mode()
def _valid_loss(model: nn.Module, batches: Iterable[Seq2SeqBatch], device: torch.device) -> float:
    total, count = 0.0, 0
    for batch in batches:
        loss, n = seq2seq_loss(model, batch.to(device), label_smoothing=0.0)
        total, count = total + float(loss), count + int(n)
    return total / max(count, 1)


@dataclass
class _Data:
    """What training needs of a corpus, read and checked before the run directory opens."""

    train: EncodedPairs
    valid: EncodedPairs
    bleu_set: list[Pair]  # the first valid pairs, as text, for BLEU while training
    direction: str
    src_lang: str
    tgt_lang: str
    record: dict[str, Any]  # where the data came from (checkpoint meta; eval finds the test)
    identity: dict[str, Any]  # the run.json fields of the data


def train_translator(
    run_dir: str | Path,
    preset: str | TranslationPreset = "small",
    *,
    direction: Direction = "de-en",
    data_path: str | Path | None = None,
    data: ParallelData | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    limit: int | None = None,
    vocab_size: int | None = None,
    bleu_sentences: int = 200,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    start_from: str | Path | None = None,
    compile: bool = False,
    checkpoint_activations: bool = False,
    back_translated: str | Path | None = None,
) -> TrainResult:
    """Train a translator into ``run_dir``.

    The data: the Ding dictionary (``data_path``, default the Debian file, in
    ``direction``), or the user's own corpus (``data``; its languages and files are
    recorded in the run). ``limit`` keeps only that many sentence pairs (tests).
    ``vocab_size`` overrides the recipe's joint BPE vocabulary size.

    Validation every ``train.eval_every`` steps: loss on the whole valid split and
    BLEU (greedy) on its first ``bleu_sentences`` sentences. With ``resume`` the tokenizer
    and the training state come from ``run_dir`` (a changed data file is refused);
    ``overwrite`` replaces a run already there (without either, such a folder is refused:
    :mod:`qkv.train.rundir`).

    ``start_from``: a Hugging Face Marian folder to fine-tune (its model and tokenizer;
    ``vocab_size`` does not apply). The recipe gives the training settings only.

    ``back_translated``: a TSV of synthetic pairs (a machine translation of real
    target-language text into the source language, next to that text: see
    :func:`qkv.tasks.translation.backtranslate.back_translate`) added to the training
    pairs, each source prefixed with the recipe's ``back_translation_tag``; recorded in
    the run (path, size, SHA-256) like a corpus file. The BPE vocabulary is trained on
    the real pairs only.

    ``compile`` trains through ``torch.compile``; ``checkpoint_activations`` recomputes
    each layer's activations in the backward pass (:class:`qkv.train.Trainer`).

    The options, the corpus and the tokenizer are settled before ``run_dir`` is touched.
    """
    recipe = PRESETS[preset] if isinstance(preset, str) else preset
    recipe = recipe.override({"train.seed": seed})
    if max_steps is not None:
        recipe = recipe.override({"train.max_steps": max_steps})
    if vocab_size is not None:
        recipe = recipe.override(
            {"model.src_vocab_size": vocab_size, "model.tgt_vocab_size": vocab_size}
        )
    if data is not None and data_path is not None:
        raise ValueError("pass the dictionary (data_path) or your own corpus (data), not both")
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    start = None
    if start_from is not None:
        if vocab_size is not None:
            raise ValueError("vocab_size: a Marian model brings its own vocabulary (start_from)")
        start = _start_from(start_from)
        recipe = replace(recipe, model=start.model.config)
    max_len = recipe.model.max_len
    synthetic = None if back_translated is None else ParallelFile.tsv_file(back_translated)
    if synthetic is not None:
        synthetic.check("back-translated pairs file")
    if data is None:
        corpus = load_translation(
            data_path, direction=direction, include_phrases=recipe.include_phrases, limit=limit
        )
        tokenizer = _tokenizer(
            run_dir,
            lambda: expand_pairs(corpus.train, recipe.alternatives),
            recipe.vocab_size,
            resume=resume,
            start=start,
        )
        real = expand_pairs(corpus.train, recipe.alternatives)
        prepared = _Data(
            train=encode_pairs(
                itertools.chain(real, _tagged(synthetic, recipe.back_translation_tag)),
                tokenizer,
                max_len,
            ),
            valid=encode_pairs(corpus.valid, tokenizer, max_len),
            bleu_set=list(corpus.valid[:bleu_sentences]),
            direction=direction,
            src_lang=direction.split("-")[0],
            tgt_lang=direction.split("-")[1],
            record={
                "kind": "dictionary",
                "path": str(corpus.path.absolute()),
                "limit": limit,
            },
            # As before own corpora existed, so earlier runs still resume.
            identity={
                "direction": direction,
                "data": {"path": str(data_path) if data_path is not None else None,
                         "limit": limit},
            },
        )  # fmt: skip
    else:
        if limit is not None:
            data = data.with_limit(limit)
        data.check()
        own = data
        tokenizer = _tokenizer(
            run_dir,
            lambda: expand_pairs(
                (p for split, p in own.train_file_pairs() if split == "train"),
                recipe.alternatives,
            ),
            recipe.vocab_size,
            resume=resume,
            start=start,
        )
        prepared = _read_own(data, tokenizer, max_len, bleu_sentences, recipe, synthetic)
    if len(prepared.train) == 0:
        raise ValueError("no training pairs left once tokenised (all empty or too long)")
    if len(prepared.valid) == 0 or not prepared.bleu_set:
        # The loss and BLEU of nothing are undefined: refused, not reported as numbers.
        fix = "give more pairs" if limit is None else f"--limit {limit} is too small"
        raise ValueError(f"no validation pairs (the split left none once tokenised): {fix}")
    identity = {
        "task": "translation",
        **_recipe_identity(recipe),
        **prepared.identity,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
    }
    if synthetic is not None:
        identity["back_translated"] = synthetic.record()
        prepared.record["back_translated"] = identity["back_translated"]
    if start is not None:
        identity["start_from"] = str(Path(start_from).absolute())  # type: ignore[arg-type]
    with open_run_dir(
        run_dir,
        resume=resume,
        overwrite=overwrite,
        identity=identity,
        create=tokenizer.save,  # tokenizer.json first, then run.json
    ):
        return _train(run_dir, recipe, prepared, tokenizer, resume=resume, device=device,
                      seed=seed, progress=progress,
                      model=None if start is None else start.model, compile=compile,
                      checkpoint_activations=checkpoint_activations)  # fmt: skip


def _loss_fn(
    recipe: TranslationPreset, unk_id: int
) -> Callable[[nn.Module, Seq2SeqBatch], tuple[torch.Tensor, torch.Tensor]]:
    """The training loss: label-smoothed cross-entropy, after word dropout when the
    recipe asks for it."""
    p = recipe.word_dropout

    def loss(model: nn.Module, batch: Seq2SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if p > 0:
            batch = word_dropout(batch, p, unk_id)
        return seq2seq_loss(model, batch, label_smoothing=recipe.label_smoothing)

    return loss


def word_dropout(batch: Seq2SeqBatch, p: float, unk_id: int) -> Seq2SeqBatch:
    """``batch`` with each real source token (not padding, not ``<eos>``) and each decoder
    input token after ``<bos>`` replaced by ``unk_id`` with probability ``p``; the labels
    (``tgt_out``) unchanged. The model must then guess a word from its context, which
    regularises both the encoder and the decoder's reliance on the previous word."""
    eos = batch.src.gather(1, (batch.src != batch.pad_id).sum(1, keepdim=True) - 1)
    src_real = (batch.src != batch.pad_id) & (batch.src != eos)
    tgt_real = batch.tgt_in != batch.pad_id
    tgt_real[:, 0] = False  # <bos>
    src_drop = src_real & (torch.rand(batch.src.shape, device=batch.src.device) < p)
    tgt_drop = tgt_real & (torch.rand(batch.tgt_in.shape, device=batch.tgt_in.device) < p)
    return replace(
        batch,
        src=batch.src.masked_fill(src_drop, unk_id),
        tgt_in=batch.tgt_in.masked_fill(tgt_drop, unk_id),
    )


class _Start:
    """A Marian folder to fine-tune: its model (in training mode) and tokenizer."""

    def __init__(self, folder: str | Path) -> None:
        from qkv.convert.marian import from_pretrained

        self.folder = Path(folder)
        self.model, self.tokenizer, self.src_lang, self.tgt_lang = from_pretrained(folder)
        self.model.train()


def _start_from(folder: str | Path) -> _Start:
    """Read a Marian folder to fine-tune; a clear error when it is not one."""
    from qkv.families import identify

    found = identify(folder, expect="translator")
    if not found.hugging_face:
        raise ValueError(
            f"{folder}: start_from takes a Hugging Face Marian folder; to go on training "
            "a qkv run, resume it"
        )
    return _Start(found.path)


def _recipe_identity(recipe: TranslationPreset) -> dict[str, Any]:
    """The recipe's fields as a run's identity. The fields added after runs already
    existed are left out while at their defaults, so those runs still resume."""
    values = recipe.to_dict()
    defaults = TranslationPreset.__dataclass_fields__
    for name in _LATER_FIELDS:
        if values[name] == defaults[name].default:
            del values[name]
    return values


# Recipe fields added after the first runs were written (see _recipe_identity).
_LATER_FIELDS = ("alternatives", "word_dropout", "back_translation_tag")


def _tagged(synthetic: ParallelFile | None, tag: str) -> Iterator[Pair]:
    """The back-translated pairs, each source behind ``tag`` (none when ``tag`` is "")."""
    if synthetic is None:
        return
    for source, target in synthetic.pairs():
        yield (f"{tag} {source}" if tag else source), target


def _read_own(
    data: ParallelData,
    tokenizer: Tokenizer,
    max_len: int,
    bleu_sentences: int,
    recipe: TranslationPreset,
    synthetic: ParallelFile | None,
) -> _Data:
    """One pass over the train file (and the valid and test files when given): token ids
    of train and valid, the BLEU sentences, every line checked, bad lines counted; the
    training targets' alternatives as the recipe says, the back-translated pairs after."""
    record = data.record()  # the files' sizes and hashes, before reading them
    skipped = SkippedLines()
    train, valid = _PairEncoder(tokenizer, max_len), _PairEncoder(tokenizer, max_len)
    bleu_set: list[Pair] = []
    counts = {"train": 0, "valid": 0, "test": 0}
    for split, pair in data.train_file_pairs(skipped):
        counts[split] += 1
        if split == "train":
            for expanded in expand_pairs([pair], recipe.alternatives):
                train.add(expanded)
        elif split == "valid":
            valid.add(pair)
            if len(bleu_set) < bleu_sentences:
                bleu_set.append(pair)
    if data.valid is not None:
        for pair in data.pairs("valid", skipped):
            counts["valid"] += 1
            valid.add(pair)
            if len(bleu_set) < bleu_sentences:
                bleu_set.append(pair)
    for pair in _tagged(synthetic, recipe.back_translation_tag):
        train.add(pair)
    if data.test is not None:  # read now so that a bad line stops the run before it starts
        counts["test"] = sum(1 for _ in data.pairs("test", skipped))
    skipped.log()
    for split in ("train", "valid", "test"):
        if counts[split] == 0:
            raise ValueError(
                f"{data.train.name}: the hash split left no {split} pairs "
                f"(of {sum(counts.values())}); pass --{split} FILE or use more data"
            )
    logger.info(
        "%s: %d train, %d valid, %d test pairs%s",
        data.train.name,
        counts["train"],
        counts["valid"],
        counts["test"],
        f" ({skipped.total} bad lines skipped)" if skipped.total else "",
    )
    identity = {
        "direction": data.direction,
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "data": record,
    }
    return _Data(
        train=train.finish("train"),
        valid=valid.finish("valid"),
        bleu_set=bleu_set,
        direction=data.direction,
        src_lang=data.src_lang,
        tgt_lang=data.tgt_lang,
        record=record,
        identity=identity,
    )


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer file(s) :meth:`TranslationTokenizer.save` writes (of the
    models and vocabularies of a SentencePiece one)."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.sha256()
    parts = [tokenizer.source] if tokenizer.joint else [tokenizer.source, tokenizer.target]
    return hashlib.sha256("".join(p.to_json() for p in parts).encode()).hexdigest()


def _tokenizer(
    run_dir: Path,
    pairs: Callable[[], Iterable[Pair]],
    vocab_size: int,
    *,
    resume: bool,
    start: _Start | None = None,
) -> Tokenizer:
    """The run's tokenizer when resuming one; else the Marian folder's (``start``); else a
    joint one trained on ``pairs()`` (in memory: the run directory writes it), streamed.
    A resumed run whose tokenizer is gone is an error, never a new vocabulary under old
    weights."""
    if resume:
        try:
            return load_run_tokenizer(run_dir)
        except FileNotFoundError:
            if (run_dir / IDENTITY_FILE).is_file() or list_checkpoints(run_dir):
                raise RunDirError(
                    f"{run_dir} holds a run without its tokenizer.json; it cannot be resumed "
                    "(pass --overwrite to train a new run there)"
                ) from None
    if start is not None:
        return start.tokenizer
    # Source and target sentences in turn, as TranslationTokenizer.train reads them, but
    # streamed: the trainer counts words as it goes and never needs the list.
    texts = (text for pair in pairs() for text in pair)
    shared = BPETokenizer.train(texts, vocab_size=vocab_size)
    return TranslationTokenizer(source=shared, target=shared)


def _train(
    run_dir: Path,
    recipe: TranslationPreset,
    data: _Data,
    tokenizer: Tokenizer,
    *,
    resume: bool,
    device: str | None,
    seed: int,
    progress: bool | None,
    model: Transformer | None = None,
    **speed: bool,
) -> TrainResult:
    """Build the model (or take ``model``, a Marian one to fine-tune) and train it (the
    run directory is open)."""
    torch.manual_seed(seed)
    if model is None:
        vocab_size = tokenizer.source.vocab_size
        config = replace(recipe.model, src_vocab_size=vocab_size, tgt_vocab_size=vocab_size)
        model = Transformer(config)
    config = model.config
    ids = (config.pad_id, config.bos_id, config.eos_id)
    valid_batches = list(epoch_batches(data.valid, recipe.max_tokens, seed, ids)(0))
    bleu_set = data.bleu_set
    translator = Translator(
        model,
        tokenizer,
        data.direction,
        src_lang=data.src_lang,
        tgt_lang=data.tgt_lang,
        search="hugging_face" if isinstance(tokenizer, SentencePieceTokenizer) else "gnmt",
    )

    def evaluate(_: nn.Module) -> dict[str, float]:
        loss = _valid_loss(model, valid_batches, translator.device)
        hypotheses = translator.translate([s for s, _ in bleu_set], beam_size=1)
        bleu = score(hypotheses, [t for _, t in bleu_set])["bleu"]
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": bleu}

    trainer = Trainer(
        model,
        recipe.train,
        run_dir,
        batches=epoch_batches(data.train, recipe.max_tokens, seed, ids),
        loss_fn=_loss_fn(
            recipe,
            tokenizer.source.unk_id if isinstance(tokenizer, SentencePieceTokenizer) else UNK_ID,
        ),
        evaluate=evaluate,
        meta={
            "family": FAMILY,
            "model_config": config.to_dict(),
            "preset": recipe.to_dict(),
            "direction": data.direction,
            "src_lang": data.src_lang,
            "tgt_lang": data.tgt_lang,
            "data": data.record,
        },
        device=device,
        progress=progress,
        **speed,
    )
    return trainer.fit(resume=resume)
