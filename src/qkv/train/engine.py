"""The training engine every qkv model uses: a model, a loss, batches.

What the caller gives:

- ``batches(epoch)``: the batches of one epoch, in an order that depends only on
  the epoch (seed it with the epoch), so a resumed run sees the same data;
- ``loss_fn(model, batch) -> (loss_sum, count)``: the *summed* loss of a batch and
  the number of targets it sums over (tokens, images);
- optionally ``evaluate(model) -> {name: value}``, run every ``eval_every`` steps.

What the engine does: AdamW (fused where the device has it: :func:`qkv.train.optim.adamw`);
a warm-up schedule; gradient accumulation;
gradient clipping; mixed precision (bf16 autocast on CPU and CUDA, or ``"auto"``: bf16 where
the device multiplies it fast, :mod:`qkv.precision`; fp16 with a
gradient scaler on CUDA); checkpoints every ``checkpoint_every`` steps, and resume
from the last one continuing the same loss curve; a progress bar; metrics in a
CSV; a loss-curve PNG; data parallel across ``torchrun`` processes. A loss that
becomes NaN or infinite stops the run, keeping the last good checkpoint.

Two options trade something for speed or memory, and change no result beyond float
rounding: ``compile`` runs the training forward and backward through
``torch.compile`` (the first steps, and every new batch shape until the compiler
makes the shapes dynamic, wait for compilation); ``checkpoint_activations`` recomputes
each encoder and decoder layer's activations in the backward pass instead of keeping
them (:mod:`qkv.train.checkpointing`: less memory for about a third more compute).
Neither is part of a run's identity: a run may resume with them on or off.

Why summed losses: an optimizer step averages over every target of every
micro-batch on every process. Dividing each micro-batch by its own size would
weight short batches more; instead gradients are summed, then scaled once by
``1 / (targets in the whole step)``. One process with ``grad_accum=2`` and two
processes with one micro-batch each then take exactly the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from qkv.config import ConfigDict
from qkv.precision import Precision, bf16_is_slow, resolve_precision
from qkv.train.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from qkv.train.distributed import DistributedContext, all_reduce_sum, init_distributed
from qkv.train.metrics import MetricsLog, plot_curves
from qkv.train.optim import AdamWKind, adamw, load_optimizer_state
from qkv.train.schedules import Schedule, make_scheduler

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted"]

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], tuple[Tensor, Tensor | int]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped :meth:`Trainer.fit` after a step, and a checkpoint of
    that step was written (the command line exits with 128 + ``signal_number``)."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path | None) -> None:
        self.signal_number = signal_number
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        where = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training stopped by {name} after step {step}{where}")


@dataclass(frozen=True)
class TrainConfig(ConfigDict):
    """How to train; the model's own configuration is separate."""

    max_steps: int = 1000  # optimizer steps
    lr: float = 5e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)  # the paper's Adam betas
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: Schedule = "inverse_sqrt"
    warmup_steps: int = 4000
    min_lr_factor: float = 0.0  # cosine floor, as a fraction of the peak
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    precision: Precision = "fp32"
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.check(
            positive=("max_steps", "grad_accum", "lr", "eps", "grad_clip", "log_every",
                      "checkpoint_every", "keep_checkpoints"),
        )  # fmt: skip
        for name in ("weight_decay", "warmup_steps", "min_lr_factor", "eval_every"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be >= 0 and finite, got {value}")
        if self.min_lr_factor > 1:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per logged step


@dataclass
class _Position:
    """Where the run is in the data: the next batch is ``batches(epoch)[index]``."""

    epoch: int = 0
    index: int = 0


@dataclass
class _Run:
    """What one call of :meth:`Trainer.fit` reports to, and its throughput window."""

    result: TrainResult
    bar: tqdm
    metrics: MetricsLog | None
    checkpointed: bool  # resumed from or wrote a checkpoint: there are curves to plot
    window_targets: float = 0.0  # targets since the last logged step
    window_start: float = field(default_factory=time.perf_counter)


class Trainer:
    """Trains ``model`` on ``batches`` with ``loss_fn`` (see the module docstring).

    Args:
        model: the model (unwrapped); it is moved to the device.
        config: :class:`TrainConfig`.
        run_dir: where checkpoints, ``metrics.csv`` and ``loss_curves.png`` go.
        batches: ``epoch -> iterable of batches``; each batch has ``.to(device)``
            or is a tensor / tuple / dict of tensors.
        loss_fn: ``(model, batch) -> (summed loss, number of targets)``.
        evaluate: ``model -> {metric: value}``, run on the main process.
        meta: saved in every checkpoint (the model's family and configuration).
        device: default CUDA when available, else CPU.
        parameter_groups: optional optimizer parameter groups (e.g. no weight decay
            on norms and biases); default all parameters.
        compile: train through ``torch.compile(model)`` (evaluation stays eager).
        checkpoint_activations: checkpoint every encoder and decoder layer
            (:func:`qkv.train.checkpointing.checkpoint_layers`).
        adamw_kind: the AdamW implementation (:func:`qkv.train.optim.adamw`); default
            the fastest the device has.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        batches: Callable[[int], Iterable[Any]],
        loss_fn: LossFn,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        meta: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        parameter_groups: list[dict[str, Any]] | None = None,
        progress: bool | None = None,
        compile: bool = False,
        checkpoint_activations: bool = False,
        adamw_kind: AdamWKind | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.context: DistributedContext = init_distributed(device)
        self.device = self.context.device
        # "auto" (the presets' bf16-for-speed) becomes bf16 or fp32 for this device.
        self.precision = resolve_precision(config.precision, self.device)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs CUDA (no fast fp16 on CPU); use bf16")
        self._say_precision()
        self.model = model.to(self.device)
        if checkpoint_activations:
            from qkv.train.checkpointing import checkpoint_layers

            checkpoint_layers(self.model)
        self.compile = compile
        self.batches = batches
        self.loss_fn = loss_fn
        self.evaluate = evaluate
        self.meta = meta or {}
        self.progress = progress
        self.optimizer = adamw(
            parameter_groups if parameter_groups is not None else model.parameters(),
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            kind=adamw_kind,
        )
        self.scheduler = make_scheduler(
            self.optimizer,
            config.schedule,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            min_factor=config.min_lr_factor,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.position = _Position()

    def _say_precision(self) -> None:
        if not self.context.is_main:
            return
        slow = bf16_is_slow(self.device)
        if self.config.precision == "auto":
            why = f": {slow}" if slow and self.precision == "fp32" else ""
            logger.info("precision auto: training in %s on %s%s", self.precision, self.device, why)
        elif self.precision == "bf16" and slow:
            logger.warning(
                "precision bf16: %s, so training will be far slower than in fp32 "
                "(train.precision=auto picks the faster)",
                slow,
            )

    # -- state -----------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self) -> Path | None:
        """Write a checkpoint (main process only); returns its path."""
        if not self.context.is_main:
            return None
        meta = {
            **self.meta,
            "train_config": asdict(self.config),
            "epoch": self.position.epoch,
            "batch_index": self.position.index,
        }
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self._trainer_state(),
            meta,
            keep=self.config.keep_checkpoints,
        )

    def _resume(self) -> int | None:
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            logger.info("no checkpoint in %s: starting from scratch", self.run_dir)
            return None
        load_weights(self.model, checkpoint.path)
        state = load_trainer_state(checkpoint.path)
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        python_state = random.getstate()
        random.setstate((python_state[0], tuple(state["python_rng"]), None))
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = checkpoint.step
        self.position = _Position(checkpoint.meta["epoch"], checkpoint.meta["batch_index"])
        logger.info("resumed from %s at step %d", checkpoint.path, self.step)
        return checkpoint.step

    # -- data --------------------------------------------------------------------

    def _stream(self) -> Iterator[Any]:
        """Batches from the current position on, across epochs; advances
        ``self.position`` as it goes."""
        while True:
            produced = False
            for index, batch in enumerate(self.batches(self.position.epoch)):
                if index < self.position.index:
                    continue  # already trained on before the resume
                produced = True
                self.position.index = index + 1
                yield batch
            if not produced and self.position.index == 0:
                raise ValueError(f"batches({self.position.epoch}) produced no batch")
            self.position = _Position(self.position.epoch + 1, 0)

    def _to_device(self, batch: Any) -> Any:
        if hasattr(batch, "to"):
            return batch.to(self.device)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, tuple | list):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- the loop ------------------------------------------------------------------

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train to ``config.max_steps``; with ``resume``, continue from the last
        checkpoint in ``run_dir`` (or start if there is none)."""
        config, context = self.config, self.context
        resumed_at = self._resume() if resume else None
        if resumed_at is None:
            torch.manual_seed(config.seed)
            random.seed(config.seed)
        metrics = MetricsLog(self.run_dir, resume_step=resumed_at) if context.is_main else None
        model: nn.Module = self.model
        if context.enabled:
            model = DistributedDataParallel(self.model)
        if self.compile:
            # Compiled around the DDP wrapper, so that DDP's gradient buckets stay as
            # they are; the loss functions call the model, so the loss is compiled too.
            model = torch.compile(model)  # type: ignore[assignment]
        stream = self._stream()
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            disable=not context.is_main or self.progress is False,
            dynamic_ncols=True,
        )
        run = _Run(TrainResult(self.step, None), bar, metrics, checkpointed=resumed_at is not None)
        stop = _StopSignals()
        try:
            with stop:
                while self.step < config.max_steps and not self._stop_requested(stop):
                    loss, targets, grad_norm, lr = self._train_step(model, stream)
                    self._log(run, loss, targets, grad_norm, lr)
                    bar.update(1)
                    self._maybe_evaluate(run)
                    self._maybe_checkpoint(run)
                if stop.received is not None:
                    self._checkpoint_interrupted(run)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        if stop.received is not None:
            # Raised here, outside the loop: the caller reports it in one line.
            raise TrainingInterrupted(stop.received, self.step, run.result.last_checkpoint)
        run.result.step = self.step
        if context.is_main and run.checkpointed:
            self._plot_curves()
        return run.result

    def _stop_requested(self, stop: _StopSignals) -> bool:
        """True once a stop signal came, to any process (they all stop at the same step)."""
        if not self.context.enabled:
            # One process: no tensor, no wait for the device (on CUDA, reading one back
            # every step would stall the queue of kernels).
            return stop.received is not None
        flag = torch.tensor(float(stop.received or 0), dtype=torch.float64, device=self.device)
        total = all_reduce_sum(flag, self.context)
        if total.item() and stop.received is None:  # another process got it
            stop.received = signal.SIGTERM
        return bool(total.item())

    def _checkpoint_interrupted(self, run: _Run) -> None:
        """Checkpoint the last finished step (unless just written) and say where."""
        last = run.result.last_checkpoint
        if last is None or not last.name.endswith(f"{self.step:08d}"):
            run.result.last_checkpoint = self.save()
        if self.context.is_main:
            logger.warning(
                "interrupted: checkpoint of step %d written to %s; continue with --resume",
                self.step,
                run.result.last_checkpoint,
            )

    def _train_step(
        self, model: nn.Module, stream: Iterator[Any]
    ) -> tuple[float, float, Tensor | None, float]:
        """One optimizer step over this process's share of the next micro-batches.

        ``model`` is ``self.model``, or its DDP wrapper when data parallel. Returns the
        step's mean loss and its number of targets (over all processes), the gradient
        norm before clipping (``None`` without clipping) and the learning rate used.
        Raises :class:`TrainingDiverged` before stepping on a NaN or infinite loss.
        """
        context = self.context
        per_step = self.config.grad_accum * context.world_size
        micro = [next(stream) for _ in range(per_step)][context.rank :: context.world_size]
        loss_sum, targets = self._backward(model, micro)
        loss_sum = all_reduce_sum(loss_sum, context)
        targets = all_reduce_sum(targets, context)
        loss = (loss_sum / targets.clamp(min=1)).item()
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at step {self.step + 1}; training stopped. "
                f"The last good checkpoint is kept in {self.run_dir / 'checkpoints'} "
                "(lower the learning rate, raise warm-up, or use fp32)."
            )
        grad_norm, lr = self._optimizer_step(float(targets))
        return loss, float(targets), grad_norm, lr

    def _backward(self, model: nn.Module, micro: list[Any]) -> tuple[Tensor, Tensor]:
        """Summed gradients of the micro-batches; returns this process's summed loss and
        number of targets (float64 scalars)."""
        context = self.context
        model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        targets = torch.zeros((), device=self.device, dtype=torch.float64)
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            # Gradients are all-reduced once per step, after the last micro-batch.
            accumulate = context.enabled and not last
            with model.no_sync() if accumulate else contextlib.nullcontext():
                with self._autocast():
                    batch_loss, batch_targets = self.loss_fn(model, self._to_device(batch))
                self.scaler.scale(batch_loss.float()).backward()
            loss_sum += batch_loss.detach().double()
            targets += float(batch_targets)
        return loss_sum, targets

    def _optimizer_step(self, targets: float) -> tuple[Tensor | None, float]:
        """Scale the summed gradients to the mean over the step's ``targets``, clip, step.
        Returns the gradient norm before clipping (``None`` without clipping) and the
        learning rate of this step."""
        config = self.config
        self.scaler.unscale_(self.optimizer)
        # DDP averaged the gradients over processes; turn the sum of summed
        # losses into the mean over every target of the step.
        scale = self.context.world_size / max(targets, 1.0)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = None
        if config.grad_clip is not None and grads:
            # The mean and the clipping in one pass over the gradients: the norm of the
            # scaled gradients is ``scale`` times that of the sums (as
            # ``clip_grad_norm_`` computes it, without a host synchronisation).
            norms = torch._foreach_norm(grads)  # one kernel per device and dtype, not per tensor
            grad_norm = torch.linalg.vector_norm(torch.stack([n.float() for n in norms])) * scale
            clip = (config.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, clip * scale)
        elif grads:
            torch._foreach_mul_(grads, scale)
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return grad_norm, lr

    def _log(
        self, run: _Run, loss: float, targets: float, grad_norm: Tensor | None, lr: float
    ) -> None:
        """Count the step's targets for the throughput; every ``log_every`` steps and at
        the end, write a metrics row and show it on the progress bar."""
        run.window_targets += targets
        if self.step % self.config.log_every != 0 and self.step != self.config.max_steps:
            return
        elapsed = max(time.perf_counter() - run.window_start, 1e-9)
        row = {"train_loss": loss, "lr": lr, "targets_per_s": run.window_targets / elapsed}
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        run.window_targets, run.window_start = 0.0, time.perf_counter()
        run.result.history.append({"step": self.step, **row})
        if run.metrics is not None:
            run.metrics.log(self.step, **row)
        run.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['targets_per_s']:.0f}", lr=f"{lr:.2e}")

    def _maybe_evaluate(self, run: _Run) -> None:
        """Run ``evaluate`` on the main process every ``eval_every`` steps and at the end."""
        config = self.config
        at_end = self.step == config.max_steps
        if (
            self.evaluate is None
            or not self.context.is_main
            or not (at_end or (config.eval_every and self.step % config.eval_every == 0))
        ):
            return
        self.model.eval()
        values = {f"valid_{k}": v for k, v in self.evaluate(self.model).items()}
        if run.metrics is not None:
            run.metrics.log(self.step, **values)
        run.result.history.append({"step": self.step, **values})
        run.bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def _maybe_checkpoint(self, run: _Run) -> None:
        """Save every ``checkpoint_every`` steps and at the end."""
        at_end = self.step == self.config.max_steps
        if at_end or self.step % self.config.checkpoint_every == 0:
            run.result.last_checkpoint = self.save()
            run.checkpointed = True

    def _plot_curves(self) -> None:
        try:
            plot_curves(self.run_dir / "metrics.csv", self.run_dir / "loss_curves.png")
        except Exception as error:  # a missing plot must not lose a finished run
            logger.warning("could not plot the loss curves: %s", error)


class _StopSignals:
    """While active, SIGINT and SIGTERM only set ``received``: the loop finishes its step,
    checkpoints, and stops. A second signal acts as it would have without this (Ctrl-C
    twice stops at once). Handlers go in only in the main thread (Python allows no other)
    and the previous ones come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = number
        for other, handler in self._previous.items():  # the next signal is not caught
            signal.signal(other, handler)
        logger.warning("%s received: stopping after this step", signal.Signals(number).name)

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
