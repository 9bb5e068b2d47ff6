"""benchmarks/gpu.py: the smoke test on the CPU (tiny sizes, one round) prints its
section in the documented format, writes it where asked, refuses to put a smoke test
into the project's RESULTS.md, and keeps going past a failing row group."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
RATIO = r"\d+\.\d\d \| \d+\.\d\d–\d+\.\d\d"  # median | min–max


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_quick_attention_prints_the_section_and_writes_it(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other (kept)\n\ntext\n")
    done = run("--quick", "--only", "attention", "--write", str(results))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("## GPU (benchmarks/gpu.py)\n\nMeasured ")
    assert f"torch {torch.__version__}" in out
    assert "`.venv/bin/python benchmarks/gpu.py --device cpu --quick --only attention" in out
    assert re.search(
        r"^\| bf16 matmul 256×256×256: the bf16 matrix rate \| [\d.]+ TFLOP/s ", out, re.M
    )
    for length in (32, 64):
        row = (
            rf"^\| MHA forward\+backward, causal, batch 2, d 64, 4 heads, L {length} vs "
            rf"nn\.MultiheadAttention \| [\d.]+ ms \| [\d.]+ ms \| {RATIO} \| 1 × 1 \| \d+% / \d+% "
            r"\| relative diff "
        )
        assert re.search(row, out, re.M), out
    assert "BERT" not in out and "Failed" not in out  # --only: nothing else ran
    written = results.read_text()
    assert written.startswith("# Benchmark results\n\n## Other (kept)\n\ntext\n\n")
    assert written.endswith(out)


def test_write_into_the_project_results_needs_a_full_gpu_run() -> None:
    done = run("--quick", "--only", "attention", "--write")
    assert done.returncode == 2
    assert "--write benchmarks/RESULTS.md records full GPU runs" in done.stderr
    assert done.stdout == ""


def import_gpu() -> ModuleType:
    """benchmarks/gpu.py as a module (it imports its neighbour ``_common``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu


def test_a_failing_group_is_one_line_and_the_others_run() -> None:
    gpu = import_gpu()

    def broken(ctx: gpu.Context) -> None:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    def fine(ctx: gpu.Context) -> None:
        ctx.add(gpu.Row("fine", "a row", "1 ms"))

    ctx = gpu.Context(torch.device("cpu"), gpu.QUICK, rounds=1)
    gpu.run_groups(ctx, ["broken", "fine"], {"broken": broken, "fine": fine})
    assert ctx.failures == ["broken: failed: RuntimeError: CUDA out of memory."]
    assert [r.name for r in ctx.rows] == ["a row"]
    text = gpu.section(ctx, ["--only", "fine"], 1.0)
    assert "| a row | 1 ms | — | — | — |  | — |  |" in text
    assert text.endswith(
        "Failed row groups:\n\n- broken: failed: RuntimeError: CUDA out of memory.\n"
    )


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--only", "nothing"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("gpu.py: error: ")


def test_decoding_flags_select_the_old_path_and_on_cuda_each_automatic_one() -> None:
    gpu = import_gpu()

    def decode(
        model: object, src_ids: object, *, max_len: int | None = None, static_cache: bool = True,
        cuda_graphs: bool | None = None, fused_step: bool = False, bucket: str = "pow2",
    ) -> None: ...  # fmt: skip

    fast, others, note = gpu.path_flags(decode, torch.device("cuda"))
    assert fast == {"fused_step": True}
    assert others == [
        {"static_cache": False, "cuda_graphs": False, "fused_step": False},
        {"fused_step": True, "cuda_graphs": False},
    ]
    assert note == (
        "new arguments: static_cache=True, cuda_graphs=None, fused_step=False, bucket='pow2'"
    )
    assert gpu.path_flags(decode, torch.device("cpu"))[1] == others[:1]

    def plain(model: object, src_ids: object, *, max_len: int | None = None) -> None: ...

    assert gpu.path_flags(plain, torch.device("cuda")) == ({}, [], "new arguments: none")
