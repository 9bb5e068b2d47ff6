"""``torch.compile`` for inference, in one place: what ``--compile`` does in every
command that runs a BERT or a ViT (``qkv bert classify``/``tag``, ``qkv embed``,
``qkv vit classify``/``eval``).

:func:`compile_model` compiles a model in place (:meth:`torch.nn.Module.compile`), so
the object keeps its class, attributes and parameters and the tasks call it as before;
the first call of each new input shape pays the compilation. Where torch itself says
that its compiler cannot run here (no C++ compiler for the CPU backend, no Triton for
CUDA, a Python that ``torch._dynamo`` does not support), the model stays as it is and a
warning says why: the results are the same either way, only the speed differs. Any other
failure of the compiler is an error, not a silent fallback.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import torch
from torch import nn

__all__ = ["compile_model", "compile_unavailable"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile``'s default backend cannot run on ``device`` here, as torch
    reports it, or ``None`` when it can (as far as can be told before compiling)."""
    from torch._dynamo import is_dynamo_supported

    device = torch.device(device)
    if not is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # moved in another torch version: let compiling find out
            return None
        try:
            get_cpp_compiler()
        except Exception:  # torch's InvalidCxxCompiler; its text is a paragraph
            return "no C++ compiler found, which torch.compile needs on the CPU (install g++)"
    elif device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return None
        if not has_triton():
            return "Triton is not installed, which torch.compile needs on this GPU"
    return None


def compile_model(
    model: M,
    enabled: bool = True,
    *,
    dynamic: bool | None = None,
    mode: str | None = None,
) -> M:
    """``model`` compiled in place for inference when ``enabled``; returned for chaining.

    Args:
        model: on the device and in the number format it will run in (the compiled
            code is specialised to them).
        enabled: ``False`` returns ``model`` untouched (``--compile`` not given).
        dynamic: ``True`` compiles one program for every input size (BERT: batches of
            varying length, which would otherwise recompile for each new one);
            ``None`` (torch's default) compiles for the first sizes seen and again,
            for any size, when another comes (ViT: a last, smaller batch).
        mode: ``torch.compile``'s mode (``"max-autotune"``, ``"reduce-overhead"``:
            CUDA graphs on a GPU); ``None``: its default.

    A backend torch reports missing (:func:`compile_unavailable`) leaves ``model``
    uncompiled, with a warning.
    """
    if not enabled:
        return model
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    reason = compile_unavailable(device)
    if reason is not None:
        log.warning("--compile: %s; running the model uncompiled", reason)
        return model
    model.compile(dynamic=dynamic, mode=mode)
    return model
