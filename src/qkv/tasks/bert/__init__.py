"""BERT's jobs on real text, one module each, gathered here for the command line.

The four steps of transfer learning (docs/concepts.md#transfer-learning):

1. pretrain (:mod:`qkv.tasks.bert.pretrain`): masked-language modelling on Wikipedia
   extracts and BBC articles;
2. load the pretrained body and 3. add a task head, then 4. fine-tune the whole model on
   labelled text (:mod:`qkv.tasks.bert.finetune`);

and what the results are used for: classifying text (:mod:`qkv.tasks.bert.classify`),
tagging words (:mod:`qkv.tasks.bert.tokens`, fine-tuned on CoNLL files) and sentence
embeddings (:mod:`qkv.tasks.bert.embed`). What they share (checkpoint folders,
AdamW groups, epoch order) is in :mod:`qkv.tasks.bert.common`.
"""

from qkv.tasks.bert.classify import Classifier, Prediction
from qkv.tasks.bert.common import MODEL_DIR, minilm_path
from qkv.tasks.bert.embed import SentenceEncoder, cosine_similarities, mean_pool
from qkv.tasks.bert.finetune import FinetuneRecipe, FinetuneReport, finetune, subsample
from qkv.tasks.bert.pretrain import (
    PretrainRecipe,
    PretrainReport,
    evaluate_mlm,
    mlm_loss,
    pretrain,
)
from qkv.tasks.bert.tokens import Tagger, TokensReport, finetune_tokens

__all__ = [
    "MODEL_DIR",
    "Classifier",
    "FinetuneRecipe",
    "FinetuneReport",
    "Prediction",
    "PretrainRecipe",
    "PretrainReport",
    "SentenceEncoder",
    "Tagger",
    "TokensReport",
    "cosine_similarities",
    "evaluate_mlm",
    "finetune",
    "finetune_tokens",
    "mean_pool",
    "minilm_path",
    "mlm_loss",
    "pretrain",
    "subsample",
]
