"""The qkv command line."""

import subprocess
import sys

from qkv.cli import main


def test_explain_prints_every_step(capsys):
    assert main(["explain"]) == 0
    text = capsys.readouterr().out
    for needle in (
        "w_key",
        "w_query",
        "w_value",
        "[ 4, 16, 12]",
        "[0.0634, 0.4683, 0.4683]",
        "[1.9366, 6.6831, 1.5951]",
        "[2.0, 7.0, 1.5]",
    ):
        assert needle in text, needle


def test_explain_scaled(capsys):
    assert main(["explain", "--scaled"]) == 0
    assert "1/sqrt(3) = 0.5774" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "qkv.cli", "explain"], capture_output=True, text=True, check=True
    )
    assert "Self-attention, step by step" in result.stdout
