"""ViT training, checkpoints, classification and the ``qkv vit`` command (qkv.tasks.vit)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from qkv.cli import main
from qkv.data.images import DIGITS_CLASSES, FASHION_MNIST_DIR, load_digits
from qkv.models.vit import ViT, ViTConfig
from qkv.tasks.vit import PRESETS, ViTPreset, load_classifier, split_valid, train_vit
from qkv.train.checkpoint import latest_checkpoint, load_weights
from qkv.train.optim import parameter_groups

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install "
    "dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The ``digits`` preset trained once (170 steps, a few seconds on one core)."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("vit") / "digits"
    return train_vit(run_dir, "digits", progress=False)


def test_tiny_vit_learns_digits_in_seconds(digits_run):
    # Stated accuracy: >= 90% on the 360 held-out digits (97.2% measured, seed 0).
    assert digits_run.steps == PRESETS["digits"].train.max_steps
    assert digits_run.test_accuracy >= 0.90
    assert digits_run.seconds < 30
    steps = [row["step"] for row in digits_run.curve]
    assert steps == [85, 170]  # validation every eval_every steps and at the end
    report = json.loads((digits_run.run_dir / "report.json").read_text())
    assert report["test_accuracy"] == digits_run.test_accuracy


def test_checkpoint_meta_is_what_qkv_attention_reads(digits_run):
    from qkv.cli.attention import load, read_image

    meta = latest_checkpoint(digits_run.run_dir).meta
    assert "vit" in meta["family"]
    assert ViTConfig.from_dict(meta["model_config"]) == ViTConfig.digits()
    assert meta["max_value"] == 16
    assert meta["classes"] == list(DIGITS_CLASSES)
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert len(mean) == len(std) == 1 and 0 < mean[0] < 16 and 0 < std[0] < 16  # pixel units

    loaded = load(digits_run.run_dir)
    assert loaded.family == "vit"
    assert loaded.extra["classes"] == list(DIGITS_CLASSES)
    assert loaded.extra["mean"] == mean and loaded.extra["max_value"] == 16.0
    image, _ = read_image("digits:0", loaded)  # (1, 8, 8) in [0, 16]
    classifier = load_classifier(digits_run.run_dir)
    expected = classifier.probabilities(image)
    pixels = (image - mean[0]) / std[0]
    with torch.no_grad():
        got = loaded.model(pixels[None]).logits.softmax(-1)[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_resume_continues_to_the_same_weights(digits_run, tmp_path):
    """Drop the last checkpoint, resume from the one before: the same final weights."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(digits_run.run_dir, run_dir)
    final = latest_checkpoint(run_dir)
    shutil.rmtree(final.path)
    (final.path.parent / "latest").unlink()
    assert latest_checkpoint(run_dir).step == 85
    report = train_vit(run_dir, "digits", resume=True, progress=False)
    assert report.steps == 170
    resumed, uninterrupted = ViT(ViTConfig.digits()), ViT(ViTConfig.digits())
    load_weights(resumed, latest_checkpoint(run_dir).path)
    load_weights(uninterrupted, latest_checkpoint(digits_run.run_dir).path)
    for (name, a), b in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert report.test_accuracy == pytest.approx(digits_run.test_accuracy)


def test_classify_returns_top_k_in_order(digits_run):
    classifier = load_classifier(digits_run.run_dir)
    test = load_digits("test")
    predictions = classifier.classify(test.images[:8].float(), top_k=5)
    assert len(predictions) == 8
    for prediction in predictions:
        assert len(prediction.labels) == 5 and set(prediction.labels) <= set(DIGITS_CLASSES)
        assert prediction.probabilities == sorted(prediction.probabilities, reverse=True)
        assert 0 < sum(prediction.probabilities) <= 1 + 1e-6
    correct = [
        p.label == DIGITS_CLASSES[y] for p, y in zip(predictions, test.labels[:8], strict=True)
    ]
    assert sum(correct) >= 6
    assert classifier.accuracy(test) == pytest.approx(digits_run.test_accuracy)
    with pytest.raises(ValueError, match="8×8"):
        classifier.classify(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="top_k"):
        classifier.classify(test.images[:1].float(), top_k=0)


def test_test_time_flip_averages_the_image_and_its_mirror(digits_run):
    classifier = load_classifier(digits_run.run_dir)
    assert classifier.test_flip is False  # digits are not flipped: the preset says so
    images = load_digits("test").images[:4].float()
    expected = (classifier.probabilities(images) + classifier.probabilities(images.flip(-1))) / 2
    classifier.test_flip = True
    torch.testing.assert_close(classifier.probabilities(images), expected, atol=1e-6, rtol=0)
    assert PRESETS["fashion"].test_flip and PRESETS["fashion"].flip_p > 0


def test_parameter_groups_spare_norms_biases_and_added_tokens():
    model = ViT(ViTConfig.digits())
    # The model's own no_weight_decay() names the added tables; nothing to pass here.
    assert model.no_weight_decay() == {"cls_token", "position_embeddings"}
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "position_embeddings", "head.bias"} <= spared
    assert "patch_embedding.proj.weight" in decayed and "head.weight" in decayed
    assert not any("norm" in n or n.endswith("bias") for n in decayed)
    assert decayed | spared == set(names.values()) and not decayed & spared


def test_valid_split_is_fixed_and_disjoint():
    train = load_digits("train")
    a_train, a_valid = split_valid(train, 100)
    _, b_valid = split_valid(train, 100)
    assert torch.equal(a_valid.images, b_valid.images)
    assert len(a_train) + len(a_valid) == len(train)
    with pytest.raises(ValueError, match="valid_size"):
        split_valid(train, len(train))


def test_bad_recipes_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        train_vit(tmp_path, "huge")
    digits = PRESETS["digits"]
    with pytest.raises(ValueError, match="dataset"):
        ViTPreset("x", digits.model, digits.train, dataset="cifar")
    with pytest.raises(ValueError, match="unknown recipe field 'model.depth'"):
        digits.override({"model.depth": 3})
    with pytest.raises(ValueError, match="batch_size"):
        digits.override({"batch_size": 0})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="neither a qkv checkpoint"):
        load_classifier(tmp_path)


# --- the command line ---------------------------------------------------------------------------


def test_cli_eval_and_classify(digits_run, tmp_path, capsys):
    from PIL import Image

    assert main(["vit", "eval", str(digits_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"digits test: 360 images, accuracy {digits_run.test_accuracy:.2%}" in out

    # A digit saved as an ordinary 8-bit PNG: read back in the model's units (0..16).
    digit = load_digits("test").images[0, 0].numpy().astype(np.float32) * (255 / 16)
    png = tmp_path / "digit.png"
    Image.fromarray(digit.round().astype(np.uint8)).save(png)
    assert main(["vit", "classify", str(digits_run.run_dir), str(png), "digits:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{png}: ") and len(lines) == 12  # 2 × (name + top 5)
    probabilities = [float(line.split()[0]) for line in lines[1:6]]
    assert probabilities == sorted(probabilities, reverse=True)
    first = load_classifier(digits_run.run_dir).classify(load_digits("test").images[:1].float())
    assert lines[0] == f"{png}: {first[0].label}"

    # Options may come between the images (argparse's intermixed parsing).
    assert (
        main(["vit", "classify", str(digits_run.run_dir), "--top", "2", "digits:1", "digits:2"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[3].startswith("digits:2: ")  # 2 × (name + top 2)


def test_cli_errors(digits_run, tmp_path, capsys):
    run_dir = str(digits_run.run_dir)
    assert main(["vit", "classify", run_dir, str(tmp_path / "missing.png")]) == 1
    assert "missing.png not found" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["vit", "classify", run_dir, str(text)]) == 1
    assert f"{text}: not a readable image" in capsys.readouterr().err
    assert main(["vit", "classify", run_dir, "digits:100000"]) == 1
    assert "no such test image" in capsys.readouterr().err
    assert main(["vit", "eval", str(tmp_path)]) == 1
    assert "neither a qkv checkpoint" in capsys.readouterr().err
    assert main(["vit", "fit"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err
    assert main(["vit"]) == 2


@needs_fashion
def test_cli_train_smoke_on_fashion_subset(tmp_path, capsys):
    run_dir = tmp_path / "fashion"
    argv = ["vit", "train", "--preset", "fashion", "--run-dir", str(run_dir), "--steps", "4"]
    argv += ["--set", "model.num_layers=2", "--set", "train.lr=1e-3"]
    assert main(["--threads", "1", *argv, "--limit", "400", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "after 4 steps" in out
    meta = latest_checkpoint(run_dir).meta
    assert meta["classes"][0] == "T-shirt/top" and meta["max_value"] == 255
    assert meta["model_config"]["patch_size"] == 7 and meta["test_flip"] is True
    assert meta["model_config"]["num_layers"] == 2  # --set reached the model
    assert main(["vit", "classify", str(run_dir), "fashion-mnist:0", "--top", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
