"""``qkv export`` and :mod:`qkv.export`: the exported graphs give qkv's outputs in ONNX
Runtime and as ``torch.export`` programs, on a batch size and length other than those
traced, with padding; the exported translator decodes to qkv's greedy tokens in a numpy
loop; the command refuses what it should, in one line.

Every model is tiny and random (seeded): the comparisons are exact for tokens and to
1e-4 for values, which needs no training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.cli import main
from qkv.export import export

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-4
SENTENCES = [
    "the dog ate the food",
    "shares fell after the results because the dog was hungry",
    "it was",
    "the results ate the dog food after it fell",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _close(got: np.ndarray, expected: torch.Tensor) -> None:
    np.testing.assert_allclose(got, expected.detach().float().numpy(), atol=TOL, rtol=TOL)


# --- the models: a qkv BERT run, a sentence-transformers folder, a ViT run, a translator run


def _wordpiece():
    from qkv.data.wordpiece import WordPieceTokenizer

    texts = ["the dog ate the food because it was hungry", "shares fell after the results"]
    return WordPieceTokenizer.train(texts * 4, vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> Path:
    """A ``qkv bert finetune`` run's layout: the classifier in ``RUN/model``."""
    from qkv.convert.bert import save_pretrained
    from qkv.models.bert import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = _wordpiece()
    config = BertConfig.tiny(
        vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, max_position_embeddings=24
    )
    run = tmp_path_factory.mktemp("bert-run")
    model = BertForSequenceClassification(config, 3, label_names=["a", "b", "c"])
    save_pretrained(model, run / "model")
    tokenizer.save(run / "model")
    return run


@pytest.fixture(scope="module")
def sentence_folder(tmp_path_factory) -> Path:
    """A sentence-transformers folder: a BERT body, max pooling, then Normalize."""
    from qkv.convert.bert import save_pretrained
    from qkv.models.bert import BertConfig, BertModel

    torch.manual_seed(1)
    tokenizer = _wordpiece()
    config = BertConfig.tiny(
        vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, max_position_embeddings=24
    )
    folder = tmp_path_factory.mktemp("sentence") / "st"
    save_pretrained(BertModel(config), folder)
    tokenizer.save(folder)
    kinds = {"": "Transformer", "1_Pooling": "Pooling", "2_Normalize": "Normalize"}
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds.items())
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_max_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    from qkv.models.vit import ViT, ViTConfig
    from qkv.train.checkpoint import save_checkpoint

    torch.manual_seed(2)
    config = ViTConfig.digits(patch_size=4)
    model = ViT(config)
    torch.nn.init.normal_(model.head.weight)  # a zero head would make any graph agree
    run = tmp_path_factory.mktemp("vit-run")
    meta = {"family": "vit-classifier", "model_config": config.to_dict(), "max_value": 16}
    save_checkpoint(run, 1, model, {}, meta)
    return run


def _copy_task(model, steps: int = 150) -> None:
    """A few hundred Adam steps of copying the source (about 1 s): a random model repeats
    one token forever, a trained one produces varied tokens and ends with eos at
    different lengths, which a decoding comparison needs to mean something."""
    config = model.config
    bos, eos, pad = getattr(config, "bos_id", 1), getattr(config, "eos_id", 2), config.pad_id
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, width = 16, 6
    for _ in range(steps):
        lengths = torch.randint(2, width + 1, (batch,), generator=generator)
        body = torch.randint(4, 40, (batch, width), generator=generator)
        body = body.masked_fill(torch.arange(width) >= lengths[:, None], pad)
        src = torch.cat([body, torch.full((batch, 1), pad)], dim=1)
        src[torch.arange(batch), lengths] = eos
        tgt = torch.cat([torch.full((batch, 1), bos), body], dim=1)
        loss = model(src, tgt, labels=src).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory) -> Path:
    """A ``qkv translate train`` run: its tokenizer and one checkpoint of a tiny model
    trained here to copy its source."""
    from qkv.data.bpe import PAD_ID, TranslationTokenizer
    from qkv.models.transformer import Transformer, TransformerConfig
    from qkv.train.checkpoint import save_checkpoint

    torch.manual_seed(3)
    pairs = [("Der Hund aß das Futter.", "The dog ate the food."), ("Er war hungrig.", "He was.")]
    tokenizer = TranslationTokenizer.train(pairs * 2, vocab_size=200, min_frequency=1)
    run = tmp_path_factory.mktemp("translator-run")
    tokenizer.save(run)
    n = tokenizer.source.vocab_size
    config = TransformerConfig.tiny(
        n, n, d_model=32, num_heads=2, d_ff=64, share_embeddings=True, pad_id=PAD_ID, max_len=24
    )
    model = Transformer(config)
    _copy_task(model)
    meta = {"family": "transformer-translation", "model_config": config.to_dict()}
    save_checkpoint(run, 1, model, {}, meta)
    return run


@pytest.fixture(scope="module")
def translator_onnx(translator_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "translator"
    assert main(["export", str(translator_run), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder_step.onnx",
        "encoder.onnx",
        "export.json",
        "tokenizer.json",
        "translator.json",
    ]
    return out


def _padded(rows: list[list[int]], pad: int) -> np.ndarray:
    ids = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids


# --- BERT ------------------------------------------------------------------------------------


def test_a_bert_run_exports_and_onnx_runtime_gives_its_logits(bert_run, tmp_path, capsys):
    from qkv.convert.bert import from_pretrained

    out = tmp_path / "bert"
    assert main(["export", str(bert_run), "--format", "onnx", "-o", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["family"] == "bert" and record["files"] == ["model.onnx"]
    assert record["max_abs_diff"]["model"] <= TOL
    written = json.loads((out / "export.json").read_text())
    assert [i["name"] for i in written["graphs"]["model"]["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert written["labels"] == ["a", "b", "c"] and (out / "tokenizer.json").is_file()

    model = from_pretrained(bert_run / "model", "classification").eval()
    # Another batch size (5) and length (17) than traced (2, 8), with padding.
    ids = torch.randint(1, model.config.vocab_size, (5, 17))
    mask = torch.ones(5, 17, dtype=torch.long)
    mask[1, 9:] = 0
    mask[4, 3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    logits, hidden = _session(out / "model.onnx").run(
        None,
        {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()},
    )
    with torch.no_grad():
        expected = model(ids, mask.bool(), types)
    _close(logits, expected.logits)
    _close(hidden, expected.bert.last_hidden_state)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_masked_language_model_exports_its_vocabulary_logits(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    sizes = {
        "vocab_size": 90, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 40,
    }  # fmt: skip
    if kind == "bert":
        reference = transformers.BertForMaskedLM(transformers.BertConfig(**sizes))
    else:
        config = transformers.RobertaConfig(**sizes, pad_token_id=1, type_vocab_size=1)
        reference = transformers.RobertaForMaskedLM(config)
    reference.eval().save_pretrained(tmp_path / "mlm")
    result = export(tmp_path / "mlm", tmp_path / "onnx", "onnx")
    assert result.max_abs_diff["model"] <= TOL
    pad = reference.config.pad_token_id
    ids = torch.randint(3, 90, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids = ids.masked_fill(mask == 0, pad)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    logits, _ = _session(tmp_path / "onnx" / "model.onnx").run(None, feed)
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in feed.items()})
    assert logits.shape == (3, 11, 90)
    real = mask.bool().numpy()  # padded positions' outputs are not defined alike
    _close(logits[real], expected.logits[mask.bool()])


def test_the_sentence_embedding_graph_gives_qkv_embed_vectors(sentence_folder, tmp_path):
    from qkv.tasks.bert import SentenceEncoder

    out = tmp_path / "st"
    result = export(sentence_folder, out, "onnx", pooling="auto")
    written = json.loads((out / "export.json").read_text())
    assert (written["pooling"], written["normalize"]) == ("max", True)
    assert result.max_abs_diff["model"] <= TOL

    encoder = SentenceEncoder.load(sentence_folder)
    rows = encoder.token_ids(SENTENCES)
    ids = _padded(rows, encoder.tokenizer.pad_id)
    mask = (np.arange(ids.shape[1]) < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
    embeddings, _ = _session(out / "model.onnx").run(
        None, {"input_ids": ids, "attention_mask": mask}
    )
    _close(embeddings, encoder.encode(SENTENCES))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


# --- ViT -------------------------------------------------------------------------------------


def test_a_vit_run_exports_in_both_formats(vit_run, tmp_path):
    from qkv.tasks.vit import load_classifier

    model = load_classifier(vit_run).model
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(images).logits

    export(vit_run, tmp_path / "onnx", "onnx")
    (logits,) = _session(tmp_path / "onnx" / "model.onnx").run(
        None, {"pixel_values": images.numpy()}
    )
    _close(logits, expected)
    written = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert written["image_size"] == 8 and written["max_value"] == 16

    export(vit_run, tmp_path / "torch", "torch")
    program = torch.export.load(tmp_path / "torch" / "model.pt2").module()
    with torch.no_grad():
        (got,) = program(images)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)


# --- the translator --------------------------------------------------------------------------


def test_the_translator_decodes_in_onnx_runtime_to_qkv_greedy_tokens(
    translator_run, translator_onnx
):
    from qkv.decoding import greedy_decode
    from qkv.export.translator import OnnxTranslator
    from qkv.tasks.translation import load_translator

    translator = load_translator(translator_run)
    pad = translator.model.config.pad_id
    # Copies of different lengths (the model learnt to copy ids 4..39), with padding.
    rows = [[5, 9, 12, 2], [7, 8, 9, 10, 11, 30, 2], [30, 2], [13, 13, 20, 33, 2]]
    src = _padded(rows, pad)
    meta = json.loads((translator_onnx / "translator.json").read_text())
    assert meta["num_layers"] == 2 and meta["num_heads"] == 2 and meta["head_dim"] == 16
    assert (meta["decoder_start_id"], meta["eos_id"], meta["pad_id"]) == (1, 2, 0)

    exported = OnnxTranslator(translator_onnx, threads=1)
    # To each sentence's own limit (ending at eos), and 6 tokens exactly (eos forbidden).
    for max_len, min_len in ((None, 0), (6, 6)):
        tokens, log_probs = exported.greedy(src, max_len=max_len, min_len=min_len)
        expected = greedy_decode(
            translator.model, torch.from_numpy(src), max_len=max_len, min_len=min_len
        )
        assert tokens == expected.tokens
        np.testing.assert_allclose(log_probs, expected.log_probs.numpy(), atol=TOL, rtol=TOL)
    # Not a degenerate model: varied tokens, and sentences of different lengths.
    tokens, _ = exported.greedy(src)
    assert len({len(t) for t in tokens}) > 1 and len({i for t in tokens for i in t}) > 3


@pytest.mark.parametrize(
    ("beam_size", "alpha", "max_len", "min_len"),
    [(4, None, None, 0), (3, 0.0, None, 0), (4, 1.0, 6, 6), (2, 0.6, 3, 0), (1, 0.0, None, 0)],
)
def test_the_translator_beam_searches_in_onnx_runtime_to_qkv_tokens(
    translator_run, translator_onnx, beam_size, alpha, max_len, min_len
):
    from qkv.decoding import beam_search
    from qkv.export.translator import OnnxTranslator
    from qkv.tasks.translation import load_translator

    translator = load_translator(translator_run)
    rows = [[5, 9, 12, 2], [7, 8, 9, 10, 11, 30, 2], [30, 2], [13, 13, 20, 33, 2]]
    src = _padded(rows, translator.model.config.pad_id)
    exported = OnnxTranslator(translator_onnx, threads=1)
    assert exported.meta["search"] == "gnmt"
    tokens, log_probs, scores = exported.beam(
        src, beam_size=beam_size, length_penalty=alpha, max_len=max_len, min_len=min_len
    )
    expected = beam_search(
        translator.model, torch.from_numpy(src), beam_size=beam_size,
        length_penalty=0.6 if alpha is None else alpha, max_len=max_len, min_len=min_len,
    )  # fmt: skip
    assert tokens == expected.tokens
    np.testing.assert_allclose(log_probs, expected.log_probs.numpy(), atol=TOL, rtol=TOL)
    np.testing.assert_allclose(scores, expected.scores.numpy(), atol=TOL, rtol=TOL)
    if alpha is None:  # not a degenerate model: sentences of different lengths
        assert len({len(t) for t in tokens}) > 1


MARIAN_OPTIONS = {
    "bos_id": 0,  # the decoder starts with the pad id
    "final_logits_bias": True,
    "forced_eos": True,
    "scale_embedding": False,
    "sinusoid_layout": "halves",
}


def test_a_marian_style_translator_decodes_the_same_in_onnx_runtime(tmp_path):
    """The options Marian checkpoints need (start with the pad id, a final logits bias,
    eos forced at the limit, ...) reach the graphs through the model's own methods."""
    import dataclasses

    from qkv.decoding import beam_search, greedy_decode
    from qkv.export.onnx import save_onnx
    from qkv.export.torch_export import export_program
    from qkv.export.translator import (
        METADATA_FILE,
        OnnxTranslator,
        translator_graphs,
        translator_metadata,
    )
    from qkv.models.transformer import Transformer, TransformerConfig

    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    if not set(MARIAN_OPTIONS) <= fields:
        pytest.skip("this TransformerConfig has no Marian options")
    torch.manual_seed(4)
    config = TransformerConfig.tiny(
        60, 60, d_model=32, num_heads=2, d_ff=64, share_embeddings=True, max_len=12,
        **MARIAN_OPTIONS,
    )  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
    _copy_task(model)
    for graph in translator_graphs(model):
        save_onnx(graph, export_program(graph), tmp_path / f"{graph.name}.onnx")
    meta = translator_metadata(model)
    assert (meta["decoder_start_id"], meta["pad_id"], meta["forced_eos"]) == (0, 0, True)
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))

    src = _padded([[5, 9, 12, 2], [7, 8, 9, 10, 11, 30, 2], [30, 2], [13, 13, 20, 33, 2]], 0)
    exported = OnnxTranslator(tmp_path, threads=1)
    for max_len in (None, 3):  # the second ends every sentence with a forced eos
        tokens, log_probs = exported.greedy(src, max_len=max_len)
        expected = greedy_decode(model, torch.from_numpy(src), max_len=max_len)
        assert tokens == expected.tokens
        np.testing.assert_allclose(log_probs, expected.log_probs.numpy(), atol=TOL, rtol=TOL)
    for alpha, max_len in ((0.6, None), (2.0, None), (1.0, 4)):  # GNMT's search
        tokens, _, scores = exported.beam(src, beam_size=4, length_penalty=alpha, max_len=max_len)
        expected = beam_search(
            model, torch.from_numpy(src), beam_size=4, length_penalty=alpha, max_len=max_len
        )
        assert tokens == expected.tokens, alpha
        np.testing.assert_allclose(scores, expected.scores.numpy(), atol=TOL, rtol=TOL)
    # Beam search as generate does it, with each of its stopping rules.
    meta["search"] = "hugging_face"
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    exported = OnnxTranslator(tmp_path, threads=1)
    for early_stopping, max_len in ((False, None), (True, None), ("never", 5), (False, 3)):
        tokens, log_probs, scores = exported.beam(
            src, beam_size=3, max_len=max_len, early_stopping=early_stopping
        )
        expected = beam_search(
            model, torch.from_numpy(src), beam_size=3, length_penalty=1.0, max_len=max_len,
            style="hugging_face", early_stopping=early_stopping,
        )  # fmt: skip
        assert tokens == expected.tokens, early_stopping
        np.testing.assert_allclose(scores, expected.scores.numpy(), atol=TOL, rtol=TOL)


def test_the_decoder_step_graph_matches_qkv_decode_with_a_cache(translator_run, translator_onnx):
    from qkv.tasks.translation import load_translator

    model = load_translator(translator_run).model
    encoder = _session(translator_onnx / "encoder.onnx")
    step = _session(translator_onnx / "decoder_step.onnx")
    src = torch.randint(4, model.config.src_vocab_size, (3, 13))
    src[2, 5:] = model.config.pad_id
    mask = (src != model.config.pad_id).long()
    memory, *cross = encoder.run(None, {"input_ids": src.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected_memory = model.encode(src).last_hidden_state
    _close(memory, expected_memory)

    cache = model.init_cache()
    names = [
        f"{p}_{kv}_{i}" for p in ("past", "cross") for i in range(2) for kv in ("key", "value")
    ]
    past = [np.zeros((3, 2, 0, 16), np.float32)] * 4
    tokens = torch.tensor([[1, 7, 9, 4, 12]] * 3)
    for t in range(tokens.shape[1]):
        ids = tokens[:, t : t + 1]
        feed = dict(zip(names, [*past, *cross], strict=True))
        log_probs, *past = step.run(
            None, {"input_ids": ids.numpy(), "memory_mask": mask.numpy(), **feed}
        )
        with torch.no_grad():
            hidden = model.decode(
                ids, expected_memory, memory_key_padding_mask=mask.bool(), cache=cache
            ).last_hidden_state[:, -1]
            expected = torch.log_softmax(model.output_proj(hidden), dim=-1)
        pad = model.config.pad_id
        assert np.all(log_probs[:, pad] == -np.inf)
        keep = np.arange(log_probs.shape[1]) != pad
        _close(log_probs[:, keep], expected[:, keep])
        assert past[0].shape == (3, 2, t + 1, 16)
        _close(past[0], cache.layers[0][0].key)


def test_the_translator_as_torch_programs(translator_run, tmp_path):
    from qkv.decoding import greedy_decode
    from qkv.tasks.translation import load_translator

    out = tmp_path / "translator-pt2"
    result = export(translator_run, out, "torch")
    assert result.files == ["encoder.pt2", "decoder_step.pt2"]
    encoder = torch.export.load(out / "encoder.pt2").module()
    step = torch.export.load(out / "decoder_step.pt2").module()
    model = load_translator(translator_run).model
    meta = json.loads((out / "translator.json").read_text())

    # Greedy decoding with the programs, 5 tokens exactly, batch 3 and padding.
    src = torch.randint(4, model.config.src_vocab_size, (3, 9))
    src[1, 4:] = meta["pad_id"]
    mask = (src != meta["pad_id"]).long()
    with torch.no_grad():
        _, *cross = encoder(src, mask)
        past = [torch.zeros(3, 2, 0, 16)] * 4
        ids = torch.full((3, 1), meta["decoder_start_id"])
        produced = []
        for _ in range(5):
            log_probs, *past = step(ids, mask, past, cross)
            log_probs[:, meta["eos_id"]] = float("-inf")  # as min_len does: no eos yet
            ids = log_probs.argmax(-1, keepdim=True)
            produced.append(ids)
        expected = greedy_decode(model, src, max_len=5, min_len=5)
    assert torch.cat(produced, dim=1).tolist() == expected.tokens


# --- the command's refusals ------------------------------------------------------------------


def test_export_refuses_to_overwrite_and_replaces_only_an_export(vit_run, tmp_path, capsys):
    out = tmp_path / "vit"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(vit_run), "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"qkv export: {out} already exists; --overwrite replaces it"
    )
    assert main(["export", str(vit_run), "-o", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == f"qkv export: {out} is not an export folder (no export.json); refusing to replace it"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    fresh = tmp_path / "fresh"
    assert main(["export", str(vit_run), "-o", str(fresh)]) == 0
    before = (fresh / "model.onnx").stat().st_mtime_ns
    assert main(["export", str(vit_run), "-o", str(fresh)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(vit_run), "-o", str(fresh), "--overwrite", "--format", "torch"]) == 0
    assert sorted(p.name for p in fresh.iterdir()) == ["export.json", "model.pt2"]
    assert (fresh / "model.pt2").stat().st_mtime_ns > before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-export-")]


@pytest.mark.parametrize(
    "args",
    [["--format", "tensorflow"], ["--pooling", "sum"], ["--opset", "0"], []],
    ids=["format", "pooling", "opset", "no-output"],
)
def test_usage_errors_exit_2(args, tmp_path, capsys):
    argv = ["export", str(tmp_path)] + args + (["-o", str(tmp_path / "o")] if args else [])
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv export: ") and err.count("\n") == 1


def test_expected_failures_are_one_line(vit_run, tmp_path, capsys):
    cases = [
        (["export", str(tmp_path / "missing"), "-o", str(tmp_path / "o")], "does not exist"),
        (
            ["export", str(tmp_path), "-o", str(tmp_path / "o")],
            "is neither a qkv checkpoint nor a run directory",
        ),
        (
            ["export", str(vit_run), "-o", str(tmp_path / "o"), "--pooling", "mean"],
            "--pooling is for BERT models",
        ),
        (
            ["export", str(vit_run), "-o", str(tmp_path / "o"), "--opset", "16"],
            "--opset must be at least 17, got 16",
        ),
        (
            [
                "export",
                str(vit_run),
                "-o",
                str(tmp_path / "o"),
                "--format",
                "torch",
                "--opset",
                "18",
            ],
            "--opset is for --format onnx",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("qkv export: ") and err.count("\n") == 1, err
        assert message in err, err
    assert not (tmp_path / "o").exists()
