"""The data steps of the translator's levers, on small inputs written here: cutting
running text into sentences, the "/" alternatives of a target (split, keep the first,
several references), back-translated pairs (written, filtered, tagged, recorded in a
run), word dropout, and the commands that use them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch

from qkv.cli import main
from qkv.data.alternatives import expand_pairs, has_alternatives, reference_streams, variants
from qkv.data.batching import Seq2SeqBatch
from qkv.data.parallel import ParallelData, ParallelFile
from qkv.data.sentences import monolingual_sentences, split_sentences, usable
from qkv.tasks.translation import PRESETS, load_translator, score, train_translator
from qkv.tasks.translation.backtranslate import back_translate, synthetic_pairs
from qkv.tasks.translation.train import word_dropout
from qkv.train.rundir import RunDirError

# -- sentences ------------------------------------------------------------------------------


def test_sentences_end_at_end_marks_not_at_abbreviations_or_initials():
    text = (
        'Mr. Smith met Dr. Jones at 10 a.m. on Monday. "Is it late?" she asked. '
        "J. R. R. Tolkien wrote it, e.g. the first part! The U.N. met in 2004. "
        "It rose 3.5% in May."
    )
    assert split_sentences(text) == [
        "Mr. Smith met Dr. Jones at 10 a.m. on Monday.",
        '"Is it late?" she asked.',  # a lower-case word does not start a sentence
        "J. R. R. Tolkien wrote it, e.g. the first part!",
        "The U.N. met in 2004.",
        "It rose 3.5% in May.",
    ]


def test_sentences_keep_quotes_and_brackets_with_their_sentence():
    text = 'He said "Go home." Then he left (quietly.) After that, nothing.'
    assert split_sentences(text) == [
        'He said "Go home."',
        "Then he left (quietly.)",
        "After that, nothing.",
    ]


def test_text_after_the_last_mark_and_odd_whitespace():
    assert split_sentences("  One  here.\n\nTwo without an end ") == [
        "One here.",
        "Two without an end",
    ]
    assert split_sentences("") == []


@pytest.mark.parametrize(
    ("sentence", "ok"),
    [
        ("The flowers are dark pink.", True),
        ("Too short.", False),  # fewer than 3 words
        ("no capital letter at the start here.", False),
        ("It has no end mark at all", False),
        ("1,234 5,678 9,012 3,456 7,890.", False),  # figures, not words
        ("A tab\tinside breaks a TSV line.", False),
    ],
)
def test_usable_sentences(sentence, ok):
    assert usable(sentence, 3, 10) is ok


def test_monolingual_sentences_dedupe_filter_and_keep_order():
    texts = [
        "The cat sat on the mat. Short one. The dog barked at night.",
        "The cat sat on the mat. " + " ".join(["word"] * 40) + ".",
    ]
    assert monolingual_sentences(texts, min_words=3, max_words=10) == [
        "The cat sat on the mat.",
        "The dog barked at night.",
    ]


# -- alternatives -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Autumn/Fall is coming/approaching.", ["Autumn is coming.", "Fall is approaching."]),
        ("I’m really / terribly sorry.", ["I’m really sorry.", "I’m terribly sorry."]),
        (
            "It was high / fair / low.",
            ["It was high.", "It was fair.", "It was low."],
        ),
        ("The (start/beginning) was slow.", ["The (start) was slow.", "The (beginning) was slow."]),
        ("He works 24/7.", ["He works 24/7."]),  # not between letters
        ("against sb./sth.", ["against sb./sth."]),  # a dictionary placeholder
        ("It is a /ABBR/ mark.", ["It is a /ABBR/ mark."]),
        ("No slash at all.", ["No slash at all."]),
    ],
)
def test_variants(sentence, expected):
    assert variants(sentence) == expected
    assert has_alternatives(sentence) is (len(expected) > 1)


def test_expand_pairs_keep_first_split():
    pairs = [("Herbst kommt.", "Autumn/Fall is coming."), ("Ja.", "Yes.")]
    assert list(expand_pairs(pairs, "keep")) == pairs
    assert list(expand_pairs(pairs, "first")) == [("Herbst kommt.", "Autumn is coming."), pairs[1]]
    assert list(expand_pairs(pairs, "split")) == [
        ("Herbst kommt.", "Autumn is coming."),
        ("Herbst kommt.", "Fall is coming."),
        pairs[1],
    ]
    with pytest.raises(ValueError, match="alternatives"):
        list(expand_pairs(pairs, "all"))  # type: ignore[arg-type]


def test_reference_streams_repeat_the_last_variant():
    streams = reference_streams(["A/B/C is here.", "Plain.", "X or/and y."])
    assert streams == [
        ["A is here.", "Plain.", "X or y."],
        ["B is here.", "Plain.", "X and y."],
        ["C is here.", "Plain.", "X and y."],
    ]


def test_multi_reference_bleu_credits_any_alternative_and_equals_bleu_without_them():
    hypotheses = ["Fall is coming soon.", "The dog barked."]
    found = score(hypotheses, ["Autumn/Fall is coming soon.", "The dog barked."])
    assert found["bleu_multi"] == pytest.approx(100.0)
    assert found["bleu"] < 90  # "Fall" is not in the line as written
    assert "nrefs:2" in found["bleu_multi_signature"]
    plain = score(hypotheses, ["Autumn is coming soon.", "The dog barked."])
    assert plain["bleu_multi"] == pytest.approx(plain["bleu"])
    # The same number as sacreBLEU given the references by hand.
    by_hand = sacrebleu.corpus_bleu(
        hypotheses,
        [
            ["Autumn is coming soon.", "The dog barked."],
            ["Fall is coming soon.", "The dog barked."],
        ],
    )
    assert found["bleu_multi"] == pytest.approx(by_hand.score)


# -- back-translation -------------------------------------------------------------------------


def test_synthetic_pairs_put_the_translation_first_and_drop_bad_ones():
    sentences = ["The cat sleeps here.", "The dog runs.", "A bird sings now.", "A fish."]
    translations = [
        "Die Katze schläft hier.",
        "",  # nothing
        " ".join(["der"] * 30),  # a repetition far longer than the sentence
        "Ein  Fisch.",  # whitespace normalised
    ]
    assert synthetic_pairs(sentences, translations) == [
        ("Die Katze schläft hier.", "The cat sleeps here."),
        ("Ein Fisch.", "A fish."),
    ]
    with pytest.raises(ValueError, match="2 sentences but 1"):
        synthetic_pairs(sentences[:2], translations[:1])


WORDS = ["chat", "chien", "pain", "livre", "train", "jardin", "soleil", "maison"]
ENGLISH = ["cat", "dog", "bread", "book", "train", "garden", "sun", "house"]


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory) -> Path:
    """A tiny English→French run (two steps): what back-translation needs of a model."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("reverse")
    rows = [
        (f"the {ENGLISH[i % 8]} number {i} is here.", f"le {WORDS[i % 8]} numéro {i} est ici.")
        for i in range(200)
    ]
    data = ParallelData(ParallelFile.tsv_file(_write_tsv(folder / "en-fr.tsv", rows)),
                        src_lang="en", tgt_lang="fr")  # fmt: skip
    recipe = PRESETS["tiny"].override({"train.max_steps": 2})
    train_translator(folder / "run", recipe, data=data, vocab_size=200, progress=False)
    return folder / "run"


def test_back_translate_writes_a_tsv_in_input_order(reverse_run, tmp_path):
    reverse = load_translator(reverse_run)
    sentences = [f"the {ENGLISH[i % 8]} number {i} is here." for i in range(300, 310)]
    out = tmp_path / "synthetic.tsv"
    written = back_translate(reverse, sentences, out, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert written == len(lines) <= len(sentences)
    targets = [line.split("\t")[1] for line in lines]
    assert targets == [s for s in sentences if s in targets]  # in order, real text kept
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_back_translate_refuses_before_translating(reverse_run, tmp_path):
    reverse = load_translator(reverse_run)
    out = tmp_path / "synthetic.tsv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="exists"):
        back_translate(reverse, ["The cat."], out, progress=False)
    assert out.read_text() == "mine\n"
    with pytest.raises(ValueError, match="no sentences"):
        back_translate(reverse, [], tmp_path / "new.tsv", progress=False)
    assert not (tmp_path / "new.tsv").exists()


def test_back_translate_command(reverse_run, tmp_path, capsys):
    text = tmp_path / "english.txt"
    text.write_text("the cat number 1 is here.\n\nthe dog number 2 is here.\n", encoding="utf-8")
    out = tmp_path / "bt.tsv"
    argv = ["translate", "back-translate", str(reverse_run), "-i", str(text), "-o", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "synthetic pairs (fr<TAB>en) from 2 sentences" in capsys.readouterr().out
    assert main([*argv, "--no-progress"]) == 1  # the output exists
    assert "exists (pass --overwrite" in capsys.readouterr().err
    # Without --input the installed English text is read: a model that does not
    # translate from English is refused before anything is written.
    rows = [(f"le chat {i}.", f"the cat {i}.") for i in range(100)]
    data = ParallelData(ParallelFile.tsv_file(_write_tsv(tmp_path / "c.tsv", rows)),
                        src_lang="fr", tgt_lang="en")  # fmt: skip
    recipe = PRESETS["tiny"].override({"train.max_steps": 1})
    train_translator(tmp_path / "fr-en", recipe, data=data, vocab_size=200, progress=False)
    argv = ["translate", "back-translate", str(tmp_path / "fr-en"), "-o", str(tmp_path / "x.tsv")]
    assert main(argv) == 1
    assert "translates from 'fr'; the installed text is English" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    argv = ["translate", "back-translate", str(reverse_run), "-i", str(empty), "-o",
            str(tmp_path / "y.tsv")]  # fmt: skip
    assert main(argv) == 1
    assert "no sentences" in capsys.readouterr().err
    assert not (tmp_path / "y.tsv").exists()


def test_training_with_back_translated_pairs_tags_and_records_them(tmp_path):
    rows = [
        (f"le {WORDS[i % 8]} numéro {i} est ici.", f"the {ENGLISH[i % 8]}/{ENGLISH[(i + 1) % 8]} "
         f"number {i} is here.") for i in range(200)
    ]  # fmt: skip
    corpus = _write_tsv(tmp_path / "fr-en.tsv", rows)
    synthetic = _write_tsv(
        tmp_path / "bt.tsv", [(f"le numéro {i} ici.", f"the number {i} here.") for i in range(50)]
    )
    data = ParallelData(ParallelFile.tsv_file(corpus), src_lang="fr", tgt_lang="en")
    recipe = PRESETS["tiny"].override(
        {"train.max_steps": 1, "alternatives": "split", "word_dropout": 0.1}
    )
    run = tmp_path / "run"
    train_translator(run, recipe, data=data, vocab_size=200, progress=False,
                     back_translated=synthetic)  # fmt: skip
    identity = json.loads((run / "run.json").read_text())
    assert identity["alternatives"] == "split" and identity["word_dropout"] == 0.1
    assert identity["back_translated"]["tsv"]["path"] == str(synthetic.absolute())
    # A changed synthetic file is refused on resume, like a changed corpus.
    synthetic.write_text("le numéro 1 ici.\tthe number 1 here.\n", encoding="utf-8")
    with pytest.raises(RunDirError, match="back_translated"):
        train_translator(run, recipe.override({"train.max_steps": 2}), data=data,
                         vocab_size=200, progress=False, resume=True,
                         back_translated=synthetic)  # fmt: skip


def test_the_command_line_sets_recipe_fields_and_resumes_only_the_same(tmp_path, capsys):
    rows = [(f"le {WORDS[i % 8]} numéro {i}.", f"the {ENGLISH[i % 8]} number {i}.")
            for i in range(120)]  # fmt: skip
    corpus = _write_tsv(tmp_path / "fr-en.tsv", rows)
    run = tmp_path / "run"
    argv = ["--threads", "1", "translate", "train", "--preset", "tiny", "--train", str(corpus),
            "--src-lang", "fr", "--tgt-lang", "en", "--vocab-size", "200", "--run-dir", str(run),
            "--no-progress", "--test-limit", "2", "--set", "alternatives=split",
            "--set", "word_dropout=0.1", "--set", "model.dropout=0.3"]  # fmt: skip
    assert main([*argv, "--steps", "1"]) == 0
    identity = json.loads((run / "run.json").read_text())
    assert identity["alternatives"] == "split" and identity["word_dropout"] == 0.1
    assert identity["model"]["dropout"] == 0.3
    capsys.readouterr()
    # Resuming with another recipe is refused, naming the field; the same one goes on.
    assert main([*argv[:-2], "--steps", "2", "--resume"]) == 1
    assert "model" in capsys.readouterr().err
    assert main([*argv, "--steps", "2", "--resume"]) == 0


def test_the_tagged_and_split_pairs_are_what_training_reads(tmp_path, monkeypatch):
    from qkv.tasks.translation import train as train_module

    added: list[tuple[object, tuple[str, str]]] = []
    original = train_module._PairEncoder.add

    def spy(self, pair):
        added.append((self, pair))
        return original(self, pair)

    monkeypatch.setattr(train_module._PairEncoder, "add", spy)
    corpus = _write_tsv(tmp_path / "c.tsv", [(f"le chat {i}.", f"the cat/kitty {i}.")
                                             for i in range(100)])  # fmt: skip
    synthetic = _write_tsv(tmp_path / "bt.tsv", [("le soleil.", "the sun.")])
    data = ParallelData(ParallelFile.tsv_file(corpus), src_lang="fr", tgt_lang="en")
    recipe = PRESETS["tiny"].override({"train.max_steps": 1, "alternatives": "split"})
    train_translator(tmp_path / "run", recipe, data=data, vocab_size=200, progress=False,
                     back_translated=synthetic)  # fmt: skip
    train = next(encoder for encoder, pair in added if pair == ("<bt> le soleil.", "the sun."))
    seen = [pair for encoder, pair in added if encoder is train]
    assert not any("/" in target for _, target in seen)
    kitty = [t for _, t in seen if "kitty" in t]
    assert kitty and all(t.startswith("the kitty") for t in kitty)


def test_recipe_fields_are_checked():
    with pytest.raises(ValueError, match="alternatives"):
        PRESETS["tiny"].override({"alternatives": "both"})
    with pytest.raises(ValueError, match="word_dropout"):
        PRESETS["tiny"].override({"word_dropout": 1.0})
    with pytest.raises(ValueError, match="back_translation_tag"):
        PRESETS["tiny"].override({"back_translation_tag": "two words"})


# -- word dropout ---------------------------------------------------------------------------


def _batch() -> Seq2SeqBatch:
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])
    tgt_in = torch.tensor([[1, 11, 12, 13], [1, 14, 0, 0]])
    tgt_out = torch.tensor([[11, 12, 13, 2], [14, 2, 0, 0]])
    return Seq2SeqBatch(src, tgt_in, tgt_out, 0)


def test_word_dropout_never_touches_padding_eos_bos_or_labels():
    batch = _batch()
    torch.manual_seed(0)
    dropped = word_dropout(batch, 0.999, unk_id=3)
    assert dropped.src.tolist() == [[3, 3, 3, 3, 2], [3, 3, 2, 0, 0]]
    assert dropped.tgt_in.tolist() == [[1, 3, 3, 3], [1, 3, 0, 0]]
    assert torch.equal(dropped.tgt_out, batch.tgt_out)


def test_word_dropout_rate():
    n = 20000
    src = torch.cat([torch.full((1, n), 7), torch.tensor([[2]])], dim=1)
    batch = Seq2SeqBatch(
        src, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)
    )
    torch.manual_seed(0)
    rate = (word_dropout(batch, 0.1, unk_id=3).src == 3).float().sum().item() / n
    assert 0.09 < rate < 0.11


def _status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_eval_on_the_validation_split_and_usage_errors(reverse_run, tmp_path, capsys):
    argv = ["translate", "eval", str(reverse_run), "--split", "valid", "--beam", "1"]
    assert main([*argv, "--examples", "0"]) == 0
    out = capsys.readouterr().out
    assert "validation set:" in out and "(valid split)" in out
    assert _status([*argv, "--test", str(tmp_path / "t.tsv")]) == 2
    assert "--split chooses one of the run's own splits" in capsys.readouterr().err
    argv = ["translate", "back-translate", str(reverse_run), "-o", str(tmp_path / "x.tsv")]
    assert _status([*argv, "--min-words", "9", "--max-words", "3"]) == 2
    assert "--min-words is larger than --max-words" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()
