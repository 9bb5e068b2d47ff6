"""RoBERTa and XLM-RoBERTa through qkv's BERT: parity with ``transformers`` on small random
configs (no download), checkpoints both ways, their tokenizers through ``tokenizer.json``,
and the commands (``qkv embed``, ``qkv bert classify``, ``qkv attention``) on such folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from qkv.cli import main
from qkv.convert.bert import CheckpointError, config_from_hf, from_pretrained, save_pretrained
from qkv.data.wordpiece import WordPieceTokenizer
from qkv.families import identify
from qkv.models.bert import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    padding_offset_positions,
)

TOL = dict(atol=1e-5, rtol=1e-5)
VOCAB = 300
PAD = 1  # RoBERTa's and XLM-RoBERTa's <pad>
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, héllo wörld!",
    "Transformers read text in pieces, not in words.",
    "Shares fell sharply after the results were published.",
    "A man is eating food.",
    "Rain.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny batches on a shared CPU wait on each other otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_config(kind: str = "roberta", **changes):
    """A small random RoBERTa (or XLM-RoBERTa) configuration, with RoBERTa's real
    type_vocab_size and layer_norm_eps (transformers' defaults are BERT's)."""
    cls = transformers.RobertaConfig if kind == "roberta" else transformers.XLMRobertaConfig
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=20 + PAD + 1,  # 20 tokens, after the padding offset
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=PAD,
        num_labels=3,
    )
    return cls(**{**values, **changes})


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows of 12, padded on the right with <pad>: ``<s> ... </s> <pad> ...``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    ids[:, 0] = 0
    for row, length in enumerate((12, 9, 5)):
        ids[row, length - 1] = 2
        ids[row, length:] = PAD
    return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


def outputs(model, batch, hf: bool) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch) if hf else model(batch["input_ids"], batch["attention_mask"])
    logits = getattr(out, "logits", None)
    return out.last_hidden_state if logits is None else logits


CASES = [
    ("roberta", transformers.RobertaModel, None),
    ("roberta", transformers.RobertaForSequenceClassification, "classification"),
    ("roberta", transformers.RobertaForMaskedLM, "mlm"),
    ("roberta", transformers.RobertaForTokenClassification, "token_classification"),
    ("xlm-roberta", transformers.XLMRobertaModel, None),
    ("xlm-roberta", transformers.XLMRobertaForSequenceClassification, "classification"),
]


@pytest.mark.parametrize(
    ("kind", "hf_class", "head"), CASES, ids=lambda c: getattr(c, "__name__", c)
)
def test_outputs_equal_transformers_both_ways(tmp_path, kind, hf_class, head):
    torch.manual_seed(0)
    ref = hf_class(hf_config(kind)).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf", head).eval()
    assert ours.config.model_type == kind and ours.config.position_offset_by_pad
    batch = padded_batch()
    expected = outputs(ref, batch, hf=True)
    # Every position, padding included: the padding rows get position pad_id in both.
    torch.testing.assert_close(outputs(ours, batch, hf=False), expected, **TOL)

    save_pretrained(ours, tmp_path / "qkv")
    config = json.loads((tmp_path / "qkv" / "config.json").read_text())
    assert config["model_type"] == kind and config["architectures"] == [hf_class.__name__]
    back = hf_class.from_pretrained(tmp_path / "qkv").eval()
    torch.testing.assert_close(outputs(back, batch, hf=True), expected, **TOL)
    # The same tensor names as transformers writes, not one more or less.
    assert set(load_file(tmp_path / "qkv" / "model.safetensors")) == set(
        load_file(tmp_path / "hf" / "model.safetensors")
    )


def test_positions_are_transformers_positions():
    ids = padded_batch()["input_ids"]
    expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    torch.testing.assert_close(
        padding_offset_positions(ids, PAD),
        expected.create_position_ids_from_input_ids(ids, PAD),
        rtol=0,
        atol=0,
    )
    assert padding_offset_positions(ids, PAD)[2].tolist() == [2, 3, 4, 5, 6] + [1] * 7


def test_defaults_stay_bert_and_the_offset_shortens_the_input():
    bert = BertConfig.tiny(vocab_size=VOCAB, max_position_embeddings=16)
    assert (bert.position_offset_by_pad, bert.classifier_head, bert.model_type) == (
        False,
        "pooler",
        "bert",
    )
    assert bert.max_length == 16
    roberta = config_from_hf(hf_config().to_dict())
    assert roberta.max_length == 20 and roberta.max_position_embeddings == 22
    assert (roberta.type_vocab_size, roberta.layer_norm_eps, roberta.pad_id) == (1, 1e-5, 1)
    model = BertModel(roberta)
    with pytest.raises(
        ValueError,
        match=r"sequence length 21 exceeds max_position_embeddings \(22, less 2 offset",
    ):
        model(torch.full((1, 21), 5))
    with pytest.raises(ValueError, match=r"max_position_embeddings \(2\) leaves no position"):
        BertConfig.tiny(
            vocab_size=VOCAB, pad_id=1, position_offset_by_pad=True, max_position_embeddings=2
        )
    with pytest.raises(ValueError, match="classifier_head must be 'pooler' or 'dense'"):
        BertConfig.tiny(classifier_head="mean")


def test_a_roberta_classifier_has_no_pooler_and_the_dense_head():
    model = BertForSequenceClassification(config_from_hf(hf_config().to_dict()), 3)
    names = set(model.state_dict())
    assert not any(n.startswith("bert.pooler") for n in names)
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= names


def test_a_family_and_its_options_must_agree(tmp_path):
    with pytest.raises(
        CheckpointError, match="classifier_head is 'pooler'; a 'roberta' model has 'dense'"
    ):
        config_from_hf(hf_config().to_dict(), classifier_head="pooler")
    mixed = BertModel(BertConfig.tiny(vocab_size=VOCAB, model_type="roberta"))
    with pytest.raises(ValueError, match="position_offset_by_pad is False; a 'roberta'"):
        save_pretrained(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="model_type is 'albert', not 'bert', 'roberta'"):
        config_from_hf({**hf_config().to_dict(), "model_type": "albert"})


def test_every_problem_of_a_roberta_checkpoint_is_listed(tmp_path):
    transformers.RobertaForSequenceClassification(hf_config()).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors.pop("classifier.out_proj.bias")
    tensors["roberta.embeddings.rotary.inv_freq"] = torch.zeros(4)
    tensors["roberta.embeddings.word_embeddings.weight"] = torch.zeros(VOCAB + 1, 32)
    save_file(tensors, file)
    with pytest.raises(CheckpointError) as error:
        from_pretrained(tmp_path, "classification")
    message = str(error.value)
    assert "unknown keys ['embeddings.rotary.inv_freq']" in message
    assert "missing keys ['classifier.out_proj.bias']" in message
    assert "embeddings.word_embeddings.weight: checkpoint (301, 32), model (300, 32)" in message


def test_an_mlm_decoder_that_is_not_tied_is_refused(tmp_path):
    transformers.RobertaForMaskedLM(hf_config()).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.decoder.weight"] = torch.zeros(VOCAB, 32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.decoder.weight differs from embeddings"):
        from_pretrained(tmp_path, "mlm")


def test_a_roberta_folder_is_a_bert_family_folder(tmp_path):
    transformers.XLMRobertaModel(hf_config("xlm-roberta")).save_pretrained(tmp_path)
    found = identify(tmp_path)
    assert (found.family, found.hugging_face) == ("bert", True)


# --- tokenizers -------------------------------------------------------------------------------

CORPUS = [*TEXTS, "the dog ate the food because it was hungry", "Zürich est une ville."] * 10


def bpe_tokenizer() -> Tokenizer:
    """A tiny byte-level BPE with RoBERTa's specials and post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def unigram_tokenizer() -> Tokenizer:
    """A tiny SentencePiece-style Unigram with XLM-RoBERTa's specials and layout."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return tok


def tokenizer_folder(path: Path, tok: Tokenizer, tokenizer_class: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    specials = dict(
        bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
    )  # fmt: skip
    config = {"tokenizer_class": tokenizer_class, **specials}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("build", "tokenizer_class"),
    [(bpe_tokenizer, "RobertaTokenizer"), (unigram_tokenizer, "XLMRobertaTokenizer")],
)
def test_ids_equal_transformers_tokenizer_ids(tmp_path, build, tokenizer_class):
    folder = tokenizer_folder(tmp_path / "tok", build(), tokenizer_class)
    ours = WordPieceTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(theirs).__name__ == tokenizer_class
    assert (ours.cls_id, ours.pad_id, ours.sep_id, ours.unk_id) == (0, 1, 2, 3)
    assert ours.mask_id == theirs.mask_token_id == 4
    assert (ours.num_special_tokens(), ours.num_special_tokens(pair=True)) == (2, 4)

    batch = ours.encode(TEXTS, max_length=None)
    expected = theirs(TEXTS, padding=True, return_tensors="pt")
    assert batch.input_ids.tolist() == expected["input_ids"].tolist()
    assert batch.attention_mask.long().tolist() == expected["attention_mask"].tolist()
    assert batch.input_ids[0, 0] == 0 and int((batch.input_ids == 2).sum()) == len(TEXTS)

    pairs = ours.encode(TEXTS[:3], TEXTS[3:], max_length=None)
    expected = theirs(TEXTS[:3], TEXTS[3:], padding=True, return_tensors="pt")
    assert pairs.input_ids.tolist() == expected["input_ids"].tolist()
    assert pairs.token_type_ids.eq(0).all()  # RoBERTa has one segment

    # Saved by qkv, opened by transformers: the same ids again.
    ours.save(tmp_path / "saved", model_max_length=20)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert type(again).__name__ == tokenizer_class and again.model_max_length == 20
    assert again(TEXTS[1])["input_ids"] == ours.encode(TEXTS[1]).input_ids[0].tolist()
    assert WordPieceTokenizer.from_pretrained(tmp_path / "saved").specials == ours.specials


def test_vocab_json_and_merges_txt_without_tokenizer_json(tmp_path):
    tok = bpe_tokenizer()
    folder = tokenizer_folder(tmp_path / "full", tok, "RobertaTokenizer")
    (tmp_path / "old").mkdir()
    tok.model.save(str(tmp_path / "old"))  # vocab.json, merges.txt
    shutil.copy(folder / "tokenizer_config.json", tmp_path / "old")
    ours = WordPieceTokenizer.from_pretrained(tmp_path / "old")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "old")
    expected = theirs(TEXTS[:3], TEXTS[3:], padding=True)["input_ids"]
    assert ours.encode(TEXTS[:3], TEXTS[3:]).input_ids.tolist() == expected
    assert ours.encode(TEXTS).input_ids.tolist() == (
        WordPieceTokenizer.from_pretrained(folder).encode(TEXTS).input_ids.tolist()
    )
    (tmp_path / "old" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json, vocab.txt or vocab.json"):
        WordPieceTokenizer.from_pretrained(tmp_path / "old")


def test_a_tokenizer_without_its_specials_is_one_line(tmp_path):
    folder = tokenizer_folder(tmp_path, bpe_tokenizer(), "RobertaTokenizer")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "cls_token": "<cls>"}))
    with pytest.raises(
        ValueError, match=r"tokenizer.json: the vocabulary lacks the special tokens \['<cls>'\]"
    ):
        WordPieceTokenizer.from_pretrained(folder)


# --- the commands on RoBERTa folders ----------------------------------------------------------


def roberta_folder(path: Path, hf_class, tok: Tokenizer, tokenizer_class: str, **changes) -> Path:
    torch.manual_seed(0)
    vocab = tok.get_vocab_size()
    hf_class(hf_config(vocab_size=vocab, max_position_embeddings=66, **changes)).save_pretrained(
        path
    )
    return tokenizer_folder(path, tok, tokenizer_class)


def test_qkv_embed_mean_pools_like_transformers(tmp_path, capsys):
    folder = roberta_folder(
        tmp_path / "st", transformers.RobertaModel, bpe_tokenizer(), "RobertaTokenizer"
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))

    assert main(["embed", "--model", str(folder), "--json", *TEXTS]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours = torch.tensor([r["embedding"] for r in records])

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ref = transformers.RobertaModel.from_pretrained(folder).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state  # (b, L, d)
    weights = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * weights).sum(1) / weights.sum(1)
    assert ours.shape == (len(TEXTS), 32)
    torch.testing.assert_close(ours, expected, **TOL)


@pytest.mark.parametrize(
    ("hf_class", "build", "tokenizer_class"),
    [
        (transformers.RobertaForSequenceClassification, bpe_tokenizer, "RobertaTokenizer"),
        (
            transformers.XLMRobertaForSequenceClassification,
            unigram_tokenizer,
            "XLMRobertaTokenizer",
        ),
    ],
)
def test_qkv_bert_classify_equals_transformers(tmp_path, capsys, hf_class, build, tokenizer_class):
    labels = {"0": "negative", "1": "neutral", "2": "positive"}
    label2id = {name: int(i) for i, name in labels.items()}
    folder = roberta_folder(
        tmp_path / "clf", hf_class, build(), tokenizer_class, id2label=labels, label2id=label2id
    )
    assert main(["bert", "classify", str(folder), "--json", *TEXTS]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours = torch.tensor([[r["probabilities"][n] for n in labels.values()] for r in records])

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ref = hf_class.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = ref(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    torch.testing.assert_close(ours, expected, **TOL)
    assert [r["label"] for r in records] == [labels[str(i)] for i in expected.argmax(-1).tolist()]


def test_qkv_attention_reads_a_roberta_folder(tmp_path, capsys):
    folder = roberta_folder(
        tmp_path / "m", transformers.RobertaModel, bpe_tokenizer(), "RobertaTokenizer"
    )
    out = tmp_path / "maps.png"
    assert main(["attention", str(folder), "Hello world", "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    text = capsys.readouterr().out
    assert "<s>" in text and "</s>" in text and out.stat().st_size > 5000


def test_fine_tuning_a_roberta_classifier_on_new_labels_keeps_the_dense_head(tmp_path):
    from qkv.tasks.bert.finetune import _new_classifier

    folder = roberta_folder(
        tmp_path / "clf", transformers.RobertaForSequenceClassification, bpe_tokenizer(),
        "RobertaTokenizer",
    )  # fmt: skip
    tok = WordPieceTokenizer.from_pretrained(folder)
    model = _new_classifier(tok, ["a", "b"], folder, None, {})
    assert model.classifier.out_proj.weight.shape == (2, 32)
    save_pretrained(model, tmp_path / "out")
    back = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    batch = padded_batch()
    batch["input_ids"] = batch["input_ids"].clamp(max=tok.vocab_size - 1)
    torch.testing.assert_close(
        outputs(model.eval(), batch, hf=False), outputs(back, batch, hf=True), **TOL
    )
    shutil.rmtree(tmp_path / "out")


def test_words_split_by_the_caller_get_the_pieces_of_running_text(tmp_path):
    from qkv.tasks.bert.tokens import make_windows

    folder = tokenizer_folder(tmp_path, bpe_tokenizer(), "RobertaTokenizer")
    ours = WordPieceTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder, add_prefix_space=True)
    sentences = [text.split() for text in TEXTS]
    windows = make_windows(ours, sentences, max_length=64)
    expected = theirs(sentences, is_split_into_words=True)["input_ids"]
    assert [list(w.input_ids) for w in windows] == expected
    # Words given one by one read as inside running text ("Ġquick", not "quick").
    running = ours.encode_ids([" " + text for text in TEXTS])
    assert [list(w.input_ids[1:-1]) for w in windows] == running
    assert running[0] != ours.encode_ids(TEXTS[:1])[0]


def test_a_roberta_classifier_compiles_and_exports_with_dynamic_shapes():
    from torch.export import Dim

    torch.manual_seed(0)
    model = BertForSequenceClassification(config_from_hf(hf_config().to_dict()), 3).eval()
    batch, other = padded_batch(), padded_batch(1)
    other = {k: v[:2, :10] for k, v in other.items()}
    args = (batch["input_ids"], batch["attention_mask"])
    shapes = ({0: Dim("batch", max=64), 1: Dim("seq", max=20)},) * 2
    program = torch.export.export(model, args, dynamic_shapes=shapes).module()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=True)
    with torch.no_grad():
        for inputs in (args, (other["input_ids"], other["attention_mask"])):
            expected = model(*inputs).logits
            torch.testing.assert_close(program(*inputs).logits, expected, **TOL)
            torch.testing.assert_close(compiled(*inputs).logits, expected, **TOL)


def test_qkv_bert_finetune_from_a_roberta_folder_writes_one_transformers_opens(tmp_path, capsys):
    import csv

    folder = roberta_folder(
        tmp_path / "start", transformers.RobertaModel, bpe_tokenizer(), "RobertaTokenizer"
    )
    rows = [(f"{text} {i}", "yes" if i % 2 else "no") for i, text in enumerate(TEXTS * 6)]
    for name, part in (("train", rows[:24]), ("valid", rows[24:30]), ("test", rows[30:])):
        with open(tmp_path / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    argv = ["bert", "finetune", "--model", str(folder), "--run-dir", str(tmp_path / "run")]
    argv += ["--train", str(tmp_path / "train.csv"), "--valid", str(tmp_path / "valid.csv")]
    argv += ["--test", str(tmp_path / "test.csv"), "--epochs", "1", "--batch-size", "8"]
    argv += ["--max-length", "16", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    model_dir = tmp_path / "run" / "seed-0" / "model"
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "roberta"
    capsys.readouterr()

    assert main(["bert", "classify", str(model_dir), "--json", *TEXTS[:3]]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours = torch.tensor([[r["probabilities"][n] for n in ("no", "yes")] for r in records])
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert type(tokenizer).__name__ == "RobertaTokenizer" and tokenizer.model_max_length == 16
    ref = transformers.RobertaForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS[:3], padding=True, truncation=True, return_tensors="pt")
        expected = ref(**batch).logits.softmax(-1)
    assert ref.config.id2label == {0: "no", 1: "yes"}
    torch.testing.assert_close(ours, expected, **TOL)


def test_qkv_bert_finetune_tokens_and_tag_on_a_roberta_folder(tmp_path, capsys):
    folder = roberta_folder(
        tmp_path / "start", transformers.RobertaModel, bpe_tokenizer(), "RobertaTokenizer"
    )
    lines = []
    for i, text in enumerate(TEXTS * 3):
        words = text.split()
        lines += [f"{w} {'B-X' if j == i % len(words) else 'O'}" for j, w in enumerate(words)]
        lines.append("")
    (tmp_path / "train.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["bert", "finetune-tokens", "--model", str(folder), "--train"]
    argv += [str(tmp_path / "train.conll"), "--run-dir", str(tmp_path / "run"), "--epochs", "1"]
    argv += ["--batch-size", "8", "--max-length", "16", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    model_dir = tmp_path / "run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["RobertaForTokenClassification"]
    assert main(["bert", "tag", str(model_dir), "--json", "Hello world , again"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(record["tags"]) == 4 and set(record["tags"]) <= {"O", "B-X"}
