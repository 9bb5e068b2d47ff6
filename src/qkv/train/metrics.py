"""Metrics of a run: a CSV in the run directory (and TensorBoard when installed),
and a picture of the loss curves at the end."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from qkv.fileio import write_text_atomic

__all__ = ["MetricsLog", "plot_curves", "read_metrics"]

logger = logging.getLogger(__name__)
FIELDS = ["step", "time", "name", "value"]


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` from a ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("value") is None:  # a partial last line of a killed run
                continue
            series[row["name"]].append((int(row["step"]), float(row["value"])))
    return dict(series)


class MetricsLog:
    """Appends ``step,time,name,value`` rows to ``<run>/metrics.csv``.

    On resume from step ``s`` the rows after ``s`` (written by the interrupted run
    after its last checkpoint) are dropped, so the file shows one continuous curve.

    Append-safe: each row goes to the end of the file in one ``os.write`` (the file is
    opened ``O_APPEND``) and is fsynced, so a killed run leaves whole rows only; a partial
    last line (a crash of the machine itself) is cut off when the file is opened again.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            _truncate_partial_line(self.path)
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        else:
            kept = []
        write_text_atomic(self.path, _csv_lines([FIELDS, *([r[k] for k in FIELDS] for r in kept)]))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except Exception:  # tensorboard is optional
            self._tensorboard = None

    def log(self, step: int, **values: float) -> None:
        now = time.time()
        for name, value in values.items():
            # One write of the whole line: a kill never leaves half of it.
            os.write(
                self._fd, _csv_lines([[step, f"{now:.3f}", name, repr(float(value))]]).encode()
            )
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(name, value, step)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tensorboard is not None:
            self._tensorboard.close()


def _csv_lines(rows: list[list[object]] | Iterator[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _truncate_partial_line(path: Path) -> None:
    """Cut a last line that has no line end (a write cut short)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        logger.warning("%s ends in a partial line; removing it", path)
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def plot_curves(metrics_csv: str | Path, out: str | Path, names: tuple[str, ...] = ()) -> Path:
    """Plot the loss curves (every series whose name ends in ``loss``, plus ``names``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_csv)
    chosen = [n for n in series if n.endswith("loss") or n in names]
    fig, axes = plt.subplots(1, 1 + bool(names), figsize=(6 + 5 * bool(names), 4), squeeze=False)
    for name in chosen:
        steps, values = zip(*series[name], strict=True)
        ax = axes[0][1] if name in names else axes[0][0]
        ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
