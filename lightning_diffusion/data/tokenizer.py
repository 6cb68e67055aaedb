"""Tokenizers: train a small byte-level BPE locally, or load a local Hugging Face tokenizer directory.

Nothing here downloads anything. Encoding never adds special tokens by itself: the data module appends
the EOS to targets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lightning_diffusion.data.jsonl import read_examples, resolve_path

log = logging.getLogger("lightning_diffusion")

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SEP_TOKEN = "<sep>"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, SEP_TOKEN]  # ids 0..4 in a trained tokenizer

# Bump when train_tokenizer changes in a way that changes its output (invalidates cached tokenizers).
TOKENIZER_FORMAT_VERSION = 1
CACHE_ENV = "LIGHTNING_DIFFUSION_CACHE"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # byte alphabet + specials


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded, trained or used as configured."""


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids the data module, the models and decoding use: resolved once from the tokenizer
    (:func:`special_ids`) so every part agrees on them.

    Attributes:
        pad: padding id.
        eos: end-of-sequence id (falls back to the SEP token when the tokenizer has no EOS): appended to targets,
            filled past a predicted length, and where decoded hypotheses are cut.
        sep: separator id (falls back to the EOS token when the tokenizer has no SEP).
        unk: unknown-token id, or None when the tokenizer has none.
        bos: start id of left-to-right decoding (falls back to ``eos`` when the tokenizer has no BOS, as fairseq
            starts decoding).
    """

    pad: int
    eos: int
    sep: int
    unk: int | None
    bos: int = -1

    def __post_init__(self) -> None:
        if self.bos < 0:
            object.__setattr__(self, "bos", self.eos)

    @classmethod
    def library_default(cls) -> SpecialIds:
        """The ids of the library's trained tokenizers (:data:`SPECIAL_TOKENS`), used while a model has no
        tokenizer attached."""
        return cls(
            pad=SPECIAL_TOKENS.index(PAD_TOKEN),
            eos=SPECIAL_TOKENS.index(EOS_TOKEN),
            sep=SPECIAL_TOKENS.index(SEP_TOKEN),
            unk=SPECIAL_TOKENS.index(UNK_TOKEN),
            bos=SPECIAL_TOKENS.index(BOS_TOKEN),
        )


def special_ids(tok: PreTrainedTokenizerFast) -> SpecialIds:
    """The tokenizer's special ids, with the EOS/SEP fallbacks; raises TokenizerError if pad or both are missing."""
    if tok.pad_token_id is None:
        raise TokenizerError(
            f"tokenizer {getattr(tok, 'name_or_path', '')!r} has no pad token; add one (e.g. "
            "tok.add_special_tokens({'pad_token': '<pad>'}); tok.save_pretrained(dir)) and load that directory"
        )
    # Optional ids read with getattr: a duck-typed tokenizer may leave out the ones it has no token for.
    eos_id, sep_id = getattr(tok, "eos_token_id", None), getattr(tok, "sep_token_id", None)
    eos = eos_id if eos_id is not None else sep_id
    sep = sep_id if sep_id is not None else eos_id
    if eos is None or sep is None:
        raise TokenizerError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has neither an EOS nor a SEP token")
    bos_id = getattr(tok, "bos_token_id", None)
    bos = bos_id if bos_id is not None else eos
    return SpecialIds(pad=tok.pad_token_id, eos=eos, sep=sep, unk=getattr(tok, "unk_token_id", None), bos=bos)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (NFC-normalized, lossless decode) on ``texts``; deterministic for the same input.

    Special tokens get ids 0..4: ``<pad> <unk> <s> </s> <sep>``. The vocabulary may come out smaller
    than ``vocab_size`` when the texts have few distinct pairs to merge.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 5 specials), got {vocab_size}"
        )
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        sep_token=SEP_TOKEN,
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a local Hugging Face tokenizer directory (never downloads); it must have a pad and an EOS or SEP."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise TokenizerError(
            f"tokenizer directory {str(path)!r} {problem} (expected a local directory with tokenizer.json, "
            "as written by save_pretrained)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise TokenizerError(f"cannot load a tokenizer from {str(path)!r}: {err}") from err
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TokenizerError(
            f"{str(path)!r} holds a slow tokenizer ({type(tok).__name__}); a fast one is needed"
        )
    special_ids(tok)  # validates pad and EOS/SEP
    return tok


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """sha256 hex of the vocabulary (sorted token -> id) and the special ids; survives save + reload."""
    ids = special_ids(tok)
    payload = {
        "vocab": sorted(tok.get_vocab().items()),
        "special": [ids.pad, ids.eos, ids.sep, ids.unk],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def _training_texts(files: Sequence[Path], src_key: str, tgt_keys: Sequence[str]) -> Iterator[str]:
    for file in files:
        examples, _ = read_examples(
            file, src_key=src_key, tgt_keys=tgt_keys, require_target=False, empty="keep"
        )
        for example in examples:
            yield example.src
            if example.tgt is not None:
                yield example.tgt


def _recipe_key(files: Sequence[Path], vocab_size: int, src_key: str, tgt_keys: Sequence[str]) -> str:
    """sha256 of the training recipe: file contents, vocab size, field names, format version."""
    digest = hashlib.sha256()
    digest.update(
        f"format={TOKENIZER_FORMAT_VERSION};vocab={vocab_size};src={src_key};tgt={list(tgt_keys)}".encode()
    )
    for file in files:
        file_digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def default_cache_dir(cache_dir: str | None = None) -> Path:
    """Where trained tokenizers are cached: ``cache_dir``, else ``$LIGHTNING_DIFFUSION_CACHE/tokenizers``,
    else ``~/.cache/lightning_diffusion/tokenizers``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lightning_diffusion"
    return base / "tokenizers"


def _save_atomically(tok: PreTrainedTokenizerFast, directory: Path) -> None:
    """save_pretrained into a temp dir next to ``directory``, then rename; if another process won, keep theirs."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        tok.save_pretrained(str(tmp))
        tmp.chmod(0o755)  # mkdtemp makes it private (0700); the cache is meant to be reusable
        try:
            os.rename(tmp, directory)
        except OSError:
            if not directory.is_dir():
                raise
            log.info("tokenizer %s was written by another process; using that one", directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_tokenizer(
    path: str | None,
    train_files: Sequence[str | Path],
    vocab_size: int,
    cache_dir: str | None,
    *,
    src_key: str = "src",
    tgt_keys: Sequence[str] = ("tgt", "trg"),
) -> PreTrainedTokenizerFast:
    """Load or train the tokenizer.

    - ``path`` is an existing directory: load it.
    - ``path`` is given but missing: train on the sources and targets of ``train_files``, save it there.
    - ``path`` is None: train, caching under ``default_cache_dir(cache_dir)/<sha256 of the recipe>`` and
      reusing that cache when present (so a later run with the same files finds the same tokenizer).
    Saves are atomic (temp dir + rename). The result is always the copy loaded back from disk.
    """
    if path is not None and resolve_path(path).exists():
        return load_tokenizer(resolve_path(path))
    files = [resolve_path(file) for file in train_files]
    if not files:
        if path is not None:
            raise TokenizerError(
                f"tokenizer directory {path!r} does not exist and there is no train file to train one"
            )
        raise TokenizerError("no tokenizer: give a tokenizer directory or a train file to train one from")
    if path is not None:
        target = resolve_path(path)
    else:
        target = default_cache_dir(cache_dir) / _recipe_key(files, vocab_size, src_key, tgt_keys)
        if target.is_dir():
            log.info("using cached tokenizer %s", target)
            return load_tokenizer(target)
    log.info(
        "training a byte-level BPE tokenizer (vocab_size=%d) on %s", vocab_size, ", ".join(map(str, files))
    )
    tok = train_tokenizer(_training_texts(files, src_key, tgt_keys), vocab_size)
    _save_atomically(tok, target)
    log.info("saved tokenizer to %s", target)
    return load_tokenizer(target)


__all__ = [
    "SpecialIds",
    "TokenizerError",
    "default_cache_dir",
    "load_tokenizer",
    "resolve_tokenizer",
    "special_ids",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
