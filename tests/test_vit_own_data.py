"""``qkv vit`` on a folder of the user's own images: loading, splits, bad files, --from,
eval and classify with --json (qkv.data.image_folder, qkv.tasks.vit)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qkv.cli import main
from qkv.data.image_folder import (
    find_classes,
    list_images,
    load_image_folder,
    read_image_file,
    split_by_path,
)
from qkv.models.vit import ViT, ViTConfig, resample_position_embeddings
from qkv.tasks.vit import load_folder_splits
from qkv.train.checkpoint import latest_checkpoint

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 30)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_folder(root, colours=COLOURS, per_class=20, seed=0):
    """Solid colours with noise: sizes 10–39 px (not square), every third image grey,
    PNG and JPEG alternately, and a text file that is not an image."""
    rng = np.random.default_rng(seed)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(10, 40)), int(rng.integers(10, 40))
            noise = rng.normal(0, 20, (h, w, 3))
            pixels = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if i % 3 == 0:
                image = image.convert("L")
            image.save(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (root / next(iter(colours)) / "notes.txt").write_text("not an image")
    return root


def run_cli(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def train_argv(images, run_dir, *more):
    return [
        "vit", "train", "--images", str(images), "--preset", "digits", "--steps", "20",
        "--run-dir", str(run_dir), "--no-progress", *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("own") / "colours")


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    """The digits preset (8×8 grey) trained 20 steps on the colour folder."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("runs") / "colours"
    assert main(train_argv(folder, run_dir)) == 0
    return run_dir


# --- the folder -------------------------------------------------------------------------------


def test_classes_are_sorted_sub_folders_and_other_files_are_ignored(folder, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.png").write_bytes(b"")  # a file beside the classes is no class
    assert find_classes(tmp_path) == ["a", "b"]
    classes, samples = list_images(folder)
    assert classes == ["blue", "green", "red"]
    assert len(samples) == 60 and not any(p.endswith(".txt") for p, _ in samples)
    assert samples[0] == ("blue/000.jpg", 0) and samples[-1] == ("red/019.png", 2)


def test_read_image_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    pixels[:, 10:30] = 255  # the centre 20×20 square is white, the sides black
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    rgb = read_image_file(tmp_path / "wide.png", 10, 3)
    assert rgb.shape == (3, 10, 10) and rgb.dtype == np.uint8
    # Only the white centre is left (its edge columns blurred by the resize filter).
    assert (rgb[:, :, 1:9] == 255).all() and rgb.min() > 200
    expected = Image.open(tmp_path / "wide.png").resize((20, 10), Image.Resampling.BILINEAR)
    assert np.array_equal(rgb, np.asarray(expected.crop((5, 0, 15, 10))).transpose(2, 0, 1))
    grey = read_image_file(tmp_path / "wide.png", 10, 1)
    assert grey.shape == (1, 10, 10)
    squashed = read_image_file(tmp_path / "wide.png", 10, 3, crop=False)
    assert squashed[:, :, 0].max() < 128  # both black sides are kept when squashing
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "grey.jpg")
    assert read_image_file(tmp_path / "grey.jpg", 10, 3).shape == (3, 10, 10)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "empty"), (b"this is text, not a picture", "not an image"), (None, "truncated")],
)
def test_an_unreadable_image_is_named(tmp_path, content, why):
    path = tmp_path / "bad.png"
    if content is None:
        Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: not a readable image"):
        read_image_file(path, 8, 1)


def test_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        list_images(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"{tmp_path}: no class sub-folders"):
        list_images(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"{tmp_path}: no images in any class folder"):
        list_images(tmp_path)
    Image.new("L", (5, 5)).save(tmp_path / "cat" / "a.png")
    (tmp_path / "emu").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path}: no images in class folder\\(s\\) dog, emu"):
        list_images(tmp_path)


def test_split_is_deterministic_and_stable_when_images_are_added(folder, tmp_path):
    first = load_image_folder(folder, image_size=8, channels=1)
    parts = split_by_path(first, train_percent=80, valid_percent=10)
    again = split_by_path(
        load_image_folder(folder, image_size=8, channels=1), train_percent=80, valid_percent=10
    )
    assert {s: p.files for s, p in parts.items()} == {s: p.files for s, p in again.items()}
    assert sum(len(p.files) for p in parts.values()) == 60
    assert all(len(p.files) > 0 for p in parts.values())
    for split in parts.values():  # images and labels travel with their file
        for i, name in enumerate(split.files):
            assert split.images.labels[i] == split.images.classes.index(name.split("/")[0])
    # A copy with more images elsewhere: the old files keep their split.
    bigger = shutil.copytree(folder, tmp_path / "bigger")
    Image.new("RGB", (9, 9), (1, 2, 3)).save(bigger / "red" / "zzz.png")
    grown = split_by_path(
        load_image_folder(bigger, image_size=8, channels=1), train_percent=80, valid_percent=10
    )
    for split, part in parts.items():
        assert set(part.files) <= set(grown[split].files)


def test_split_folders_must_have_the_same_classes(folder, tmp_path):
    valid = write_folder(tmp_path / "valid", {"blue": (0, 0, 255), "pink": (255, 0, 255)}, 2)
    with pytest.raises(
        ValueError,
        match=f"^{valid}: class folders differ from the training images' "
        r"\(missing green, red; extra pink\)$",
    ):
        load_folder_splits(folder, image_size=8, channels=1, valid_images=valid)


def test_a_folder_too_small_for_the_hash_split_says_what_to_do(tmp_path):
    small = write_folder(tmp_path / "small", {"red": (255, 0, 0)}, per_class=2)
    with pytest.raises(ValueError, match=f"{small}: no image of its 2 fell into the (valid|test)"):
        load_folder_splits(small, image_size=8, channels=1)


# --- training, eval, classify -----------------------------------------------------------------


def test_run_records_the_classes_and_folders(run, folder):
    meta = latest_checkpoint(run).meta
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["dataset"] == "image-folder" and meta["max_value"] == 255
    assert meta["data"]["images"] == str(folder.resolve())
    assert meta["data"]["split"] == {"train_percent": 80, "valid_percent": 10}
    assert ViTConfig.from_dict(meta["model_config"]) == ViTConfig.digits(num_classes=3)
    assert meta["from"] is None
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 20 and report["skipped_files"] == []


def test_eval_json_scores_the_recorded_test_split_and_a_given_folder(run, folder, capsys):
    status, out, _ = run_cli(["vit", "eval", str(run), "--json"], capsys)
    assert status == 0
    record = json.loads(out)
    assert set(record) == {"data", "accuracy", "images", "per_class", "test_flip"}
    test = load_folder_splits(folder, image_size=8, channels=1).test
    assert record["images"] == len(test.files) and record["data"].startswith(str(folder))
    assert set(record["per_class"]) == {"blue", "green", "red"}
    assert sum(row["images"] for row in record["per_class"].values()) == record["images"]
    assert 0 <= record["accuracy"] <= 1

    status, out, _ = run_cli(["vit", "eval", str(run), "--images", str(folder), "--json"], capsys)
    whole = json.loads(out)
    assert status == 0 and whole["images"] == 60 and whole["data"] == str(folder)
    assert all(row["images"] == 20 for row in whole["per_class"].values())

    status, out, _ = run_cli(["vit", "eval", str(run), "--images", str(folder)], capsys)
    assert status == 0 and out.startswith(f"{folder}: 60 images, accuracy ")


def test_eval_refuses_a_folder_with_classes_the_model_lacks(run, tmp_path, capsys):
    other = write_folder(tmp_path / "other", {"red": (255, 0, 0), "teal": (0, 128, 128)}, 2)
    status, _, err = run_cli(["vit", "eval", str(run), "--images", str(other)], capsys)
    assert status == 1
    assert f"{other}: class folder(s) teal not among the model's classes (blue, green, red)" in err


def test_classify_json_one_object_per_image(run, folder, capsys):
    images = [str(folder / "red" / "001.png"), str(folder / "blue" / "000.jpg")]
    argv = ["vit", "classify", str(run), *images, "--json", "--top", "2", "--device", "cpu"]
    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == images
    for r in records:
        assert set(r) == {"image", "label", "top"} and len(r["top"]) == 2
        assert set(r["top"][0]) == {"label", "probability"}
        assert r["label"] == r["top"][0]["label"]
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]
    # bf16 on the CPU: the same classes, probabilities within bf16's precision.
    status, out16, _ = run_cli([*argv, "--dtype", "bf16"], capsys)
    assert status == 0
    for r, r16 in zip(records, map(json.loads, out16.splitlines()), strict=True):
        assert r16["top"][0]["probability"] == pytest.approx(r["top"][0]["probability"], abs=0.05)
    status, _, err = run_cli([*argv, "--dtype", "fp16"], capsys)
    assert status == 1 and "--dtype fp16 needs a GPU" in err


def test_attention_reads_an_image_as_classify_does(run, tmp_path):
    """A wide picture is resized and centre-cropped for the attention maps too, not
    squashed: the maps are of the input the classifier sees."""
    from qkv.cli.attention import load, read_image
    from qkv.tasks.vit import load_classifier

    wide = tmp_path / "wide.png"
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)
    pixels[:, :20], pixels[:, 20:40], pixels[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(pixels).save(wide)
    classifier = load_classifier(run)
    image, classes = read_image(str(wide), load(run))
    assert classes is None
    assert torch.equal(image, classifier.read_image(wide))
    # The centre crop of red | green | blue is green only: one grey level (the run's model
    # is grey), where the squashed picture had three bands.
    # Resizing blends the outermost columns a little.
    inner = image[..., 1:-1]
    assert image.shape[0] == 1 and inner.max() == inner.min() > 0


def test_threads_is_an_option_of_qkv_only(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(train_argv(folder, tmp_path / "r", "--threads", "1"))
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --threads 1" in capsys.readouterr().err


def test_a_corrupt_image_stops_training_naming_it_and_skip_counts_it(folder, tmp_path, capsys):
    bad_folder = shutil.copytree(folder, tmp_path / "bad")
    (bad_folder / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (bad_folder / "red" / "empty.jpg").write_bytes(b"")
    status, _, err = run_cli(train_argv(bad_folder, tmp_path / "r1"), capsys)
    assert status == 1
    assert f"{bad_folder / 'green' / 'broken.png'}: not a readable image" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r1").exists()

    argv = train_argv(bad_folder, tmp_path / "r2", "--skip-bad-files", "--steps", "2")
    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    assert "skipped 2 unreadable image file(s): " in out
    assert str(bad_folder / "green" / "broken.png") in out
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["skipped_files"] == [
        str(bad_folder / "green" / "broken.png"),
        str(bad_folder / "red" / "empty.jpg"),
    ]


def test_bad_folders_are_one_line_each(folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, _, err = run_cli(train_argv(tmp_path / "empty", tmp_path / "r"), capsys)
    assert status == 1 and f"{tmp_path / 'empty'}: no class sub-folders" in err
    valid = write_folder(tmp_path / "valid", {"blue": (0, 0, 255)}, 2)
    status, _, err = run_cli(
        train_argv(folder, tmp_path / "r", "--valid-images", str(valid)), capsys
    )
    assert status == 1 and f"{valid}: class folders differ" in err and "missing green, red" in err
    status, _, err = run_cli(
        ["vit", "train", "--valid-images", str(valid), "--run-dir", str(tmp_path / "r")], capsys
    )
    assert status == 1 and "--valid-images needs --images DIR" in err
    status, _, err = run_cli(train_argv(folder, tmp_path / "r", "--image-size", "10"), capsys)
    assert status == 1 and "--image-size 10: must be a multiple of the patch size 4" in err
    assert not (tmp_path / "r").exists()


def test_own_valid_and_test_folders_take_nothing_from_the_training_folder(folder, tmp_path):
    valid = write_folder(tmp_path / "valid", per_class=2, seed=1)
    test = write_folder(tmp_path / "test", per_class=3, seed=2)
    data = load_folder_splits(
        folder, image_size=8, channels=1, valid_images=valid, test_images=test
    )
    assert len(data.train.files) == 60 and len(data.valid.files) == 6
    assert len(data.test.files) == 9
    assert data.record["split"] == {"train_percent": 100, "valid_percent": 0}
    only_valid = load_folder_splits(folder, image_size=8, channels=1, valid_images=valid)
    assert only_valid.record["split"] == {"train_percent": 90, "valid_percent": 0}
    assert len(only_valid.train.files) + len(only_valid.test.files) == 60


# --- fine-tuning from a checkpoint ---------------------------------------------------------------


def test_resampled_positions_same_size_is_identity_and_matches_interpolate():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 8 * 8, 16)  # a 32-pixel model with 4-pixel patches
    assert torch.equal(resample_position_embeddings(table, 8), table)
    wider = resample_position_embeddings(table, 12)  # 48 pixels
    grid = table[:, 1:].reshape(1, 8, 8, 16).permute(0, 3, 1, 2)  # (1, d, g, g)
    expected = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False)
    torch.testing.assert_close(wider[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 144, 16))
    assert torch.equal(wider[:, :1], table[:, :1])  # the class token's slot is kept

    smoothed = resample_position_embeddings(table, 12, antialias=True)  # timm's way
    expected = F.interpolate(grid, size=(12, 12), mode="bicubic", antialias=True)
    torch.testing.assert_close(smoothed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 144, 16))

    model = ViT(ViTConfig.digits(image_size=32, num_classes=3))
    model.interpolate_position_embeddings(48)
    assert model(torch.randn(2, 1, 48, 48)).logits.shape == (2, 3)
    assert model.config.image_size == 48


@pytest.mark.parametrize("grid", [5, 8, 12, 16])
@pytest.mark.parametrize("antialias", [True, False])
def test_resampled_positions_equal_timm(grid, antialias):
    """timm is not a test dependency: this runs where it is installed."""
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 8 * 8, 32)
    expected = timm_layers.resample_abs_pos_embed(
        table, (grid, grid), num_prefix_tokens=1, antialias=antialias
    )
    got = resample_position_embeddings(table, grid, antialias=antialias)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_from_a_run_at_another_size_with_other_classes(run, folder, tmp_path, capsys):
    two = tmp_path / "two"
    for name in ("blue", "red"):
        shutil.copytree(folder / name, two / name)
    argv = train_argv(two, tmp_path / "ft", "--from", str(run), "--image-size", "16")
    status, _, err = run_cli([*argv, "--steps", "3"], capsys)
    assert status == 0, err
    meta = latest_checkpoint(tmp_path / "ft").meta
    assert meta["from"] == {
        "path": str(run.resolve()),
        "hugging_face": False,
        "timm": False,
        "image_size": 8,
        "classes": ["blue", "green", "red"],
        "head": "new",
    }
    config = ViTConfig.from_dict(meta["model_config"])
    assert (config.image_size, config.num_classes, config.d_model) == (16, 2, 64)
    assert meta["classes"] == ["blue", "red"]
    # The source's normalisation is kept (both are in 0-255 pixel units).
    assert meta["normalization"] == latest_checkpoint(run).meta["normalization"]

    status, _, err = run_cli(train_argv(folder, tmp_path / "same", "--from", str(run)), capsys)
    assert status == 0, err
    assert latest_checkpoint(tmp_path / "same").meta["from"]["head"] == "kept"


def test_from_a_hugging_face_folder(folder, tmp_path, capsys):
    from qkv.convert.vit import save_pretrained

    torch.manual_seed(0)
    source = ViT(ViTConfig.digits(image_size=16, in_channels=3, num_classes=4))
    save_pretrained(source, tmp_path / "hf", label_names=["a", "b", "c", "d"])
    argv = train_argv(folder, tmp_path / "ft", "--from", str(tmp_path / "hf"), "--steps", "2")
    status, _, err = run_cli([*argv, "--image-size", "12"], capsys)
    assert status == 0, err
    meta = latest_checkpoint(tmp_path / "ft").meta
    assert meta["from"]["hugging_face"] is True and meta["from"]["head"] == "new"
    config = ViTConfig.from_dict(meta["model_config"])
    assert (config.image_size, config.in_channels, config.num_classes) == (12, 3, 3)
    assert meta["normalization"] == {"mean": [127.5] * 3, "std": [127.5] * 3}

    status, _, err = run_cli(train_argv(folder, tmp_path / "x", "--from", str(folder)), capsys)
    assert status == 1 and str(folder) in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_tiny_vit_learns_an_easy_folder(tmp_path, capsys):
    """Stated: >= 95% test accuracy on three noisy colours, grey model, 120 steps."""
    images = write_folder(tmp_path / "easy", per_class=60, seed=3)
    argv = train_argv(images, tmp_path / "r", "--steps", "120")
    assert main(argv) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["test_accuracy"] >= 0.95


# --- export-hf ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_run(folder, tmp_path_factory):
    """An RGB model (from a Hugging Face folder) trained 2 steps on the colour folder, at
    12 px."""
    from qkv.convert.vit import save_pretrained

    root = tmp_path_factory.mktemp("colour")
    torch.manual_seed(0)
    save_pretrained(ViT(ViTConfig.digits(image_size=16, in_channels=3)), root / "hf")
    argv = train_argv(folder, root / "run", "--from", str(root / "hf"), "--steps", "2")
    assert main([*argv, "--image-size", "12"]) == 0
    return root / "run"


@pytest.mark.parametrize("which", ["grey", "colour"])
def test_export_hf_reads_and_classifies_in_transformers_as_in_qkv(
    which, request, folder, tmp_path, capsys
):
    transformers = pytest.importorskip("transformers")
    from qkv.data.images import normalize
    from qkv.tasks.vit import load_classifier

    run_dir = request.getfixturevalue("run" if which == "grey" else "colour_run")
    out = tmp_path / "hf"
    status, stdout, err = run_cli(["vit", "export-hf", str(run_dir), "-o", str(out)], capsys)
    assert status == 0, err
    assert stdout.strip().splitlines()[-1] == f"wrote {out}"
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    model = transformers.ViTForImageClassification.from_pretrained(out).eval()
    classifier = load_classifier(run_dir)
    assert [model.config.id2label[i] for i in range(3)] == classifier.classes
    paths = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))[:12]
    status, stdout, err = run_cli(
        ["vit", "classify", str(run_dir), *map(str, paths), "--top", "3", "--json"], capsys
    )
    assert status == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    for path, record in zip(paths, records, strict=True):
        with Image.open(path) as picture:
            # A grey model: transformers takes grey pictures as they are.
            picture = picture.convert("L") if which == "grey" else picture
            pixels = processor(picture, return_tensors="pt")["pixel_values"]
        ours = normalize(classifier.read_image(path), classifier.mean, classifier.std)
        torch.testing.assert_close(pixels[0], ours, atol=1e-5, rtol=0)
        with torch.no_grad():
            probs = model(pixel_values=pixels).logits.softmax(-1)[0]
        top = {row["label"]: row["probability"] for row in record["top"]}
        for k, p in enumerate(probs.tolist()):
            assert top[model.config.id2label[k]] == pytest.approx(p, abs=1e-5), path


def test_export_hf_refuses_an_existing_folder_and_a_hugging_face_one(run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, err = run_cli(["vit", "export-hf", str(run), "-o", str(out)], capsys)
    assert status == 1 and f"{out} already exists" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    hf = tmp_path / "hf"
    assert main(["vit", "export-hf", str(run), "-o", str(hf)]) == 0
    status, _, err = run_cli(["vit", "export-hf", str(hf), "-o", str(tmp_path / "x")], capsys)
    assert status == 1 and "is a Hugging Face or timm folder, not a qkv run" in err
    assert not (tmp_path / "x").exists()
