"""What every ``qkv`` subcommand shares: a help sentence for every option, its default
shown, ``--version``, usage errors with status 2, the group's ``--help`` listing the
options of its default action, and the same inference options wherever a model runs.

The parsers are collected through the real entry point: each subcommand is started
with its parsing intercepted, so a subcommand added later is checked without being
listed here by hand, as long as its group names it.
"""

from __future__ import annotations

import argparse

import pytest

from qkv import __version__
from qkv.cli import build_parser, main


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser that ``qkv ARGV`` parses its options with."""

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        # The root parser and a group's parser parse first, then hand over.
        if self.prog != "qkv" and self.get_default("subcommands") is None:
            raise _Caught(self)
        return original(self, *args, **kwargs)

    original = argparse.ArgumentParser.parse_known_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_intermixed_args", catch)
    try:
        main(argv)
    except _Caught as caught:
        return caught.parser
    raise AssertionError(f"qkv {' '.join(argv)} parsed no options of its own")


def _commands() -> list[list[str]]:
    """Every subcommand's command line: ``explain``, ``vit train``, ``translate RUN``..."""
    root = build_parser()
    subparsers = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    found: list[list[str]] = []
    for name, parser in subparsers.choices.items():
        group = parser.get_default("subcommands")
        if group is None:
            found.append([name])
            continue
        found += [[name, sub] for sub in group]
    found.append(["translate", "RUN"])  # the group's default action
    return found


COMMANDS = _commands()


def test_the_groups_name_their_subcommands():
    assert ["vit", "train"] in COMMANDS and ["bert", "finetune"] in COMMANDS
    assert ["translate", "eval"] in COMMANDS and ["explain"] in COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_option_has_a_help_sentence(argv, monkeypatch):
    parser = _parser_of(argv, monkeypatch)
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not (action.help or "").strip() and action.help != argparse.SUPPRESS
    ]
    assert not missing, f"qkv {' '.join(argv)}: options without help: {missing}"


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_shows_the_defaults(argv, monkeypatch, capsys):
    parser = _parser_of(argv, monkeypatch)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(default, (int, float, str)) and not isinstance(default, bool):
            assert "default" in (action.help or "") or f"(default: {default})" in text, (
                f"qkv {' '.join(argv)} {action.option_strings[0]}: default {default!r} not shown"
            )


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_no_subcommand_defines_threads(argv, monkeypatch):
    """``--threads`` is an option of ``qkv`` itself, defined once for every command."""
    parser = _parser_of(argv, monkeypatch)
    assert not any("--threads" in action.option_strings for action in parser._actions)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"qkv {__version__}"


@pytest.mark.parametrize(
    "argv",
    [["vit"], ["bert"], ["translate"], ["vit", "nonsense"], ["explain", "--bogus"], ["nonsense"]],
    ids=" ".join,
)
def test_usage_errors_exit_2_on_stderr(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.strip() and not captured.out.strip()


def test_group_help_lists_the_default_action(capsys):
    assert main(["translate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "train | eval" in out or "qkv translate train" in out
    assert "--beam" in out and "--length-penalty" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["translate", "RUN"],
        ["translate", "eval"],
        ["bert", "classify"],
        ["embed"],
        ["vit", "classify"],
        ["vit", "eval"],
        ["attention"],
    ],
    ids=" ".join,
)
def test_inference_commands_take_device_and_dtype(argv, monkeypatch):
    parser = _parser_of(argv, monkeypatch)
    options = {s for action in parser._actions for s in action.option_strings}
    assert {"--device", "--dtype"} <= options


@pytest.mark.parametrize(
    "argv",
    [
        ["translate", "RUN"],
        ["translate", "eval"],
        ["bert", "classify"],
        ["embed"],
        ["vit", "classify"],
        ["vit", "eval"],
    ],
    ids=" ".join,
)
def test_json_output_is_offered(argv, monkeypatch):
    parser = _parser_of(argv, monkeypatch)
    assert any("--json" in action.option_strings for action in parser._actions)


@pytest.mark.parametrize(
    "argv",
    [["translate", "train"], ["bert", "pretrain"], ["bert", "finetune"], ["vit", "train"]],
    ids=" ".join,
)
def test_long_jobs_offer_no_progress(argv, monkeypatch):
    parser = _parser_of(argv, monkeypatch)
    assert any("--no-progress" in action.option_strings for action in parser._actions)


def test_fp16_on_the_cpu_is_refused():
    from qkv.cli._options import inference_device

    with pytest.raises(ValueError, match="--dtype fp16 needs a GPU"):
        inference_device(argparse.Namespace(device="cpu", dtype="fp16"))
    where, dtype = inference_device(argparse.Namespace(device="cpu", dtype="bf16"))
    assert (str(where), str(dtype)) == ("cpu", "torch.bfloat16")
