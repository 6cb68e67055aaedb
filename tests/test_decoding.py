"""Decoding settings as a value and the one decoding path: validation/predict, ``generate`` and the benchmark
helper decode the same batch into identical hypotheses; overrides never change the model; a SEP-only tokenizer
trains and decodes; the CLI applies ``--decoding.*`` on top of a checkpoint and refuses ``--model.*`` flags that
a checkpoint would silently replace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RECIPES_DIR, TinyData, fit_tiny, make_tiny_overrides

from benchmarks.common import decode_batches, decoding_for
from lightning_diffusion.autoregressive import BeamSearch, GreedySearch
from lightning_diffusion.data import TokenizedExample, collate_examples
from lightning_diffusion.decoding import (
    Decoding,
    DecodingError,
    carry_over_sampler,
    collapse_repeats,
    decode_batch,
    is_empty_source,
)
from lightning_diffusion.generate import generate_batches
from lightning_diffusion.samplers import AncestralSampler, DDIMSampler
from lightning_diffusion.selection import FirstCandidate, MBRSelection

QUICKSTART = RECIPES_DIR / "quickstart.yaml"
DIFFUSEQ = RECIPES_DIR / "diffuseq" / "multi30k_en_de.yaml"


# ---------------------------------------------------------------------------------------------- the value
def test_replace_returns_a_new_value_and_leaves_the_sampler_alone() -> None:
    sampler = DDIMSampler(steps=20, eta=0.3, clamp=True, noise_factor=0.5)
    default = Decoding(sampler=sampler, length_beam=3, noise_beam=1, num_steps=2000)
    faster = default.replace(steps=5, noise_beam=2)
    assert default.sampler is sampler and sampler.steps == 20 and default.noise_beam == 1
    assert faster.sampler is not sampler and faster.steps == 5 and faster.noise_beam == 2
    assert isinstance(faster.sampler, DDIMSampler) and (faster.sampler.eta, faster.sampler.clamp) == (0.3, True)
    assert faster.nfe == 5 and faster.candidates == 6
    assert default.replace(steps=5000).nfe == 2000  # steps beyond the chain are capped at T
    text = faster.describe()
    assert "DDIMSampler(steps=5" in text and "length beam 3 x noise beam 2" in text and "NFE 5" in text
    assert "MBR" in text and "6 candidates" in text


def test_bad_values_are_errors_naming_the_setting() -> None:
    with pytest.raises(DecodingError, match="noise_beam must be an integer >= 1, got 0"):
        Decoding(sampler=DDIMSampler(), noise_beam=0)
    with pytest.raises(DecodingError, match="steps must be an integer >= 1, got 0"):
        Decoding(sampler=DDIMSampler()).replace(steps=0)
    with pytest.raises(DecodingError, match="exactly one of sampler"):
        Decoding()
    with pytest.raises(DecodingError, match="steps=3 applies to diffusion models"):
        Decoding(search=GreedySearch()).replace(steps=3)
    with pytest.raises(DecodingError, match="length_beam and noise_beam apply to diffusion models"):
        Decoding(search=BeamSearch(4), noise_beam=2)


def test_autoregressive_decoding_counts_beams_as_candidates() -> None:
    decoding = Decoding(search=BeamSearch(4))
    assert decoding.candidates == 4 and decoding.nfe is None and not decoding.reports_steps
    assert decoding.describe().startswith("BeamSearch(beam=4")


def test_switching_sampler_class_carries_what_the_new_one_leaves_at_its_defaults() -> None:
    previous = DDIMSampler(steps=7, eta=0.5, clamp=True, clamp_from=2, noise_factor=0.8)
    sampler, carried, dropped = carry_over_sampler(previous, AncestralSampler(steps=7, noise_factor=0.9))
    assert isinstance(sampler, AncestralSampler)
    assert (sampler.clamp, sampler.clamp_from, sampler.noise_factor) == (True, 2, 0.9)  # the given value wins
    assert carried == {"clamp": True, "clamp_from": 2} and dropped == {"eta": 0.5}


def test_collapse_repeats_is_an_optional_reported_post_process(trained: Any) -> None:
    assert collapse_repeats([5, 5, 7, 5, 5, 5]) == [5, 7, 5] and collapse_repeats([]) == []
    module = trained.model
    tok = module.tokenizer
    first, word = tok("I", add_special_tokens=False)["input_ids"], tok(" a", add_special_tokens=False)["input_ids"]
    assert len(word) == 1  # one token, so its repeats are runs of one id
    ids = torch.tensor([[*first, *word, *word, *word, module.special_ids.eos]])
    assert module.decode_ids(ids) == ["I a a a"]
    assert module.decode_ids(ids, collapse=True) == ["I a"]
    on = module.decoding.replace(collapse_repeats=True)
    assert "consecutive repeated tokens collapsed" in module.decoding_settings(on)
    assert "collapsed" not in module.decoding_settings()


def test_empty_sources() -> None:
    assert is_empty_source("", 0) and is_empty_source("  \t", 2) and is_empty_source("text", 0)
    assert not is_empty_source("text", 1)


# ---------------------------------------------------------------------------------------------- one path
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Any:
    """The quickstart recipe made tiny (length predictor, length beam 3, 3 sampling steps), 2 steps of fit."""
    cli = fit_tiny(tmp_path_factory.mktemp("decoding") / "run", QUICKSTART, tiny_data)
    cli.model.eval()
    return cli


def _batch(cli: Any, sources: list[str]) -> Any:
    """A collated batch of ``sources`` (indices 0..N-1), tokenized as the data module and ``generate`` do."""
    tok, ids = cli.model.tokenizer, cli.model.special_ids
    encoded = tok(sources, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    examples = [
        TokenizedExample(index=i, src_ids=list(tokens), tgt_ids=None, src_text=text, tgt_text=None)
        for i, (text, tokens) in enumerate(zip(sources, encoded, strict=True))
    ]
    return collate_examples(examples, pad_id=ids.pad, eos_id=ids.eos)


@pytest.mark.parametrize("changes", [{}, {"steps": 2, "noise_beam": 2}], ids=["model's own", "overridden"])
def test_validation_generate_and_benchmark_decode_identically(
    trained: Any, tiny_data: TinyData, changes: dict[str, Any]
) -> None:
    module = trained.model
    sources = [row["src"] for row in tiny_data.pairs("test")[:5]]
    sources.insert(2, "   ")  # an empty source, handled in the one place
    decoding = module.decoding.replace(**changes)
    before = module.decoding
    batch = _batch(trained, sources)

    if changes:
        via_module = decode_batch(module, batch, decoding, module.decode_seed).rows  # what validation does
    else:
        via_module = module.predict_step(batch, 0)  # the Lightning hook of validation, test and predict
    (via_generate,) = list(
        generate_batches(module, sources, batch_size=len(sources), seed=module.decode_seed, decoding=decoding)
    )
    via_benchmark = decode_batches(module, [batch], seed=module.decode_seed, decoding=decoding)

    hypotheses = [row["hypothesis"] for row in via_module]
    assert [h.hypothesis for h in via_generate] == hypotheses
    assert [row["hypothesis"] for row in via_benchmark.rows] == hypotheses
    assert hypotheses[2] == "" and via_generate[2].nfe == 0 and via_generate[0].nfe == decoding.nfe
    assert via_benchmark.candidates == decoding.candidates and via_benchmark.nfe == [decoding.nfe]
    assert module.decoding is before  # nothing was changed on the model


def test_benchmark_overrides_build_a_decoding(trained: Any) -> None:
    module = trained.model
    decoding = decoding_for(module, {"sampler.steps": 2, "noise_beam": 2, "selection": FirstCandidate()})
    assert decoding.steps == 2 and decoding.noise_beam == 2 and isinstance(decoding.selection, FirstCandidate)
    assert isinstance(module.decoding.selection, MBRSelection) and module.decoding.steps == 3
    with pytest.raises(ValueError, match="'beam_size': not a decoding setting"):
        decoding_for(module, {"beam_size": 2})
    with pytest.raises(DecodingError, match="sampler"):
        decoding_for(module, {"search": {"class_path": "lightning_diffusion.autoregressive.GreedySearch"}})
    with pytest.raises(DecodingError, match="continuous samplers do not give"):
        decoding_for(module, {"noise_beam": 2, "selection": {"class_path": "lightning_diffusion.selection.ModelScoreSelection"}})


def test_evaluation_batches_are_sized_by_candidates(trained: Any) -> None:
    """The model tells the data module how many candidates each source becomes (length beam 3 here)."""
    assert trained.model.decoding.candidates == 3
    assert trained.datamodule.candidates_per_source == 3


# ---------------------------------------------------------------------------------------------- SEP-only tokenizer
def _wordpiece_dir(directory: Path, texts: list[str]) -> Path:
    """A BERT-style WordPiece tokenizer directory: [PAD] [UNK] [CLS] [SEP] [MASK], no BOS and no EOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    tok.save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize("recipe", [QUICKSTART, DIFFUSEQ], ids=["length predictor", "padded canvas"])
def test_a_sep_only_tokenizer_trains_and_decodes(
    recipe: Path, tmp_path: Path, tiny_data: TinyData, tiny_overrides: Any, run_cli: Any
) -> None:
    directory = _wordpiece_dir(tmp_path / "wordpiece", tiny_data.sentences())
    overrides = tiny_overrides(tmp_path / "run", recipe, max_steps=20, val_check_interval=20)
    cli = run_cli(["fit", "-c", str(recipe), *overrides, "--data.tokenizer", str(directory)])
    tok, module = cli.datamodule.tokenizer, cli.model
    assert tok.eos_token_id is None and tok.bos_token_id is None
    sep = tok.sep_token_id
    assert module.special_ids.eos == module.special_ids.sep == module.special_ids.bos == sep
    assert cli.datamodule.eos_id == sep  # targets end with the same token decoding cuts at
    assert cli.trainer.global_step == 20 and module.last_report is not None

    words = tok("a dog runs", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[*words, sep, *words]])
    assert module.decode_ids(ids) == ["a dog runs"]  # cut at the SEP: nothing after it leaks
    module.eval()
    sources = [row["src"] for row in tiny_data.pairs("test")[:4]]
    rows = decode_batch(module, _batch(cli, sources), seed=0).rows
    assert len(rows) == 4 and all("[SEP]" not in row["hypothesis"] for row in rows)


# ---------------------------------------------------------------------------------------------- the CLI
def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_diffusion.cli import COMMANDS, main

    for args in ([], ["--help"], ["-h"]):
        assert main(args) is None
        out = capsys.readouterr().out
        for name in ("fit", "validate", "test", "predict", "export", "generate"):
            assert f"\n  {name} " in out, (name, out)
    assert {"fit", "validate", "test", "predict", "export", "generate"} <= set(COMMANDS)


def test_validate_applies_decoding_overrides_on_a_checkpoint(
    trained: Any, tmp_path: Path, tiny_data: TinyData, run_cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (ckpt,) = Path(trained.trainer.default_root_dir).rglob("last.ckpt")
    overrides = make_tiny_overrides(tmp_path, QUICKSTART, data=tiny_data)
    base = ["validate", "-c", str(QUICKSTART), *overrides, "--ckpt_path", str(ckpt)]
    plain = run_cli(base)
    assert "DDIMSampler(steps=3" in plain.model.last_report.settings
    assert "length beam 3 x noise beam 1" in plain.model.last_report.settings
    changed = run_cli([*base, "--decoding.steps", "2", "--decoding.length_beam", "1", "--decoding.noise_beam", "2"])
    settings = changed.model.last_report.settings
    assert "DDIMSampler(steps=2" in settings and "length beam 1 x noise beam 2" in settings and "NFE 2" in settings

    switched = run_cli([*base, "--decoding.sampler", "AncestralSampler", "--decoding.collapse_repeats", "true", "--decoding.repeat_penalty", "inf"])
    assert switched.model.last_report.settings.startswith("AncestralSampler(steps=3")
    assert "consecutive repeated tokens collapsed" in switched.model.last_report.settings
    assert "rounding with repeat penalty inf" in switched.model.last_report.settings

    with pytest.raises(SystemExit, match=r"--model\.sampler\.steps: replaced by the hyperparameters stored in"):
        run_cli([*base, "--model.sampler.steps", "10"])
    with pytest.raises(SystemExit, match="--decoding.steps"):
        run_cli([*base, "--model.length_beam", "1"])
    with pytest.raises(SystemExit, match="length_beam must be an integer >= 1"):
        run_cli([*base, "--decoding.length_beam", "0"])
    with pytest.raises(SystemExit, match="search applies to autoregressive models; this model needs a sampler"):
        run_cli([*base, "--decoding.search", "GreedySearch"])


def test_predict_from_an_export_applies_decoding_overrides(
    trained: Any, tmp_path: Path, tiny_data: TinyData, run_cli: Any
) -> None:
    from lightning_diffusion.pretrained import export_pretrained

    (ckpt,) = Path(trained.trainer.default_root_dir).rglob("last.ckpt")
    export = export_pretrained(ckpt, tmp_path / "export")
    out = tmp_path / "predictions.jsonl"
    args = [
        "predict", "-c", str(export / "config.yaml"), "--ckpt_path", str(export),
        "--data.predict_file", str(tiny_data.test), "--trainer.default_root_dir", str(tmp_path / "logs"),
        "--trainer.callbacks+=lightning_diffusion.callbacks.PredictionWriter",
        f"--trainer.callbacks.output_file={out}", "--decoding.steps", "2",
    ]  # fmt: skip
    cli = run_cli(args)
    assert cli.model.decoding.steps == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(tiny_data.pairs("test"))
