"""The denoising probe (lightning_diffusion.probe) and its benchmark CLI (benchmarks.probe): an oracle denoiser
scores 1.0 at every t with zero MSE; the self-conditioned two-pass estimate; determinism; a briefly trained model
reconstructs better at t = 1 than at t = T; the CLI on a tiny checkpoint and export writes JSON and markdown."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, REPO, TinyData, make_tiny_overrides
from torch import Tensor

from lightning_diffusion import DiffusionLM
from lightning_diffusion.data import Seq2SeqDataModule, tokenizer_fingerprint
from lightning_diffusion.denoisers import DiffuSeqDenoiser
from lightning_diffusion.length import LengthPredictor
from lightning_diffusion.losses import X0MSE, LengthNLL, RoundingNLL
from lightning_diffusion.probe import ProbeRow, denoising_probe, nearest_token_ids, probe_steps, probe_targets
from lightning_diffusion.schedules import SqrtSchedule
from lightning_diffusion.types import Seq2SeqBatch

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T = 50


def tiny_module(tok: Any, length_predictor: bool = False, **denoiser: Any) -> DiffusionLM:
    """A tiny DiffuSeq-style DiffusionLM (canvas, or with a length predictor) with ``tok`` attached."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        latent_dim=16, hidden_dim=32, num_layers=1, num_heads=2, ffn_dim=64, dropout=0.0, max_positions=128
    )
    options.update(denoiser)
    extra: dict[str, Any] = {}
    if length_predictor:
        extra = dict(
            length_predictor=functools.partial(LengthPredictor, max_offset=16),
            loss_terms=[X0MSE(), RoundingNLL(), LengthNLL()],
        )
    module = DiffusionLM(
        denoiser=functools.partial(DiffuSeqDenoiser, **options),
        schedule=SqrtSchedule(T),
        vocab_size=len(tok),
        **extra,
    )
    module.attach_tokenizer(tok, tokenizer_fingerprint(tok))
    return module


def batches(dm: Seq2SeqDataModule, split: str = "val") -> list[Seq2SeqBatch]:
    dm.setup("fit")
    return list(dm.val_dataloader() if split == "val" else dm.train_dataloader())


def oracle(module: DiffusionLM, monkeypatch: pytest.MonkeyPatch, batch: Seq2SeqBatch) -> list[Any]:
    """Replace the denoiser's forward by one returning the clean target embeddings of ``batch``; records its
    ``self_cond`` arguments."""
    target, _, _ = probe_targets(module, batch)
    z0 = module.denoiser.embed(target).detach()
    seen: list[Any] = []

    def forward(
        z_t: Tensor, t: Tensor, cond: Any, tgt_mask: Tensor | None = None, self_cond: Tensor | None = None
    ) -> Tensor:
        assert z_t.shape == z0.shape
        seen.append(self_cond)
        return z0.clone()

    monkeypatch.setattr(module.denoiser, "forward", forward)
    return seen


# ---------------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("length_predictor", [False, True], ids=["canvas", "length-predictor"])
def test_oracle_denoiser_is_exact_at_every_t(
    tiny_datamodule: Seq2SeqDataModule, monkeypatch: pytest.MonkeyPatch, length_predictor: bool
) -> None:
    # LayerNorm'd embeddings all have the same norm, so z0 . E_w is largest at the true word (Cauchy-Schwarz):
    # the argmax rounding of the true embedding is then exact too, not only the nearest-embedding rounding.
    module = tiny_module(tiny_datamodule.tokenizer, length_predictor, embedding_norm=True)
    batch = batches(tiny_datamodule)[0]
    oracle(module, monkeypatch, batch)
    rows = denoising_probe(module, [batch], steps=[1, 10, 25, T, 10 * T])
    assert [r.t for r in rows] == [1, 10, 25, T]  # clipped to T and deduplicated
    assert batch.tgt_mask is not None
    for row in rows:
        assert row.tokens == int(batch.tgt_mask.sum())  # target tokens + EOS, no padding
        assert row.token_accuracy_argmax == 1.0 and row.token_accuracy_nearest == 1.0
        assert row.mse == 0.0
        assert row.canvas_accuracy == (None if length_predictor else 1.0)


def test_canvas_counts_padding_but_token_accuracy_does_not(
    tiny_datamodule: Seq2SeqDataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An oracle that predicts every token right but the padding wrong: token accuracy 1, canvas accuracy below."""
    module = tiny_module(tiny_datamodule.tokenizer, embedding_norm=True)
    batch = batches(tiny_datamodule)[0]
    target, real, _ = probe_targets(module, batch)
    assert target.shape[1] >= module.canvas_length(batch.src_mask) and (~real).any()
    wrong = target.masked_fill(~real, module.special_ids.eos)  # EOS where padding should be
    z_wrong = module.denoiser.embed(wrong).detach()
    monkeypatch.setattr(module.denoiser, "forward", lambda z_t, t, cond, mask=None, sc=None: z_wrong.clone())
    (row,) = denoising_probe(module, [batch], steps=[1])
    assert row.token_accuracy_argmax == 1.0 and row.token_accuracy_nearest == 1.0 and row.mse == 0.0
    expected = real.sum().item() / real.numel()
    assert row.canvas_accuracy == pytest.approx(expected)


def test_self_conditioning_runs_two_passes(
    tiny_datamodule: Seq2SeqDataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tiny_module(tiny_datamodule.tokenizer, self_conditioning=True)
    batch = batches(tiny_datamodule)[0]
    seen = oracle(module, monkeypatch, batch)
    denoising_probe(module, [batch], steps=[5])
    assert len(seen) == 2 and seen[0] is None and seen[1] is not None  # second pass sees the first estimate
    seen.clear()
    denoising_probe(module, [batch], steps=[5], self_condition=False)
    assert seen == [None]


def test_deterministic_and_leaves_the_module_as_it_was(tiny_datamodule: Seq2SeqDataModule) -> None:
    module = tiny_module(tiny_datamodule.tokenizer)
    data = batches(tiny_datamodule)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    first = denoising_probe(module, data, steps=[1, 25, T], seed=3)
    assert module.training  # mode restored
    assert first == denoising_probe(module, data, steps=[1, 25, T], seed=3)
    assert first != denoising_probe(module, data, steps=[1, 25, T], seed=4)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(isinstance(r, ProbeRow) and 0.0 <= r.token_accuracy_nearest <= 1.0 for r in first)


def test_nearest_token_ids_and_steps() -> None:
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[[0.9, 0.1], [0.1, 1.6], [0.1, 0.1]]])  # [1, 3, 2]
    for rows in (None, 1, 2):
        assert nearest_token_ids(x, table, rows).tolist() == [[1, 2, 0]]
    assert probe_steps([1000, 1, 100, 2000, 5000], 2000) == [1, 100, 1000, 2000]
    with pytest.raises(ValueError, match=">= 1"):
        probe_steps([0, 5], 10)


# ---------------------------------------------------------------------------------------------- learning


def test_trained_model_reconstructs_better_at_small_t(tiny_datamodule: Seq2SeqDataModule) -> None:
    module = tiny_module(tiny_datamodule.tokenizer)
    train, val = batches(tiny_datamodule, "train"), batches(tiny_datamodule)
    untrained = denoising_probe(module, val, steps=[1, T])
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    for step in range(100):  # about a second
        loss, _, _, _ = module.compute_losses(train[step % len(train)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    at_1, at_T = denoising_probe(module, val, steps=[1, T])
    assert at_1.token_accuracy_nearest > at_T.token_accuracy_nearest
    assert at_1.token_accuracy_argmax > at_T.token_accuracy_argmax
    assert at_1.mse < at_T.mse
    assert at_1.token_accuracy_argmax > untrained[0].token_accuracy_argmax  # it learned


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> tuple[Path, Path]:
    """The quickstart recipe (length predictor) made tiny, 4 steps of fit: (last.ckpt, export directory)."""
    from lightning_diffusion.cli import main
    from lightning_diffusion.pretrained import export_pretrained

    root = tmp_path_factory.mktemp("probe")
    recipe = RECIPES_DIR / "quickstart.yaml"
    overrides = make_tiny_overrides(root / "run", recipe, data=tiny_data, max_steps=4, val_check_interval=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lightning-diffusion"])
        main(["fit", "-c", str(recipe), *overrides])
    ckpt = next((root / "run").rglob("last.ckpt"))
    return ckpt, export_pretrained(ckpt, root / "export")


@pytest.mark.parametrize("source", ["checkpoint", "export"])
def test_probe_cli_writes_json_and_markdown(
    quickstart: tuple[Path, Path],
    tiny_data: TinyData,
    tmp_path: Path,
    source: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import probe

    model = quickstart[0] if source == "checkpoint" else quickstart[1]
    out = tmp_path / "probe.json"
    args = [
        str(model),
        "--data",
        str(tiny_data.valid),
        "--examples",
        "8",
        "--steps",
        "1,100,5000",
        "--out",
        str(out),
    ]
    assert probe.main(args) == out
    data = json.loads(out.read_text())
    assert data["benchmark"] == "probe" and data["command"].startswith("python -m benchmarks.probe")
    assert {"machine", "settings", "model", "definitions"} <= set(data)
    assert data["examples"] == 8 and data["model"]["canvas"] is False  # quickstart has a length predictor
    assert [row["t"] for row in data["rows"]] == [1, 100, 2000]  # clipped to the recipe's T = 2000
    for row in data["rows"]:
        assert set(row) == {
            "t",
            "tokens",
            "token_accuracy_argmax",
            "token_accuracy_nearest",
            "canvas_accuracy",
            "mse",
        }
        assert (
            row["canvas_accuracy"] is None
            and row["tokens"] > 8
            and 0.0 <= row["token_accuracy_argmax"] <= 1.0
        )
    md = out.with_suffix(".md").read_text()
    assert "| t |" in md and "| 2,000 |" in md
    assert "acc argmax" in capsys.readouterr().out  # the printed table


def test_chain_trace_cli_writes_json_and_markdown(
    quickstart: tuple[Path, Path], tiny_data: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import chain_trace

    out = tmp_path / "trace.json"
    args = [str(quickstart[0]), "--data", str(tiny_data.valid), "--examples", "6", "--decoding", '{"steps": 3}', "--out", str(out)]
    assert chain_trace.main(args) == out
    data = json.loads(out.read_text())
    assert data["benchmark"] == "chain_trace" and data["examples"] == 6 and "steps=3" in data["decoding"]
    assert [row["step"] for row in data["rows"]] == [1, 2, 3]
    assert data["rows"][-1]["changed_positions"] == 0 and data["rows"][0]["t"] == 2000
    assert "| step | t |" in out.with_suffix(".md").read_text()
    assert "differing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        chain_trace.main([*args[:-2], "--decoding", '{"stepz": 3}', "--out", str(out)])
