"""Tests for lightning_diffusion.data.tokenizer: training, loading, caching and fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lightning_diffusion.data import tokenizer as tokenizer_module
from lightning_diffusion.data.tokenizer import (
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
    trained = resolve_tokenizer(str(target), [train], 300, None)
    assert (target / "tokenizer.json").is_file()
    assert target.stat().st_mode & 0o777 == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".my_tok.tmp")]
    loaded = resolve_tokenizer(str(target), [], 300, None)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(trained)


def test_resolve_without_anything_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer"):
        resolve_tokenizer(None, [], 300, str(tmp_path))
    with pytest.raises(TokenizerError, match="does not exist and there is no train file"):
        resolve_tokenizer(str(tmp_path / "missing"), [], 300, None)


def test_atomic_save_keeps_the_first_writer(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    target = tmp_path / "tok"
    tokenizer_module._save_atomically(tok, target)
    other = train_tokenizer(ENGLISH * 5, vocab_size=300)
    tokenizer_module._save_atomically(other, target)  # lost the race: the existing copy stays
    assert tokenizer_fingerprint(load_tokenizer(target)) == tokenizer_fingerprint(tok)
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]
