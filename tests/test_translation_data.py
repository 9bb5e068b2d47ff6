"""The German–English corpus loader (qkv.data.translation) and the BPE tokenizer (qkv.data.bpe).

Most tests write small Ding-format files by hand; the ones marked by ``needs_corpus`` read the
real Debian file and skip, saying how to install it, when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkv.data.bpe import (
    ALPHABET,
    BOS_ID,
    EOS_ID,
    JOINT_FILE,
    PAD_ID,
    SOURCE_FILE,
    TARGET_FILE,
    UNK_ID,
    BPETokenizer,
    TranslationTokenizer,
)
from qkv.data.splits import hash_bucket, hash_split
from qkv.data.translation import (
    DEFAULT_PATH,
    ParallelCorpus,
    clean,
    extract_pairs,
    find_corpus,
    load_translation,
    parse_line,
    split_of,
)

KNOWN_PAIR = (
    "Heute gab es eine unschöne Szene im Büro.",
    "There was an ugly scene in the office today.",
)

needs_corpus = pytest.mark.skipif(
    not DEFAULT_PATH.is_file(),
    reason=f"{DEFAULT_PATH} missing: install it with `sudo apt-get install trans-de-en`",
)


def write_ding(path: Path, lines: list[str]) -> Path:
    path.write_text("# Version :: test\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def numbered_lines(n: int) -> list[str]:
    """n distinct sentence entries, each with a word sub-entry aligned before it."""
    return [
        f"Satz {{m}} | Das ist Satz Nummer {i}. :: sentence | This is sentence number {i}."
        for i in range(n)
    ]


# --- parsing and cleaning ---------------------------------------------------------------------


def test_clean_strips_tags_and_tidies_whitespace():
    assert clean("Aal {m}; Flussaal {m} [zool.]") == "Aal; Flussaal"
    # The tag's leading space goes with it, so no space is left before the full stop.
    assert clean("Er ist pleite [ugs.].") == "Er ist pleite."
    assert clean("  I’ve been seeing them a lot lately / anymore [Am.].") == (
        "I’ve been seeing them a lot lately / anymore."
    )
    assert clean("Mombi [ugs.]: Moment   bitte!") == "Mombi: Moment bitte!"
    assert clean("[ugs.] Hau ab!") == "Hau ab!"


def test_parse_line_aligns_sub_entries_and_skips_comments_and_misaligned_lines():
    line = (
        "Szene {f} | Heute gab es eine unschöne Szene im Büro. | eine Szene machen "
        ":: scene | There was an ugly scene in the office today. | to make a scene"
    )
    assert parse_line(line) == [
        ("Szene", "scene"),
        KNOWN_PAIR,
        ("eine Szene machen", "to make a scene"),
    ]
    assert parse_line("# Heute gab es eine Szene. :: There was a scene.") == []
    assert parse_line("") == []
    assert parse_line("Szene {f} | Szenen {pl} :: scene") == []  # 2 German, 1 English
    assert parse_line("kein Trenner hier") == []


def test_extract_pairs_keeps_sentences_by_the_sentence_rule():
    lines = [
        "a | Das Haus ist alt. :: a | The house is old.",  # kept
        "b | Das Haus ist alt. :: b | The house is old.",  # duplicate: kept once
        "c | Hau ab! :: c | Go away now!",  # German has 2 words: not a sentence
        "d | Ist das Haus alt? :: d | Is the house old; is it?",  # ';' : not a sentence
        "e | Das Haus ist alt :: e | The house is old.",  # no final punctuation
        "f | die Nutzung von etw. :: f | the use of sth.",  # placeholder: a phrase
        "g | Wie spät ist es [ugs.]? :: g | What time is it?",  # tag stripped, then kept
        "h | Das Haus ist alt. :: h | The house is ancient.",  # second English: kept
    ]
    sentences, phrases = extract_pairs(lines)
    assert sentences == [
        ("Das Haus ist alt.", "The house is old."),
        ("Wie spät ist es?", "What time is it?"),
        ("Das Haus ist alt.", "The house is ancient."),
    ]
    assert ("Hau ab!", "Go away now!") in phrases
    assert ("die Nutzung von etw.", "the use of sth.") in phrases
    assert ("Das Haus ist alt", "The house is old.") in phrases


def test_extract_pairs_phrases_drop_glosses_and_synonym_lists():
    lines = [
        "Eröffnung (einer Veranstaltung) | feierliche Eröffnung :: opening | grand opening (of)",
        "Aal {m}; Flussaal {m} | grüner Aal :: eel; river eel | green eel; boiled eel",
        "Festwertspeicher | einmal programmierbarer Speicher :: ROM | one-time memory /OTP/",
        "Wort | Wort :: word | word",  # one word each: neither phrase nor sentence
    ]
    sentences, phrases = extract_pairs(lines)
    assert sentences == []
    # The gloss made "Eröffnung (...)" look like 3 words; without it it is one: no phrase.
    assert phrases == [
        ("feierliche Eröffnung", "grand opening"),
        ("einmal programmierbarer Speicher", "one-time memory"),
    ]


def test_extract_pairs_limit_stops_early():
    sentences, _ = extract_pairs(numbered_lines(100), limit=7)
    assert sentences == [
        (f"Das ist Satz Nummer {i}.", f"This is sentence number {i}.") for i in range(7)
    ]


# --- the split ------------------------------------------------------------------------------


def test_split_of_is_a_stable_hash():
    # Pinned: SHA-256 of the UTF-8 German, not Python's per-process salted hash(). If these
    # change, every published test score changes with them.
    assert split_of(KNOWN_PAIR[0]) == "train"
    assert split_of("Simon sieht seinem Vater unheimlich ähnlich.") == "valid"
    assert split_of("Dieses Gästehaus ist besonders für alleinreisende Frauen geeignet.") == "test"


def test_hash_bucket_byte_layout():
    # Unsalted: the UTF-8 text alone (the translation split); salted, "" included:
    # salt, NUL, text (the BERT text split). Both pinned, as both decide published splits.
    text = "Dieses Gästehaus ist besonders für alleinreisende Frauen geeignet."

    def first_8_bytes_mod_100(data: str) -> int:
        return int.from_bytes(hashlib.sha256(data.encode("utf-8")).digest()[:8], "big") % 100

    assert hash_bucket(text) == first_8_bytes_mod_100(text)
    assert hash_bucket(text, salt="") == first_8_bytes_mod_100("\x00" + text)
    assert hash_bucket(text, salt="x") == first_8_bytes_mod_100("x\x00" + text)
    assert hash_split(text, train_percent=90, valid_percent=5) == split_of(text) == "test"
    buckets = [hash_bucket(f"Satz {i}") for i in range(2000)]
    assert min(buckets) == 0 and max(buckets) == 99


def test_split_is_deterministic_disjoint_and_90_5_5(tmp_path):
    path = write_ding(tmp_path / "de-en", numbered_lines(4000))
    corpus = load_translation(path)
    assert corpus == load_translation(path)
    assert corpus.num_sentences == 4000
    german = {name: {de for de, _ in getattr(corpus, name)} for name in ("train", "valid", "test")}
    assert not german["train"] & german["valid"]
    assert not german["train"] & german["test"]
    assert not german["valid"] & german["test"]
    # Binomial(4000, 0.05) has a standard deviation of about 14: these bounds are > 5 sigma.
    assert 3500 <= len(corpus.train) <= 3700
    assert 120 <= len(corpus.valid) <= 280
    assert 120 <= len(corpus.test) <= 280


def test_split_does_not_depend_on_file_order_or_limit(tmp_path):
    lines = numbered_lines(300)
    forward = load_translation(write_ding(tmp_path / "a", lines))
    backward = load_translation(write_ding(tmp_path / "b", lines[::-1]))
    limited = load_translation(write_ding(tmp_path / "c", lines), limit=50)
    assert limited.num_sentences == 50
    for name in ("train", "valid", "test"):
        assert set(getattr(forward, name)) == set(getattr(backward, name))
        assert set(getattr(limited, name)) <= set(getattr(forward, name))


def test_two_translations_of_one_german_sentence_share_a_split(tmp_path):
    lines = [
        f"Satz {i} | Das ist Satz Nummer {i}. :: s | This is sentence number {i}."
        for i in range(200)
    ] + [f"Satz {i} | Das ist Satz Nummer {i}. :: s | Here is sentence {i}." for i in range(200)]
    corpus = load_translation(write_ding(tmp_path / "de-en", lines))
    for split in (corpus.train, corpus.valid, corpus.test):
        german = [de for de, _ in split]
        assert all(german.count(de) == 2 for de in german)


def test_phrases_go_to_train_only_and_never_leak_a_held_out_sentence(tmp_path):
    held_out = next(
        i for i in range(1000) if split_of(f"Das ist Satz Nummer {i}.") in ("valid", "test")
    )
    lines = [
        *numbered_lines(300),
        # The held-out sentence without its full stop: a phrase by the rules, but a leak.
        f"x | Das ist Satz Nummer {held_out} :: x | a leaked phrase",
        f"x | kein Satz {held_out} :: x | This is sentence number {held_out}",  # leaks en-de
        "x | ein harmloser Ausdruck :: x | a harmless phrase",
    ]
    path = write_ding(tmp_path / "de-en", lines)
    without = load_translation(path)
    corpus = load_translation(path, include_phrases=True)
    assert corpus.num_phrases == 1
    assert corpus.train[-1] == ("ein harmloser Ausdruck", "a harmless phrase")
    assert corpus.train_sentences == without.train
    assert (corpus.valid, corpus.test) == (without.valid, without.test)
    assert without.num_phrases == 0


def test_direction_swaps_source_and_target_and_keeps_the_split(tmp_path):
    path = write_ding(tmp_path / "de-en", numbered_lines(300))
    de_en = load_translation(path, direction="de-en")
    en_de = load_translation(path, direction="en-de")
    assert en_de.direction == "en-de"
    for name in ("train", "valid", "test"):
        assert getattr(en_de, name) == tuple((en, de) for de, en in getattr(de_en, name))
    assert en_de.train[0][0].startswith("This is sentence")
    with pytest.raises(ValueError, match="direction must be"):
        load_translation(path, direction="de-fr")  # type: ignore[arg-type]


def test_reads_gzip(tmp_path):
    lines = numbered_lines(50)
    plain = load_translation(write_ding(tmp_path / "de-en", lines))
    gz = tmp_path / "de-en.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    assert load_translation(gz).train == plain.train


def test_missing_file_says_how_to_install(tmp_path):
    missing = tmp_path / "nowhere" / "de-en"
    with pytest.raises(FileNotFoundError) as excinfo:
        load_translation(missing)
    message = str(excinfo.value)
    assert str(missing) in message
    assert "sudo apt-get install trans-de-en" in message
    assert "Frank Richter" in message and "TU Chemnitz" in message
    with pytest.raises(FileNotFoundError, match="trans-de-en"):
        find_corpus(missing)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_a_line_that_is_not_utf8_is_named_with_file_line_and_column(tmp_path, compressed):
    data = "\n".join(numbered_lines(3)).encode() + b"\nDer Gr\xfc\xdfe. :: The hello.\n"
    path = tmp_path / ("de-en.gz" if compressed else "de-en")
    path.write_bytes(gzip.compress(data) if compressed else data)
    message = f"{path}: line 4: not valid UTF-8 (byte 0xfc at column 7)"
    with pytest.raises(ValueError) as excinfo:
        load_translation(path)
    assert str(excinfo.value) == message


# --- the tokenizer --------------------------------------------------------------------------

SENTENCES = [
    "Heute gab es eine unschöne Szene im Büro.",
    "Die Straße ist nass, weil es regnet.",
    "Größe, Maß und Fuß: das sind Wörter mit ß.",
    "Äpfel, Öl und Übermut – „alles“ auf einmal?",
    "Ich bin … Jahre alt!",
    "Wie spät ist es?",
    "Er sagte: 'Das geht nicht (mehr).'",
    "There was an ugly scene in the office today.",
    "I’m firmly/absolutely convinced of it.",
    "What's it all about?",
    "The price is 12.50 € or £10 – about 45% less.",
    'He said "no" and left; that was that!',
]
TRAIN_TEXTS = SENTENCES * 3 + [
    f"Das ist Satz Nummer {i}. This is sentence number {i}." for i in range(300)
]


@pytest.fixture(scope="module")
def joint() -> TranslationTokenizer:
    pairs = [(t, t) for t in TRAIN_TEXTS]
    return TranslationTokenizer.train(pairs, vocab_size=400, joint=True)


def test_special_ids_are_fixed(joint):
    tok = joint.source
    for token, expected in (
        ("<pad>", PAD_ID),
        ("<bos>", BOS_ID),
        ("<eos>", EOS_ID),
        ("<unk>", UNK_ID),
    ):
        assert tok.token_to_id(token) == expected
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    ids = tok.encode("Wie spät ist es?", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert BOS_ID not in ids[1:-1] and EOS_ID not in ids[1:-1]
    assert tok.encode("Wie spät ist es?") == ids[1:-1]
    assert tok.encode("Wie spät ist es?", add_eos=True) == ids[1:]


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip_is_exact(joint, text):
    tok = joint.source
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert UNK_ID not in ids
    assert tok.decode(ids) == text
    # Padding and specials anywhere are dropped by decode.
    assert tok.decode([BOS_ID, *ids, PAD_ID, PAD_ID]) == text


def test_round_trip_of_unseen_words_made_of_alphabet_characters(joint):
    text = "Ölförderung: Quizfrage „Jäger“ – xylophon? Zwölf Boxkämpfer jagen Viktor!"
    assert joint.source.decode(joint.source.encode(text)) == text


_WORD_CHARS = "".join(c for c in ALPHABET if c != "▁")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=_WORD_CHARS, min_size=1, max_size=8), min_size=1, max_size=8))
def test_round_trip_property(joint, words):
    # Single spaces between words, none at the ends: what the corpus loader returns.
    text = " ".join(words)
    ids = joint.source.encode(text)
    assert UNK_ID not in ids
    assert joint.source.decode(ids) == text


def test_text_that_spells_a_special_token_is_plain_text(joint, tmp_path):
    text = "Tippe <eos> oder <pad> ein."
    ids = joint.source.encode(text)
    assert not {PAD_ID, BOS_ID, EOS_ID, UNK_ID} & set(ids)
    assert joint.source.decode(ids) == text
    joint.save(tmp_path)  # the setting is not in the JSON: load must set it again
    assert TranslationTokenizer.load(tmp_path).source.encode(text) == ids


def test_nfc_normalizes_decomposed_umlauts(joint):
    composed = "Übermut ist schön."
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert joint.source.encode(decomposed) == joint.source.encode(composed)
    # NFC, not NFKC: the ellipsis is not rewritten to three dots.
    assert joint.source.decode(joint.source.encode("Na ja …")) == "Na ja …"


def test_encode_batch_matches_encode_and_decode_batch_inverts(joint):
    tok = joint.source
    batch = tok.encode_batch(SENTENCES, add_bos=True, add_eos=True)
    assert batch == [tok.encode(t, add_bos=True, add_eos=True) for t in SENTENCES]
    assert tok.decode_batch(batch) == SENTENCES


def test_subwords_are_learned(joint):
    tok = joint.source
    assert joint.joint
    assert tok.vocab_size == 400
    # Frequent words become one token; the whole sentence needs far fewer tokens than characters.
    assert tok.tokens("Das ist Satz Nummer") == ["▁Das", "▁ist", "▁Satz", "▁Nummer"]
    assert len(tok.encode(SENTENCES[0])) < len(SENTENCES[0]) / 2


def test_save_load_gives_identical_ids(joint, tmp_path):
    written = joint.save(tmp_path)
    assert written == [tmp_path / JOINT_FILE]
    loaded = TranslationTokenizer.load(tmp_path)
    assert loaded.joint
    for text in SENTENCES:
        assert loaded.source.encode(text, add_eos=True) == joint.source.encode(text, add_eos=True)
        assert loaded.target.decode(joint.target.encode(text)) == text


def test_separate_vocabularies_save_and_load(tmp_path):
    pairs = [(f"Das ist Satz Nummer {i}.", f"This is sentence number {i}.") for i in range(300)]
    tok = TranslationTokenizer.train(pairs, vocab_size=200, joint=False)
    assert not tok.joint
    assert tok.source.token_to_id("▁Satz") is not None
    assert tok.target.token_to_id("▁Satz") is None
    assert tok.target.token_to_id("▁sentence") is not None
    # A joint save in the same directory earlier must not shadow the separate one.
    (tmp_path / JOINT_FILE).write_text("stale", encoding="utf-8")
    assert tok.save(tmp_path) == [tmp_path / SOURCE_FILE, tmp_path / TARGET_FILE]
    assert not (tmp_path / JOINT_FILE).exists()
    loaded = TranslationTokenizer.load(tmp_path)
    assert not loaded.joint
    src, tgt = pairs[7]
    assert loaded.source.encode(src) == tok.source.encode(src)
    assert loaded.target.encode(tgt) == tok.target.encode(tgt)


def test_training_is_deterministic():
    pairs = [(t, t) for t in TRAIN_TEXTS]
    a = TranslationTokenizer.train(pairs, vocab_size=300)
    b = TranslationTokenizer.train(pairs, vocab_size=300)
    assert a.source.tokenizer.get_vocab() == b.source.tokenizer.get_vocab()


def test_missing_tokenizer_files_and_bad_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{JOINT_FILE}.*{SOURCE_FILE}"):
        TranslationTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        BPETokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"vocab_size \(50\) must be at least"):
        BPETokenizer.train(["Hallo Welt."], vocab_size=50)


# --- the real corpus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> ParallelCorpus:
    return load_translation(include_phrases=True)


@needs_corpus
def test_real_corpus_counts_and_known_pair(corpus):
    # 18,110 with Debian's trans-de-en 1.9-6 (Ding, devel 2023-01-30); an earlier count gave
    # about 18,200. The range leaves room for another release of the dictionary.
    assert 17_800 <= corpus.num_sentences <= 18_600
    assert 50_000 <= corpus.num_phrases <= 60_000
    n = corpus.num_sentences
    assert 0.88 < len(corpus.train_sentences) / n < 0.92
    assert 0.04 < len(corpus.valid) / n < 0.06
    assert 0.04 < len(corpus.test) / n < 0.06
    assert KNOWN_PAIR in corpus.train_sentences + corpus.valid + corpus.test
    held_out = {de for de, _ in corpus.valid + corpus.test}
    assert not held_out & {de for de, _ in corpus.train}


@needs_corpus
def test_real_corpus_en_de_and_limit():
    small = load_translation(direction="en-de", limit=300)
    assert small.num_sentences == 300
    assert all(split_of(de) == "test" for _, de in small.test)
    assert all(not en.endswith(("sb.", "sth.")) for en, _ in small.train)


@needs_corpus
def test_real_tokenizer_round_trips_held_out_sentences(corpus):
    tok = TranslationTokenizer.train(corpus.train_sentences[:400], vocab_size=1000)
    for de, en in corpus.test[:200]:
        for text in (de, en):
            ids = tok.source.encode(text, add_bos=True, add_eos=True)
            assert tok.source.decode(ids) == text
