"""Marian (OPUS-MT) checkpoints in and out of qkv, against ``transformers`` as the oracle.

A small random ``MarianMTModel`` (no download) saved by ``transformers``, with
SentencePiece models trained here on a few hundred generated lines standing in for the
real ``.spm`` files and a ``vocab.json`` laid out as Marian's (``</s>`` 0, ``<unk>`` 1,
the pieces, ``<pad>`` last). qkv reads the folder: the logits, greedy decoding, beam
search in ``generate``'s mode, the tokenizer, ``save_pretrained`` back, and the
commands ``qkv translate`` (translate, train --from, export-hf) and ``qkv attention``.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from qkv.cli import main  # noqa: E402
from qkv.convert import marian  # noqa: E402
from qkv.convert.common import CheckpointError  # noqa: E402
from qkv.data.padding import pad_ids  # noqa: E402
from qkv.data.sentencepiece import SentencePieceTokenizer  # noqa: E402
from qkv.decoding import beam_search, greedy_decode  # noqa: E402
from qkv.tasks.translation import load_translator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # "pip install sacremoses"

WORDS = [
    "der",
    "die",
    "das",
    "haus",
    "katze",
    "hund",
    "läuft",
    "schläft",
    "groß",
    "klein",
    "rot",
    "grün",
    "unter",
    "über",
    "und",
    "mit",
    "baum",
    "fluss",
    "alt",
    "neu",
    "garten",
]
SENTENCES = [
    "der große hund läuft unter dem baum",
    "die katze",
    "alt neu garten und fluss mit rot haus schläft",
    "zebra xylophon über",  # pieces the vocabulary lacks: <unk>
    "hund",
]
MAX_NEW = 20


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghiklmnoprstuvw"
    words = WORDS + [
        "".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(60)
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _train_spm(lines: list[str], size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        eos_id=1,
        bos_id=-1,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _write_marian(
    folder: Path, *, seed: int = 0, eos_bias: float = 5.5, init_std: float = 0.3
) -> None:
    """A random Marian folder, as ``transformers`` writes it, with its tokenizer files."""
    folder.mkdir(parents=True)
    protos = [_train_spm(_lines(0, 300), 120), _train_spm(_lines(1, 300), 120)]
    pieces = []
    for proto in protos:
        processor = spm.SentencePieceProcessor()
        processor.LoadFromSerializedProto(proto)
        pieces += [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]
    vocab = SentencePieceTokenizer.vocabulary_from_pieces(pieces)
    (folder / "source.spm").write_bytes(protos[0])
    (folder / "target.spm").write_bytes(protos[1])
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"source_lang": "de", "target_lang": "en", "separate_vocabs": False})
    )
    size, pad = len(vocab), len(vocab) - 1
    config = transformers.MarianConfig(
        vocab_size=size,
        decoder_vocab_size=size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        eos_token_id=0,
        forced_eos_token_id=0,
        activation_function="swish",
        scale_embedding=True,
        init_std=init_std,  # large enough that the output depends on the source
    )
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
        model.final_logits_bias[0, 0] += eos_bias  # sentences that end at various lengths
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("marian") / "opus-mt-de-en"
    _write_marian(path)
    return path


@pytest.fixture(scope="module")
def oracle(folder: Path) -> tuple[object, object]:
    model = transformers.MarianMTModel.from_pretrained(folder).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="module")
def ours(folder: Path) -> marian.MarianCheckpoint:
    return marian.from_pretrained(folder)


def _batch(checkpoint: marian.MarianCheckpoint) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [checkpoint.tokenizer.source.encode(s, add_eos=True) for s in SENTENCES]
    src = pad_ids(rows, checkpoint.model.config.pad_id)
    return src, src != checkpoint.model.config.pad_id


def _generated(sequences: torch.Tensor, eos: int) -> list[list[int]]:
    """generate's rows without the decoder start, cut before the first eos."""
    out = []
    for row in sequences[:, 1:].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def test_tokenizer_ids_and_text_match_marian_tokenizer(oracle, ours) -> None:
    _, hf = oracle
    tokenizer = ours.tokenizer
    assert [tokenizer.source.encode(s, add_eos=True) for s in SENTENCES] == hf(SENTENCES).input_ids
    targets = ["the big dog runs", "a cat under the tree"]
    assert [tokenizer.target.encode(t, add_eos=True) for t in targets] == hf(
        text_target=targets
    ).input_ids
    assert tokenizer.source.unk_id in tokenizer.source.encode(SENTENCES[3])  # really unknown
    for sentence in SENTENCES:
        ids = hf(text_target=sentence).input_ids
        assert tokenizer.target.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tokenizer.source.decode(tokenizer.source.encode(SENTENCES[0])) == SENTENCES[0]


def test_logits_match_on_a_padded_batch(oracle, ours) -> None:
    hf, _ = oracle
    model = ours.model
    src, mask = _batch(ours)
    pad = model.config.pad_id
    generator = torch.Generator().manual_seed(0)
    tgt = torch.randint(0, pad, (len(SENTENCES), 9), generator=generator)
    tgt[:, 0] = pad  # the decoder start
    tgt[1, 4:] = pad  # padding
    tgt_mask = tgt != pad
    tgt_mask[:, 0] = True
    with torch.no_grad():
        expected = hf(
            input_ids=src,
            attention_mask=mask.long(),
            decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask.long(),
        ).logits
        got = model(src, tgt).logits
    assert mask.sum(1).unique().numel() > 1  # really padded
    torch.testing.assert_close(got[tgt_mask], expected[tgt_mask], atol=1e-5, rtol=0)


def test_greedy_decoding_gives_generates_tokens(oracle, ours) -> None:
    hf, _ = oracle
    model = ours.model
    src, mask = _batch(ours)
    expected = hf.generate(
        input_ids=src,
        attention_mask=mask.long(),
        num_beams=1,
        do_sample=False,
        max_new_tokens=MAX_NEW,
        bad_words_ids=[[model.config.pad_id]],
    )
    got = greedy_decode(model, src, max_len=MAX_NEW)
    assert got.tokens == _generated(expected, model.config.eos_id)
    lengths = {len(t) for t in got.tokens}
    assert len(lengths) > 1  # the sentences end at different lengths


@pytest.mark.parametrize(
    ("length_penalty", "early_stopping"), [(1.0, False), (0.6, True), (2.0, "never")]
)
def test_beam_search_in_generates_mode_gives_its_tokens(
    oracle, ours, length_penalty, early_stopping
) -> None:
    hf, _ = oracle
    model = ours.model
    src, mask = _batch(ours)
    expected = hf.generate(
        input_ids=src,
        attention_mask=mask.long(),
        num_beams=4,
        do_sample=False,
        max_new_tokens=MAX_NEW,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        bad_words_ids=[[model.config.pad_id]],
    )
    got = beam_search(
        model,
        src,
        beam_size=4,
        max_len=MAX_NEW,
        length_penalty=length_penalty,
        style="hugging_face",
        early_stopping=early_stopping,
    )
    assert got.tokens == _generated(expected, model.config.eos_id)


def test_save_pretrained_opens_in_transformers_with_the_same_logits(
    oracle, ours, tmp_path: Path
) -> None:
    _, hf_tokenizer = oracle
    out = tmp_path / "saved"
    marian.save_pretrained(ours.model, out, ours.tokenizer, src_lang="de", tgt_lang="en")
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json",
        "tokenizer_config.json",
    }  # fmt: skip
    reopened = transformers.MarianMTModel.from_pretrained(out).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(out)
    assert tokenizer(SENTENCES).input_ids == hf_tokenizer(SENTENCES).input_ids
    src, mask = _batch(ours)
    tgt = torch.full((len(SENTENCES), 1), ours.model.config.pad_id)
    tgt = torch.cat([tgt, src[:, :5].clamp(max=ours.model.config.pad_id - 1)], dim=1)
    with torch.no_grad():
        expected = reopened(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
        got = ours.model(src, tgt).logits
    torch.testing.assert_close(got, expected.logits, atol=1e-5, rtol=0)
    again = marian.from_pretrained(out)
    assert (again.src_lang, again.tgt_lang) == ("de", "en")
    assert again.model.config == ours.model.config


def test_checkpoint_errors_list_every_problem(folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in folder.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = load_file(folder / "model.safetensors")
    weights["model.encoder.layers.0.fc9.weight"] = torch.zeros(1)
    del weights["model.decoder.layers.1.fc1.bias"]
    weights["model.encoder.layers.0.fc1.weight"] = torch.zeros(3, 3)
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        marian.from_pretrained(broken)
    message = str(error.value)
    assert "unknown keys ['model.encoder.layers.0.fc9.weight']" in message
    assert "missing keys ['model.decoder.layers.1.fc1.bias']" in message
    assert "model.encoder.layers.0.fc1.weight: checkpoint (3, 3), model (64, 32)" in message

    config = json.loads((folder / "config.json").read_text())
    config.update(activation_function="tanh", decoder_ffn_dim=128, normalize_before=True)
    with pytest.raises(CheckpointError) as error:
        marian.config_from_hf(config)
    message = str(error.value)
    for part in ("activation_function 'tanh'", "decoder_ffn_dim 128", "normalize_before"):
        assert part in message


def test_translate_command_reads_a_marian_folder(
    folder: Path, oracle, capsys: pytest.CaptureFixture[str]
) -> None:
    hf, tokenizer = oracle
    assert (
        main(["translate", str(folder), "--beam", "1", "--max-length", "20", *SENTENCES[:2]]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    inputs = tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    expected = hf.generate(**inputs, num_beams=1, max_new_tokens=20,
                           bad_words_ids=[[hf.config.pad_token_id]])  # fmt: skip
    assert lines == tokenizer.batch_decode(expected, skip_special_tokens=True)
    translator = load_translator(folder)
    assert (translator.src_lang, translator.tgt_lang, translator.search) == (
        "de", "en", "hugging_face"
    )  # fmt: skip


def test_attention_command_reads_a_marian_folder(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["attention", str(folder), SENTENCES[0], "--kind", "cross", "--beam", "1"]) == 0
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_fine_tune_a_marian_folder_and_export_it(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = [(s, s) for s in _lines(5, 120)]
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    run = tmp_path / "run"
    code = main([
        "translate", "train", "--from", str(folder), "--train", str(train), "--run-dir",
        str(run), "--preset", "tiny", "--steps", "2", "--no-progress", "--test-limit", "2",
        "--beam", "1",
    ])  # fmt: skip
    assert code == 0
    assert not (run / "tokenizer.json").exists()  # no BPE: Marian's tokenizer kept
    assert (run / "source.spm").read_bytes() == (folder / "source.spm").read_bytes()
    translator = load_translator(run)
    assert translator.search == "hugging_face"
    assert (translator.src_lang, translator.tgt_lang) == ("de", "en")
    start = marian.from_pretrained(folder).model
    moved = translator.model.encoder.layers[0].feed_forward.linear1.weight
    assert not torch.equal(moved, start.encoder.layers[0].feed_forward.linear1.weight)

    out = tmp_path / "exported"
    assert main(["translate", "export-hf", str(run), "-o", str(out)]) == 0
    reopened = transformers.MarianMTModel.from_pretrained(out).eval()
    src = pad_ids([translator.tokenizer.source.encode(s, add_eos=True) for s in SENTENCES[:2]],
                  translator.model.config.pad_id)  # fmt: skip
    tgt = torch.full((2, 1), translator.model.config.pad_id)
    with torch.no_grad():
        expected = reopened(
            input_ids=src, attention_mask=(src != tgt[0, 0]).long(), decoder_input_ids=tgt
        ).logits
        got = translator.model(src, tgt).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # A second export never writes over the first.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["translate", "export-hf", str(run), "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{out} already exists; give a new folder")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_fine_tuning_refuses_a_vocabulary_size(folder: Path, tmp_path: Path, capsys) -> None:
    train = tmp_path / "train.tsv"
    train.write_text("a b\tc d\n" * 50)
    code = main(["translate", "train", "--from", str(folder), "--train", str(train),
                 "--vocab-size", "100", "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 1
    assert "vocab_size: a Marian model brings its own vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_export_of_a_bpe_translator_is_refused(tmp_path: Path) -> None:
    from qkv.data.bpe import TranslationTokenizer
    from qkv.models.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig.tiny(20, 20))
    with pytest.raises(CheckpointError, match="sinusoid_layout='halves'"):
        marian.save_pretrained(model, tmp_path / "out")
    tokenizer = TranslationTokenizer.train([("a b", "c d")] * 3, vocab_size=200)
    with pytest.raises(CheckpointError, match="needs a SentencePiece tokenizer"):
        marian.save_pretrained(model, tmp_path / "out", tokenizer)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_exported_marian_folder_decodes_in_onnx_runtime_to_generates_tokens(
    folder: Path, oracle, ours, tmp_path: Path, capsys
) -> None:
    """The whole way out: a folder saved by ``transformers``, exported by ``qkv export``,
    decoded greedily in ONNX Runtime, gives ``generate(num_beams=1)``'s tokens."""
    pytest.importorskip("onnxruntime")
    from qkv.export.translator import OnnxTranslator

    hf, _ = oracle
    out = tmp_path / "onnx"
    assert main(["export", str(folder), "--format", "onnx", "-o", str(out)]) == 0
    capsys.readouterr()
    for name in ("source.spm", "target.spm", "vocab.json", "translator.json"):
        assert (out / name).is_file(), name
    src, mask = _batch(ours)
    pad = ours.model.config.pad_id
    expected = hf.generate(
        input_ids=src,
        attention_mask=mask.long(),
        num_beams=1,
        do_sample=False,
        max_new_tokens=MAX_NEW,
        bad_words_ids=[[pad]],
    )
    tokens, _ = OnnxTranslator(out, threads=1).greedy(src.numpy(), max_len=MAX_NEW)
    assert tokens == _generated(expected, ours.model.config.eos_id)
    assert len({len(t) for t in tokens}) > 1
