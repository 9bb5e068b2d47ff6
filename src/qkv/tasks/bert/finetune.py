"""Steps 2-4 of transfer learning (docs/concepts.md#transfer-learning): load a pretrained
BERT body, add a classification head, fine-tune the whole model on labelled text, once per
seed.

The body comes from a checkpoint (:func:`qkv.convert.bert.from_pretrained` with
``"classification"``: the pooler and classifier start fresh when the checkpoint has none),
or a :class:`~qkv.models.bert.BertConfig` preset starts from random weights, the baseline
that shows what pretraining is worth. The data are BBC News (5 topics) or the 3-class
tweet sentiment set (:mod:`qkv.data.text`), with a split fixed by the text itself, or the
user's own CSV, TSV or JSON Lines files (:mod:`qkv.data.labelled`), single texts or
sentence pairs.

Notation: b batch size, C labels.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qkv.convert.bert import config_from_hf, from_pretrained, save_pretrained
from qkv.convert.common import read_config
from qkv.data.labelled import LabelledFiles
from qkv.data.text import LabelledText, Text, load_labelled
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.fileio import read_json_object, write_json_atomic
from qkv.losses import summed
from qkv.models.bert import BertConfig, BertForSequenceClassification, init_bert_weights
from qkv.tasks.bert.classify import (
    TASK_FILE,
    Classifier,
    encode_texts,
    has_trained_head,
)
from qkv.tasks.bert.common import (
    MODEL_DIR,
    check_batch_shape,
    epoch_order,
    open_finetune_run,
    starting_tokenizer,
)
from qkv.train import TrainConfig, Trainer
from qkv.train.optim import parameter_groups
from qkv.train.recipe import Recipe
from qkv.train.rundir import check_run_dir

__all__ = ["FinetuneRecipe", "FinetuneReport", "finetune", "subsample"]

logger = logging.getLogger(__name__)

SEED_RESULT = "result.json"  # inside seed-N/: written last, when the seed is done
_SEED_FIGURES = ("valid_accuracy", "test_accuracy", "seconds")

Example = tuple[Text, int]  # (text or (text, pair), label index)


_FINETUNE_TRAIN = TrainConfig(
    lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, schedule="cosine",
    keep_checkpoints=1,
)  # fmt: skip


@dataclass(frozen=True)
class FinetuneRecipe(Recipe[dict[str, Any]]):
    """How to fine-tune (:class:`~qkv.train.recipe.Recipe`): ``model`` holds overrides of
    the checkpoint's configuration (``{"attention_dropout": 0.0}``; empty: the
    checkpoint's dropouts), ``train`` the engine's settings, of which the number of
    steps, the warm-up and the evaluation period follow from ``epochs`` and
    ``warmup_fraction`` and the size of the data (:meth:`train_config`).

    The defaults: AdamW (β = 0.9, 0.999, weight decay off biases and norms), linear
    warm-up then cosine decay to zero, gradient clipping at 1.
    """

    name: str = "finetune"
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=lambda: _FINETUNE_TRAIN)
    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 128  # tokens, [CLS] and [SEP] included; longer texts are truncated
    warmup_fraction: float = 0.1

    model_type: ClassVar[type | None] = BertConfig
    derived: ClassVar[Mapping[str, str]] = {
        "train.seed": "the seed of each fine-tuning (--seeds, --seed)",
        "train.max_steps": "epochs (--epochs)",
        "train.warmup_steps": "warmup_fraction",
        "train.eval_every": "the epoch (one evaluation each)",
        "train.checkpoint_every": "the epoch (one checkpoint each)",
        "train.log_every": "the epoch",
        "model.vocab_size": "the vocabulary",
        "model.pad_id": "the vocabulary",
        "model.model_type": "the checkpoint",
    }

    def __post_init__(self) -> None:
        if not 0 < self.epochs < math.inf:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        check_batch_shape(self.batch_size, self.max_length)

    def train_config(self, steps_per_epoch: int, seed: int) -> TrainConfig:
        """``train`` with the steps of ``epochs`` epochs, an evaluation and a checkpoint
        (the last one kept) at the end of each: a killed run resumes from there."""
        steps = max(1, round(self.epochs * steps_per_epoch))
        return replace(
            self.train,
            max_steps=steps,
            warmup_steps=round(self.warmup_fraction * steps),
            eval_every=steps_per_epoch,
            checkpoint_every=min(steps_per_epoch, steps),
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
        """Sample standard deviation over seeds (n - 1), 0 for a single seed."""
        values = list(self.test_accuracy.values())
        return statistics.stdev(values) if len(values) > 1 else 0.0


def subsample(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """``limit`` examples drawn with a fixed seed, the same for every training seed (the
    splits are in file order, by class), in their original order; all when ``None``."""
    if limit is None or limit >= len(examples):
        return list(examples)
    return [examples[i] for i in sorted(random.Random(0).sample(range(len(examples)), limit))]


def _classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return summed(model(**batch))


def _train_classifier(
    classifier: Classifier,
    train: Sequence[Example],
    valid: Sequence[Example],
    recipe: FinetuneRecipe,
    run_dir: Path,
    seed: int,
    *,
    resume: bool = False,
    **trainer_options: Any,
) -> float:
    """Fine-tune ``classifier.model`` in place with the engine (checkpoints in ``run_dir``;
    ``resume``: from the last of them); returns the valid accuracy of the engine's last
    evaluation (NaN without a valid set)."""
    tok, size = classifier.tokenizer, recipe.batch_size

    def batches(epoch: int) -> Iterator[dict[str, Tensor]]:
        order = epoch_order(len(train), seed, epoch)
        for i in range(0, len(order), size):
            chunk = [train[j] for j in order[i : i + size]]
            # Padded to the longest text of the batch, not to max_length: short texts
            # (tweets) cost what they hold.
            enc = encode_texts(tok, [t for t, _ in chunk], recipe.max_length)  # (b, L)
            yield enc.as_dict() | {"labels": torch.tensor([y for _, y in chunk])}  # labels (b,)

    model = classifier.model
    result = Trainer(
        model,
        recipe.train_config(math.ceil(len(train) / size), seed),
        run_dir,
        batches=batches,
        loss_fn=_classification_loss,
        evaluate=lambda _: {"accuracy": classifier.accuracy(valid)} if valid else {},
        meta={"family": "bert-classification", "model_config": model.config.to_dict()},
        parameter_groups=parameter_groups(model, recipe.train.weight_decay),
        **trainer_options,
    ).fit(resume=resume)
    # The engine evaluates at the last step; scoring the valid set again would cost as much.
    scores = [row["valid_accuracy"] for row in result.history if "valid_accuracy" in row]
    if scores:
        return scores[-1]
    # Resumed at the last step (killed while saving): nothing evaluated in this process.
    return classifier.accuracy(valid) if valid else math.nan


def _new_classifier(
    tok: WordPieceTokenizer,
    labels: list[str],
    checkpoint: Path | None,
    preset: str | None,
    overrides: dict[str, Any],
) -> BertForSequenceClassification:
    """The pretrained body with a fresh head, or a whole model from random weights.

    A checkpoint that is already a classifier keeps its trained head when its label names
    are ``labels``; with other labels (another task) its body is kept and the head starts
    afresh, sized for ``labels``."""
    if checkpoint is not None:
        own = _trained_labels(checkpoint)
        if own is not None and own != labels:
            logger.info("%s: a classifier of %s; a new head for %s", checkpoint, own, labels)
            model = from_pretrained(checkpoint, "classification", **overrides)
            assert isinstance(model, BertForSequenceClassification)
            head = model.build_head(model.config, len(labels), model.dropout.p)
            init_bert_weights(head, model.config.init_std)
            model.classifier, model.num_labels, model.label_names = head, len(labels), tuple(labels)
            return model
        model = from_pretrained(
            checkpoint, "classification", num_labels=len(labels), label_names=labels, **overrides
        )
    else:
        config = _model_config(None, preset, tok, overrides)
        model = BertForSequenceClassification(config, len(labels), label_names=labels)
    assert isinstance(model, BertForSequenceClassification)
    return model


# The fields that shape a model's weights: a checkpoint fixes them.
_SIZES = (
    "d_model",
    "num_layers",
    "num_heads",
    "d_ff",
    "max_position_embeddings",
    "type_vocab_size",
)


def _model_config(
    checkpoint: Path | None, preset: str | None, tok: WordPieceTokenizer, overrides: dict[str, Any]
) -> BertConfig:
    """The configuration of the model each seed builds: ``checkpoint``'s, or ``preset``'s
    sized for ``tok``, with ``overrides``; a bad override raises here, and so does a
    size other than the checkpoint's (its weights would not fit)."""
    if checkpoint is not None:
        hf = read_config(checkpoint)
        own = config_from_hf(hf)
        resized = [
            f"model.{n}={overrides[n]}"
            for n in _SIZES
            if overrides.get(n, getattr(own, n)) != getattr(own, n)
        ]
        if resized:
            raise ValueError(
                f"{', '.join(resized)}: {checkpoint}'s weights have other sizes; a fine-tuning "
                "of a checkpoint keeps them (other sizes: --from-scratch)"
            )
        return config_from_hf(hf, **overrides)
    return BertConfig.preset(
        str(preset), **{"vocab_size": tok.vocab_size, "pad_id": tok.pad_id} | overrides
    )


def _trained_labels(checkpoint: Path) -> list[str] | None:
    """The label names of a checkpoint with a trained sequence-classification head
    (``LABEL_i`` where its ``config.json`` names none), else ``None``."""
    from qkv.convert.common import read_config

    if not has_trained_head(checkpoint):
        return None
    id2label = read_config(checkpoint).get("id2label") or {}
    shape = len(id2label) or None
    if shape is None:
        return None  # a head without label names: its size is unknown here, let the loader say
    return [str(id2label[str(i)]) if str(i) in id2label else f"LABEL_{i}" for i in range(shape)]


def finetune(
    run_dir: str | Path,
    recipe: FinetuneRecipe | None = None,
    *,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    tokenizer: str | Path | None = None,
    dataset: str = "bbc",
    data_path: str | Path | None = None,
    seeds: Sequence[int] = (0,),
    limits: tuple[int | None, int | None, int | None] = (None, None, None),
    data_files: LabelledFiles | None = None,
    device: str | None = None,
    progress: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    compile: bool = False,
    checkpoint_activations: bool = False,
) -> FinetuneReport:
    """Fine-tune a sequence classifier on ``dataset`` (``bbc`` or ``tweets``), or on the
    user's ``data_files``, once per seed.

    Args:
        recipe: :class:`FinetuneRecipe` (default: its defaults).
        checkpoint: a BERT checkpoint folder (ours, or Hugging Face's such as
            all-MiniLM-L6-v2) or a ``qkv bert pretrain`` run directory.
        preset: instead of ``checkpoint``, train a :class:`BertConfig` preset from
            scratch, with the vocabulary of ``tokenizer`` (a checkpoint folder or
            file), or else a WordPiece vocabulary trained on the train split.
        seeds: one run per seed (head initialisation, dropout, data order); the
            split is fixed (:func:`qkv.data.text.split_of`).
        limits: at most that many (train, valid, test) examples, ``None`` for all: a
            sample drawn with a fixed seed (:func:`subsample`), the same for every seed.
        data_files: CSV/TSV/JSON Lines files and their columns
            (:class:`~qkv.data.labelled.LabelledFiles`), instead of ``dataset``; every
            file is read and checked before anything is written.
        device: where to train; the test set is scored there too.
        resume: continue the run in ``run_dir`` (the same options and data, else it is
            refused naming what differs): seeds already done are read back, the one that
            was stopped continues from its last checkpoint, on the run's own vocabulary.
        overwrite: replace a run already in ``run_dir`` (without ``resume`` or this, such
            a folder is refused: :mod:`qkv.train.rundir`).
        compile, checkpoint_activations: train through ``torch.compile``; recompute
            each layer's activations in the backward pass (:class:`qkv.train.Trainer`).

    Each seed writes ``run_dir/seed-N/`` (the engine's checkpoints and metrics) and
    ``run_dir/seed-N/model/`` (the classifier, Hugging Face format, with its tokenizer,
    its label names as ``id2label`` of ``config.json``, and the columns it reads in
    ``qkv_classifier.json``); the report also goes to ``run_dir/results.json``. The options, the
    data and the vocabulary are settled before ``run_dir`` is touched.
    """
    recipe = recipe or FinetuneRecipe()
    if (checkpoint is None) == (preset is None):
        raise ValueError("give either a checkpoint or a preset to train from scratch")
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # before the data are read
    data = data_files.load() if data_files is not None else load_labelled(dataset, data_path)
    parts = (data.train, data.valid, data.test)
    train, valid, test = (subsample(p, n) for p, n in zip(parts, limits, strict=True))
    logger.info("%s: using train %d, valid %d, test %d", data, len(train), len(valid), len(test))
    _check_splits(data, data_files, valid, test)
    texts = (part for t, _ in train for part in (t if isinstance(t, tuple) else (t,)))
    source, tok = starting_tokenizer(
        checkpoint, tokenizer, texts, resume_dir=run_dir if resume else None
    )
    # The engine's settings are checked now, not after the run directory is opened.
    recipe.train_config(math.ceil(len(train) / recipe.batch_size), seeds[0] if seeds else 0)
    if preset is not None and not hasattr(BertConfig, preset):
        raise ValueError(f"unknown BERT preset {preset!r}")
    _model_config(source, preset, tok, recipe.model)  # the model overrides, checked now
    report = FinetuneReport(
        data.name,
        str(checkpoint) if checkpoint is not None else f"{preset} from scratch",
        {"train": len(train), "valid": len(valid), "test": len(test)},
    )
    identity = {
        "task": "bert-finetune",
        **recipe.to_dict(),
        "source": {"checkpoint": _str(checkpoint), "preset": preset, "tokenizer": _str(tokenizer)},
        "data": (
            {"files": data_files.to_dict(), "limits": list(limits)}
            if data_files is not None
            else {"dataset": dataset, "path": _str(data_path), "limits": list(limits)}
        ),
        "seeds": list(seeds),
    }
    task = {
        "task": "sequence-classification",
        "text_column": data_files.text_column if data_files is not None else "text",
        "text_pair_column": data_files.text_pair_column if data_files is not None else None,
        "label_column": data_files.label_column if data_files is not None else "label",
        "label_names": list(data.label_names),
    }
    trained = checkpoint is None and tokenizer is None
    with open_finetune_run(
        run_dir,
        tok,
        trained_vocabulary=trained,
        resume=resume,
        overwrite=overwrite,
        identity=identity,
    ) as run:
        return _finetune_seeds(
            Path(run_dir), report, recipe, tok, list(data.label_names), (train, valid, test),
            source=source, preset=preset, seeds=seeds, device=device, progress=progress,
            task=task, resume=run.resumed, compile=compile,
            checkpoint_activations=checkpoint_activations,
        )  # fmt: skip


def _check_splits(
    data: LabelledText,
    files: LabelledFiles | None,
    valid: Sequence[Example],
    test: Sequence[Example],
) -> None:
    """Refuse an empty valid or test split (an accuracy of nothing is undefined), and a
    train file with a single class, saying which file or option would fix it."""
    if len(data.label_names) < 2:
        where = files.train if files is not None else data.name
        raise ValueError(
            f"{where}: every example has the label {data.label_names[0]!r}; a classifier "
            "needs at least two classes"
        )
    for name, part in (("valid", valid), ("test", test)):
        if part:
            continue
        if files is not None and getattr(files, name) is None:
            raise ValueError(
                f"{files.train}: the hash split left no {name} examples ({len(data.train)} "
                f"for training); give --{name} FILE, or more examples"
            )
        raise ValueError(f"{data.name}: the {name} split is empty")


def _str(path: str | Path | None) -> str | None:
    return str(path) if path is not None else None


def _finetune_seeds(
    run_dir: Path,
    report: FinetuneReport,
    recipe: FinetuneRecipe,
    tok: WordPieceTokenizer,
    labels: list[str],
    splits: tuple[list[Example], list[Example], list[Example]],
    *,
    source: Path | None,
    preset: str | None,
    seeds: Sequence[int],
    device: str | None,
    progress: bool | None,
    task: dict[str, Any],
    resume: bool,
    **speed: bool,
) -> FinetuneReport:
    """One fine-tuning per seed into ``run_dir/seed-N``, filling ``report`` (the run
    directory is open). The test set is scored where the model trained (the engine
    leaves it on its device). ``resume``: a seed whose ``result.json`` was written (the
    last file of a seed) is read back, the others continue from their checkpoints."""
    train, valid, test = splits
    for seed in seeds:
        seed_dir = Path(run_dir) / f"seed-{seed}"
        report.model_dirs[seed] = seed_dir / MODEL_DIR
        done = seed_dir / SEED_RESULT
        if resume and done.is_file():
            result = read_json_object(done)
            for name in _SEED_FIGURES:
                getattr(report, name)[seed] = float(result[name])
            logger.info("seed %d: done before (%s)", seed, done)
            continue
        torch.manual_seed(seed)  # the new head's initialisation (and the whole model's)
        model = _new_classifier(tok, labels, source, preset, recipe.model)
        classifier = Classifier(model, tok, recipe.max_length)
        start = time.perf_counter()
        report.valid_accuracy[seed] = _train_classifier(
            classifier, train, valid, recipe, seed_dir, seed, device=device,
            progress=progress, resume=resume, **speed,
        )  # fmt: skip
        report.seconds[seed] = time.perf_counter() - start
        report.test_accuracy[seed] = classifier.accuracy(test)
        save_pretrained(model, seed_dir / MODEL_DIR)
        tok.save(seed_dir / MODEL_DIR, model_max_length=recipe.max_length)
        write_json_atomic(seed_dir / MODEL_DIR / TASK_FILE, task)
        write_json_atomic(done, {name: getattr(report, name)[seed] for name in _SEED_FIGURES})
        logger.info("seed %d: test accuracy %.4f", seed, report.test_accuracy[seed])
    results = asdict(report) | {"recipe": recipe.to_dict(), "mean": report.mean, "std": report.std}
    results["model_dirs"] = {seed: str(path) for seed, path in report.model_dirs.items()}
    write_json_atomic(run_dir / "results.json", results)
    return report
