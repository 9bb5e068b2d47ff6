"""Models that leave qkv: ONNX graphs and ``torch.export`` programs of a BERT (optionally
with its sentence-embedding pooling), a ViT, and a translator as an encoder graph and a
decoder-step graph with its key/value cache as inputs and outputs.

- :mod:`~qkv.export.graphs`: the models wrapped with named tensor inputs and outputs;
- :mod:`~qkv.export.translator`: the translator's two graphs, ``translator.json``, and
  :class:`~qkv.export.translator.OnnxTranslator`, greedy decoding in ONNX Runtime;
- :mod:`~qkv.export.torch_export` and :mod:`~qkv.export.onnx`: the two formats;
- :mod:`~qkv.export.api`: :func:`export`, a folder written whole, each graph checked.

The command is ``qkv export``; docs/export.md describes the graphs.
"""

from qkv.export.api import EXPORT_FILE, FORMATS, ExportResult, export

__all__ = ["EXPORT_FILE", "FORMATS", "ExportResult", "export"]
