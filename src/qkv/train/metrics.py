"""Metrics of a run: a CSV in the run directory (and TensorBoard when installed),
and a picture of the loss curves at the end."""

from __future__ import annotations

import csv
import logging
import time
from collections import defaultdict
from pathlib import Path

__all__ = ["MetricsLog", "plot_curves", "read_metrics"]

logger = logging.getLogger(__name__)
FIELDS = ["step", "time", "name", "value"]


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` from a ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            series[row["name"]].append((int(row["step"]), float(row["value"])))
    return dict(series)


class MetricsLog:
    """Appends ``step,time,name,value`` rows to ``<run>/metrics.csv``.

    On resume from step ``s`` the rows after ``s`` (written by the interrupted run
    after its last checkpoint) are dropped, so the file shows one continuous curve.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except Exception:  # tensorboard is optional
            self._tensorboard = None

    def log(self, step: int, **values: float) -> None:
        now = time.time()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            for name, value in values.items():
                writer.writerow([step, f"{now:.3f}", name, repr(float(value))])
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


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
