"""The example user project (``examples/custom_parts``) end to end, as a user runs it: its own denoiser, loss
term and noise schedule, named by ``class_path`` in its own recipe, trained, checkpointed, used for prediction
through the ``lightning-diffusion`` console script (subprocesses, ``PYTHONPATH`` at the example) and reloaded in
Python; plus unit tests of the custom parts' math."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import REPO, TinyData, make_tiny_overrides

from lightning_diffusion import DiffusionLM
from lightning_diffusion.types import Conditioning, LossInputs

EXAMPLE = REPO / "examples" / "custom_parts"
RECIPE = EXAMPLE / "recipe.yaml"


@pytest.fixture(scope="module")
def my_diffusion() -> Iterator[ModuleType]:
    """The example's package, importable in this process for the length of the module (as with PYTHONPATH)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        import my_diffusion
        import my_diffusion.denoisers
        import my_diffusion.losses
        import my_diffusion.schedules

        assert Path(my_diffusion.__file__).resolve().is_relative_to(EXAMPLE)
        yield my_diffusion


def _command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m lightning_diffusion.cli``."""
    script = Path(sys.executable).parent / "lightning-diffusion"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "lightning_diffusion.cli"]


def run(*args: str | Path, cwd: Path) -> str:
    """``lightning-diffusion <args>`` with the example package on ``PYTHONPATH``; returns stdout + stderr."""
    pythonpath = os.pathsep.join(p for p in [str(EXAMPLE), os.environ.get("PYTHONPATH", "")] if p)
    env = {
        **os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }  # fmt: skip
    proc = subprocess.run(
        [*_command(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout + proc.stderr


def overrides(root: Path, data: TinyData, **kwargs: int) -> list[str]:
    """conftest's tiny sizes and data for the example recipe, with the recipe's CSV logger moved under ``root``."""
    extra = {"trainer.logger.init_args.save_dir": root}
    return make_tiny_overrides(root, RECIPE, data=data, extra=extra, **kwargs)


@dataclass
class Run:
    log_dir: Path
    ckpt: Path
    data: TinyData


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData, my_diffusion: ModuleType) -> Run:
    """A tiny 4-step fit of the example recipe (validation at steps 2 and 4) through the console script."""
    root = tmp_path_factory.mktemp("example_fit")
    output = run(
        "fit", "-c", RECIPE, *overrides(root / "run", tiny_data, max_steps=4, val_check_interval=2), cwd=root
    )
    assert "`Trainer.fit` stopped: `max_steps=4` reached" in output
    assert "schedule LaplaceSchedule(T=2000)" in output  # the decoding settings name the custom schedule
    (ckpt,) = (root / "run").rglob("last.ckpt")
    return Run(log_dir=ckpt.parent.parent, ckpt=ckpt, data=tiny_data)


# ---------------------------------------------------------------------------------------------- end to end


def test_fit_writes_checkpoint_and_logs_the_custom_loss_term(trained: Run) -> None:
    assert trained.ckpt.stat().st_size > 0
    assert (trained.log_dir / "config.yaml").is_file()
    assert (trained.log_dir / "tokenizer" / "tokenizer.json").is_file()
    with (trained.log_dir / "metrics.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for key, count in [("train/contrastive", 4), ("val/contrastive", 2), ("train/mse", 4)]:
        values = [float(row[key]) for row in rows if row.get(key)]
        assert len(values) == count, (key, values)
        assert all(math.isfinite(v) and v >= 0 for v in values), (key, values)
    # The total is the weighted sum of the terms (contrastive weight 0.1 in the recipe), at every logged step.
    for row in rows:
        if row.get("train/loss"):
            terms = float(row["train/mse"]) + float(row["train/anchor"])
            terms += 0.1 * float(row["train/length"]) + 0.1 * float(row["train/contrastive"])
            assert float(row["train/loss"]) == pytest.approx(terms, rel=1e-4)


def test_predict_from_the_checkpoint_one_line_per_input_in_order(trained: Run, tmp_path: Path) -> None:
    root = tmp_path / "predict"
    output = run(
        "predict", "-c", RECIPE, *overrides(root, trained.data), "--ckpt_path", trained.ckpt, cwd=tmp_path
    )
    (predictions,) = root.rglob("predictions.jsonl")
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    inputs = trained.data.pairs("test")
    assert [row["source"] for row in rows] == [example["src"] for example in inputs]
    assert [row["reference"] for row in rows] == [example["tgt"] for example in inputs]
    assert all(isinstance(row["hypothesis"], str) for row in rows)
    assert f"wrote {len(inputs)} predictions" in output


def test_reload_in_python_builds_the_custom_parts(trained: Run, my_diffusion: ModuleType) -> None:
    from lightning_diffusion.data import load_tokenizer, tokenizer_fingerprint
    from lightning_diffusion.losses import X0MSE, AnchorNLL, LengthNLL

    model = DiffusionLM.load_from_checkpoint(trained.ckpt, map_location="cpu")
    assert type(model.denoiser) is my_diffusion.denoisers.GatedSkipDenoiser
    assert type(model.schedule) is my_diffusion.schedules.LaplaceSchedule
    assert [type(term) for term in model.loss_terms] == [
        X0MSE,
        AnchorNLL,
        LengthNLL,
        my_diffusion.losses.TokenContrastiveLoss,
    ]
    assert model.loss_terms[3].weight == 0.1 and model.loss_terms[3].temperature == 0.1
    assert model.denoiser.hidden_dim == 32 and len(model.denoiser.layers) == 1  # the tiny CLI overrides
    assert (model.schedule.mu, model.schedule.b, model.schedule.num_steps) == (0.0, 0.5, 2000)

    # The schedule in the model is the Laplace table, in the module and in the checkpoint's state dict.
    expected = my_diffusion.schedules.LaplaceSchedule(num_steps=2000, mu=0.0, b=0.5).alpha_bar_table
    assert torch.equal(model.schedule.alpha_bar_table, expected)
    stored = torch.load(trained.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(stored["schedule.alpha_bar_table"], expected)
    assert model.schedule.alpha_bar(torch.tensor([1000]), 3).tolist() == [[pytest.approx(0.5, abs=1e-6)] * 3]
    # The denoiser's own parameter was trained and saved.
    assert torch.equal(model.denoiser.gate.weight, stored["denoiser.gate.weight"])

    # Translate with the reloaded model and the run's saved tokenizer.
    tokenizer = load_tokenizer(trained.log_dir / "tokenizer")
    model.attach_tokenizer(tokenizer, tokenizer_fingerprint(tokenizer))
    model.eval()
    ids = tokenizer(
        ["Tom is here.", "Where is the station?"], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    out = model.generate(ids["input_ids"], ids["attention_mask"].bool(), torch.Generator().manual_seed(0))
    assert len(out.texts) == 2 and all(isinstance(text, str) for text in out.texts)
    assert out.nfe == 3


# ---------------------------------------------------------------------------------------------- the parts' math


def test_laplace_schedule_is_a_valid_schedule(my_diffusion: ModuleType) -> None:
    schedule = my_diffusion.schedules.LaplaceSchedule(num_steps=200, mu=0.0, b=0.5)
    table = schedule.alpha_bar_table.double()
    assert table.shape == (201,)
    assert table[0] == 1.0
    assert (table[1:] < table[:-1]).all()  # strictly decreasing
    assert ((table > 0) & (table <= 1)).all()
    # Off the last step (where the beta clip keeps alpha_bar > 0), the table is sigmoid(lambda(t / T)).
    u = torch.arange(201, dtype=torch.float64) / 200
    lam = -0.5 * torch.sign(0.5 - u) * torch.log(1 - 2 * (u - 0.5).abs())
    torch.testing.assert_close(table[:-1], torch.sigmoid(lam)[:-1], rtol=1e-5, atol=1e-6)
    # mu = 0 is symmetric about the middle step: alpha_bar(T - t) = 1 - alpha_bar(t).
    torch.testing.assert_close(table[1:-1].flip(0), 1 - table[1:-1], rtol=0, atol=1e-5)
    assert schedule.alpha_bar(torch.tensor([100, 200]), 4).shape == (2, 4)


def test_laplace_schedule_log_snr_is_laplace_distributed(my_diffusion: ModuleType) -> None:
    schedule = my_diffusion.schedules.LaplaceSchedule(num_steps=10, mu=-1.0, b=0.75)
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000  # uniform u, off the endpoints
    lam = schedule.log_snr(u)
    assert (lam[1:] < lam[:-1]).all()  # decreasing in u
    for x in (0.1, 0.5, 1.0, 3.0):  # Laplace(mu, b): P(|lambda - mu| <= x) = 1 - exp(-x / b)
        assert ((lam + 1.0).abs() <= x).double().mean().item() == pytest.approx(
            1 - math.exp(-x / 0.75), abs=1e-4
        )
    # The middle step has SNR e^mu.
    assert schedule.alpha_bar_table[5].item() == pytest.approx(1 / (1 + math.e), rel=1e-5)
    with pytest.raises(ValueError, match="b must be > 0"):
        my_diffusion.schedules.LaplaceSchedule(num_steps=10, b=0.0)


def _loss_inputs(
    x0_hat: torch.Tensor, z0: torch.Tensor, ids: list[list[int]], mask: list[list[bool]]
) -> LossInputs:
    b, length, _ = z0.shape
    return LossInputs(
        z0=z0, x0_hat=x0_hat, target_ids=torch.tensor(ids), mask=torch.tensor(mask), t=torch.ones(b, dtype=torch.long),
        alpha_bar_final=torch.zeros(b, length), logits=lambda z: z,
    )  # fmt: skip


def test_token_contrastive_loss_on_a_hand_computed_case(my_diffusion: ModuleType) -> None:
    loss = my_diffusion.losses.TokenContrastiveLoss(temperature=1.0)
    assert loss.name == "contrastive"
    # Two words with orthogonal embeddings; both predictions point at the first word. Cosine scores
    # s = [[1, 0], [1, 0]]: loss_0 = -log(e / (e + 1)), loss_1 = -log(1 / (e + 1)); their mean is
    # log(e^0.5 + e^-0.5). A third, masked position changes nothing.
    z0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    x0_hat = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    value = loss(_loss_inputs(x0_hat, z0, [[7, 8, 9]], [[True, True, False]]))
    assert value.shape == (1,)
    expected = math.log(math.exp(0.5) + math.exp(-0.5))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert value.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2, rel=1e-6)
    value.sum().backward()
    assert x0_hat.grad is not None and x0_hat.grad[0, 2].abs().sum() == 0  # masked position: no gradient

    # Temperature divides the scores: log(e^(1 / 2 tau) + e^(-1 / 2 tau)).
    sharp = my_diffusion.losses.TokenContrastiveLoss(temperature=0.5)
    value = sharp(_loss_inputs(x0_hat.detach(), z0, [[7, 8, 9]], [[True, True, False]]))
    assert value.item() == pytest.approx(math.log(math.e + math.exp(-1)), rel=1e-6)

    # Per example [B]; a repeated word is no negative of itself, so a sentence of one word repeated costs 0.
    z0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    x0_hat = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    value = loss(_loss_inputs(x0_hat, z0, [[7, 8], [7, 7]], [[True, True], [True, True]]))
    assert value.tolist() == [pytest.approx(expected, rel=1e-6), 0.0]
    with pytest.raises(ValueError, match="temperature"):
        my_diffusion.losses.TokenContrastiveLoss(temperature=0.0)


def test_gated_skip_denoiser_shapes_and_gate(my_diffusion: ModuleType) -> None:
    torch.manual_seed(0)
    denoiser = my_diffusion.denoisers.GatedSkipDenoiser(
        vocab_size=50, latent_dim=8, hidden_dim=16, encoder_layers=1, decoder_layers=1, num_heads=2, ffn_dim=32,
        dropout=0.0, max_positions=16, gate_bias=-2.0,
    )  # fmt: skip
    src = torch.randint(0, 50, (3, 5))
    src_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    cond = denoiser.encode(src, src_mask)
    assert cond.hidden.shape == (3, 5, 16) and cond.extras["pooled"].shape == (3, 16)
    torch.testing.assert_close(cond.extras["pooled"][2], cond.hidden[2, 0])  # masked mean of one real state
    z_t, t = torch.randn(3, 7, 8), torch.tensor([1, 500, 2000])
    out = denoiser(z_t, t, cond, torch.ones(3, 7, dtype=torch.bool))
    assert out.shape == (3, 7, 8)
    gate = denoiser.skip_gate(t, cond)
    assert gate.shape == (3, 1, 8)
    torch.testing.assert_close(gate, torch.full_like(gate, 1 / (1 + math.exp(2.0))))  # W = 0 at init
    # The extras are repeated with the rest when a sampler decodes several candidates per source.
    repeated = cond.repeat_interleave(2)
    assert isinstance(repeated, Conditioning) and repeated.extras["pooled"].shape == (6, 16)
    # A fully open gate copies the noisy input.
    torch.nn.init.constant_(denoiser.gate.bias, 50.0)
    torch.testing.assert_close(denoiser(z_t, t, cond), z_t)


# ---------------------------------------------------------------------------------------------- the guide


def test_guide_walkthrough_parts_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/extending.md's walk-through files: its module imports and its parts are valid, its overlay names them."""
    import importlib
    import re

    import yaml

    from lightning_diffusion.losses import LossTerm
    from lightning_diffusion.schedules import TabulatedSchedule

    guide = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    files = dict(re.findall(r"cat > my_project/(\S+) <<'EOF'\n(.*?)\nEOF\n", guide, re.S))
    assert set(files) == {"my_parts.py", "overlay.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_parts", raising=False)
    my_parts = importlib.import_module("my_parts")

    schedule = my_parts.PowerSchedule(num_steps=100, p=0.7)
    assert isinstance(schedule, TabulatedSchedule)
    table = schedule.alpha_bar_table
    assert table[0] == 1.0 and (table[1:] < table[:-1]).all() and table[-1] > 0
    assert table[50].item() == pytest.approx(1 - 0.5**0.7, rel=1e-5)
    term = my_parts.X0L1(weight=0.5)
    assert isinstance(term, LossTerm) and term.name == "l1"
    z0 = torch.zeros(2, 3, 4)
    x0_hat = torch.ones(2, 3, 4)
    x0_hat[1, 2] = 5.0  # masked out below
    value = term(_loss_inputs(x0_hat, z0, [[5, 6, 7], [5, 6, 7]], [[True, True, True], [True, True, False]]))
    assert value.tolist() == [1.0, 1.0]

    overlay = yaml.safe_load(files["overlay.yaml"])["model"]["init_args"]
    assert overlay["schedule"]["class_path"] == "my_parts.PowerSchedule"
    assert overlay["loss_terms"][-1] == {"class_path": "my_parts.X0L1", "init_args": {"weight": 0.5}}
