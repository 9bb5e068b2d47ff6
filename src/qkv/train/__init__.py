"""The training engine shared by every qkv model (see :mod:`qkv.train.engine`)."""

from qkv.train.checkpoint import average_checkpoints, latest_checkpoint, load_weights
from qkv.train.engine import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
)
from qkv.train.losses import seq2seq_loss
from qkv.train.schedules import lr_factor, make_scheduler, paper_peak_lr

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "average_checkpoints",
    "latest_checkpoint",
    "load_weights",
    "lr_factor",
    "make_scheduler",
    "paper_peak_lr",
    "seq2seq_loss",
]
