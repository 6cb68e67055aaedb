"""Loss terms on hand-computed tiny tensors (B=2, L=3, D=2, V=4)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_diffusion.losses import (
    X0MSE,
    AnchorNLL,
    LossTerm,
    NeighbourUnlikelihood,
    PriorLoss,
    RoundingNLL,
)
from lightning_diffusion.neighbour_unlikelihood import neighbour_unlikelihood
from lightning_diffusion.types import LossInputs, masked_mean

E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])  # V=4, D=2


def _logits(z: torch.Tensor) -> torch.Tensor:
    return z @ E.T


Z0 = torch.tensor(
    [
        [[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]],
        [[-1.0, 0.0], [0.5, 0.5], [0.0, 0.0]],
    ]
)
X0_HAT = torch.tensor(
    [
        [[1.5, 0.0], [0.0, 0.0], [1.0, 1.0]],
        [[-1.0, 2.0], [0.5, -0.5], [3.0, 3.0]],
    ]
)
TARGET = torch.tensor([[0, 1, 3], [2, 3, 1]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
ABAR_T = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02]])


def _inputs(mask=MASK, x0_hat=X0_HAT, z0=Z0) -> LossInputs:
    return LossInputs(
        z0=z0,
        x0_hat=x0_hat,
        target_ids=TARGET,
        mask=mask,
        t=torch.tensor([5, 9]),
        alpha_bar_final=ABAR_T,
        logits=_logits,
    )


def _nll(z: list[float], y: int, smoothing: float = 0.0) -> float:
    """Cross entropy of logits z.E_w against y, written out by hand."""
    logits = [z[0] * e[0] + z[1] * e[1] for e in E.tolist()]
    lse = math.log(sum(math.exp(v) for v in logits))
    logp = [v - lse for v in logits]
    return (1 - smoothing) * -logp[y] + smoothing * sum(-lp for lp in logp) / len(logp)


def _masked_rows(per_token: list[list[float]], mask=MASK) -> list[float]:
    out = []
    for row, m in zip(per_token, mask.tolist(), strict=True):
        kept = [v for v, keep in zip(row, m, strict=True) if keep]
        out.append(sum(kept) / len(kept) if kept else 0.0)
    return out


def test_x0_mse_hand_computed():
    # squared errors per token, mean over D=2:
    # ex0: (0.25+0)/2=0.125, (0+1)/2=0.5, (1+4)/2=2.5 -> mean 1.041666..
    # ex1: (0+4)/2=2, (0+1)/2=0.5, masked -> mean 1.25
    out = X0MSE()(_inputs())
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([(0.125 + 0.5 + 2.5) / 3, 1.25]))


def test_x0_mse_mask_excludes_positions():
    x0_hat = X0_HAT.clone()
    x0_hat[1, 2] = 1e4
    torch.testing.assert_close(X0MSE()(_inputs(x0_hat=x0_hat)), X0MSE()(_inputs()))


def test_empty_mask_row_gives_zero():
    mask = torch.tensor([[True, False, False], [False, False, False]])
    for term in (X0MSE(), RoundingNLL(), AnchorNLL(), PriorLoss()):
        out = term(_inputs(mask=mask))
        assert out[1].item() == 0.0
        assert torch.isfinite(out).all()


def test_rounding_nll_hand_computed():
    per_token = [[_nll(Z0[b, i].tolist(), int(TARGET[b, i])) for i in range(3)] for b in range(2)]
    expected = torch.tensor(_masked_rows(per_token))
    out = RoundingNLL()(_inputs())
    assert out.shape == (2,)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_rounding_nll_uses_z0_not_prediction():
    base = RoundingNLL()(_inputs())
    torch.testing.assert_close(RoundingNLL()(_inputs(x0_hat=X0_HAT * 7)), base)
    assert not torch.allclose(RoundingNLL()(_inputs(z0=Z0 * 3)), base)


def test_anchor_nll_hand_computed_with_label_smoothing():
    term = AnchorNLL()
    assert term.label_smoothing == 0.1
    per_token = [[_nll(X0_HAT[b, i].tolist(), int(TARGET[b, i]), 0.1) for i in range(3)] for b in range(2)]
    torch.testing.assert_close(term(_inputs()), torch.tensor(_masked_rows(per_token)), atol=1e-6, rtol=1e-6)
    # without smoothing it is the plain NLL of the prediction
    plain = [[_nll(X0_HAT[b, i].tolist(), int(TARGET[b, i])) for i in range(3)] for b in range(2)]
    torch.testing.assert_close(
        AnchorNLL(label_smoothing=0.0)(_inputs()), torch.tensor(_masked_rows(plain)), atol=1e-6, rtol=1e-6
    )


def test_anchor_nll_uses_prediction_not_z0():
    base = AnchorNLL()(_inputs())
    torch.testing.assert_close(AnchorNLL()(_inputs(z0=Z0 * 5)), base)


def test_anchor_nll_mask():
    x0_hat = X0_HAT.clone()
    x0_hat[1, 2] = torch.tensor([-50.0, 80.0])
    torch.testing.assert_close(AnchorNLL()(_inputs(x0_hat=x0_hat)), AnchorNLL()(_inputs()))


def _unlikely(z: list[float], negative: int) -> float:
    """``-log(1 - p(negative | z))`` under the head, written out by hand."""
    logits = [z[0] * e[0] + z[1] * e[1] for e in E.tolist()]
    total = sum(math.exp(v) for v in logits)
    return -math.log(1.0 - math.exp(logits[negative]) / total)


def test_neighbour_unlikelihood_hand_computed():
    # TARGET [[0, 1, 3], [2, 3, 1]], MASK [[T, T, T], [T, T, F]]: every neighbour differs here; example 1's last
    # position is out of the loss, so it is neither scored nor anyone's neighbour.
    x = X0_HAT.tolist()
    ex0 = [_unlikely(x[0][0], 1), _unlikely(x[0][1], 0) + _unlikely(x[0][1], 3), _unlikely(x[0][2], 1)]
    ex1 = [_unlikely(x[1][0], 3), _unlikely(x[1][1], 2)]
    expected = torch.tensor([sum(ex0) / 3, sum(ex1) / 2])
    torch.testing.assert_close(NeighbourUnlikelihood()(_inputs()), expected, atol=1e-6, rtol=1e-6)


def test_neighbour_unlikelihood_ignores_a_repeated_word_in_the_target():
    target = torch.tensor([[4, 4]])
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0, 5.0]])  # both sure of word 4: no penalty
    rows = neighbour_unlikelihood(logits, target, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(rows, torch.zeros(2))


def test_neighbour_unlikelihood_is_exact_and_keeps_a_gradient_when_the_neighbours_word_is_certain():
    target = torch.tensor([[0, 1]])
    logits = torch.tensor([[0.0, 200.0], [200.0, 0.0]], requires_grad=True)  # each position sure of the other's word
    rows = neighbour_unlikelihood(logits, target, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(rows, torch.tensor([200.0, 200.0]))  # -log(1 - p) = -log p(own word) = 200
    rows.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[:, 1] * torch.tensor([1.0, -1.0]) > 0.5).all()  # pushed away from the neighbour's word
    with pytest.raises(ValueError, match="3 logit rows for 2 scored positions"):
        neighbour_unlikelihood(torch.zeros(3, 2), target, torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))


def test_anchor_and_unlikelihood_share_one_head_pass():
    calls = []

    def counting_logits(z: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape[0])
        return _logits(z)

    inputs = _inputs()
    inputs.logits = counting_logits
    AnchorNLL()(inputs)
    NeighbourUnlikelihood()(inputs)
    assert calls == [5]  # the 5 loss positions, once


def test_prior_loss_hand_computed():
    # ex0: abar 0.01 * mean(z0^2 over D): (1+0)/2=.5, (0+1)/2=.5, (4+1)/2=2.5 -> 0.01 * 3.5/3
    # ex1: abar 0.02 * ((1+0)/2=.5, (.25+.25)/2=.25) -> 0.02 * 0.375
    out = PriorLoss()(_inputs())
    torch.testing.assert_close(out, torch.tensor([0.01 * 3.5 / 3, 0.02 * 0.375]))


def test_losses_are_differentiable():
    x0_hat = X0_HAT.clone().requires_grad_(True)
    z0 = Z0.clone().requires_grad_(True)
    terms = (X0MSE(), RoundingNLL(), AnchorNLL(), NeighbourUnlikelihood(), PriorLoss())
    total = sum(t(_inputs(x0_hat=x0_hat, z0=z0)).sum() for t in terms)
    total.backward()
    assert x0_hat.grad is not None and z0.grad is not None
    # masked position gets no gradient
    assert torch.all(x0_hat.grad[1, 2] == 0)
    assert torch.all(z0.grad[1, 2] == 0)


def test_names_and_weights():
    assert X0MSE().name == "mse"
    assert RoundingNLL().name == "rounding"
    assert AnchorNLL().name == "anchor"
    assert PriorLoss().name == "prior"
    for cls in (X0MSE, RoundingNLL, AnchorNLL, PriorLoss):
        term = cls()
        assert isinstance(term, LossTerm)
        assert term.weight == 1.0
    custom = AnchorNLL(weight=0.5, label_smoothing=0.2, name="anc2")
    assert custom.weight == 0.5 and custom.name == "anc2" and custom.label_smoothing == 0.2
    assert X0MSE(weight=3.0, name="x").weight == 3.0
    assert "name='mse'" in repr(X0MSE()) and "weight=1.0" in repr(X0MSE())


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("cls", [X0MSE, RoundingNLL, AnchorNLL, NeighbourUnlikelihood, PriorLoss])
def test_per_example_independence(cls):
    """Example 0's loss does not depend on example 1's tensors."""
    x0_hat = X0_HAT.clone()
    z0 = Z0.clone()
    x0_hat[1] += 3.0
    z0[1] -= 2.0
    a = cls()(_inputs())
    b = cls()(_inputs(x0_hat=x0_hat, z0=z0))
    assert a[0].item() == pytest.approx(b[0].item())


def test_module_gives_loss_terms_the_signal_level_at_the_sampled_step(tok, batch) -> None:
    """A term can weight by SNR: ``LossInputs.alpha_bar_t`` is ``abar_t`` at each example's own step."""
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.denoisers import EncoderDecoderDenoiser
    from lightning_diffusion.schedules import SqrtSchedule

    seen: list[LossInputs] = []

    class Spy(X0MSE):
        def forward(self, inputs: LossInputs) -> torch.Tensor:
            seen.append(inputs)
            return super().forward(inputs)

    model = DiffusionLM(
        denoiser=lambda v: EncoderDecoderDenoiser(v, latent_dim=8, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32),
        schedule=SqrtSchedule(num_steps=50),
        loss_terms=[Spy()],
        vocab_size=len(tok),
    )
    model.compute_losses(batch)
    (inputs,) = seen
    expected = model.schedule.alpha_bar(inputs.t, inputs.z0.shape[1])
    torch.testing.assert_close(inputs.alpha_bar_t, expected)
    assert inputs.alpha_bar_t.shape == inputs.mask.shape
    assert inputs.embedding_table is not None
    torch.testing.assert_close(inputs.embedding_table(), model.denoiser.embedding_table())


def test_source_mse_hand_computed_over_real_source_positions():
    from lightning_diffusion.losses import SourceMSE

    source_z0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [5.0, 5.0]]])
    source_x0 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 3.0], [0.0, 0.0]]])
    source_mask = torch.tensor([[True, True], [True, False]])  # the second example's second position is padding
    inputs = _inputs()
    inputs.source_x0, inputs.source_z0, inputs.source_mask = source_x0, source_z0, source_mask
    # example 0: ((1 + 0) / 2 + (0 + 4) / 2) / 2 = 1.25; example 1: (0 + 4) / 2 = 2 (padding ignored)
    assert SourceMSE()(inputs).tolist() == pytest.approx([1.25, 2.0])
    assert SourceMSE().name == "source_mse"


def test_source_mse_needs_the_source_output():
    from lightning_diffusion.losses import SourceMSE

    with pytest.raises(ValueError, match="SourceMSE needs a denoiser that runs the source through its network"):
        SourceMSE()(_inputs())


def _tiny_diffuseq(vocab_size: int):
    from lightning_diffusion.denoisers import DiffuSeqDenoiser

    return DiffuSeqDenoiser(vocab_size, latent_dim=8, hidden_dim=16, num_layers=1, num_heads=2, ffn_dim=32)


def _source_spy_model(tok, **kwargs):
    """A tiny DiffuSeq model scored by X0MSE and a SourceMSE that keeps the inputs it saw."""
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.losses import SourceMSE
    from lightning_diffusion.schedules import SqrtSchedule

    seen: list[LossInputs] = []

    class Spy(SourceMSE):
        def forward(self, inputs: LossInputs) -> torch.Tensor:
            seen.append(inputs)
            return super().forward(inputs)

    model = DiffusionLM(
        denoiser=_tiny_diffuseq, schedule=SqrtSchedule(num_steps=50), loss_terms=[X0MSE(), Spy()],
        vocab_size=len(tok), **kwargs,
    )
    return model, seen


def test_module_scores_the_source_output_with_source_mse(tok, batch) -> None:
    """DiffuSeq's denoiser hands its source-position output to the loss; the target is the source embedding."""
    model, seen = _source_spy_model(tok)
    loss, terms, _, _ = model.compute_losses(batch)
    (inputs,) = seen
    assert inputs.source_x0.shape == inputs.source_z0.shape == (*batch.src_ids.shape, 8)
    torch.testing.assert_close(inputs.source_z0, model.denoiser.embed(batch.src_ids))
    assert torch.equal(inputs.source_mask, batch.src_mask)
    loss.backward()
    assert model.denoiser.source_proj[0].weight.grad.abs().sum() > 0  # the source path learns from the term
    assert terms["source_mse"] > 0


def test_source_terms_are_checked_when_the_model_is_built(tok) -> None:
    """A source-reading term needs a denoiser with a source output, and a source the network saw."""
    from lightning_diffusion import DiffusionLM
    from lightning_diffusion.denoisers import EncoderDecoderDenoiser
    from lightning_diffusion.losses import SourceMSE
    from lightning_diffusion.schedules import SqrtSchedule

    def build(denoiser, **kwargs):
        return DiffusionLM(
            denoiser=denoiser, schedule=SqrtSchedule(num_steps=50), loss_terms=[X0MSE(), SourceMSE()],
            vocab_size=len(tok), **kwargs,
        )

    encoder_decoder = lambda v: EncoderDecoderDenoiser(v, latent_dim=8, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32)  # noqa: E731
    with pytest.raises(ValueError, match="which EncoderDecoderDenoiser does not have"):
        build(encoder_decoder)
    assert build(_tiny_diffuseq).loss_terms[1].name == "source_mse"


def test_source_mse_leaves_out_rows_whose_source_was_dropped(tok, batch) -> None:
    """Classifier-free training replaces a dropped row's source by the null condition: SourceMSE skips that row."""
    model, seen = _source_spy_model(tok, condition_dropout=1.0)
    model.train()
    _, terms, _, _ = model.compute_losses(batch)
    assert not seen[0].source_mask.any() and terms["source_mse"] == 0  # every row dropped
    model.eval()  # no dropout outside training
    model.compute_losses(batch)
    assert torch.equal(seen[1].source_mask, batch.src_mask)
