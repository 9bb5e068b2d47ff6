"""Which number formats a device multiplies fast, and training's ``precision="auto"``.

bf16 halves the bytes of every activation and, on hardware with bf16 matrix
instructions, runs matrix products two to several times as fast as fp32: NVIDIA GPUs
from Ampere on, x86 CPUs with AVX-512 BF16 or AMX, Arm CPUs with the BF16 extension.
Without them torch multiplies bf16 in plain loops that widen every element to fp32
first, and a bf16 matrix product on an AVX2-only CPU runs tens of times slower than
fp32 (benchmarks/RESULTS.md, "Training precision"). A recipe that asks for bf16 for
speed therefore says ``"auto"``: bf16 where it pays, fp32 elsewhere.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Precision", "bf16_is_slow", "resolve_precision"]

# What a training recipe asks for; "auto" is resolved per device by resolve_precision.
Precision = Literal["fp32", "bf16", "fp16", "auto"]


def _cpu_features() -> dict[str, object] | None:
    get = getattr(torch.cpu, "get_capabilities", None)  # absent from older torch
    return dict(get()) if get is not None else None


def bf16_is_slow(device: torch.device) -> str | None:
    """Why bf16 matrix products on ``device`` are slower than fp32 ones (one phrase,
    naming the device), or ``None`` when the device has bf16 matrix instructions."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        if major < 8:
            name = torch.cuda.get_device_name(index)
            return f"{name} has no bf16 matrix instructions (they came with Ampere)"
        return None
    if device.type != "cpu":
        return None  # MPS and others: torch's kernels decide; nothing known to warn of
    features = _cpu_features()
    if features is None:
        # An older torch: oneDNN's own check, which also accepts AVX-512 without BF16.
        fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return None if fast else "this CPU has no bf16 matrix instructions"
    if features.get("architecture") == "x86_64":
        if features.get("avx512_bf16") or features.get("amx_bf16"):
            return None
        best = "AVX-512" if features.get("avx512_f") else "AVX2" if features.get("avx2") else "SSE"
        name = str(features.get("cpu_name") or "this CPU").strip()
        return f"{name} has no bf16 matrix instructions ({best}, no AVX-512 BF16 or AMX)"
    if features.get("bf16") or features.get("sve_bf16"):
        return None
    return "this CPU has no bf16 matrix instructions"


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """The precision training runs in on ``device``: ``"auto"`` becomes ``"bf16"`` where
    :func:`bf16_is_slow` finds nothing against it (never on MPS, whose bf16 autocast is
    not known to pay), else ``"fp32"``; the others stay as they are."""
    if precision != "auto":
        return precision
    if device.type not in ("cpu", "cuda"):
        return "fp32"
    return "fp32" if bf16_is_slow(device) else "bf16"
