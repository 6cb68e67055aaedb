"""Data layer: reading pairs, tokenizers, token-budget batching and the Lightning data module."""

from lightning_diffusion.data.batching import TokenBudgetBatchSampler
from lightning_diffusion.data.datamodule import Seq2SeqDataModule
from lightning_diffusion.data.detokenize import decode_tokens
from lightning_diffusion.data.examples import Seq2SeqDataset, TokenizedExample, collate_examples
from lightning_diffusion.data.jsonl import DataError, Example, ReadStats, read_examples, resolve_path
from lightning_diffusion.data.loader import ResumableDataLoader
from lightning_diffusion.data.tokenizer import (
    TOKENIZER_KINDS,
    SpecialIds,
    TokenizerError,
    default_cache_dir,
    load_tokenizer,
    resolve_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)

__all__ = [
    "TOKENIZER_KINDS",
    "DataError",
    "Example",
    "ReadStats",
    "ResumableDataLoader",
    "Seq2SeqDataModule",
    "Seq2SeqDataset",
    "SpecialIds",
    "TokenBudgetBatchSampler",
    "TokenizedExample",
    "TokenizerError",
    "collate_examples",
    "decode_tokens",
    "default_cache_dir",
    "load_tokenizer",
    "read_examples",
    "resolve_path",
    "resolve_tokenizer",
    "special_ids",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
