#!/usr/bin/env bash
# Build qkv's wheel and sdist, install the wheel into a new virtual environment far from
# this source tree, and run it there: what a user of `pip install qkv-*.whl` gets.
#
#   bash scripts/check_wheel.sh          # after scripts/setup.sh --test (which installs `build`)
#
# Environment: PYTHON (default python3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
    tail -20 "$work/build.log"
    exit 1
}
wheel=$(ls "$work"/dist/qkv-*.whl)
ls "$work"/dist/qkv-*.tar.gz >/dev/null
echo "built $(basename "$wheel") and its sdist"

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
"$python" -m venv "$work/venv"
# The same torch as the project's environment (a CPU build is what pip finds offline here).
"$work/venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 "$wheel"

cd "$work"  # no source tree beside it: `import qkv` must come from the wheel
"$work/venv/bin/python" - "$root" <<'PY'
import sys
from pathlib import Path

import qkv

where = Path(qkv.__file__).resolve()
assert not where.is_relative_to(Path(sys.argv[1]).resolve()), f"qkv imported from {where}"
assert (where.parent / "py.typed").is_file(), "py.typed is missing from the wheel"
print(f"qkv {qkv.__version__} imported from {where.parent}")
PY
"$work/venv/bin/qkv" --version
"$work/venv/bin/qkv" explain >/dev/null && echo "qkv explain: ok"
# One small inference through the public API.
"$work/venv/bin/python" - <<'PY'
import torch

import qkv
from qkv.models import Transformer, TransformerConfig

model = Transformer(TransformerConfig.tiny(src_vocab_size=50, tgt_vocab_size=50)).eval()
out = model(torch.randint(1, 50, (2, 5)), torch.randint(1, 50, (2, 4)))
assert out.logits.shape == (2, 4, 50), out.logits.shape
mha = qkv.MultiHeadAttention(d_model=16, num_heads=2)
assert mha(torch.randn(1, 3, 16)).output.shape == (1, 3, 16)
print("inference from the wheel: ok")
PY
