"""``export``: a qkv run or Hugging Face folder to a folder of ONNX graphs or
``torch.export`` programs, checked, and written whole or not at all.

The folder holds the graphs (``model.onnx``; a translator's ``encoder.onnx`` and
``decoder_step.onnx``; ``.pt2`` for ``format="torch"``), ``export.json`` (the family,
each graph's inputs and outputs with their shapes, what the inputs mean), a
translator's ``translator.json``, and the tokenizer and preprocessing files of the
source, so that it is all a program outside qkv needs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from qkv.export.graphs import Graph

__all__ = ["EXPORT_FILE", "FORMATS", "ExportResult", "export"]


Format = Literal["onnx", "torch"]
FORMATS: tuple[Format, ...] = ("onnx", "torch")
EXPORT_FILE = "export.json"
#: Largest difference allowed between an exported graph and qkv on the check inputs.
TOLERANCE = 1e-4
POOLING_CHOICES = ("auto", "mean", "cls", "max")

#: Files copied from the source folder when present: tokenizers and image preprocessing
#: (Hugging Face's, Marian's, qkv's). The pooling and length limits of a
#: sentence-transformers folder are in export.json instead.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    "tokenizer-source.json",
    "tokenizer-target.json",
    "source.spm",
    "target.spm",
    "vocab.json",
)
_TMP_PREFIX = ".tmp-export-"


@dataclass
class ExportResult:
    """What :func:`export` wrote: the folder, the family, the graph files and each one's
    largest difference from qkv on the check inputs (``nan``: not run, ONNX Runtime
    missing)."""

    output: Path
    format: Format
    family: str
    files: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)


@dataclass
class _Plan:
    family: str
    graphs: list[Graph]
    info: dict[str, Any]
    side_dirs: list[Path]
    translator: dict[str, Any] | None = None


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; --overwrite replaces it")
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not an export folder; refusing to replace it")
    if any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise ValueError(
            f"{out} is not an export folder (no {EXPORT_FILE}); refusing to replace it"
        )


def _bert_plan(found: Any, pooling: str | None, normalize: bool | None) -> _Plan:
    from qkv.convert.bert import from_pretrained
    from qkv.export.graphs import bert_graph, max_length, sentence_embedding_graph
    from qkv.models.bert import BertModel

    path = found.path
    info: dict[str, Any] = {"max_length": None, "pad_id": None}
    if pooling is not None:
        from qkv.tasks.bert import SentenceEncoder

        encoder = SentenceEncoder.load(
            path, pooling=None if pooling == "auto" else pooling, normalize=normalize
        )
        graph = sentence_embedding_graph(encoder.model, encoder.pooling, encoder.normalize)
        info.update(
            pooling=encoder.pooling, normalize=encoder.normalize, max_length=encoder.max_length
        )
        config = encoder.model.config
    else:
        # config.json names the head (BertFor..., RobertaFor...); any other is read as
        # the body alone.
        architecture = str((found.meta.get("architectures") or [""])[0])
        head = None
        if architecture.endswith("ForSequenceClassification"):
            head = "classification"
        elif architecture.endswith("ForTokenClassification"):
            head = "token_classification"
        elif architecture.endswith("ForMaskedLM"):
            head = "mlm"
        model = from_pretrained(path, head)
        graph = bert_graph(model.eval())
        config = model.config
        info["max_length"] = max_length(model if isinstance(model, BertModel) else model.bert)
        names = getattr(model, "label_names", None)
        if names is not None:
            info["labels"] = list(names)
    info["pad_id"] = config.pad_id
    return _Plan("bert", [graph], info, [path])


def _vit_plan(found: Any) -> _Plan:
    from qkv.export.graphs import vit_graph
    from qkv.tasks.vit import load_classifier

    classifier = load_classifier(found.path)
    c = classifier.model.config
    info = {
        "image_size": c.image_size,
        "channels": c.in_channels,
        # pixel_values = (pixels - mean) / std, pixels in [0, max_value] after resizing.
        "mean": classifier.mean.tolist(),
        "std": classifier.std.tolist(),
        "max_value": classifier.max_value,
        "labels": list(classifier.classes),
    }
    return _Plan("vit", [vit_graph(classifier.model)], info, [found.path])


def _translator_plan(found: Any) -> _Plan:
    from qkv.export.translator import translator_graphs, translator_metadata
    from qkv.tasks.translation import load_translator

    translator = load_translator(found.path)
    model = translator.model
    meta = translator_metadata(
        model,
        src_lang=translator.src_lang,
        tgt_lang=translator.tgt_lang,
        search=translator.search,
    )
    # A qkv run keeps its tokenizer in the run directory, two levels above the checkpoint.
    side = [found.path] if found.hugging_face else [found.path, found.path.parent.parent]
    return _Plan("translator", translator_graphs(model), {}, side, meta)


def _plan(path: str | Path, pooling: str | None, normalize: bool | None) -> _Plan:
    from qkv.families import identify

    found = identify(path)
    if found.family != "bert" and (pooling is not None or normalize is not None):
        option = "--pooling" if pooling is not None else "--normalize"
        raise ValueError(f"{option} is for BERT models; {path} holds a {found.family}")
    if normalize is not None and pooling is None:
        raise ValueError("--normalize/--no-normalize need --pooling (a sentence-embedding graph)")
    if pooling is not None and pooling not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}, got {pooling!r}")
    if found.family == "bert":
        return _bert_plan(found, pooling, normalize)
    if found.family == "vit":
        return _vit_plan(found)
    return _translator_plan(found)


def _graph_record(graph: Graph, file: str) -> dict[str, Any]:
    def entry(name: str) -> dict[str, Any]:
        return {"name": name, "shape": graph.shapes.get(name)}

    return {
        "file": file,
        "inputs": [entry(n) for n in graph.input_names],
        "outputs": [entry(n) for n in graph.output_names],
    }


def export(
    path: str | Path,
    out: str | Path,
    format: Format = "onnx",
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    opset: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the model at ``path`` (anything :func:`qkv.families.identify` recognises)
    into the new folder ``out``.

    Args:
        format: ``"onnx"`` (``.onnx``, opset ``opset``, default 18) or ``"torch"``
            (``torch.export`` programs, ``.pt2``).
        pooling: BERT only: a sentence-embedding graph, pooled ``"mean"``, ``"cls"``,
            ``"max"``, or ``"auto"`` as the folder's sentence-transformers files say;
            ``normalize`` overrides their normalisation.
        overwrite: replace ``out`` when it is an earlier export (a folder holding
            ``export.json``); anything else is never replaced.
        progress: called with a line for each graph written.

    Every graph is compared with qkv on inputs of another batch size and length (with
    padding) before the folder appears; a difference above 1e-4 is an error.

    Raises FileExistsError (``out`` exists), FileNotFoundError / ValueError (what
    ``path`` holds, the options, a missing ONNX exporter, a graph that disagrees).
    """
    from qkv import __version__
    from qkv.export import onnx as onnx_format
    from qkv.export import torch_export

    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "onnx":
        opset = onnx_format.DEFAULT_OPSET if opset is None else opset
        if opset < onnx_format.MIN_OPSET:
            raise ValueError(f"--opset must be at least {onnx_format.MIN_OPSET}, got {opset}")
        onnx_format.require_onnx()
    elif opset is not None:
        raise ValueError("--opset is for --format onnx")
    out = Path(out)
    _check_output(out, overwrite)
    plan = _plan(path, pooling, normalize)  # loads the model: every input checked first

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_TMP_PREFIX}{out.name}-"))
    result = ExportResult(out, format, plan.family)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the export from other users
        suffix = ".onnx" if format == "onnx" else ".pt2"
        metadata: dict[str, Any] = {"qkv.family": plan.family}
        if plan.translator is not None:
            metadata["qkv.translator"] = plan.translator
        records = {}
        for graph in plan.graphs:
            file = graph.name + suffix
            program = torch_export.export_program(graph)
            if format == "onnx":
                assert opset is not None
                onnx_format.save_onnx(graph, program, tmp / file, opset=opset, metadata=metadata)
                diff = onnx_format.check_onnx(graph, tmp / file)
            else:
                torch_export.save_pt2(program, tmp / file)
                diff = torch_export.check_pt2(graph, tmp / file)
            if diff > TOLERANCE:  # nan (not checked) passes
                raise ValueError(
                    f"the exported {graph.name} graph differs from qkv by {diff:.3g} "
                    f"(more than {TOLERANCE}); not written"
                )
            result.files.append(file)
            result.max_abs_diff[graph.name] = diff
            records[graph.name] = _graph_record(graph, file)
            if progress is not None:
                progress(f"{file}: checked, largest difference {diff:.2g}")
        copied = []
        for folder in plan.side_dirs:
            for name in SIDE_FILES:
                if (folder / name).is_file() and name not in copied:
                    shutil.copyfile(folder / name, tmp / name)
                    copied.append(name)
        # Plain writes: the folder is renamed into place whole, so no reader sees it
        # half-written.
        if plan.translator is not None:
            from qkv.export.translator import METADATA_FILE

            _write_json(tmp / METADATA_FILE, plan.translator)
        record = {
            "qkv_version": __version__,
            "format": format,
            "opset": opset,
            "family": plan.family,
            "source": str(path),
            "masks": "int64, 1 = real token, 0 = padding",
            "graphs": records,
            "files": copied,
            **plan.info,
        }
        _write_json(tmp / EXPORT_FILE, record)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an earlier export there is set aside first
    and removed once the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_TMP_PREFIX}old-{out.name}-"))
    os.replace(out, old / "previous")
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old / "previous", out)  # put the earlier export back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
