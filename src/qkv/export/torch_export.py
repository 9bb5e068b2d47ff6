"""A :class:`~qkv.export.graphs.Graph` as a ``torch.export`` program, saved with
``torch.export.save`` (``.pt2``): ``torch.export.load(path).module()`` runs it with any
batch size and length, without qkv installed.

The same program is what :mod:`qkv.export.onnx` hands to the ONNX exporter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qkv.export.graphs import Graph, largest_difference

__all__ = ["check_pt2", "export_program", "save_pt2"]


def export_program(graph: Graph) -> torch.export.ExportedProgram:
    """``graph.module`` traced on ``graph.example``, its dynamic axes kept symbolic."""
    with torch.no_grad():
        return torch.export.export(
            graph.module, graph.example, dynamic_shapes=graph.dynamic_shapes, strict=False
        )


def save_pt2(program: torch.export.ExportedProgram, path: Path) -> None:
    torch.export.save(program, path)


def check_pt2(graph: Graph, path: Path) -> float:
    """The largest difference between the saved program, loaded again, and the module on
    :attr:`Graph.check` (another batch size and length)."""
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        got = loaded(*graph.check)
        expected = graph.module(*graph.check)
    return largest_difference([g.numpy() for g in got], [e.numpy() for e in expected])
