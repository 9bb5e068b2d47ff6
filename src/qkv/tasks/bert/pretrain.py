"""Step 1 of transfer learning (docs/concepts.md#transfer-learning): pretrain a BERT
with masked-language modelling.

The Wikipedia extracts and BBC articles (:mod:`qkv.data.text`) are packed into full
sequences and masked 15% / 80-10-10 (:mod:`qkv.data.mlm`, section 3.1 of the BERT paper),
freshly every epoch; the shared engine (:mod:`qkv.train`) trains; a fixed, pre-masked
held-out set scores MLM loss and masked-token accuracy along the way.

Notation: b batch size, L sequence length, V vocabulary size, n masked positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from qkv.convert.bert import save_pretrained
from qkv.data.mlm import MLMBatch, MLMCollator, pack_sequences
from qkv.data.text import load_mlm_text
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.fileio import write_json_atomic
from qkv.losses import summed
from qkv.models.bert import BertConfig, BertForMaskedLM
from qkv.tasks.bert.common import (
    MODEL_DIR,
    check_batch_shape,
    checkpoint_dir,
    epoch_order,
    model_device,
)
from qkv.train import TrainConfig, Trainer
from qkv.train.checkpoint import list_checkpoints
from qkv.train.optim import parameter_groups
from qkv.train.recipe import Recipe
from qkv.train.rundir import IDENTITY_FILE, RunDirError, check_run_dir, open_run_dir

__all__ = ["PretrainRecipe", "PretrainReport", "evaluate_mlm", "mlm_loss", "pretrain"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainRecipe(Recipe[BertConfig]):
    """How to pretrain (:class:`~qkv.train.recipe.Recipe`): ``model`` a
    :class:`BertConfig` whose ``vocab_size`` is the size the WordPiece vocabulary is
    trained to (the trained vocabulary's real size replaces it), ``train`` the
    engine's settings, and the batches' shape. :meth:`create` builds one from a few
    numbers."""

    batch_size: int = 32  # sequences of max_length packed tokens
    max_length: int = 128
    eval_sequences: int = 256  # held-out sequences, masked once with a fixed seed

    # model.vocab_size stays settable: the size the new vocabulary is trained to.
    derived: ClassVar[Mapping[str, str]] = {
        "train.seed": "the seed (--seed)",
        "model.pad_id": "the vocabulary",
    }

    def __post_init__(self) -> None:
        check_batch_shape(self.batch_size, self.max_length)
        if self.eval_sequences < 1:
            raise ValueError(f"eval_sequences must be >= 1, got {self.eval_sequences}")

    @classmethod
    def create(
        cls,
        preset: str = "mini",
        *,
        vocab_size: int = 8192,
        max_steps: int = 2000,
        batch_size: int = 32,
        max_length: int = 128,
        lr: float = 5e-4,
        warmup_steps: int | None = None,
        eval_every: int = 200,
        eval_sequences: int = 256,
    ) -> PretrainRecipe:
        """A :class:`BertConfig` preset (``tiny``, ``mini``, ``small``, ``base``) without
        attention dropout (it keeps the fused kernel while training) and BERT's
        optimisation: AdamW (β = 0.9, 0.999, ε = 1e-6, weight decay 0.01 off biases and
        norms), linear warm-up (default 10% of the steps) then cosine decay to zero,
        gradient clipping at 1; held-out scores every ``eval_every`` steps (0: at the
        end only), a checkpoint with each."""
        warmup = warmup_steps if warmup_steps is not None else max_steps // 10
        train = TrainConfig(
            max_steps=max_steps,
            lr=lr,
            betas=(0.9, 0.999),
            eps=1e-6,
            weight_decay=0.01,
            schedule="cosine",
            warmup_steps=max(1, warmup),
            eval_every=eval_every,
            checkpoint_every=eval_every if eval_every > 0 else max_steps,
            keep_checkpoints=1,
            log_every=min(10, max_steps),
        )
        model = BertConfig.preset(preset, vocab_size=vocab_size, attention_dropout=0.0)
        return cls(preset, model, train, batch_size, max_length, eval_sequences)


@dataclass
class PretrainReport:
    """Held-out MLM loss and masked-token accuracy before and after, and where the model is."""

    model_dir: Path
    initial: dict[str, float]
    final: dict[str, float]
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def mlm_loss(model: nn.Module, batch: MLMBatch) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the masked positions, and their number ``n``."""
    return summed(
        model(
            batch.input_ids,
            batch.attention_mask,
            labels=batch.labels,
            masked_positions=batch.masked_positions,
        )
    )


@torch.inference_mode()
def evaluate_mlm(model: nn.Module, batches: Sequence[MLMBatch]) -> dict[str, float]:
    """Mean MLM loss and accuracy over every masked position of fixed, pre-masked batches."""
    device, total, correct, count = model_device(model), 0.0, 0, 0
    for batch in batches:
        batch = batch.to(device)
        out = model(
            batch.input_ids,
            batch.attention_mask,
            labels=batch.labels,
            masked_positions=batch.masked_positions,
        )
        loss_sum, n = summed(out)
        targets = batch.labels[batch.masked_positions]  # (n,)
        total += float(loss_sum)
        correct += int((out.logits.argmax(-1) == targets).sum())  # out.logits (n, V)
        count += int(n)
    return {"mlm_loss": total / max(count, 1), "mlm_accuracy": correct / max(count, 1)}


def _held_out_batches(
    sequences: list[list[int]], collate: MLMCollator, recipe: PretrainRecipe
) -> list[MLMBatch]:
    """Evenly spaced held-out sequences (the held-out text is Wikipedia, then BBC News),
    masked once, so every evaluation scores the same predictions."""
    stride = max(1, len(sequences) // max(recipe.eval_sequences, 1))
    chosen = sequences[::stride][: recipe.eval_sequences]
    generator = torch.Generator().manual_seed(12345)
    size = recipe.batch_size
    return [collate(chosen[i : i + size], generator) for i in range(0, len(chosen), size)]


def pretrain(
    run_dir: str | Path,
    recipe: PretrainRecipe | None = None,
    *,
    tokenizer: str | Path | None = None,
    max_documents: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
    compile: bool = False,
    checkpoint_activations: bool = False,
) -> PretrainReport:
    """Pretrain a BERT from scratch on the masked-LM task into ``run_dir``.

    Args:
        recipe: the model, its optimisation and the batches, :class:`PretrainRecipe`
            (default: :meth:`PretrainRecipe.create`'s)
            (``recipe.override({"model.num_layers": 2})`` changes one field).
        tokenizer: a checkpoint folder or tokenizer file to take the vocabulary from;
            default: train a WordPiece vocabulary on the train text.
        max_documents: use only that many train and held-out documents (tests).
        resume: continue from the last checkpoint in ``run_dir``, with its vocabulary.
        overwrite: replace a run already in ``run_dir`` (without ``resume`` or this, such
            a folder is refused: :mod:`qkv.train.rundir`).
        compile, checkpoint_activations: train through ``torch.compile``; recompute
            each layer's activations in the backward pass (:class:`qkv.train.Trainer`).

    The engine's checkpoints and ``metrics.csv`` go to ``run_dir``; the model, Hugging
    Face format with its tokenizer, to ``run_dir/model`` when training ends; the held-out
    figures before and after (``metrics.csv`` has the ones between) to
    ``run_dir/results.json``. The options, the text and the vocabulary are settled
    before ``run_dir`` is touched.
    """
    recipe = recipe or PretrainRecipe.create()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # before the data are read
    text = load_mlm_text()
    train_docs, held_out_docs = text.train[:max_documents], text.held_out[:max_documents]
    logger.info("pretraining on %d documents, %d held out", len(train_docs), len(held_out_docs))
    tok = _tokenizer(run_dir, train_docs, recipe, tokenizer, resume=resume)

    def packed(docs: Sequence[str]) -> list[list[int]]:
        ids = tok.encode_ids(docs)
        return pack_sequences(ids, recipe.max_length, cls_id=tok.cls_id, sep_id=tok.sep_id)

    train_seqs = packed(train_docs)
    if len(train_seqs) < recipe.batch_size:
        raise ValueError(f"{len(train_seqs)} train sequences for batch_size {recipe.batch_size}")
    logger.info("%d train sequences of %d tokens", len(train_seqs), recipe.max_length)
    collate = MLMCollator.from_tokenizer(tok)
    eval_batches = _held_out_batches(packed(held_out_docs), collate, recipe)

    def batches(epoch: int) -> Iterator[MLMBatch]:
        # Masks drawn afresh every epoch (RoBERTa's dynamic masking), from (seed, epoch).
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order, size = epoch_order(len(train_seqs), seed, epoch), recipe.batch_size
        for i in range(0, len(order) - size + 1, size):  # full batches only
            yield collate([train_seqs[j] for j in order[i : i + size]], generator)

    identity = {
        "task": "bert-pretrain",
        **recipe.to_dict(),
        "seed": seed,
        "data": {"max_documents": max_documents},
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
    }

    def create(path: Path) -> None:  # the vocabulary first: a resume reads it back
        tok.save(path / MODEL_DIR, model_max_length=recipe.max_length)

    with open_run_dir(run_dir, resume=resume, overwrite=overwrite, identity=identity,
                      create=create):  # fmt: skip
        return _pretrain(run_dir, recipe, tok, batches, eval_batches, resume=resume,
                         seed=seed, device=device, progress=progress, compile=compile,
                         checkpoint_activations=checkpoint_activations)  # fmt: skip


def _tokenizer(
    run_dir: Path,
    docs: Sequence[str],
    recipe: PretrainRecipe,
    source: str | Path | None,
    *,
    resume: bool,
) -> WordPieceTokenizer:
    """The run's vocabulary when resuming one (a missing one is an error, never a new
    vocabulary under old weights); else ``source``'s, or one trained on ``docs``."""
    model_dir = run_dir / MODEL_DIR
    if resume and (model_dir / "tokenizer.json").is_file():
        return WordPieceTokenizer.from_pretrained(model_dir)
    if resume and ((run_dir / IDENTITY_FILE).is_file() or list_checkpoints(run_dir)):
        raise RunDirError(
            f"{run_dir} holds a run without its {MODEL_DIR}/tokenizer.json; it cannot be "
            "resumed (pass --overwrite to train a new run there)"
        )
    if source is not None:
        return WordPieceTokenizer.from_pretrained(checkpoint_dir(source))
    return WordPieceTokenizer.train(docs, vocab_size=recipe.model.vocab_size)


def _pretrain(
    run_dir: Path,
    recipe: PretrainRecipe,
    tok: WordPieceTokenizer,
    batches: Callable[[int], Iterator[MLMBatch]],
    eval_batches: list[MLMBatch],
    *,
    resume: bool,
    seed: int,
    device: str | None,
    progress: bool | None,
    **speed: bool,
) -> PretrainReport:
    """Build the model, train, save it and the held-out figures (the run directory is open)."""
    model_dir = run_dir / MODEL_DIR
    config = replace(recipe.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    logger.info("BERT %s: %d parameters", recipe.name, sum(p.numel() for p in model.parameters()))
    initial = {} if resume else evaluate_mlm(model, eval_batches)
    trainer = Trainer(
        model,
        replace(recipe.train, seed=seed),
        run_dir,
        batches=batches,
        loss_fn=mlm_loss,
        evaluate=lambda m: evaluate_mlm(m, eval_batches),
        meta={"family": "bert-mlm", "model_config": config.to_dict(), "recipe": recipe.to_dict()},
        device=device,
        parameter_groups=parameter_groups(model, recipe.train.weight_decay),
        progress=progress,
        **speed,
    )
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    save_pretrained(model, model_dir)
    final = evaluate_mlm(model.eval(), eval_batches)
    report = PretrainReport(model_dir, initial, final, result.step, seconds, result.history)
    results = {k: v for k, v in asdict(report).items() if k != "history"}
    results |= {"model_dir": str(model_dir), "recipe": recipe.to_dict()}
    write_json_atomic(run_dir / "results.json", results)
    return report
