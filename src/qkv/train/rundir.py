"""Run directories that never lose a run: one writer, no silent overwrite, no mixed runs.

Every training task (translation, ViT, BERT pretraining and fine-tuning) checks its options
and reads its data first, then opens its run directory with :func:`open_run_dir`, which

- refuses ``resume`` together with ``overwrite``;
- takes the lock ``run.lock`` (JSON: pid, host, start time), created atomically; a second
  training into the same folder is refused naming the owner; a lock left by a dead process
  of this host is taken over with a warning; the lock goes when the block ends, error or
  not. Under ``torchrun`` only rank 0 locks, checks and writes;
- removes the temporary files a killed run left (``.*.tmp``, ``checkpoints/.tmp-*``,
  ``.tmp-pretrained-*`` model folders);
- refuses a folder that holds a run (checkpoints, ``meta.json``, ``tokenizer.json``,
  ``metrics.csv``, ``run.json``, ``model/``, ``report.json``, ``results.json``, ``seed-*/``)
  unless ``resume`` (continue it) or ``overwrite`` (remove it first, so runs never mix);
- for a new run, writes the task's first files (``create``) and then ``run.json``, the
  run's identity: the task, the recipe (model configuration and training settings), the
  data source, and what else defines it (the translator's tokenizer hash). ``run.json``
  exists only once those first files are whole;
- on ``resume``, compares the command's identity with ``run.json`` and refuses naming each
  field that differs (``model.d_model: run 256, command 512``). These fields may change
  on resume (:data:`RESUMABLE_FIELDS`): ``train.max_steps``, ``train.eval_every``,
  ``train.checkpoint_every``, ``train.log_every``, ``train.keep_checkpoints``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkv.fileio import write_json_atomic
from qkv.train.checkpoint import list_checkpoints
from qkv.train.distributed import is_main_process

__all__ = [
    "IDENTITY_FILE",
    "LOCK_FILE",
    "RESUMABLE_FIELDS",
    "RunDir",
    "RunDirError",
    "check_run_dir",
    "describe_run",
    "identity_differences",
    "one_writer",
    "open_run_dir",
]

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
IDENTITY_FILE = "run.json"
RESUMABLE_FIELDS = frozenset(
    {
        "train.max_steps",
        "train.eval_every",
        "train.checkpoint_every",
        "train.log_every",
        "train.keep_checkpoints",
    }
)
# What a run writes into its folder: any of these means the folder holds a run.
RUN_ENTRIES = (
    IDENTITY_FILE,
    "checkpoints",
    "meta.json",
    "tokenizer.json",
    "tokenizer-source.json",
    "tokenizer-target.json",
    "metrics.csv",
    "model",
    "report.json",
    "results.json",
)
# Written by a run but not evidence of one on their own; removed with it by --overwrite.
RUN_EXTRAS = ("tensorboard", "loss_curves.png")
# A lock file still empty after this long was left by a process killed while creating it.
_EMPTY_LOCK_GRACE_S = 5.0


class RunDirError(Exception):
    """A run directory cannot be used as asked; the message is one line naming the folder."""


@dataclass(frozen=True)
class RunDir:
    """An open run directory: ``path``, and whether it continues an earlier run."""

    path: Path
    resumed: bool


@contextmanager
def open_run_dir(
    path: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool,
    identity: dict[str, Any],
    create: Callable[[Path], None] | None = None,
) -> Iterator[RunDir]:
    """Open ``path`` for one training (see the module docstring); yields a :class:`RunDir`.

    ``identity``: JSON-able values that define the run, nested dicts compared field by
    field. ``create(path)``: writes the first files of a new run (a tokenizer); it runs
    under the lock, before ``run.json`` is written. Raises :class:`RunDirError`.
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirError(f"{path}: --resume and --overwrite exclude each other; pass one")
    if not is_main_process():  # rank 0 locks, checks and writes for all
        yield RunDir(path, resumed=resume and (path / IDENTITY_FILE).is_file())
        return
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _remove_stale_temporaries(path)
        resumed = _prepare(path, resume=resume, overwrite=overwrite, identity=identity)
        if not resumed and create is not None:
            create(path)
        write_json_atomic(path / IDENTITY_FILE, identity)
        yield RunDir(path, resumed)


def _prepare(path: Path, *, resume: bool, overwrite: bool, identity: dict[str, Any]) -> bool:
    """Check what ``path`` holds against what was asked; returns True when an earlier run
    is continued. With ``overwrite``, removes the earlier run."""
    held = describe_run(path)
    if held is None:
        if resume:
            logger.info("nothing to resume in %s: starting a new run", path)
        return False
    if overwrite:
        logger.warning("--overwrite: removing the run in %s (%s)", path, held)
        _remove_run(path)
        return False
    if not resume:
        raise _holds_a_run(path, held)
    previous = _read_identity(path)
    if previous is None:
        # A run from before run.json, or killed between its first files and run.json.
        logger.warning("%s has no %s: resuming without checking the run's identity", path,
                       IDENTITY_FILE)  # fmt: skip
        return True
    differences = identity_differences(previous, identity)
    if differences:
        raise RunDirError(
            f"{path} holds a different run; it differs in {'; '.join(differences)} "
            "(only train.max_steps, eval_every, checkpoint_every, log_every and "
            "keep_checkpoints may change on resume)"
        )
    return True


def _holds_a_run(path: Path, held: str) -> RunDirError:
    return RunDirError(
        f"{path} holds a run ({held}); pass --resume to continue it, --overwrite to "
        "replace it, or choose a new folder"
    )


def check_run_dir(path: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> None:
    """:func:`open_run_dir`'s refusal of a folder that holds a run (neither ``resume``
    nor ``overwrite``), made before the work a run's identity needs (reading the
    corpus, training a tokenizer); :func:`open_run_dir` checks again under its lock."""
    held = None if resume or overwrite else describe_run(path)
    if held is not None:
        raise _holds_a_run(Path(path), held)


def describe_run(path: str | os.PathLike[str]) -> str | None:
    """What run ``path`` holds, in a few words (``checkpoints up to step 500``), or None
    when it holds none (absent, empty, or only a lock and temporary files)."""
    path = Path(path)
    if not path.is_dir():
        return None
    steps = [_last_step(folder) for folder in [path, *sorted(path.glob("seed-*"))]]
    steps = [s for s in steps if s is not None]
    if steps:
        return f"checkpoints up to step {max(steps)}"
    entries = [path / name for name in RUN_ENTRIES] + sorted(path.glob("seed-*"))
    found = [entry.name for entry in entries if _holds_something(entry)]
    return ", ".join(found) if found else None


def _holds_something(entry: Path) -> bool:
    """A file, or a folder with something in it (an empty ``checkpoints/`` is no run)."""
    if entry.is_dir():
        return any(_holds_something(child) for child in entry.iterdir())
    return entry.exists()


def _last_step(run: Path) -> int | None:
    checkpoints = list_checkpoints(run)
    return checkpoints[-1].step if checkpoints else None


def identity_differences(run: dict[str, Any], command: dict[str, Any]) -> list[str]:
    """``"field: run X, command Y"`` for each field (dotted) that differs, except the
    :data:`RESUMABLE_FIELDS`."""
    before, after = _flatten(run), _flatten(command)
    missing = "(none)"
    return [
        f"{key}: run {before.get(key, missing)}, command {after.get(key, missing)}"
        for key in sorted(before.keys() | after.keys())
        if key not in RESUMABLE_FIELDS and before.get(key, missing) != after.get(key, missing)
    ]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    # JSON round trip first: tuples become lists, so a tuple in the command equals the list
    # read back from run.json.
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(values)).items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_identity(path: Path) -> dict[str, Any] | None:
    file = path / IDENTITY_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path}: {IDENTITY_FILE} is unreadable ({error})") from None


def _remove_run(path: Path) -> None:
    """Remove what a run wrote into ``path``; other files (and the lock) stay."""
    entries = [path / name for name in (*RUN_ENTRIES, *RUN_EXTRAS)]
    entries += sorted(path.glob("seed-*"))
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files and checkpoint folders a killed run left behind (only the lock
    holder writes here, so none of them is being written now)."""
    stale = [p for p in path.rglob(".*.tmp") if p.is_file()]
    stale += [p for p in path.rglob(".tmp-*") if p.is_dir() and _is_temporary_folder(p)]
    for entry in stale:
        logger.info("removing %s, left by an interrupted run", entry)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _is_temporary_folder(folder: Path) -> bool:
    """A checkpoint folder being written (``checkpoints/.tmp-step-*``) or a Hugging Face
    model folder being written (``.tmp-pretrained-model-*``, :mod:`qkv.convert.common`)."""
    return folder.parent.name == "checkpoints" or folder.name.startswith(".tmp-pretrained-")


# -- the lock -----------------------------------------------------------------------------


def one_writer(path: str | os.PathLike[str]) -> AbstractContextManager[None]:
    """Hold ``path``'s ``run.lock`` for a ``with`` block, for a job that writes a folder
    without being a training run (the quickstart tour): a second writer is refused naming
    the owner, a stale lock taken over, as for runs. ``path`` must exist."""
    return _locked(Path(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path / LOCK_FILE
    mine = _acquire(lock)
    try:
        yield
    finally:
        _release(lock, mine)


def _acquire(lock: Path) -> dict[str, Any]:
    """Create ``lock`` atomically with our pid, host and start time; take over a stale one
    once. Returns what was written."""
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _take_over_if_stale(lock)
            continue
        try:
            os.write(fd, json.dumps(mine).encode())  # one write: the lock is whole or empty
            os.fsync(fd)
        finally:
            os.close(fd)
        return mine
    raise RunDirError(f"{lock.parent}: could not take {LOCK_FILE}; another run took it first")


def _take_over_if_stale(lock: Path) -> None:
    """Remove ``lock`` when its owner is gone; else refuse, naming the owner."""
    owner = _read_lock(lock)
    if owner is None:  # removed meanwhile, or emptied by a kill while it was created
        if lock.exists() and time.time() - lock.stat().st_mtime < _EMPTY_LOCK_GRACE_S:
            raise RunDirError(f"{lock.parent} is being opened by another training right now")
        lock.unlink(missing_ok=True)
        return
    pid, host = owner.get("pid"), owner.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        raise RunDirError(
            f"{lock.parent} is in use by another training (pid {pid} on {host}, since "
            f"{started}); wait for it to end, or remove {lock} if that process is gone"
        )
    logger.warning("%s: taking over the lock of pid %d, which is no longer running",
                   lock.parent, pid)  # fmt: skip
    lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError as error:
        return error.errno != errno.ESRCH
    return True


def _release(lock: Path, mine: dict[str, Any]) -> None:
    """Remove the lock if it is still ours (never another process's)."""
    if _read_lock(lock) == mine:
        lock.unlink(missing_ok=True)
