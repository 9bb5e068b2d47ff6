"""BBC News through the CSV path: ``qkv bert finetune --train/--valid/--test`` against the
built-in loader (``--data bbc``), same seed, recipe and examples.

The built-in train / valid / test splits (:func:`qkv.data.text.load_bbc`: deduplicated, hash
split, in file order) are written to ``DIR/{train,valid,test}.csv`` (columns ``text``,
``label``: the topic name). The label names sort to the built-in order, and the files keep
the examples' order, so both runs see the same batches: the test accuracies should be equal.

Run (from the repository root):
    .venv/bin/python benchmarks/bert_csv.py --write runs/bbc-csv
    OMP_NUM_THREADS=1 .venv/bin/qkv --threads 1 bert finetune --data bbc --epochs 1 \\
        --seeds 0 --run-dir runs/bbc-builtin --no-progress
    OMP_NUM_THREADS=1 .venv/bin/qkv --threads 1 bert finetune --train runs/bbc-csv/train.csv \\
        --valid runs/bbc-csv/valid.csv --test runs/bbc-csv/test.csv --epochs 1 --seeds 0 \\
        --run-dir runs/bbc-from-csv --no-progress
    .venv/bin/python benchmarks/bert_csv.py --compare runs/bbc-builtin runs/bbc-from-csv

``--compare`` prints a Markdown table of the two runs' ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from qkv.data.labelled import LabelledFiles
from qkv.data.text import load_bbc
from qkv.fileio import write_text_atomic


def write_csv_splits(directory: Path) -> None:
    bbc = load_bbc()
    directory.mkdir(parents=True, exist_ok=True)
    for part in ("train", "valid", "test"):
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for text, label in getattr(bbc, part):
            writer.writerow([text, bbc.label_names[label]])
        write_text_atomic(directory / f"{part}.csv", out.getvalue())
    # The files read back give exactly the built-in examples.
    files = LabelledFiles(*(directory / f"{p}.csv" for p in ("train", "valid", "test")))
    back = files.load()
    assert back.label_names == bbc.label_names
    assert (back.train, back.valid, back.test) == (bbc.train, bbc.valid, bbc.test)
    print(f"wrote {directory}/{{train,valid,test}}.csv: {bbc}")


def compare(run_dirs: list[Path]) -> None:
    print("| run | train / valid / test | seed | valid accuracy | test accuracy | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for run_dir in run_dirs:
        results = json.loads((run_dir / "results.json").read_text())
        sizes = "{train} / {valid} / {test}".format(**results["sizes"])
        for seed, accuracy in results["test_accuracy"].items():
            n = results["sizes"]["test"]
            valid = results["valid_accuracy"][seed]
            print(
                f"| {run_dir.name} ({results['dataset']}) | {sizes} | {seed} | {valid:.2%} | "
                f"{accuracy:.2%} ({round(accuracy * n)}/{n}) | {results['seconds'][seed]:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the CSV splits here")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="RUN_DIR")
    options = parser.parse_args()
    if options.write is None and options.compare is None:
        parser.error("give --write DIR and/or --compare RUN_DIR ...")
    if options.write is not None:
        write_csv_splits(options.write)
    if options.compare is not None:
        compare(options.compare)


if __name__ == "__main__":
    main()
