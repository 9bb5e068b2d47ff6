"""What every converter shares: one shape, one name-map mechanism, one error.

A converter module (``qkv.convert.bert``, ``qkv.convert.vit``) has the same four
parts:

- ``from_pretrained(directory) -> model``: reads ``config.json`` and the weights of a
  Hugging Face checkpoint folder (:func:`read_config`, :func:`read_weights`);
- ``save_pretrained(model, directory)``: writes the same layout back
  (:func:`write_pretrained`), which ``transformers`` opens;
- ``config_from_hf`` / ``config_to_hf``: ``config.json`` to the qkv configuration
  and back;
- a :class:`NameMap`: Hugging Face parameter name -> qkv parameter name, with
  ``{i}`` standing for a layer index, run forwards to load and backwards to save.

Whatever does not fit is refused before anything is loaded, every problem listed in
one :class:`CheckpointError` (:func:`state_problems` words the common ones: missing
keys, keys the model does not have, shapes that differ).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.fileio import atomic_write, read_json_object, write_text_atomic

__all__ = [
    "CheckpointError",
    "NameMap",
    "read_config",
    "read_json",
    "read_weights",
    "state_problems",
    "write_pretrained",
]

CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit a qkv model; the message lists every problem."""


class NameMap:
    """Hugging Face name -> qkv name, given as templates in which ``{i}`` stands for a
    layer index (``"vit.layers.{i}.mlp.fc1.weight": "encoder.layers.{i}.feed_forward.
    linear1.weight"``); :meth:`expand` writes out the names of a model with
    ``num_layers`` layers, :meth:`qkv_name` translates one name whatever its index."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        for hf, qkv in templates.items():
            if ("{i}" in hf) != ("{i}" in qkv):
                raise ValueError(f"template {hf!r} -> {qkv!r}: {{i}} on one side only")
        self.templates = dict(templates)
        # Compiled once: qkv_name runs for every tensor of a checkpoint.
        self._patterns = [
            (re.compile(re.escape(hf).replace(re.escape("{i}"), r"(\d+)")), qkv)
            for hf, qkv in self.templates.items()
            if "{i}" in hf
        ]

    def __len__(self) -> int:
        return len(self.templates)

    def expand(self, num_layers: int) -> dict[str, str]:
        names: dict[str, str] = {}
        for hf, qkv in self.templates.items():
            if "{i}" in hf:
                for i in range(num_layers):
                    names[hf.replace("{i}", str(i))] = qkv.replace("{i}", str(i))
            else:
                names[hf] = qkv
        return names

    def qkv_name(self, hf_name: str) -> str | None:
        """The qkv name of one Hugging Face name, whatever its layer index (a map does
        not know how many layers a model has); ``None`` when the map does not know it."""
        if hf_name in self.templates and "{i}" not in hf_name:
            return self.templates[hf_name]
        for pattern, qkv in self._patterns:
            match = pattern.fullmatch(hf_name)
            if match:
                return qkv.replace("{i}", match.group(1))
        return None


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`CheckpointError` naming the file when it is
    not valid JSON or not an object."""
    return read_json_object(path, error=CheckpointError)


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder, with the file named in every error."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    return read_json(path)


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint folder: ``model.safetensors``, a sharded
    ``model.safetensors.index.json``, or ``pytorch_model.bin`` (read with
    ``weights_only=True``: a pickle can run code, this refuses anything but tensors)."""
    path = Path(directory)
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        shards = sorted(set(weight_map.values()))
        return {k: v for shard in shards for k, v in _load_safetensors(path / shard).items()}
    if (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return _finite(path / "pytorch_model.bin", state)
    raise FileNotFoundError(
        f"no weights in {path}: expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin"
    )


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    """The tensors of one safetensors file; a damaged file is named in the error (the
    library's own message does not say which file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(file)
    except SafetensorError as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from None
    return _finite(file, tensors)


def _finite(file: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors``, or :class:`CheckpointError` naming the file and the first tensor with
    a NaN or infinite value: such weights load without complaint and then answer NaN."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{file}: tensor {name} has NaN or infinite values")
    return tensors


def state_problems(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    hf_names: Mapping[str, str] | None = None,
) -> list[str]:
    """What keeps ``state`` (qkv names) from loading into a model whose state dict is
    ``expected``: missing keys, keys it does not have, shapes that differ. Keys are
    reported by their Hugging Face name when ``hf_names`` (qkv -> HF) knows it."""

    def named(key: str) -> str:
        return hf_names.get(key, key) if hf_names else key

    problems = []
    missing = sorted(named(k) for k in expected if k not in state)
    extra = sorted(named(k) for k in state if k not in expected)
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"keys the model does not have {extra}")
    mismatched = sorted(
        f"{named(k)}: checkpoint {tuple(t.shape)}, model {tuple(expected[k].shape)}"
        for k, t in state.items()
        if k in expected and t.shape != expected[k].shape
    )
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    return problems


def write_pretrained(
    directory: str | Path,
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any],
    *,
    json_files: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """``model.safetensors``, ``config.json`` and ``json_files`` (file name -> content,
    such as ``preprocessor_config.json``) into ``directory``, each written atomically (a
    crash never leaves a half-written file under the real name). A new ``directory``
    appears as a whole: a crash never leaves weights without their config."""
    from safetensors.torch import save_file

    plain = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    files = {CONFIG_FILE: config, **(json_files or {})}
    with _new_folder(Path(directory)) as path:
        with atomic_write(path / "model.safetensors") as tmp:
            save_file(plain, str(tmp), metadata={"format": "pt"})
        for name, content in files.items():
            write_text_atomic(path / name, json.dumps(dict(content), indent=2) + "\n")


#: Prefix of the folder a new checkpoint folder is written in before it is renamed into
#: place; :mod:`qkv.train.rundir` removes those a killed run left.
TMP_FOLDER_PREFIX = ".tmp-pretrained-"


@contextmanager
def _new_folder(path: Path) -> Iterator[Path]:
    """Yield the folder to write ``path``'s files in. An existing ``path`` is written in
    place (its files are replaced one by one, each atomically). A new one is written in a
    temporary sibling, renamed to ``path`` when the block ends without an error, so
    ``path`` exists only once it is whole; on an error the sibling is removed."""
    if path.is_dir():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_FOLDER_PREFIX}{path.name}-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from other users
        yield tmp
        os.replace(tmp, path)  # atomic; fails if another writer made path meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
