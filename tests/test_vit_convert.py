"""Hugging Face image processors and timm state dicts for qkv's ViT
(:mod:`qkv.convert.vit`).

The processor tests compare, on image files the test writes (several sizes and aspect
ratios; RGB, grey, RGBA and palette; PNG and JPEG), what ``qkv vit classify`` feeds the
model with what ``transformers``' PIL image processors give (``ViTImageProcessorPil``,
``DeiTImageProcessorPil``, ``ConvNextImageProcessorPil``, loaded from the same
``preprocessor_config.json``). The timm parity test needs ``timm`` (not installed
with qkv's test set-up): it is skipped without it.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from qkv.cli import main
from qkv.convert.vit import (
    CheckpointError,
    image_processor_from_dict,
    load_image_processor,
    save_pretrained,
)
from qkv.data.images import normalize
from qkv.models.vit import ViT, ViTConfig
from qkv.tasks.vit import load_classifier

# (x·r - m)/s against qkv's (x - m/r)/(s/r): the same numbers rounded differently in
# float32, a few units in the last place of values up to about 3.
PIXEL_TOL = {"atol": 1e-5, "rtol": 0.0}
SIZE = 16  # the model's input side


def tiny_vit(**overrides) -> ViT:
    torch.manual_seed(0)
    config = ViTConfig(
        **{
            "image_size": SIZE, "patch_size": 4, "in_channels": 3, "num_classes": 3,
            "d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 64, "dropout": 0.0,
            **overrides,
        }
    )  # fmt: skip
    model = ViT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Image files of several sizes, aspect ratios and modes, as PNG and JPEG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def noise(height, width, channels):
        # Smooth gradients plus noise: resampling filters give visibly different results.
        y, x = np.mgrid[0:height, 0:width]
        base = (x * 255 / max(width - 1, 1) + y * 128 / max(height - 1, 1)) % 256
        pixels = base[..., None] + rng.integers(-40, 40, (height, width, channels))
        return np.clip(pixels, 0, 255).astype(np.uint8)

    files = {}
    files["wide_rgb.png"] = Image.fromarray(noise(30, 47, 3), "RGB")
    files["tall_grey.png"] = Image.fromarray(noise(57, 23, 1)[..., 0], "L")
    rgba = noise(40, 40, 4)
    rgba[..., 3] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]  # transparent to opaque
    files["square_rgba.png"] = Image.fromarray(rgba, "RGBA")
    files["photo.jpg"] = Image.fromarray(noise(37, 50, 3), "RGB")
    files["small.jpg"] = Image.fromarray(noise(11, 9, 3), "RGB")
    files["palette.png"] = Image.fromarray(noise(33, 33, 3), "RGB").convert("P")
    paths = []
    for name, picture in files.items():
        path = folder / name
        picture.save(path, quality=90) if name.endswith(".jpg") else picture.save(path)
        paths.append(path)
    return paths


def _processors():
    transformers = pytest.importorskip("transformers")
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    vit, deit, convnext = (
        getattr(transformers, f"{name}ImageProcessorPil") for name in ("ViT", "DeiT", "ConvNext")
    )
    return {
        "vit bilinear": vit(size={"height": SIZE, "width": SIZE}, **imagenet),
        "vit bicubic": vit(size={"height": SIZE, "width": SIZE}, resample=3),
        "vit lanczos, no normalisation": vit(
            size={"height": SIZE, "width": SIZE}, resample=1, do_normalize=False
        ),
        "deit resize and crop": deit(
            size={"height": 20, "width": 24}, crop_size={"height": SIZE, "width": SIZE}
        ),
        "deit shortest edge and crop": deit(
            size={"shortest_edge": 19}, crop_size={"height": SIZE, "width": SIZE}, **imagenet
        ),
        "deit crop larger than the image (padded)": deit(
            size={"height": 12, "width": 14}, crop_size={"height": SIZE, "width": SIZE}
        ),
        "convnext crop_pct": convnext(size={"shortest_edge": SIZE}, crop_pct=0.8, resample=2),
        "beit nearest, box": transformers.BeitImageProcessorPil(
            size={"height": SIZE, "width": SIZE}, resample=0, rescale_factor=1 / 127.5
        ),
    }


PROCESSOR_NAMES = [
    "vit bilinear",
    "vit bicubic",
    "vit lanczos, no normalisation",
    "deit resize and crop",
    "deit shortest edge and crop",
    "deit crop larger than the image (padded)",
    "convnext crop_pct",
    "beit nearest, box",
]


def test_the_names_are_those_of_the_processors():
    assert list(_processors()) == PROCESSOR_NAMES


@pytest.mark.parametrize("name", PROCESSOR_NAMES)
def test_image_files_reach_the_model_as_transformers_processor_gives_them(
    name, image_files, tmp_path
):
    processor = _processors()[name]
    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(), folder, label_names=["a", "b", "c"])
    processor.save_pretrained(folder)
    # Read back from the file both sides: the test is of the file's meaning.
    processor = type(processor).from_pretrained(folder)
    classifier = load_classifier(folder)  # what qkv vit classify and qkv attention load
    assert classifier.processor == load_image_processor(folder)
    for path in image_files:
        from PIL import Image

        with Image.open(path) as picture:
            # Grey and transparent images need do_convert_rgb for a colour model in
            # transformers (else it refuses them); qkv always converts.
            expected = processor(picture, do_convert_rgb=True, return_tensors="pt")
        expected = expected["pixel_values"][0]  # (3, S, S)
        ours = normalize(classifier.read_image(path), classifier.mean, classifier.std)
        assert ours.shape == expected.shape == (3, SIZE, SIZE), path.name
        assert_close(ours, expected, **PIXEL_TOL, msg=lambda m, p=path: f"{p.name}: {m}")
        assert_close(classifier.processor.pixel_values(path), expected, **PIXEL_TOL)


@pytest.mark.parametrize("name", PROCESSOR_NAMES)
def test_a_processor_written_back_reads_as_the_same_steps(name, tmp_path):
    pytest.importorskip("transformers")
    folder = tmp_path / "vit"
    _processors()[name].save_pretrained(folder)
    values = json.loads((folder / "preprocessor_config.json").read_text())
    ours = image_processor_from_dict(values, image_size=SIZE)
    again = image_processor_from_dict(ours.to_dict(), image_size=SIZE)
    assert again.resize == ours.resize and again.crop == ours.crop
    assert (again.resample, again.channels, again.image_size) == (ours.resample, 3, SIZE)
    assert again.mean == pytest.approx(ours.mean) and again.std == pytest.approx(ours.std)


def test_old_feature_extractor_files_with_int_sizes(image_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(), folder)
    # transformers 4.x feature extractors wrote sizes as ints: squares for ViT/DeiT,
    # the shorter side for ConvNeXT.
    old = {
        "feature_extractor_type": "DeiTFeatureExtractor", "do_resize": True, "size": 18,
        "resample": 3, "do_center_crop": True, "crop_size": SIZE, "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(old))
    processor = transformers.DeiTImageProcessorPil.from_pretrained(folder)
    ours = load_image_processor(folder)
    assert (ours.resize, ours.crop, ours.resample) == ((18, 18), (SIZE, SIZE), 3)
    for path in image_files:
        from PIL import Image

        with Image.open(path) as picture:
            expected = processor(picture, do_convert_rgb=True, return_tensors="pt")
        assert_close(ours.pixel_values(path), expected["pixel_values"][0], **PIXEL_TOL)


def test_classify_on_a_hugging_face_folder_gives_transformers_probabilities(
    image_files, tmp_path, capsys
):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(), folder, label_names=["a", "b", "c"])
    processor = transformers.DeiTImageProcessorPil(
        size={"shortest_edge": 20}, crop_size={"height": SIZE, "width": SIZE}
    )
    processor.save_pretrained(folder)
    model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    paths = [str(p) for p in image_files[:3]]
    assert main(["vit", "classify", str(folder), *paths, "--top", "3", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from PIL import Image

    for path, record in zip(paths, records, strict=True):
        with Image.open(path) as picture:
            pixels = processor(picture, do_convert_rgb=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**pixels).logits.softmax(-1)[0]
        ours = {row["label"]: row["probability"] for row in record["top"]}
        expected = {model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
        assert ours.keys() == expected.keys()
        for label, p in expected.items():
            assert ours[label] == pytest.approx(p, abs=1e-5), (path, label)


def test_eval_on_a_folder_reads_each_image_as_the_processor_does(tmp_path, capsys):
    # Each image filed under the class transformers predicts for it: the right accuracy
    # is 100%. Among them, images for which qkv's own reading (shorter side resized,
    # centre cut out) makes this model predict another class than the processor's
    # reading (both sides resized, bicubic) does.
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from qkv.data.image_folder import read_image_file

    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(), folder, label_names=["a", "b", "c"])
    processor = transformers.ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, resample=3)
    processor.save_pretrained(folder)
    model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    classifier = load_classifier(folder)
    images, rng, telling = tmp_path / "images", np.random.default_rng(1), 0
    for k in range(30):
        height, width = rng.integers(10, 60, 2)
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        with Image.open(path) as picture:
            pixels = processor(picture, return_tensors="pt")
        with torch.no_grad():
            label = model.config.id2label[int(model(**pixels).logits.argmax())]
        cropped = torch.from_numpy(read_image_file(path, SIZE, 3)).float()
        telling += classifier.classes[int(classifier.probabilities(cropped).argmax())] != label
        (images / label).mkdir(parents=True, exist_ok=True)
        path.rename(images / label / path.name)
    assert telling > 0  # the test can fail
    assert main(["vit", "eval", str(folder), "--images", str(images), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["images"], result["accuracy"]) == (30, 1.0)


def test_qkv_attention_reads_the_image_as_the_processor_does(image_files, tmp_path):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from qkv.cli import attention

    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(), folder)
    processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": SIZE})
    processor.save_pretrained(folder)
    loaded = attention.load(folder)
    for path in image_files[:3]:
        image, classes = attention.read_image(str(path), loaded)
        with Image.open(path) as picture:
            expected = processor(picture, do_convert_rgb=True, return_tensors="pt")
        assert classes is None
        assert_close(attention._normalise(image, loaded), expected["pixel_values"][0], **PIXEL_TOL)
    out = tmp_path / "maps.png"
    assert main(["attention", str(folder), str(image_files[0]), "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_unknown_or_unusable_processor_settings_are_refused_by_name():
    good = {"size": {"height": SIZE, "width": SIZE}}
    assert image_processor_from_dict(good, image_size=SIZE).resize == (SIZE, SIZE)
    bad = {
        "image_processor_type": "ViTImageProcessor",
        "do_flip_channel_order": True,
        "size": {"shortest_edge": 10, "longest_edge": 20},
        "resample": 7,
        "do_pad": True,
        "image_mean": [0.5, 0.5],
        "crop_pct": 0.9,
    }
    with pytest.raises(CheckpointError) as raised:
        image_processor_from_dict(bad, image_size=SIZE, source="pre.json")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("pre.json: unknown setting(s) do_flip_channel_order; ")
    for part in (
        "size {'shortest_edge': 10, 'longest_edge': 20} is not a size qkv applies",
        "resample 7 is not a PIL filter number (0-5)",
        "image_mean should have 3 values, got [0.5, 0.5]",
        "crop_pct is a ConvNeXT setting, and the processor is 'ViTImageProcessor'",
        "do_pad is true",
    ):
        assert part in message
    with pytest.raises(CheckpointError, match=r"'CLIPImageProcessor' is not one qkv follows"):
        image_processor_from_dict({"image_processor_type": "CLIPImageProcessor", **good})
    with pytest.raises(CheckpointError, match=re.escape("gives 24×20 images (width×height)")):
        image_processor_from_dict({"size": {"height": 20, "width": 24}}, image_size=SIZE)


def test_a_folder_without_preprocessor_config_uses_vit_defaults(image_files, tmp_path):
    folder = tmp_path / "vit"
    save_pretrained(tiny_vit(in_channels=1), folder)
    processor = load_image_processor(folder)
    assert (processor.channels, processor.resize, processor.resample) == (1, (SIZE, SIZE), 2)
    assert processor.mean == (127.5,) and processor.std == (127.5,)
    assert processor.read(image_files[0]).shape == (1, SIZE, SIZE)
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        processor.read(folder / "missing.png")
    (folder / "not_an_image.png").write_text("hello")
    with pytest.raises(ValueError, match=r"not_an_image\.png: not a readable image"):
        processor.read(folder / "not_an_image.png")


# --- timm ------------------------------------------------------------------------


def timm_reference(state: dict, images: torch.Tensor, heads: int) -> torch.Tensor:
    """timm's ``VisionTransformer.forward`` written out on its state dict (class-token
    pooling; layer scale, ``no_embed_class``, missing q/k/v biases and ``fc_norm`` as
    timm treats them), so that the conversion is checked where timm is not installed.

    Shape: ``(b, c, H, W)`` -> ``(b, K)``.
    """
    import torch.nn.functional as F

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)

    weight = state["patch_embed.proj.weight"]
    x = F.conv2d(images, weight, state.get("patch_embed.proj.bias"), stride=weight.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (b, N, d)
    b, d = x.shape[0], x.shape[-1]
    cls = state["cls_token"].expand(b, -1, -1)
    if state["pos_embed"].shape[1] == x.shape[1]:  # no_embed_class
        x = torch.cat([cls, x + state["pos_embed"]], dim=1)
    else:
        x = torch.cat([cls, x], dim=1) + state["pos_embed"]
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}"
        h = norm(x, f"{p}.norm1")
        qkv = F.linear(h, state[f"{p}.attn.qkv.weight"], state.get(f"{p}.attn.qkv.bias"))
        q, k, v = qkv.reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, -1, d)
        h = F.linear(h, state[f"{p}.attn.proj.weight"], state.get(f"{p}.attn.proj.bias"))
        x = x + h * state.get(f"{p}.ls1.gamma", 1.0)
        h = F.gelu(
            F.linear(
                norm(x, f"{p}.norm2"), state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"]
            )
        )
        h = F.linear(h, state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"])
        x = x + h * state.get(f"{p}.ls2.gamma", 1.0)
    pooled = (norm(x, "norm") if "norm.weight" in state else x)[:, 0]
    if "fc_norm.weight" in state:
        pooled = norm(pooled, "fc_norm")
    return F.linear(pooled, state["head.weight"], state["head.bias"])


def timm_state(model: ViT, **changes) -> dict:
    """``to_timm_state_dict(model)`` with timm's variants, noise on the new tensors."""
    from qkv.convert.vit import to_timm_state_dict

    state = to_timm_state_dict(model)
    d, g = model.config.d_model, torch.Generator().manual_seed(5)
    layers = model.config.num_layers
    if changes.get("layer_scale"):
        for i in range(layers):
            for name in ("ls1.gamma", "ls2.gamma"):
                state[f"blocks.{i}.{name}"] = 0.5 + torch.rand(d, generator=g)
    if changes.get("no_embed_class"):
        state["pos_embed"] = state["pos_embed"][:, 1:].clone()
    if changes.get("no_qkv_bias"):
        for i in range(layers):
            del state[f"blocks.{i}.attn.qkv.bias"]
    if changes.get("fc_norm"):
        state["fc_norm.weight"], state["fc_norm.bias"] = (
            state.pop("norm.weight"),
            state.pop("norm.bias"),
        )
    return state


TIMM_VARIANTS = [
    {},
    {"layer_scale": True},
    {"no_embed_class": True},
    {"no_qkv_bias": True},
    {"fc_norm": True},
    {"layer_scale": True, "no_embed_class": True, "no_qkv_bias": True},
]


@pytest.mark.parametrize("variant", TIMM_VARIANTS, ids=lambda v: "+".join(v) or "plain")
def test_timm_state_dicts_give_timms_logits(variant):
    from qkv.convert.vit import from_timm_state_dict

    state = timm_state(tiny_vit(layer_norm_eps=1e-6), **variant)
    model = from_timm_state_dict(state, num_heads=4).eval()
    assert model.config.layer_norm_eps == 1e-6 and model.config.image_size == SIZE
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(model(images).logits, timm_reference(state, images, 4), atol=1e-5, rtol=0)


def test_timm_round_trip_is_exact():
    from qkv.convert.vit import from_timm_state_dict, timm_config, to_timm_state_dict

    model = tiny_vit(layer_norm_eps=1e-6)
    state = to_timm_state_dict(model)
    assert state["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert state["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    back = from_timm_state_dict(state, timm_config(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    # The state dict wrapped as training scripts save it; a ViTConfig given outright.
    back = from_timm_state_dict({"model": state}, model.config)
    assert torch.equal(back.encoder.layers[0].self_attn.k_proj.weight,
                       model.encoder.layers[0].self_attn.k_proj.weight)  # fmt: skip


def test_timm_weights_that_do_not_fit_are_refused_every_problem_listed():
    from qkv.convert.vit import from_timm_state_dict

    model = tiny_vit(layer_norm_eps=1e-6)
    state = timm_state(model)
    state["blocks.0.mlp.fc2.weight"] = torch.zeros(32, 65)  # wrong shape
    state["blocks.0.attn.extra.weight"] = torch.zeros(3)  # unknown
    del state["blocks.1.norm2.bias"]  # missing
    state["reg_token"] = torch.zeros(1, 4, 32)  # register tokens, with their positions
    state["pos_embed"] = torch.cat([state["pos_embed"], torch.zeros(1, 4, 32)], dim=1)
    state["blocks.0.attn.q_norm.weight"] = torch.zeros(8)  # qk_norm
    with pytest.raises(CheckpointError) as raised:
        from_timm_state_dict(state, num_heads=4)
    message = str(raised.value)
    assert "\n" not in message
    for part in (
        "timm weights do not fit this ViT: ",
        "qkv's ViT cannot represent: q/k normalisation (qk_norm), register tokens (reg_tokens)",
        "1 timm key(s) have no qkv name: ['blocks.0.attn.extra.weight']",
        "missing timm keys ['blocks.1.norm2.bias']",
        "blocks.0.mlp.fc2.weight: model (32, 64), given (32, 65)",
    ):
        assert part in message, part

    plain = timm_state(model)
    with pytest.raises(CheckpointError, match=r"the number of heads is not in the weights"):
        from_timm_state_dict(plain)
    with pytest.raises(CheckpointError) as raised:
        from_timm_state_dict(
            {k: v for k, v in plain.items() if k != "head.weight"},
            {"global_pool": "avg", "num_heads": 4},
        )
    assert str(raised.value) == (
        "unsupported timm ViT: global_pool 'avg': qkv's ViT classifies from the class "
        "token ('token'); no head.weight: qkv's ViT has a classification head "
        "(num_classes > 0)"
    )
    with pytest.raises(CheckpointError, match=r"num_heads \(5\) must divide d_model"):
        from_timm_state_dict(plain, num_heads=5)


def test_timm_checkpoint_files_and_hub_folders(tmp_path):
    from safetensors.torch import save_file

    from qkv.convert.vit import from_timm, to_timm_state_dict

    model = tiny_vit(layer_norm_eps=1e-6)
    state = to_timm_state_dict(model)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(images).logits

    def logits(loaded):
        with torch.no_grad():
            return loaded.eval()(images).logits

    # A .pth file, weights_only, the heads given.
    torch.save({"state_dict": state}, tmp_path / "vit.pth")
    assert_close(logits(from_timm(tmp_path / "vit.pth", num_heads=4)), expected)
    # A Hub folder as timm writes it: model.safetensors and config.json (model_args).
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(state, hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 3, "global_pool": "token",
        "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4, "img_size": SIZE},
    }))  # fmt: skip
    assert_close(logits(from_timm(hub)), expected)
    assert_close(logits(from_timm(hub / "model.safetensors")), expected)
    # The heads of timm's named sizes, when the width is theirs.
    wide = tiny_vit(d_model=192, num_heads=3, d_ff=96, layer_norm_eps=1e-6)
    save_file(to_timm_state_dict(wide), hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    assert from_timm(hub).config.num_heads == 3

    with pytest.raises(FileNotFoundError, match=r"missing\.pth: no such checkpoint file"):
        from_timm(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"no weights in .*empty: expected"):
        (tmp_path / "empty").mkdir()
        from_timm(tmp_path / "empty")
    # A pickle of something other than tensors is refused by weights_only.
    torch.save({"model": state, "hook": print}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match=r"code\.pth: not a readable PyTorch checkpoint"):
        from_timm(tmp_path / "code.pth", num_heads=4)


def _timm_eval_pixels(path, mean, std, crop_pct, size=SIZE):
    """timm's evaluation transform written out with PIL and numpy: the picture as
    ``Image.convert("RGB")``, torchvision's ``Resize(floor(size / crop_pct))`` (shorter
    side, bicubic), its ``CenterCrop(size)`` (start rounded half to even), ``ToTensor``,
    ``Normalize``."""
    import math

    from PIL import Image

    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    scale = math.floor(size / crop_pct)
    w, h = picture.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = scale, int(scale * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    picture = picture.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    picture = picture.crop((left, top, left + size, top + size))
    x = np.asarray(picture, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (torch.from_numpy(x) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]


def test_a_timm_hub_folder_classifies_files_as_timm_reads_them(image_files, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import save_file

    from qkv.convert.vit import to_timm_state_dict

    # Shapes whose crop margin is odd after resizing: 45×40 -> 19×17, margin 3 on the
    # long side (torchvision starts at 2, transformers at 1).
    extra = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 45, 3), np.uint8)).save(extra)
    files = [*image_files, extra]
    model = tiny_vit(layer_norm_eps=1e-6)
    state = to_timm_state_dict(model)
    hub = tmp_path / "timm-hub"
    hub.mkdir()
    save_file(state, hub / "model.safetensors")
    mean, std, crop_pct = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 0.9
    (hub / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 3, "global_pool": "token",
        "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 4, "img_size": SIZE},
        "label_names": ["cat", "dog", "fox"],
        "pretrained_cfg": {
            "input_size": [3, SIZE, SIZE], "interpolation": "bicubic", "mean": mean,
            "std": std, "crop_pct": crop_pct, "crop_mode": "center", "num_classes": 3,
            "hf_hub_id": "timm/vit_tiny_patch16_224.test",
        },
    }))  # fmt: skip
    assert main(["vit", "classify", str(hub), *map(str, files), "--top", "3", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    pixels = torch.stack([_timm_eval_pixels(p, mean, std, crop_pct) for p in files])
    expected = timm_reference(state, pixels, heads=4).softmax(-1)
    for path, record, probs in zip(files, records, expected, strict=True):
        got = {row["label"]: row["probability"] for row in record["top"]}
        assert got.keys() == {"cat", "dog", "fox"}
        for label, p in zip(["cat", "dog", "fox"], probs.tolist(), strict=True):
            assert got[label] == pytest.approx(p, abs=1e-5), (path.name, label)
    # The other commands that take a ViT take the folder too.
    assert main(["attention", str(hub), str(extra), "--out", str(tmp_path / "maps.png")]) == 0
    assert main(["vit", "export-hf", str(hub), "-o", str(tmp_path / "hf")]) == 1
    assert "is a Hugging Face or timm folder, not a qkv run" in capsys.readouterr().err

    # What qkv does not follow is refused by name; other timm models are not ViTs.
    config = json.loads((hub / "config.json").read_text())
    config["pretrained_cfg"].update(crop_mode="squash", interpolation="area")
    (hub / "config.json").write_text(json.dumps(config))
    assert main(["vit", "classify", str(hub), str(extra)]) == 1
    err = capsys.readouterr().err
    assert "crop_mode 'squash'" in err and "interpolation 'area'" in err
    assert len(err.strip().splitlines()) == 1
    (hub / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 3}))
    assert main(["vit", "classify", str(hub), str(extra)]) == 1
    assert "timm architecture 'resnet50'; qkv reads timm's Vision" in capsys.readouterr().err


# --- timm itself (skipped without it) ----------------------------------------------


TIMM_OPTIONS = [
    {},
    {"init_values": 0.5},
    {"no_embed_class": True},
    {"qkv_bias": False},
    {"fc_norm": True},
    {"init_values": 0.5, "no_embed_class": True, "qkv_bias": False},
]


def _timm_model(**options):
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    model = vision_transformer.VisionTransformer(
        img_size=SIZE, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
        num_heads=4, mlp_ratio=2.0, **options,
    ).eval()  # fmt: skip
    with torch.no_grad():  # noise on every tensor: zero biases would hide a misplaced one
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("options", TIMM_OPTIONS, ids=lambda o: "+".join(o) or "plain")
def test_timm_vision_transformer_parity(options):
    from qkv.convert.vit import from_timm_state_dict

    timm_model = _timm_model(**options)
    model = from_timm_state_dict(timm_model.state_dict(), num_heads=4).eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_model(images)
        assert_close(model(images).logits, expected, atol=1e-5, rtol=0)
        # The reference above is timm's forward: checked here against timm itself.
        assert_close(timm_reference(timm_model.state_dict(), images, 4), expected,
                     atol=1e-5, rtol=0)  # fmt: skip


def test_qkv_vit_goes_to_timm_with_equal_logits():
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    from qkv.convert.vit import timm_config, to_timm_state_dict

    model = tiny_vit(layer_norm_eps=1e-6)
    timm_model = vision_transformer.VisionTransformer(**timm_config(model)).eval()
    timm_model.load_state_dict(to_timm_state_dict(model), strict=True)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close(model(images).logits, timm_model(images), atol=1e-5, rtol=0)


def test_timm_models_qkv_cannot_represent_are_refused():
    from qkv.convert.vit import from_timm_state_dict

    pooled = _timm_model(global_pool="avg", class_token=False)
    with pytest.raises(CheckpointError) as raised:
        from_timm_state_dict(pooled.state_dict(), {"global_pool": "avg"}, num_heads=4)
    assert "global_pool 'avg'" in str(raised.value)
    assert "no cls_token" in str(raised.value)
    registers = _timm_model(reg_tokens=2, pre_norm=True)
    with pytest.raises(CheckpointError) as raised:
        from_timm_state_dict(registers.state_dict(), num_heads=4)
    assert str(raised.value).startswith(
        "timm weights do not fit this ViT: qkv's ViT cannot represent: LayerNorm before "
        "the blocks (pre_norm), register tokens (reg_tokens); "
    )  # then the position table, longer by the registers' rows


def test_timm_hub_folder_from_save_for_hf(tmp_path):
    timm = pytest.importorskip("timm")
    pytest.importorskip("huggingface_hub")
    from qkv.convert.vit import from_timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=4, embed_dim=32,
        depth=2, num_heads=4, num_classes=5,
    ).eval()  # fmt: skip
    args = {"img_size": SIZE, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}
    timm.models.save_for_hf(model, tmp_path, model_args=args, safe_serialization=True)
    ours = from_timm(tmp_path).eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close(ours(images).logits, model(images), atol=1e-5, rtol=0)
