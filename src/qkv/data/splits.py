"""Train/valid/test splits that depend on nothing but the text.

A text goes to a split by a SHA-256 hash of it into 100 buckets: the same split on
every machine, in every run and every Python version, whatever the order of the
files, and identical texts always land together (so a duplicate cannot leak a test
answer into train). SHA-256 rather than ``hash()``: Python salts ``hash`` of a str
per process.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["NUM_BUCKETS", "Split", "hash_bucket", "hash_split"]

Split = Literal["train", "valid", "test"]

NUM_BUCKETS = 100


def hash_bucket(text: str, *, salt: str | None = None) -> int:
    """The bucket of ``text`` in ``[0, 100)``: the first 8 bytes of its SHA-256, big-endian,
    modulo 100.

    Without ``salt`` the hash is of the UTF-8 text alone; with one (``""`` included) it is of
    ``salt + "\\0" + text``, so another salt reshuffles every bucket. The two layouts give
    different buckets for the same text: each corpus keeps the one its splits were made with.
    The text is hashed as given; normalise it first if equal texts may be spelt differently.
    """
    data = text if salt is None else f"{salt}\x00{text}"
    digest = hashlib.sha256(data.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % NUM_BUCKETS


def hash_split(
    text: str, *, train_percent: int, valid_percent: int, salt: str | None = None
) -> Split:
    """The split of ``text``: buckets below ``train_percent`` are train, the next
    ``valid_percent`` valid, the rest test (see :func:`hash_bucket`)."""
    bucket = hash_bucket(text, salt=salt)
    if bucket < train_percent:
        return "train"
    return "valid" if bucket < train_percent + valid_percent else "test"
