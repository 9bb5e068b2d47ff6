"""The translator's levers, each measured on the validation split.

Each lever is a training run of a recipe (a preset with ``--set FIELD=VALUE`` changes,
and optionally back-translated pairs), scored on the **validation** split of the
German–English dictionary: greedy, beam 4, and beam 4 on the average of the last
checkpoints, single-reference sacreBLEU and, beside it, BLEU with the references' "/"
alternatives as several references (:func:`qkv.tasks.translation.score`). The test
split is scored only by ``final``, for the recipe kept.

Subcommands:

``run NAME``: train ``runs/levers/NAME`` (resumed if interrupted) and write
``runs/levers/NAME/lever.json`` (recipe, minutes, threads, scores);
``decode NAME``: beam sizes and length penalties on the validation split;
``final NAME``: the test split, with the decoding chosen on the validation split;
``table``: every ``lever.json`` as one Markdown table (``--results`` writes it into
``benchmarks/RESULTS.md``);
``ensemble NAME NAME ...``: the runs' models decoding together on the validation split
(each step's next-token log-probabilities averaged; the runs must share a tokenizer).

Run (from the repository root):
    .venv/bin/python benchmarks/translation_levers.py run medium --preset medium --threads 1
    .venv/bin/python benchmarks/translation_levers.py run first --preset medium \\
        --set alternatives=first --threads 1
    .venv/bin/python benchmarks/translation_levers.py decode first --beams 1 4 8
    .venv/bin/python benchmarks/translation_levers.py table --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import log, write_results
from translation import _override

from qkv.data.translation import load_translation
from qkv.fileio import write_json_atomic
from qkv.tasks.translation import PRESETS, load_translator, score, train_translator
from qkv.train.checkpoint import list_checkpoints
from qkv.train.rundir import _flatten

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "levers"
SECTION = "## Translation levers (benchmarks/translation_levers.py)"


def _scores(run: Path, split: str, beam: int, average: int, length_penalty: float) -> dict:
    corpus = load_translation(None)
    pairs = corpus.valid if split == "valid" else corpus.test
    translator = load_translator(run, average_last=average)
    start = time.perf_counter()
    hypotheses = translator.translate(
        [s for s, _ in pairs], beam_size=beam, length_penalty=length_penalty
    )
    found = score(hypotheses, [t for _, t in pairs])
    return {
        "split": split,
        "beam": beam,
        "average": average,
        "length_penalty": length_penalty,
        "bleu": round(found["bleu"], 2),
        "bleu_multi": round(found["bleu_multi"], 2),
        "chrf": round(found["chrf"], 2),
        "seconds": round(time.perf_counter() - start, 1),
        "signature": found["bleu_signature"],
    }


def run(args: argparse.Namespace) -> None:
    recipe = _override(PRESETS[args.preset], args.set)
    folder = RUNS / args.name
    resume = bool(list_checkpoints(folder)) if folder.exists() else False
    start = time.perf_counter()
    train_translator(
        folder, recipe, resume=resume, progress=False, back_translated=args.back_translated
    )
    minutes = (time.perf_counter() - start) / 60
    average = recipe.average_last
    rows = [_scores(folder, "valid", 1, 1, 0.6), _scores(folder, "valid", 4, 1, 0.6)]
    if average > 1:
        rows.append(_scores(folder, "valid", 4, average, 0.6))
    for row in rows:
        log(f"{args.name}: beam {row['beam']} avg {row['average']}: BLEU {row['bleu']} "
            f"(multi {row['bleu_multi']}, chrF {row['chrf']})")  # fmt: skip
    write_json_atomic(
        folder / "lever.json",
        {
            "name": args.name,
            "preset": args.preset,
            "set": args.set,
            "back_translated": args.back_translated,
            "recipe": recipe.to_dict(),
            "minutes": round(minutes, 1),
            "resumed": resume,
            "threads": torch.get_num_threads(),
            "date": str(datetime.date.today()),
            "torch": torch.__version__,
            "scores": rows,
        },
    )


def decode(args: argparse.Namespace) -> None:
    folder = RUNS / args.name
    lever = json.loads((folder / "lever.json").read_text())
    average = lever["recipe"]["average_last"]
    rows = []
    for beam in args.beams:
        for penalty in args.length_penalties if beam > 1 else [0.6]:
            row = _scores(folder, "valid", beam, average, penalty)
            log(f"beam {beam} length penalty {penalty}: BLEU {row['bleu']} "
                f"(multi {row['bleu_multi']})")  # fmt: skip
            rows.append(row)
    lever["decoding"] = rows
    write_json_atomic(folder / "lever.json", lever)


def final(args: argparse.Namespace) -> None:
    folder = RUNS / args.name
    lever = json.loads((folder / "lever.json").read_text())
    average = lever["recipe"]["average_last"]
    best = max(lever.get("decoding", lever["scores"]), key=lambda r: r["bleu"])
    rows = [
        _scores(folder, "test", 1, 1, 0.6),
        _scores(folder, "test", 4, average, 0.6),
        _scores(folder, "test", best["beam"], best["average"], best["length_penalty"]),
    ]
    for row in rows:
        log(f"test: beam {row['beam']} avg {row['average']} lp {row['length_penalty']}: "
            f"BLEU {row['bleu']} (multi {row['bleu_multi']}, chrF {row['chrf']})")  # fmt: skip
    lever["test"] = rows
    write_json_atomic(folder / "lever.json", lever)


class _Ensemble(torch.nn.Module):
    """Models that share a tokenizer, as one model for :mod:`qkv.decoding` (growing
    cache): the memories side by side along the width, each step's log-probabilities
    averaged (their normalised geometric mean, once the search's log-softmax runs)."""

    supports_static_cache = False

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.config = models[0].config
        self.width = self.config.d_model

    def encode(self, src_ids, src_key_padding_mask=None):  # (b, s) -> (b, s, n·d)
        states = [
            m.encode(src_ids, src_key_padding_mask=src_key_padding_mask) for m in self.members
        ]
        return SimpleNamespace(
            last_hidden_state=torch.cat([o.last_hidden_state for o in states], -1)
        )

    def init_cache(self):
        return _EnsembleCache([m.init_cache() for m in self.members])

    def decode(self, tgt_ids, memory, memory_key_padding_mask=None, cache=None):
        hidden = [
            m.decode(tgt_ids, part, memory_key_padding_mask=memory_key_padding_mask, cache=c)
            for m, part, c in zip(
                self.members, memory.split(self.width, -1), cache.caches, strict=True
            )
        ]
        return SimpleNamespace(
            last_hidden_state=torch.cat([h.last_hidden_state for h in hidden], -1)
        )

    def logits(self, hidden):  # (n, m·d) -> (n, V)
        parts = hidden.split(self.width, -1)
        each = [
            torch.log_softmax(m.logits(h).float(), -1)
            for m, h in zip(self.members, parts, strict=True)
        ]
        return torch.stack(each).mean(0)


class _EnsembleCache:
    def __init__(self, caches: list) -> None:
        self.caches = caches

    def reorder(self, index: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(index)


def ensemble(args: argparse.Namespace) -> None:
    folders = [RUNS / name for name in args.names]
    tokenizers = {(f / "tokenizer.json").read_bytes() for f in folders}
    if len(tokenizers) != 1:
        raise SystemExit("ensemble: the runs' tokenizers differ")
    members = []
    for folder in folders:
        lever = json.loads((folder / "lever.json").read_text())
        members.append(load_translator(folder, average_last=lever["recipe"]["average_last"]))
    together = dataclasses.replace(members[0], model=_Ensemble([t.model for t in members]).eval())
    pairs = load_translation(None).valid
    for beam in args.beams:
        hypotheses = together.translate([s for s, _ in pairs], beam_size=beam)
        found = score(hypotheses, [t for _, t in pairs])
        log(
            f"ensemble of {', '.join(args.names)} (each averaged), valid, beam {beam}: BLEU "
            f"{found['bleu']:.2f} (multi {found['bleu_multi']:.2f}, chrF {found['chrf']:.2f})"
        )


def _preset_then(lever: dict) -> str:
    """The fields in which the lever's preset, when it ran, differs from the preset of
    that name now (``FIELD=VALUE, ...``; empty when it is the same): a preset may change
    after the levers that led to it were measured."""
    if lever["preset"] not in PRESETS:
        return ""
    now = _flatten(_override(PRESETS[lever["preset"]], lever["set"]).to_dict())
    recorded = _flatten(lever["recipe"])
    return ", ".join(
        f"`{key}={value}`"
        for key, value in recorded.items()
        if key in now and now[key] != value and key != "name"
    )


def table(args: argparse.Namespace) -> str:
    levers = [json.loads(path.read_text()) for path in sorted(RUNS.glob("*/lever.json"))]
    levers.sort(key=lambda lever: lever["date"] + lever["name"])
    lines = [
        "### Each lever on the validation split",
        "",
        "Each row trains a recipe and scores the 909 validation pairs (single-reference "
        "sacreBLEU; *multi*: the references' '/' alternatives expanded into up to 4 "
        "references, `qkv.data.alternatives.reference_streams`). Minutes are wall time "
        "of training with its periodic validation, at the threads shown, often beside "
        "another run on the second core.",
        "",
        "| lever | recipe changes | minutes (threads) | greedy | beam 4 | beam 4, averaged "
        "| multi (beam 4, averaged) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lever in levers:
        by = {(r["beam"], r["average"]): r for r in lever["scores"]}
        greedy, beam = by.get((1, 1)), by.get((4, 1))
        averaged = next((r for r in lever["scores"] if r["average"] > 1), beam)
        changes = ", ".join(f"`{s}`" for s in lever["set"]) or "(the preset)"
        if lever["back_translated"]:
            changes += f", back-translated `{Path(lever['back_translated']).name}`"
        then = _preset_then(lever)
        preset = f"`{lever['preset']}`" + (f" (as it was then: {then})" if then else "")
        lines.append(
            f"| {lever['name']} | {preset} {changes} | {lever['minutes']} "
            f"({lever['threads']}) | {greedy['bleu']} | {beam['bleu']} | {averaged['bleu']} "
            f"| {averaged['bleu_multi']} |"
        )
    for lever in levers:
        if "decoding" in lever:
            lines += ["", f"Decoding of `{lever['name']}` on the validation split:", ""]
            lines += ["| beam | length penalty | BLEU | multi |", "| ---: | ---: | ---: | ---: |"]
            lines += [
                f"| {r['beam']} | {r['length_penalty']} | {r['bleu']} | {r['bleu_multi']} |"
                for r in lever["decoding"]
            ]
        if "test" in lever:
            lines += ["", f"Test split of `{lever['name']}`:", ""]
            lines += ["| decoding | BLEU | multi | chrF |", "| --- | ---: | ---: | ---: |"]
            lines += [
                f"| beam {r['beam']}, last {r['average']} averaged, length penalty "
                f"{r['length_penalty']} | {r['bleu']} | {r['bleu_multi']} | {r['chrf']} |"
                for r in lever["test"]
            ]
    return "\n".join(lines)


def _levers_in(results: Path) -> list[str]:
    """The names in the lever table already in ``results`` (its seven-column rows)."""
    if not results.exists():
        return []
    text = results.read_text()
    start = text.find("### Each lever on the validation split", text.find(SECTION))
    if start < 0:
        return []
    end = text.find("\n### ", start + 1)
    names = []
    for line in text[start : end if end >= 0 else len(text)].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and cells[0] not in ("lever", "---"):
            names.append(cells[0])
    return names


def curves(path: Path) -> None:
    """Validation BLEU (greedy, first 200 pairs) and loss against the step, one line
    per lever, from each run's ``metrics.csv``."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for folder in sorted(p.parent for p in RUNS.glob("*/lever.json")):
        series: dict[str, list[tuple[int, float]]] = {"valid_bleu": [], "valid_loss": []}
        with open(folder / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["name"] in series:
                    series[row["name"]].append((int(row["step"]), float(row["value"])))
        for axis, name in ((bleu_axis, "valid_bleu"), (loss_axis, "valid_loss")):
            if series[name]:
                steps, values = zip(*sorted(dict(series[name]).items()), strict=True)
                axis.plot(steps, values, marker="o", label=folder.name)
    bleu_axis.set(xlabel="step", ylabel="BLEU (greedy, 200 validation pairs)")
    loss_axis.set(xlabel="step", ylabel="validation loss (no label smoothing)")
    bleu_axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    p = sub.add_parser("run")
    p.add_argument("name")
    p.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--back-translated", help="a TSV of synthetic pairs")
    p = sub.add_parser("decode")
    p.add_argument("name")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--length-penalties", type=float, nargs="+", default=[0.6, 1.0, 1.5])
    p = sub.add_parser("final")
    p.add_argument("name")
    p = sub.add_parser("ensemble")
    p.add_argument("names", nargs="+")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    p = sub.add_parser("table")
    p.add_argument("--results", type=Path, help="write the table into this Markdown file")
    p.add_argument("--curves", type=Path, help="draw every lever's validation curves here")
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.job == "table":
        text = table(args)
        print(text)
        if args.curves:
            curves(args.curves)
        if args.results:
            # The table is made from the lever.json files here; one measured elsewhere
            # (or whose folder is gone) would silently drop out of it.
            here = {path.parent.name for path in RUNS.glob("*/lever.json")}
            missing = [name for name in _levers_in(args.results) if name not in here]
            if missing:
                raise SystemExit(
                    f"translation_levers.py: {args.results} has levers with no "
                    f"{RUNS}/NAME/lever.json here ({', '.join(missing)}); writing the "
                    "table would drop them"
                )
            write_results(args.results, text, section=SECTION)
        return
    {"run": run, "decode": decode, "final": final, "ensemble": ensemble}[args.job](args)


if __name__ == "__main__":
    from qkv.cli._errors import describe

    try:
        main()
    except (KeyboardInterrupt, Exception) as error:
        # A stopped or failed lever: one line, as the qkv commands say it (a stopped
        # run has written its checkpoint first).
        failure = describe(error)
        if failure is None:
            raise
        print(f"translation_levers.py: {failure[0]}", file=sys.stderr)
        sys.exit(failure[1])
