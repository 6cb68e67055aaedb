"""Length prediction (Difformer): classify the target-minus-source length offset from pooled source states."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_diffusion.arguments import check_at_least
from lightning_diffusion.types import Conditioning


class LengthPredictor(nn.Module):
    """Masked-mean pooled source states ``[B, S, H]`` -> logits over offsets ``-max_offset..max_offset``.

    The predicted target length (tokens + EOS) is ``source length + offset``.

    Args:
        hidden_dim: width of the conditioning states (the module passes the denoiser's ``hidden_dim``).
        max_offset: largest ``|target length - source length|`` that is a class of its own (larger ones clip).
        detach: stop the length loss's gradient at the encoder (Difformer's option).
    """

    def __init__(self, hidden_dim: int, max_offset: int = 64, detach: bool = False) -> None:
        super().__init__()
        check_at_least("LengthPredictor", 0, max_offset=max_offset)
        check_at_least("LengthPredictor", 1, hidden_dim=hidden_dim)
        self.max_offset = max_offset
        self.detach = detach
        self.head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 2 * max_offset + 1))

    def forward(self, cond: Conditioning) -> Tensor:
        """Logits ``[B, 2 * max_offset + 1]``; class ``k`` means offset ``k - max_offset``."""
        hidden = cond.hidden.detach() if self.detach else cond.hidden
        mask = cond.mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)

    def targets(self, src_lengths: Tensor, tgt_lengths: Tensor) -> Tensor:
        """Offset classes ``clamp(len_tgt - len_src + max_offset)`` ``[B]`` (long)."""
        return (tgt_lengths - src_lengths + self.max_offset).clamp(0, 2 * self.max_offset)

    def top_lengths(self, logits: Tensor, src_lengths: Tensor, beam: int, max_length: int) -> Tensor:
        """The ``beam`` most likely target lengths per source ``[B, beam]``, each clipped to ``1..max_length``."""
        beam = min(beam, logits.shape[-1])
        offsets = logits.topk(beam, dim=-1).indices - self.max_offset
        return (src_lengths[:, None] + offsets).clamp(1, max_length)
