"""Reliability: how qkv meets bad input, and whether a killed training resumes exactly.

Two counts, each through the real entry points:

- every bad-input case of ``tests/test_cli_errors.py`` (its tables ``CASES`` and
  ``STDIN_CASES``, on the same tiny models and damaged files, written by its
  ``make_files``) runs through :func:`qkv.cli.main`, and its outcome is sorted: a clear
  one-line error (non-zero status, one line on stderr starting ``qkv``, naming what the
  test says it must), an unclear error (non-zero status, but not that), a traceback (an
  exception out of ``main``), or a silent wrong result (status 0 on bad input);
- every kill moment of ``tests/test_run_dirs.py`` (``KILLS`` and ``SLOW_KILLS``): a tiny
  translator training SIGKILLs itself at that moment, is resumed, and survives when the
  kill happened and the resumed run's loss curve equals an uninterrupted run's, step for
  step and bit for bit.

Run from the repository root (about 2 minutes on 2 cores)::

    .venv/bin/python benchmarks/reliability.py

It prints a Markdown table on stdout (progress on stderr); it writes no file.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests folder is imported as the package ``tests``

from tests import test_cli_errors as cli_table  # noqa: E402
from tests import test_run_dirs as kill_table  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/reliability.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- bad input -----------------------------------------------------------------------------------


def _run_cli(argv: list[str], files: dict[str, str], stdin: bytes | None) -> tuple[object, str]:
    """(exit status, or the exception that escaped ``main``; stderr) of ``qkv ARGV``."""
    from qkv.cli import main

    err = io.StringIO()
    saved_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status: object = main([arg.format(**files) for arg in argv])
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as error:  # counted as a traceback, not raised
        status = error
    finally:
        sys.stdin = saved_stdin
    return status, err.getvalue()


def _outcome(status: object, err: str, named: str) -> str:
    if isinstance(status, BaseException):
        return "traceback"
    if status == 0:
        return "silent"
    lines = err.strip().splitlines()
    clear = len(lines) == 1 and err.startswith("qkv") and named in err and "Traceback" not in err
    return "clear" if clear else "unclear"


def bad_inputs(tmp: Path) -> dict[str, int]:
    """Counts of each outcome over both tables of tests/test_cli_errors.py."""
    files = cli_table.make_files(tmp)
    cases = [(argv, named, None) for argv, _, named in cli_table.CASES]
    cases += [(argv, named, cli_table.NON_UTF8) for argv, named in cli_table.STDIN_CASES]
    counts = {"tried": 0, "clear": 0, "unclear": 0, "traceback": 0, "silent": 0}
    for argv, named, stdin in cases:
        status, err = _run_cli(argv, files, stdin)
        outcome = _outcome(status, err, named.format(**files))
        counts["tried"] += 1
        counts[outcome] += 1
        if outcome != "clear":
            log(f"  {outcome}: qkv {' '.join(argv)} -> {status!r} {err.strip()[:200]!r}")
    return counts


# --- kills ---------------------------------------------------------------------------------------


def _survives(run: Path, corpus: Path, moment: str, reference: list) -> bool:
    killed = kill_table._subprocess_train(run, corpus, moment, resume=False)
    resumed = kill_table._subprocess_train(run, corpus, "none", resume=True)
    ok = killed == -signal.SIGKILL and resumed == 0 and kill_table._losses(run) == reference
    log(f"  kill {moment}: {'survived' if ok else f'FAILED (kill {killed}, resume {resumed})'}")
    return ok


def kills(tmp: Path) -> tuple[int, int]:
    """(survived, tried) over every kill moment; two at a time (two cores)."""
    corpus = kill_table.write_corpus(tmp / "de-en")
    (tmp / "reference").mkdir()
    assert kill_table._subprocess_train(tmp / "reference", corpus, "none", resume=False) == 0
    reference = kill_table._losses(tmp / "reference")
    moments = [*kill_table.KILLS.values(), *kill_table.SLOW_KILLS.values()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(
            pool.map(lambda m: _survives(tmp / m.replace(":", "-"), corpus, m, reference), moments)
        )
    return sum(results), len(results)


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "inputs").mkdir()
        log("bad inputs ...")
        counts = bad_inputs(tmp / "inputs")
        log("kills ...")
        survived, tried = kills(tmp)
    seconds = time.perf_counter() - start
    print(f"`{COMMAND}` ({seconds:.0f} s)\n")
    print("| inputs tried | clear one-line errors | unclear errors | tracebacks "
          "| silent wrong results | kills survived / tried |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {counts['tried']} | {counts['clear']} | {counts['unclear']} | "
          f"{counts['traceback']} | {counts['silent']} | {survived} / {tried} |")  # fmt: skip


if __name__ == "__main__":
    main()
