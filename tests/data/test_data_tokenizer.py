"""Tests for lightning_diffusion.data.tokenizer (training each kind, loading, caching, fingerprints) and
lightning_diffusion.data.detokenize (decoding without broken characters)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lightning_diffusion.data import resolve_path
from lightning_diffusion.data import tokenizer as tokenizer_module
from lightning_diffusion.data.detokenize import byte_decoder, decode_tokens
from lightning_diffusion.data.tokenizer import (
    TOKENIZER_KINDS,
    TokenizerError,
    default_cache_dir,
    load_tokenizer,
    resolve_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)

SPANISH = [
    "¿Dónde está la estación de trenes?",
    "¡Qué niño más simpático!",
    "El pingüino comió atún en la montaña.",
    "Mañana iremos al médico con mi abuela.",
    "No sé qué decir, lo siento mucho.",
    "Él está aquí desde las nueve.",
]
ENGLISH = ["Where is the train station?", "What a nice boy!", "I don't know what to say."]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_tokenizer(SPANISH * 5 + ENGLISH * 5, vocab_size=300)


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs))
    return path


def test_special_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = [tok.convert_tokens_to_ids(t) for t in ["<pad>", "<unk>", "<s>", "</s>", "<sep>"]]
    assert ids == [0, 1, 2, 3, 4]
    assert special_ids(tok) == tokenizer_module.SpecialIds(pad=0, eos=3, sep=4, unk=1, bos=2)
    assert special_ids(tok) == tokenizer_module.SpecialIds.library_default()
    assert tokenizer_module.SpecialIds(pad=0, eos=3, sep=4, unk=1).bos == 3  # no BOS: decoding starts at the EOS
    assert len(tok) <= 300


@pytest.mark.parametrize(
    "text",
    SPANISH + ["¿Cómo estás?  ¡Bien! ", "Ça va, Zoë — naïve café 😀", "tabs\tand\nnewlines", "Straße ÀÉÎÕÜ"],
)
def test_round_trip(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_encoding_adds_no_special_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("Hola.")["input_ids"]  # even with the default add_special_tokens=True
    assert not set(ids) & {0, 1, 2, 3, 4}


def test_merges_are_learned(tok: PreTrainedTokenizerFast) -> None:
    text = "¿Dónde está la estación de trenes?"
    assert len(tok(text)["input_ids"]) < len(text.encode("utf-8"))


def test_nfc_normalization(tok: PreTrainedTokenizerFast) -> None:
    decomposed = "nin\u0303o"  # n + combining tilde
    assert tok.decode(tok(decomposed)["input_ids"]) == "niño"


def test_training_is_deterministic(tok: PreTrainedTokenizerFast) -> None:
    again = train_tokenizer(SPANISH * 5 + ENGLISH * 5, vocab_size=300)
    assert again.get_vocab() == tok.get_vocab()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)


def test_fingerprint_differs_for_other_vocab(tok: PreTrainedTokenizerFast) -> None:
    other = train_tokenizer(ENGLISH * 5, vocab_size=300)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


def test_vocab_size_too_small() -> None:
    with pytest.raises(TokenizerError, match="vocab_size must be at least 261"):
        train_tokenizer(["a"], vocab_size=100)


def test_save_load_keeps_fingerprint_and_encoding(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tok.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
    text = "¡Qué niño más simpático! ¿Dónde?"
    assert (
        loaded(text, add_special_tokens=False)["input_ids"]
        == tok(text, add_special_tokens=False)["input_ids"]
    )
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert special_ids(loaded) == special_ids(tok)


def test_load_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer directory '.*nope' does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_load_file_instead_of_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="is not a directory"):
        load_tokenizer(tmp_path / "file")


def test_load_dir_without_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="cannot load a tokenizer from"):
        load_tokenizer(tmp_path / "empty")


def bare_tokenizer(**special: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer(
        models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2, "<sep>": 3, "a": 4}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def test_load_without_pad_token_errors(tmp_path: Path) -> None:
    bare_tokenizer(eos_token="</s>").save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(TokenizerError, match="has no pad token"):
        load_tokenizer(tmp_path / "tok")


def test_eos_and_sep_fall_back_to_each_other(tmp_path: Path) -> None:
    bare_tokenizer(pad_token="<pad>", sep_token="<sep>").save_pretrained(str(tmp_path / "sep_only"))
    ids = special_ids(load_tokenizer(tmp_path / "sep_only"))
    assert (ids.pad, ids.eos, ids.sep) == (0, 3, 3)
    bare_tokenizer(pad_token="<pad>", eos_token="</s>").save_pretrained(str(tmp_path / "eos_only"))
    ids = special_ids(load_tokenizer(tmp_path / "eos_only"))
    assert (ids.eos, ids.sep) == (2, 2)
    bare_tokenizer(pad_token="<pad>").save_pretrained(str(tmp_path / "neither"))
    with pytest.raises(TokenizerError, match="neither an EOS nor a SEP"):
        load_tokenizer(tmp_path / "neither")


def test_resolve_trains_and_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = write_pairs(tmp_path / "train.jsonl", list(zip(ENGLISH * 2, SPANISH, strict=False)))
    cache = tmp_path / "cache"
    first = resolve_tokenizer(None, [train], 300, str(cache))
    entries = list(cache.iterdir())
    assert len(entries) == 1 and len(entries[0].name) == 64 and (entries[0] / "tokenizer.json").is_file()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", fail)
    second = resolve_tokenizer(None, [str(train)], 300, str(cache))
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
    # A different vocab size is a different recipe, hence a cache miss.
    with pytest.raises(AssertionError, match="should have used the cache"):
        resolve_tokenizer(None, [train], 400, str(cache))


def test_resolve_uses_env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_DIFFUSION_CACHE", str(tmp_path / "env"))
    assert default_cache_dir(None) == tmp_path / "env" / "tokenizers"
    assert default_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    train = write_pairs(tmp_path / "train.jsonl", list(zip(ENGLISH, SPANISH, strict=False)))
    resolve_tokenizer(None, [train], 300, None)
    assert len(list((tmp_path / "env" / "tokenizers").iterdir())) == 1


def test_resolve_trains_into_missing_path_then_loads_it(tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "train.jsonl", list(zip(ENGLISH, SPANISH, strict=False)))
    target = tmp_path / "my_tok"
    with pytest.raises(TokenizerError, match="does not exist .*tokenizer_train_if_missing"):
        resolve_tokenizer(str(target), [train], 300, None)  # a mistyped path never becomes a new tokenizer
    assert not target.exists()
    trained = resolve_tokenizer(str(target), [train], 300, None, train_if_missing=True)
    assert (target / "tokenizer.json").is_file()
    assert target.stat().st_mode & 0o777 == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".my_tok.tmp")]
    loaded = resolve_tokenizer(str(target), [], 300, None)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(trained)


def test_resolve_without_anything_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer"):
        resolve_tokenizer(None, [], 300, str(tmp_path))
    with pytest.raises(TokenizerError, match="does not exist and there is no train file"):
        resolve_tokenizer(str(tmp_path / "missing"), [], 300, None, train_if_missing=True)


def test_atomic_save_keeps_the_first_writer(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    target = tmp_path / "tok"
    tokenizer_module._save_atomically(tok, target)
    other = train_tokenizer(ENGLISH * 5, vocab_size=300)
    tokenizer_module._save_atomically(other, target)  # lost the race: the existing copy stays
    assert tokenizer_fingerprint(load_tokenizer(target)) == tokenizer_fingerprint(tok)
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


# ----------------------------------------------------------------- decoding without broken characters


def tatoeba_sentences(split: str, limit: int | None = None) -> list[str]:
    """Sources and targets of a bundled Tatoeba en-es split (accented Spanish included)."""
    path = resolve_path(f"builtin:tatoeba_en_es/{split}.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:limit]]
    return [text for row in rows for text in (row["src"], row["tgt"])]


@pytest.fixture(scope="module")
def tatoeba_bpe() -> PreTrainedTokenizerFast:
    return train_tokenizer(tatoeba_sentences("train", 2000), vocab_size=1000)


def byte_id(tok: PreTrainedTokenizerFast, byte: int) -> int:
    """The id of the single-byte token of ``byte``."""
    char = {value: key for key, value in byte_decoder().items()}[byte]
    return tok.convert_tokens_to_ids(char)


def test_byte_decoder_is_the_byte_level_alphabet() -> None:
    table = byte_decoder()
    assert sorted(table) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["a"] == ord("a") and table["Ã"] == 0xC3


def test_orphan_bytes_are_dropped_and_nothing_else(tok: PreTrainedTokenizerFast) -> None:
    left = tok("Él está", add_special_tokens=False)["input_ids"]
    right = tok(" aquí.", add_special_tokens=False)["input_ids"]
    emoji_start = [byte_id(tok, b) for b in "😀".encode()[:3]]  # 3 of the 4 bytes
    for orphan in ([byte_id(tok, 0xC3)], [byte_id(tok, 0xA9)], emoji_start):  # lead, continuation, truncated
        for ids in (left + orphan + right, orphan + left + right, left + right + orphan):
            assert "\ufffd" in tok.decode(ids, skip_special_tokens=True)  # what the plain decode gives
            assert decode_tokens(tok, ids) == "Él está aquí."


def test_orphan_bytes_between_words_keep_the_spacing(tok: PreTrainedTokenizerFast) -> None:
    ids = tok("niño", add_special_tokens=False)["input_ids"]
    ids += [byte_id(tok, 0xC3)] + tok(" más", add_special_tokens=False)["input_ids"]
    assert decode_tokens(tok, ids) == "niño más"


def test_genuine_replacement_character_round_trips(tok: PreTrainedTokenizerFast) -> None:
    text = "a\ufffdb ¿qué? \ufffd"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert decode_tokens(tok, ids) == tok.decode(ids, skip_special_tokens=True) == text


def test_decode_tokens_equals_decode_on_tatoeba(tatoeba_bpe: PreTrainedTokenizerFast) -> None:
    tok = tatoeba_bpe
    sentences = tatoeba_sentences("valid") + tatoeba_sentences("test")
    assert sum(any(ord(char) > 127 for char in text) for text in sentences) > 100  # accents are exercised
    for text in sentences:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with_specials = [2, *ids[:2], 4, 1, *ids[2:], 0, 3]
        assert (
            decode_tokens(tok, with_specials) == tok.decode(with_specials, skip_special_tokens=True) == text
        )


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_decode_tokens_equals_decode_on_any_text(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert decode_tokens(tok, ids) == tok.decode(ids, skip_special_tokens=True)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decode_tokens_drops_exactly_what_decode_replaces(
    tok: PreTrainedTokenizerFast, data: st.DataObject
) -> None:
    # Without an EF byte anywhere no genuine U+FFFD (EF BF BD) can appear, so every U+FFFD of the plain
    # decode stands for an invalid sequence, and those are what decode_tokens leaves out.
    no_ef = [i for i in range(len(tok)) if 0xEF not in decode_bytes(tok, i)]
    ids = data.draw(st.lists(st.sampled_from(no_ef), max_size=12))
    text = decode_tokens(tok, ids)
    assert "\ufffd" not in text
    assert text == tok.decode(ids, skip_special_tokens=True).replace("\ufffd", "")


def decode_bytes(tok: PreTrainedTokenizerFast, index: int) -> bytes:
    token = tok.convert_ids_to_tokens(index)
    table = byte_decoder()
    return bytes(table[char] for char in token) if all(char in table for char in token) else b""


def test_decode_tokens_of_other_tokenizers_is_decode() -> None:
    tok = bare_tokenizer(pad_token="<pad>", eos_token="</s>")
    assert decode_tokens(tok, [4, 2, 4, 0]) == tok.decode([4, 2, 4, 0], skip_special_tokens=True) == "a a"


def test_module_decode_ids_has_no_replacement_character(tok: PreTrainedTokenizerFast) -> None:
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.denoisers import DiffuSeqDenoiser
    from lightning_diffusion.samplers import DDIMSampler
    from lightning_diffusion.schedules import SqrtSchedule

    denoiser = functools.partial(
        DiffuSeqDenoiser,
        latent_dim=16,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        ffn_dim=64,
        max_positions=64,
    )
    module = DiffusionLM(
        denoiser=denoiser, schedule=SqrtSchedule(50), sampler=DDIMSampler(steps=3), vocab_size=len(tok)
    )
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    ids = tok("Él está", add_special_tokens=False)["input_ids"] + [byte_id(tok, 0xC3)]
    ids += tok(" aquí.", add_special_tokens=False)["input_ids"] + [3, byte_id(tok, 0xC3), 0]
    orphan_only = [byte_id(tok, 0xC3), 3] + [0] * (len(ids) - 2)
    rows = torch.tensor([ids, orphan_only])
    assert module.decode_ids(rows) == ["Él está aquí.", ""]


# ----------------------------------------------------------------- tokenizer kinds

EXTRA_TEXTS = [
    "tabs\tand\nnewlines,  two  spaces ",
    "Ça va, Zoë — naïve café 😀",
    "¿Cómo estás?  ¡Bien! ",
    "x <b> </c> k",
]
KIND_TEXTS = SPANISH * 5 + ENGLISH * 5 + EXTRA_TEXTS


@pytest.fixture(scope="module", params=["unigram", "wordpiece"])
def kind_tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return train_tokenizer(KIND_TEXTS, vocab_size=300, kind=request.param)


def kind_of(tok: PreTrainedTokenizerFast) -> str:
    return type(tok.backend_tokenizer.model).__name__


def test_kind_special_tokens(kind_tok: PreTrainedTokenizerFast) -> None:
    assert [kind_tok.convert_ids_to_tokens(i) for i in range(5)] == ["<pad>", "<unk>", "<s>", "</s>", "<sep>"]
    assert special_ids(kind_tok) == tokenizer_module.SpecialIds.library_default()
    assert len(kind_tok) <= 300


def test_kind_models(kind_tok: PreTrainedTokenizerFast) -> None:
    assert kind_of(kind_tok) in ("Unigram", "WordPiece")
    assert not isinstance(kind_tok.backend_tokenizer.decoder, decoders.ByteLevel)


def test_kind_covers_every_training_character(kind_tok: PreTrainedTokenizerFast) -> None:
    chars = sorted(set("".join(KIND_TEXTS)))
    for char in chars:
        for text in (char, f"a{char}b", f"a {char}"):  # alone, inside a word, starting a word
            ids = kind_tok(text, add_special_tokens=False)["input_ids"]
            assert 1 not in ids, (char, kind_tok.convert_ids_to_tokens(ids))


@pytest.mark.parametrize(
    "text",
    SPANISH
    + ENGLISH
    + ["¿Cómo estás?  ¡Bien! ", "Ça va, Zoë — naïve café 😀", "tabs\tand\nnewlines", "a  b   c "],
)
def test_kind_round_trip(kind_tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = kind_tok(text, add_special_tokens=False)["input_ids"]
    assert kind_tok.decode(ids) == text
    assert decode_tokens(kind_tok, ids) == text


def test_kind_documented_losses(kind_tok: PreTrainedTokenizerFast) -> None:
    def round_trip(text: str) -> str:
        return decode_tokens(kind_tok, kind_tok(text, add_special_tokens=False)["input_ids"])

    assert round_trip(" leading space") == "leading space"  # one leading space is dropped
    assert round_trip("a\u2581b") == "a b"  # a literal "▁" is a space
    assert round_trip("nin\u0303o") == "niño"  # NFC
    unseen = round_trip("qué ☃ más, b☃c")  # ☃ is not in the training text
    if kind_of(kind_tok) == "Unigram":
        assert unseen == "qué  más, bc"  # the character alone is <unk>
    else:
        assert unseen == "qué más,"  # the whole word (from its leading space) is one <unk>


def test_kind_literal_special_text_stays_characters(kind_tok: PreTrainedTokenizerFast) -> None:
    for text in ("a </s> b <pad>", "</s>", "x<sep><unk>"):
        ids = kind_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert not set(ids) & {0, 1, 2, 3, 4}, kind_tok.convert_ids_to_tokens(ids)


def test_kind_training_is_deterministic(kind_tok: PreTrainedTokenizerFast) -> None:
    kind = kind_of(kind_tok).lower()
    again = train_tokenizer(KIND_TEXTS, vocab_size=300, kind=kind)  # type: ignore[arg-type]
    assert again.backend_tokenizer.to_str() == kind_tok.backend_tokenizer.to_str()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(kind_tok)


def test_kind_save_load_keeps_everything(kind_tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    kind_tok.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(kind_tok)
    assert kind_of(loaded) == kind_of(kind_tok)
    text = "¿Cómo estás?  ¡Bien! "
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert ids == kind_tok(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text


@pytest.mark.parametrize("kind", ["unigram", "wordpiece"])
def test_kind_round_trips_tatoeba(kind: str) -> None:
    """Exact round trip of every held-out sentence whose characters were seen in training (nearly all)."""
    train = tatoeba_sentences("train", 2000)
    tok = train_tokenizer(train, vocab_size=1000, kind=kind)  # type: ignore[arg-type]
    seen = set("".join(train))
    sentences = tatoeba_sentences("valid") + tatoeba_sentences("test")
    covered = [text for text in sentences if set(text) <= seen]
    assert len(covered) >= 0.95 * len(sentences)
    assert sum(any(ord(char) > 127 for char in text) for text in covered) > 100
    for text in covered:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert decode_tokens(tok, ids) == tok.decode(ids) == text


def test_unknown_kind_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        TokenizerError, match="kind must be one of 'bpe', 'unigram', 'wordpiece', got 'sentencepiece'"
    ):
        train_tokenizer(ENGLISH, 300, kind="sentencepiece")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve_tokenizer(None, [tmp_path / "train.jsonl"], 300, str(tmp_path), kind="BPE")  # type: ignore[arg-type]


def test_unigram_with_more_characters_than_vocab_size() -> None:
    texts = [chr(code) * 3 for code in range(0x4E00, 0x4E00 + 400)]
    with pytest.raises(TokenizerError, match="cannot train a unigram tokenizer with vocab_size=300"):
        train_tokenizer(texts, 300, kind="unigram")
    assert len(train_tokenizer(texts, 300, kind="wordpiece")) > 400  # keeps every character


def test_kind_is_part_of_the_cache_key(tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "train.jsonl", list(zip(ENGLISH * 2, SPANISH, strict=False)))
    cache = tmp_path / "cache"
    keys = {
        kind: tokenizer_module._recipe_key([train], 300, "src", ["tgt", "trg"], kind)
        for kind in TOKENIZER_KINDS
    }
    assert len(set(keys.values())) == 3
    # A BPE key is what it was before kinds existed, so existing caches stay valid.
    digest = hashlib.sha256(b"format=1;vocab=300;src=src;tgt=['tgt', 'trg']")
    digest.update(hashlib.sha256(train.read_bytes()).digest())
    assert (
        keys["bpe"] == tokenizer_module._recipe_key([train], 300, "src", ["tgt", "trg"]) == digest.hexdigest()
    )
    bpe = resolve_tokenizer(None, [train], 300, str(cache))
    unigram = resolve_tokenizer(None, [train], 300, str(cache), kind="unigram")
    assert kind_of(bpe) == "BPE" and kind_of(unigram) == "Unigram"
    assert sorted(p.name for p in cache.iterdir()) == sorted([keys["bpe"], keys["unigram"]])
    again = resolve_tokenizer(None, [train], 300, str(cache), kind="unigram")  # from the cache
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(unigram)
