"""A :class:`~qkv.export.graphs.Graph` as an ONNX file, through ``torch.export`` and
PyTorch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which needs the
``onnxscript`` package of the ``[onnx]`` extra).

The dynamic axes get the names of :attr:`Graph.shapes` (``batch``, ``sequence``,
``past``...) instead of the exporter's ``s0``, ``s1``; qkv's metadata (family, the
translator's ids) goes into the model's ``metadata_props`` as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from qkv.export.graphs import Graph, flat_inputs, largest_difference

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "check_onnx", "require_onnx", "save_onnx"]

MIN_OPSET = 17  # LayerNormalization is an ONNX operator from opset 17 on
DEFAULT_OPSET = 18


def require_onnx() -> None:
    """Raise ValueError naming what is missing when the ONNX exporter cannot run."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ValueError(f"--format onnx needs {' and '.join(missing)}: pip install 'qkv[onnx]'")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter reports its progress and optional operators it skipped (torchvision's)
    through logging and warnings; none of it concerns a qkv model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def save_onnx(
    graph: Graph,
    program: torch.export.ExportedProgram,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``program`` (``graph`` exported) to ``path`` as ONNX with ``opset``."""
    if opset < MIN_OPSET:
        raise ValueError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    with _quiet():
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            opset_version=opset,
            input_names=graph.input_names,
            output_names=graph.output_names,
            verbose=False,
        )
    assert onnx_program is not None
    model = onnx_program.model
    renames: dict[Any, str] = {}
    for value in model.graph.inputs:
        named = graph.shapes.get(value.name or "", [])
        for axis, dim in zip(value.shape or [], named, strict=False):
            if isinstance(dim, str) and not isinstance(axis, int):
                renames[str(axis)] = dim
    if renames:
        onnx_program.rename_axes(renames)
    for key, value in (metadata or {}).items():
        model.metadata_props[key] = value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "qkv"
    with _quiet():
        onnx_program.save(path)


def check_onnx(graph: Graph, path: Path) -> float:
    """The largest difference between the ONNX file in ONNX Runtime and the module, on
    :attr:`Graph.check` (another batch size and length); ``nan`` when ONNX Runtime is
    not installed (the file is still checked by ``onnx.checker``)."""
    import onnx

    onnx.checker.check_model(str(path))
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = flat_inputs(graph.check)
    feed = {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)}
    got = session.run(None, feed)
    with torch.no_grad():
        expected = graph.module(*graph.check)
    return largest_difference(got, [e.numpy() for e in expected])
