"""Tokenizers: train a small byte-level BPE, Unigram or WordPiece locally, or load a local Hugging Face
tokenizer directory.

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
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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

TokenizerKind = Literal["bpe", "unigram", "wordpiece"]
TOKENIZER_KINDS: tuple[str, ...] = ("bpe", "unigram", "wordpiece")
METASPACE = "\u2581"  # "▁", stands for a space in unigram and wordpiece tokens
WORDPIECE_PREFIX = "##"  # marks a wordpiece token that continues a word
UNREACHABLE_SCORE = -1e9  # Unigram score of the special tokens: text never segments into them


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


def _check_kind(kind: str) -> None:
    if kind not in TOKENIZER_KINDS:
        raise TokenizerError(f"kind must be one of {', '.join(map(repr, TOKENIZER_KINDS))}, got {kind!r}")


def _backend(kind: TokenizerKind, vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    """The untrained tokenizer (model, normalizer, pre-tokenizer, decoder) and its trainer for ``kind``."""
    if kind == "bpe":
        backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "unigram":
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
        backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
        # Every character of the training text is kept as a piece (the trainer's required characters).
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token=UNK_TOKEN, show_progress=False
        )
    else:
        # Trained without a "##" prefix (with one, the trainer numbers the "##c" pieces in a run-dependent order
        # and ties between merges come out differently from run to run); _mark_continuations adds it after.
        backend = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN, continuing_subword_prefix=""))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
        backend.decoder = decoders.Sequence(
            [
                decoders.Replace(Regex(f"^{WORDPIECE_PREFIX}"), ""),
                decoders.Metaspace(replacement=METASPACE, prepend_scheme="always"),
            ]
        )
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=SPECIAL_TOKENS,
            continuing_subword_prefix="",
            show_progress=False,
        )
    backend.normalizer = normalizers.NFC()
    return backend, trainer


def _canonical_unigram(backend: Tokenizer) -> None:
    """Make a trained Unigram the same on every run (given the same pieces).

    The trainer sums floats in a run-dependent order (hash maps), so scores differ in their last digits, and it
    appends the characters that EM dropped at the lowest score plus 1e-4 per character, in a run-dependent
    order. Give the single characters in that band the lowest score, round the scores to 6 decimals and
    order the pieces by (score, text) after the special tokens.

    The special tokens are pieces of the model too (ids 0..4); the trainer scores them 0 (the best), so a
    literal ``</s>`` in the text would encode as the EOS. Score them so low that any other segmentation wins.
    """
    trained = json.loads(backend.to_str())["model"]
    pieces = [(piece, score) for piece, score in trained["vocab"] if piece not in SPECIAL_TOKENS]
    lowest = min(score for _, score in pieces)
    band = lowest + sum(len(piece) == 1 for piece, _ in pieces) * 1e-4
    canonical = [
        (piece, round(lowest if len(piece) == 1 and score <= band else score, 6)) for piece, score in pieces
    ]
    canonical.sort(key=lambda item: (-item[1], item[0]))
    vocab = [(token, UNREACHABLE_SCORE) for token in SPECIAL_TOKENS] + canonical
    backend.model = models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index(UNK_TOKEN), byte_fallback=False)


def _mark_continuations(backend: Tokenizer) -> None:
    """Turn a WordPiece trained without a prefix into one with ``##`` continuation pieces, same ids.

    Every word starts with ``▁`` (Metaspace), so a piece without it can only continue a word: it becomes
    ``##piece`` and encodes the same text as before. The special tokens then cannot match inside a word (a
    literal ``</s>`` in the text stays characters).
    """
    vocab = {
        token if token in SPECIAL_TOKENS or token.startswith(METASPACE) else WORDPIECE_PREFIX + token: index
        for token, index in backend.get_vocab().items()
    }
    backend.model = models.WordPiece(
        vocab, unk_token=UNK_TOKEN, continuing_subword_prefix=WORDPIECE_PREFIX, max_input_chars_per_word=100
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, kind: TokenizerKind = "bpe"
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` (NFC-normalized); deterministic for the same input.

    ``kind``:

    - ``"bpe"`` (default): byte-level BPE; ``decode(encode(x)) == NFC(x)`` for every string. Its single-byte
      tokens can be emitted without their continuation bytes; :func:`~lightning_diffusion.data.detokenize.
      decode_tokens` drops those instead of writing U+FFFD.
    - ``"unigram"``: Unigram LM pieces over characters, words marked by a leading ``▁`` (Metaspace);
      ``decode(encode(x)) == NFC(x)`` when every character of ``x`` was in the training text, except that a
      leading space is dropped and a literal ``▁`` decodes as a space. Other characters become ``<unk>``.
    - ``"wordpiece"``: WordPiece (greedy longest-match pieces, vocabulary learned by frequent merges) over
      the same ``▁``-marked words, ``##`` marking the pieces that continue a word; the same guarantee as
      unigram, but a word (space-separated) with an unseen character, or longer than 100 characters,
      becomes a single ``<unk>``.

    No token of unigram or wordpiece is a partial character. Special tokens get ids 0..4:
    ``<pad> <unk> <s> </s> <sep>``. The vocabulary may come out smaller than ``vocab_size`` when the texts
    are small; when they have more distinct characters than ``vocab_size``, wordpiece keeps them all (a
    larger vocabulary) and unigram raises :class:`TokenizerError`.
    """
    _check_kind(kind)
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 5 specials), got {vocab_size}"
        )
    backend, trainer = _backend(kind, vocab_size)
    try:
        backend.train_from_iterator(texts, trainer=trainer)
    except Exception as err:  # the Rust trainers raise a bare Exception, e.g. more characters than vocab_size
        raise TokenizerError(f"cannot train a {kind} tokenizer with vocab_size={vocab_size}: {err}") from err
    if kind == "unigram":
        _canonical_unigram(backend)
    elif kind == "wordpiece":
        _mark_continuations(backend)
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


def _recipe_key(
    files: Sequence[Path], vocab_size: int, src_key: str, tgt_keys: Sequence[str], kind: TokenizerKind = "bpe"
) -> str:
    """sha256 of the training recipe: file contents, vocab size, field names, kind, format version.

    The kind enters the key only when it is not ``"bpe"``, so BPE keys (and caches) from before kinds existed
    stay valid."""
    digest = hashlib.sha256()
    recipe = f"format={TOKENIZER_FORMAT_VERSION};vocab={vocab_size};src={src_key};tgt={list(tgt_keys)}"
    if kind != "bpe":
        recipe += f";kind={kind}"
    digest.update(recipe.encode())
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
    kind: TokenizerKind = "bpe",
    train_if_missing: bool = False,
) -> PreTrainedTokenizerFast:
    """Load or train the tokenizer (``kind``: see :func:`train_tokenizer`; it only matters when training).

    - ``path`` is an existing directory: load it.
    - ``path`` is given but missing: an error (a mistyped path must not silently become a new tokenizer), unless
      ``train_if_missing``: then train on the sources and targets of ``train_files`` and save it there.
    - ``path`` is None: train, caching under ``default_cache_dir(cache_dir)/<sha256 of the recipe>`` and
      reusing that cache when present (so a later run with the same files finds the same tokenizer).
    Saves are atomic (temp dir + rename). The result is always the copy loaded back from disk.
    """
    _check_kind(kind)
    if path is not None and resolve_path(path).exists():
        return load_tokenizer(resolve_path(path))
    if path is not None and not train_if_missing:
        raise TokenizerError(
            f"tokenizer directory {path!r} does not exist (expected a saved tokenizer, e.g. <run dir>/tokenizer or an "
            "export's tokenizer/); to train a new tokenizer and save it there, set data.tokenizer_train_if_missing: true"
        )
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
        target = default_cache_dir(cache_dir) / _recipe_key(files, vocab_size, src_key, tgt_keys, kind)
        if target.is_dir():
            log.info("using cached tokenizer %s", target)
            return load_tokenizer(target)
    log.info("training a %s tokenizer (vocab_size=%d) on %s", kind, vocab_size, ", ".join(map(str, files)))
    tok = train_tokenizer(_training_texts(files, src_key, tgt_keys), vocab_size, kind)
    _save_atomically(tok, target)
    log.info("saved tokenizer to %s", target)
    return load_tokenizer(target)


__all__ = [
    "TOKENIZER_KINDS",
    "SpecialIds",
    "TokenizerError",
    "TokenizerKind",
    "default_cache_dir",
    "load_tokenizer",
    "resolve_tokenizer",
    "special_ids",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
