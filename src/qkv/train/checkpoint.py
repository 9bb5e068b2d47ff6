"""Checkpoints: written atomically, read without unpickling code.

A checkpoint is a directory ``<run>/checkpoints/step-00001234/`` holding

- ``model.safetensors``: the weights (``safetensors``; tied weights stored once);
- ``trainer.pt``: optimizer, scheduler, gradient scaler and RNG states, read back
  with ``torch.load(weights_only=True)`` (tensors and plain containers only);
- ``meta.json``: the step, the position in the data, the model's family and
  configuration (so the model rebuilds without the training command line).

It is built in a temporary directory (``.tmp-*``) and renamed into place, and the file
``<run>/checkpoints/latest`` (itself replaced atomically) names the newest one: a
run killed at any moment leaves either the old or the new checkpoint, never half
of one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from qkv.fileio import read_json_object, write_json_atomic

__all__ = [
    "Checkpoint",
    "average_checkpoints",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "read_meta",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


def _checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    *,
    keep: int = 5,
) -> Path:
    """Write checkpoint ``step`` under ``run_dir`` and keep only the newest ``keep``.

    A full disk raises ``OSError`` (ENOSPC) saying so and naming the folder; the older
    checkpoints and ``latest`` are left as they were.
    """
    root = _checkpoint_dir(Path(run_dir))
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    try:
        _write_checkpoint(root, final, model, trainer_state, {**meta, "step": step})
        write_json_atomic(root / "latest", {"checkpoint": final.name, "step": step})
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left on device while writing checkpoint {final.name} in {root}; "
                "the older checkpoints are kept (free some space, then --resume)",
            ) from error
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def _write_checkpoint(
    root: Path, final: Path, model: nn.Module, trainer_state: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Build the checkpoint in a temporary folder (``.tmp-*``: a run directory removes
    those at start) and rename it to ``final``."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    aside = root / f".tmp-old-{final.name}"
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the checkpoint from other users
        save_model(model, str(tmp / MODEL_FILE))
        torch.save(trainer_state, tmp / TRAINER_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # the same step written again after a resume: move it aside,
            os.replace(final, aside)  # so a kill here leaves it whole (not a half-deleted one)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint directory, with a clear error if it is not one."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a qkv checkpoint: expected {META_FILE} and {MODEL_FILE} in it"
        )
    return read_json_object(meta_file)


def list_checkpoints(run_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first."""
    root = _checkpoint_dir(Path(run_dir))
    found = []
    for path in sorted(root.glob("step-*")) if root.is_dir() else []:
        if (path / META_FILE).is_file() and (path / MODEL_FILE).is_file():
            meta = read_meta(path)
            found.append(Checkpoint(path, int(meta["step"]), meta))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint named by ``latest`` (or the newest complete one), if any.

    A ``latest`` that is unreadable or names a missing or incomplete checkpoint falls
    back to the newest complete one, with a warning.
    """
    root = _checkpoint_dir(Path(run_dir))
    pointer = root / "latest"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
            meta = read_meta(root / name)
            return Checkpoint(root / name, int(meta["step"]), meta)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "%s is corrupt or names a missing checkpoint (%s); using the newest "
                "complete checkpoint instead",
                pointer,
                error,
            )
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``: ``path`` itself when it is a checkpoint directory,
    else the latest checkpoint of the run directory ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / META_FILE).is_file():
        meta = read_meta(path)
        return Checkpoint(path, int(meta["step"]), meta)
    checkpoint = latest_checkpoint(path) if path.is_dir() else None
    if checkpoint is None:
        raise FileNotFoundError(f"{path} is neither a qkv checkpoint nor a run directory with one")
    return checkpoint


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load ``model.safetensors`` of a checkpoint directory (or a file) into ``model``.

    Raises ``ValueError`` listing missing and unexpected keys when they do not match, and
    naming the file and the tensor when one holds NaN or infinite values (the model is
    then left unchanged).
    """
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no weights at {file}")
    _check_finite(file)
    missing, unexpected = load_model(model, str(file), strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"weights in {file} do not fit the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )


def _check_finite(file: Path) -> None:
    """Refuse weights with NaN or inf, one tensor at a time (memory-mapped)."""
    with safe_open(str(file), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"weights in {file} hold NaN or infinite values in {name}")


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAINER_FILE, weights_only=True)


def average_checkpoints(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights of several checkpoints (the paper averages
    the last 5 or 20): a cheap ensemble that usually adds BLEU."""
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        path = Path(path)
        weights = load_file(str(path / MODEL_FILE if path.is_dir() else path))
        if total and weights.keys() != total.keys():
            raise ValueError(f"{path} holds different tensors than {paths[0]}")
        for name, tensor in weights.items():
            if name in total:
                total[name] += tensor.double()
            else:
                total[name] = tensor.double()
    return {name: (t / len(paths)).float() for name, t in total.items()}
