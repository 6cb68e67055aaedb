"""Autoregressive baseline: an encoder-decoder Transformer from the diffusion models' blocks, trained by
teacher forcing and decoded by greedy or beam search with cached keys/values."""

from lightning_diffusion.autoregressive.model import TransformerSeq2Seq
from lightning_diffusion.autoregressive.module import AutoregressiveLM
from lightning_diffusion.autoregressive.search import BeamSearch, GreedySearch, Search, SearchOutput

__all__ = ["AutoregressiveLM", "BeamSearch", "GreedySearch", "Search", "SearchOutput", "TransformerSeq2Seq"]
