"""Token classification (named entities, tagging) on CoNLL-style files: fine-tune a BERT
with a tag per word, score it by entity with :mod:`seqeval`, tag new text.

- Words to WordPieces: each word of a sentence is split into pieces separately (the
  tokenizer's normalizer and punctuation split included); its tag goes on its FIRST
  piece, and the other pieces, ``[CLS]``, ``[SEP]`` and padding get ``-100``
  (:data:`~qkv.losses.IGNORE_INDEX`, no loss). A word's prediction is read at its first
  piece too. A word the normalizer erases entirely (a lone control or zero-width
  character) has no piece: it is predicted ``O``.
- Long sentences: a sentence with more pieces than fit in ``max_length`` (``[CLS]`` and
  ``[SEP]`` included) is cut at word boundaries into consecutive windows that fit, each
  encoded as a sequence of its own, in training and in prediction alike. Every word is
  tagged and scored, so the scores cover the whole file (nothing is dropped and nothing
  is filled in); a window loses the context beyond its edges. A single word longer than
  a window keeps only its first pieces. How many sentences were split is logged.
- Scores: entity-level precision, recall and F1 of :mod:`seqeval` in its default mode
  (the rules of the CoNLL ``conlleval`` script: an entity counts only when its type and
  both ends are right), micro-averaged over the entities of the file, and per type.
  With no entity in either the truth or the predictions a score is 0, not NaN.
- The label set is the sorted tags of the training file, ``O`` included; a valid or test
  file with a tag the training file lacks is refused, naming the file and the line.

:func:`finetune_tokens` trains with the engine and recipe of sequence fine-tuning
(:class:`~qkv.tasks.bert.finetune.FinetuneRecipe`, :class:`~qkv.train.Trainer`) and
writes ``run_dir/model/`` (Hugging Face's ``BertForTokenClassification`` layout, with the
tokenizer and the tag names as ``id2label``) and ``run_dir/results.json``;
:class:`Tagger` loads such a folder for inference.

Notation: b windows in a batch, L pieces in the longest (specials included), C tags.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkv.compile import compile_model
from qkv.convert.bert import (
    config_from_hf,
    from_pretrained,
    load_hf_state_dict,
    save_pretrained,
)
from qkv.convert.common import CheckpointError, read_config, read_weights
from qkv.data.conll import OUTSIDE, TaggedSentence, check_tags, read_conll, tag_set
from qkv.data.wordpiece import CONFIG_FILE, WordPieceTokenizer
from qkv.fileio import write_json_atomic
from qkv.losses import IGNORE_INDEX, summed
from qkv.models.bert import BertConfig, BertForTokenClassification
from qkv.tasks.bert.classify import weight_names
from qkv.tasks.bert.common import (
    MODEL_DIR,
    checkpoint_dir,
    epoch_order,
    model_device,
    open_finetune_run,
    starting_tokenizer,
)
from qkv.tasks.bert.finetune import FinetuneRecipe
from qkv.train import Trainer
from qkv.train.optim import parameter_groups
from qkv.train.rundir import check_run_dir

__all__ = [
    "Entity",
    "EntityScores",
    "TaggedText",
    "Tagger",
    "TokensReport",
    "Window",
    "encode_windows",
    "entities",
    "entity_scores",
    "finetune_tokens",
    "make_windows",
]

logger = logging.getLogger(__name__)

ARCHITECTURE = "BertForTokenClassification"
#: The Hugging Face classes of a token classifier (BERT, RoBERTa, XLM-RoBERTa).
ARCHITECTURES = (ARCHITECTURE, "RobertaForTokenClassification", "XLMRobertaForTokenClassification")
HEAD_PREFIX = "classifier."


# ---------------------------------------------------------------------------------------------
# Words -> WordPieces, labels on the first piece of each word
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Words ``start .. start + len(first_pieces) - 1`` of sentence ``sentence``, encoded:
    ``input_ids`` = ``[CLS]`` pieces ``[SEP]``; ``first_pieces[j]`` is the position in
    ``input_ids`` of the first piece of word ``start + j`` (``-1``: the word has none)."""

    sentence: int
    start: int
    input_ids: tuple[int, ...]
    first_pieces: tuple[int, ...]


def _pieces_per_word(
    tokenizer: WordPieceTokenizer, sentences: Sequence[Sequence[str]]
) -> list[list[list[int]]]:
    """For each sentence, for each word, the ids of its pieces (none for an erased word)."""
    encodings = tokenizer.word_tokenizer.encode_batch(
        [list(words) for words in sentences], is_pretokenized=True, add_special_tokens=False
    )
    result = []
    for words, encoding in zip(sentences, encodings, strict=True):
        pieces: list[list[int]] = [[] for _ in words]
        for piece, word in zip(encoding.ids, encoding.word_ids, strict=True):
            if word is not None:
                pieces[word].append(piece)
        result.append(pieces)
    return result


def make_windows(
    tokenizer: WordPieceTokenizer, sentences: Sequence[Sequence[str]], max_length: int
) -> list[Window]:
    """The :class:`Window` s of ``sentences``: one per sentence that fits in
    ``max_length`` pieces (specials included), consecutive ones cut at word boundaries
    for a longer one (the module docstring). Sentences are lists of words."""
    if max_length < 3:
        raise ValueError(f"max_length ({max_length}) leaves no room beside [CLS] and [SEP]")
    budget = max_length - 2
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id
    windows: list[Window] = []
    split = 0
    for s, words in enumerate(_pieces_per_word(tokenizer, sentences)):
        start, ids, firsts = 0, [cls_id], []
        for w, pieces in enumerate(words):
            pieces = pieces[:budget]  # a word longer than a window keeps its beginning
            if len(ids) - 1 + len(pieces) > budget:
                windows.append(Window(s, start, (*ids, sep_id), tuple(firsts)))
                start, ids, firsts = w, [cls_id], []
                split += windows[-1].start == 0  # count each split sentence once
            firsts.append(len(ids) if pieces else -1)
            ids.extend(pieces)
        windows.append(Window(s, start, (*ids, sep_id), tuple(firsts)))
    if split:
        logger.warning(
            "%d of %d sentences are longer than %d pieces: each is tagged in windows that fit",
            split,
            len(sentences),
            max_length,
        )
    return windows


def encode_windows(
    windows: Sequence[Window], pad_id: int, tag_ids: Sequence[Sequence[int]] | None = None
) -> dict[str, Tensor]:
    """A padded batch for :class:`~qkv.models.bert.BertForTokenClassification`;
    with ``tag_ids`` (per sentence, a tag index per word), ``labels``: the word's tag at
    its first piece, ``-100`` everywhere else.

    Shape: ``b`` windows -> ``input_ids``, ``attention_mask`` (boolean) and ``labels``
    ``(b, L)``.
    """
    length = max(len(w.input_ids) for w in windows)
    input_ids = torch.full((len(windows), length), pad_id, dtype=torch.long)  # (b, L)
    mask = torch.zeros(len(windows), length, dtype=torch.bool)  # (b, L)
    for i, window in enumerate(windows):
        input_ids[i, : len(window.input_ids)] = torch.tensor(window.input_ids)
        mask[i, : len(window.input_ids)] = True
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if tag_ids is not None:
        labels = torch.full((len(windows), length), IGNORE_INDEX, dtype=torch.long)  # (b, L)
        for i, window in enumerate(windows):
            tags = tag_ids[window.sentence]
            for j, position in enumerate(window.first_pieces):
                if position >= 0:
                    labels[i, position] = tags[window.start + j]
        batch["labels"] = labels
    return batch


# ---------------------------------------------------------------------------------------------
# Entities and their scores
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """Words ``start`` (inclusive) to ``end`` (exclusive) of a text, of type ``type``;
    ``text`` is those words joined by single spaces."""

    type: str
    start: int
    end: int
    text: str


def entities(words: Sequence[str], tags: Sequence[str]) -> list[Entity]:
    """The entities of a tagged sentence, as :mod:`seqeval` reads IOB-style tags."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [
        Entity(kind, start, end + 1, " ".join(words[start : end + 1]))
        for kind, start, end in get_entities(list(tags))
    ]


@dataclass
class EntityScores:
    """Entity-level ``precision``, ``recall`` and ``f1`` (micro-averaged over the
    entities), ``per_type`` ``{type: {"precision", "recall", "f1", "support"}}`` (support:
    the true entities of that type), and the numbers of ``sentences`` and true
    ``entities`` scored."""

    precision: float
    recall: float
    f1: float
    per_type: dict[str, dict[str, float]]
    sentences: int
    entities: int

    def as_dict(self) -> dict[str, float]:
        """The three overall scores, for the engine's log."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


def entity_scores(
    truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> EntityScores:
    """seqeval's scores of ``predicted`` tags against ``truth`` (sentence by sentence)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    if len(truth) != len(predicted) or any(
        len(t) != len(p) for t, p in zip(truth, predicted, strict=True)
    ):
        raise ValueError("truth and predictions differ in number of sentences or words")
    if not truth:
        raise ValueError("no sentence to score")
    y_true, y_pred = [list(t) for t in truth], [list(p) for p in predicted]
    # zero_division=0: a file without entities scores 0 rather than NaN and a warning;
    # without any entity at all, the report's averages would be means of nothing.
    any_entity = any(entities(t, t) for t in y_true + y_pred)
    report = (
        classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        if any_entity
        else {}
    )
    per_type = {
        kind: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for kind, row in report.items()
        if not kind.endswith(" avg")
    }
    return EntityScores(
        precision=float(precision_score(y_true, y_pred, zero_division=0)),
        recall=float(recall_score(y_true, y_pred, zero_division=0)),
        f1=float(f1_score(y_true, y_pred, zero_division=0)),
        per_type=per_type,
        sentences=len(y_true),
        entities=sum(int(row["support"]) for row in per_type.values()),
    )


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


@dataclass
class TaggedText:
    """A text split into ``words`` on whitespace, their ``tags``, and the ``entities``."""

    text: str
    words: list[str]
    tags: list[str]
    entities: list[Entity]

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "words": self.words,
            "tags": self.tags,
            "entities": [asdict(e) for e in self.entities],
        }


@dataclass
class Tagger:
    """A token classifier and its tokenizer: a tag for every word."""

    model: BertForTokenClassification
    tokenizer: WordPieceTokenizer
    max_length: int = 512

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> Tagger:
        """From a fine-tuned checkpoint folder (or a ``finetune-tokens`` run directory);
        windows are as long as the model was trained with (``model_max_length`` of
        ``tokenizer_config.json``). ``dtype``: the model's number format (default: as
        saved, float32). ``compile``: through ``torch.compile``
        (:func:`qkv.compile.compile_model`, one program for every window length)."""
        path = checkpoint_dir(path)
        architectures = read_config(path).get("architectures") or [ARCHITECTURE]
        if not set(ARCHITECTURES) & set(architectures):
            raise CheckpointError(
                f"{path}: a {architectures[0]} checkpoint, not a token classifier; "
                "fine-tune one with qkv bert finetune-tokens"
            )
        # Without its trained head a tagger answers at random: refuse it.
        if f"{HEAD_PREFIX}weight" not in weight_names(path):
            raise CheckpointError(
                f"{path}: no trained token-classification head ({HEAD_PREFIX}weight is not "
                "in its weights); fine-tune it first with qkv bert finetune-tokens"
            )
        model = from_pretrained(path, "token_classification")
        assert isinstance(model, BertForTokenClassification)
        settings = (
            json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() else {}
        )
        max_length = settings.get("model_max_length", model.config.max_length)
        model = compile_model(model.to(device=device, dtype=dtype).eval(), compile, dynamic=True)
        return cls(model, WordPieceTokenizer.from_pretrained(path), max_length)

    @torch.inference_mode()
    def predict(
        self, sentences: Sequence[Sequence[str]], *, batch_size: int = 32
    ) -> list[list[str]]:
        """A tag per word of each sentence (a list of words). Windows of similar length
        share a batch (less padding to compute); the input order is kept."""
        self.model.eval()
        names = self.model.label_names
        tags = [[OUTSIDE] * len(words) for words in sentences]
        windows = make_windows(self.tokenizer, sentences, self.max_length)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
        device = model_device(self.model)
        for begin in range(0, len(order), batch_size):
            chunk = [windows[i] for i in order[begin : begin + batch_size]]
            batch = encode_windows(chunk, self.tokenizer.pad_id)
            logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits  # (b, L, C)
            best = logits.argmax(-1).cpu()  # (b, L)
            for row, window in enumerate(chunk):
                for j, position in enumerate(window.first_pieces):
                    if position >= 0:
                        tags[window.sentence][window.start + j] = names[int(best[row, position])]
        return tags

    def tag(self, texts: Sequence[str], *, batch_size: int = 32) -> list[TaggedText]:
        """Each text split into words on whitespace (punctuation stays with its word:
        ``"Paris,"`` is one word, tagged at its first piece ``paris``), then tagged."""
        words = [text.split() for text in texts]
        return [
            TaggedText(text, w, t, entities(w, t))
            for text, w, t in zip(
                texts, words, self.predict(words, batch_size=batch_size), strict=True
            )
        ]

    def evaluate(self, sentences: Sequence[TaggedSentence]) -> EntityScores:
        """Entity-level scores on tagged sentences (the module docstring)."""
        predicted = self.predict([s.words for s in sentences])
        return entity_scores([s.tags for s in sentences], predicted)


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------


@dataclass
class TokensReport:
    """What :func:`finetune_tokens` did: the starting point, the tags, the sentences of
    each split, the scores (``None`` for a split not given), the time, the model folder."""

    source: str
    labels: list[str]
    sizes: dict[str, int]
    steps: int
    seconds: float
    model_dir: Path
    valid: EntityScores | None = None
    test: EntityScores | None = None
    files: dict[str, str | None] = field(default_factory=dict)


def _new_tagger(
    tok: WordPieceTokenizer,
    labels: list[str],
    checkpoint: Path | None,
    preset: str | None,
    overrides: dict[str, Any],
) -> BertForTokenClassification:
    """A pretrained body with a head for ``labels``, or a whole model from random weights.

    A checkpoint's own head is kept only when it is a token classifier of exactly these
    tags (fine-tuning a tagger further); any other head (a sequence classifier's, another
    tag set's) is dropped and the new one starts from BERT's initialisation.
    """
    if checkpoint is None:
        config = BertConfig.preset(
            str(preset), **{"vocab_size": tok.vocab_size, "pad_id": tok.pad_id} | overrides
        )
        return BertForTokenClassification(config, len(labels), label_names=labels)
    hf = read_config(checkpoint)
    model = BertForTokenClassification(
        config_from_hf(hf, **overrides), len(labels), label_names=labels
    )
    weights = read_weights(checkpoint)
    id2label = hf.get("id2label") or {}
    same_head = (
        bool(set(ARCHITECTURES) & set(hf.get("architectures") or []))
        and [id2label.get(str(i)) for i in range(len(id2label))] == labels
    )
    if not same_head:
        head = [k for k in weights if k.startswith(HEAD_PREFIX)]
        if head:
            logger.info(
                "%s: its head %s is replaced by one for %d tags", checkpoint, head, len(labels)
            )
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    load_hf_state_dict(model, weights)
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{checkpoint}: the tokenizer has {tok.vocab_size} tokens, the model only "
            f"{model.config.vocab_size}"
        )
    return model


def _read_splits(
    train: str | Path, valid: str | Path | None, test: str | Path | None
) -> tuple[list[str], dict[str, list[TaggedSentence]]]:
    """The tags of the train file and the sentences of every split given, checked."""
    splits = {"train": read_conll(train)}
    labels = tag_set(splits["train"])
    for name, path in (("valid", valid), ("test", test)):
        if path is not None:
            splits[name] = read_conll(path)
            check_tags(splits[name], labels, path)
    return labels, splits


def finetune_tokens(
    run_dir: str | Path,
    recipe: FinetuneRecipe | None = None,
    *,
    train: str | Path,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    tokenizer: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    compile: bool = False,
    checkpoint_activations: bool = False,
) -> TokensReport:
    """Fine-tune a token classifier on the CoNLL-style file ``train``; score it on
    ``valid`` (after each epoch and at the end) and ``test`` (at the end, on the training
    device).

    Args:
        recipe: :class:`~qkv.tasks.bert.finetune.FinetuneRecipe` (default: its defaults);
            ``batch_size`` counts windows (sentences, unless one is split).
        checkpoint: a BERT checkpoint folder (Hugging Face's, qkv's, or a run directory
            holding one in ``model/``).
        preset: instead of ``checkpoint``, a :class:`~qkv.models.bert.BertConfig` preset
            from random weights, with the vocabulary of ``tokenizer`` (a checkpoint
            folder or file), or else a WordPiece vocabulary trained on the train words.
        seed: the head's initialisation, dropout and the order of the data.
        resume: continue the run in ``run_dir`` from its last checkpoint, on its own
            vocabulary (the same options and files, else it is refused naming what
            differs).
        overwrite: replace a run already in ``run_dir`` (without ``resume`` or this, such
            a folder is refused: :mod:`qkv.train.rundir`).
        compile, checkpoint_activations: train through ``torch.compile``; recompute
            each layer's activations in the backward pass (:class:`qkv.train.Trainer`).

    Writes into ``run_dir``: the engine's checkpoints and metrics, ``model/`` (the
    tagger, Hugging Face format, with its tokenizer and tags) and ``results.json``. The
    files, the tags, the options and the starting model are all checked before
    ``run_dir`` is touched.
    """
    recipe = recipe or FinetuneRecipe(name="finetune-tokens")
    if (checkpoint is None) == (preset is None):
        raise ValueError("give either a checkpoint or a preset to train from scratch")
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)  # before the data are read
    labels, splits = _read_splits(train, valid, test)
    texts = (" ".join(s.words) for s in splits["train"])
    source, tok = starting_tokenizer(
        checkpoint, tokenizer, texts, resume_dir=run_dir if resume else None
    )
    torch.manual_seed(seed)  # the new head's initialisation (and the whole model's)
    model = _new_tagger(tok, labels, source, preset, recipe.model)
    if recipe.max_length > model.config.max_length:
        raise ValueError(
            f"max_length {recipe.max_length} exceeds the model's longest input "
            f"({model.config.max_length} tokens)"
        )
    tag_index = {tag: i for i, tag in enumerate(labels)}
    sentences = splits["train"]
    windows = make_windows(tok, [s.words for s in sentences], recipe.max_length)
    tag_ids = [[tag_index[t] for t in s.tags] for s in sentences]
    train_config = recipe.train_config(math.ceil(len(windows) / recipe.batch_size), seed)
    files = {"train": str(train), "valid": _str(valid), "test": _str(test)}
    identity = {
        "task": "bert-finetune-tokens",
        **recipe.to_dict(),
        "source": {"checkpoint": _str(checkpoint), "preset": preset, "tokenizer": _str(tokenizer)},
        "data": files,
        "labels": labels,
        "seed": seed,
    }
    tagger = Tagger(model, tok, recipe.max_length)
    last: dict[str, EntityScores] = {}

    def evaluate(_: Any) -> dict[str, float]:
        if "valid" not in splits:
            return {}
        last["valid"] = tagger.evaluate(splits["valid"])
        return last["valid"].as_dict()

    def batches(epoch: int) -> Iterator[dict[str, Tensor]]:
        order = epoch_order(len(windows), seed, epoch)
        for i in range(0, len(order), recipe.batch_size):
            chunk = [windows[j] for j in order[i : i + recipe.batch_size]]
            yield encode_windows(chunk, tok.pad_id, tag_ids)

    run_path = Path(run_dir)
    trained = checkpoint is None and tokenizer is None
    with open_finetune_run(
        run_path,
        tok,
        trained_vocabulary=trained,
        resume=resume,
        overwrite=overwrite,
        identity=identity,
    ):
        start = time.perf_counter()
        result = Trainer(
            model,
            train_config,
            run_path,
            batches=batches,
            loss_fn=lambda m, batch: summed(m(**batch)),
            evaluate=evaluate,
            meta={"family": "bert-token-classification", "model_config": model.config.to_dict()},
            parameter_groups=parameter_groups(model, recipe.train.weight_decay),
            device=device,
            progress=progress,
            compile=compile,
            checkpoint_activations=checkpoint_activations,
        ).fit(resume=resume)
        seconds = time.perf_counter() - start
        if "valid" in splits and "valid" not in last:  # resumed at the last step
            last["valid"] = tagger.evaluate(splits["valid"])
        report = TokensReport(
            source=str(checkpoint) if checkpoint is not None else f"{preset} from scratch",
            labels=labels,
            sizes={name: len(part) for name, part in splits.items()},
            steps=result.step,
            seconds=seconds,
            model_dir=run_path / MODEL_DIR,
            valid=last.get("valid"),
            test=tagger.evaluate(splits["test"]) if "test" in splits else None,
            files=files,
        )
        save_pretrained(model, report.model_dir)
        tok.save(report.model_dir, model_max_length=recipe.max_length)
        results = asdict(report) | {"recipe": recipe.to_dict(), "model_dir": str(report.model_dir)}
        write_json_atomic(run_path / "results.json", results)
    return report


def _str(path: str | Path | None) -> str | None:
    return str(path) if path is not None else None
