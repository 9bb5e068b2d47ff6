"""Int8 weights for decoding on a CPU.

A decoding step at batch 1 reads every decoder weight and the output projection once to
compute a few rows, so its time is the time to bring those bytes from memory, not the
arithmetic. Stored as int8 a weight takes a quarter of fp32's bytes. Each output row of
a matrix gets its own scale (symmetric, per channel: ``w ≈ scale_j · q_ij`` with
``q`` in -127..127, ``scale_j = max_i |w_ij| / 127``), and each call quantizes its input
rows to 8 bits on the fly (dynamic quantization) so that the product runs in integers;
the result comes back in floating point with the bias added.

The kernel is torch's quantized engine (``torch.ops.quantized.linear_dynamic``, the one
``torch.ao.quantization.quantize_dynamic`` uses for ``nn.Linear``); the decoder step keeps
its own weights packed for it (:func:`qkv.layers.Decoder.init_static_cache` with
``quantize="int8"``). Outputs then agree with fp32 within a tolerance, not bit for bit:
greedy decoding can pick another token where two were nearly tied.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["QUANTIZATIONS", "int8_linear", "int8_unavailable", "pack_int8_weight"]

QUANTIZATIONS = ("int8",)

# Inputs quantized to 7 bits: the engine's 8-bit products of unsigned inputs and signed
# weights can saturate in 16-bit sums on CPUs without VNNI; torch.ao's dynamic
# quantization makes the same choice for the x86 engine.
_REDUCE_RANGE = True


def int8_unavailable(device: torch.device) -> str | None:
    """Why int8 decoding weights cannot run on ``device``, or None when they can."""
    if device.type != "cpu":
        return f"int8 weights run on a CPU only, not {device.type}"
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm", "onednn", "qnnpack"):
        return f"torch's quantized engine is {engine!r}: this torch build has no int8 kernels"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return "this torch build has no torch.ops.quantized.linear_dynamic"
    return None


def pack_int8_weight(weight: Tensor, bias: Tensor | None) -> object:
    """``weight`` ``(out, in)`` quantized per output row to int8 and packed with
    ``bias`` ``(out,)`` for :func:`int8_linear`."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    b = None if bias is None else bias.detach().float()
    # torch marks its quantized tensor types as deprecated; they are what the engine's
    # packing takes in this torch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, b)


def int8_linear(x: Tensor, packed: object, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` with the weight and bias packed by
    :func:`pack_int8_weight` (``bias`` here must be None: it is in ``packed``).
    Computed from fp32 inputs; the result has ``x``'s dtype. Shape: ``(..., in)`` ->
    ``(..., out)``."""
    if bias is not None:
        raise ValueError("int8_linear: the bias is packed with the weight")
    y = torch.ops.quantized.linear_dynamic(x.float(), packed, _REDUCE_RANGE)
    return y if x.dtype == torch.float32 else y.to(x.dtype)
