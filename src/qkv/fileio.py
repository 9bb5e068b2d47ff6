"""Files written atomically: a reader, or a run killed mid-write, sees the old file or the new
one, never half of one.

Each writes a temporary file beside the target (the same folder, so the same file system),
flushes it to disk, then renames it over the target with ``os.replace``, which is atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; when the block ends without an
    error, the file is fsynced and renamed to ``path``. On an error it is removed and
    ``path`` is left as it was. The folder is created if missing.

    >>> with atomic_write(folder / "model.safetensors") as tmp:  # doctest: +SKIP
    ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # The writer may have closed the file without flushing it to disk; a rename of
        # unflushed data can survive a power cut as an empty file under the real name.
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file readable by its owner only; a file written in place
        # would have the umask's permissions, and so does this one.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))


def read_json_object(path: str | Path, *, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A JSON object from ``path``; ``error`` naming the file when it is not valid JSON
    or not an object (a hand-edited or damaged file must not surface as a bare parser
    message)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as cause:
        raise error(f"{path}: not valid JSON ({cause})") from None
    if not isinstance(values, dict):
        raise error(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values
