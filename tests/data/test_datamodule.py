"""Tests for lightning_diffusion.data.datamodule.Seq2SeqDataModule."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from torch import Tensor

from lightning_diffusion.data import DataError, TokenizedExample, collate_examples, load_tokenizer
from lightning_diffusion.data.datamodule import Seq2SeqDataModule
from lightning_diffusion.data.tokenizer import tokenizer_fingerprint
from lightning_diffusion.types import Seq2SeqBatch

PAIRS = [
    ("Hello.", "Hola."),
    ("Where is the station?", "¿Dónde está la estación?"),
    ("What a nice boy!", "¡Qué niño más simpático!"),
    ("I don't know what to say, I am really very sorry about it.", "No sé qué decir, lo siento muchísimo."),
    ("Tom is here.", "Tom está aquí."),
    ("Tomorrow we go to the doctor with my grandmother.", "Mañana iremos al médico con mi abuela."),
    ("The penguin ate tuna.", "El pingüino comió atún."),
    ("Thanks!", "¡Gracias!"),
]


def write_pairs(path: Path, pairs: list[tuple[str, str]], tgt_key: str = "tgt") -> str:
    path.write_text("".join(json.dumps({"src": s, tgt_key: t}, ensure_ascii=False) + "\n" for s, t in pairs))
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "train_file": write_pairs(tmp_path / "train.jsonl", PAIRS * 4),
        "val_file": write_pairs(tmp_path / "valid.jsonl", PAIRS[:5]),
        "test_file": write_pairs(tmp_path / "test.jsonl", PAIRS[3:], tgt_key="trg"),
        "tokenizer_cache_dir": str(tmp_path / "cache"),
    }


def make_dm(files: dict[str, str], **kwargs: Any) -> Seq2SeqDataModule:
    options: dict[str, Any] = {"tokenizer_vocab_size": 300, "max_tokens": 200, **files}
    options.update(kwargs)
    return Seq2SeqDataModule(**options)


def check_batch(batch: Seq2SeqBatch, dm: Seq2SeqDataModule, pairs: list[tuple[str, str]]) -> None:
    """The exact Seq2SeqBatch layout for examples of ``pairs`` (index = position in ``pairs``)."""
    tok = dm.tokenizer
    size = len(batch)
    assert batch.src_ids.dtype == torch.long and batch.src_mask.dtype == torch.bool
    assert batch.index.shape == (size,) and batch.index.dtype == torch.long
    assert batch.tgt_ids is not None and batch.tgt_mask is not None and batch.tgt_text is not None
    assert batch.tgt_ids.shape == batch.tgt_mask.shape and batch.tgt_ids.shape[0] == size
    src_width, tgt_width = batch.src_ids.shape[1], batch.tgt_ids.shape[1]
    src_lens, tgt_lens = [], []
    for row, index in enumerate(batch.index.tolist()):
        src, tgt = pairs[index]
        assert (batch.src_text[row], batch.tgt_text[row]) == (src, tgt)
        src_tokens = tok(src, add_special_tokens=False)["input_ids"][: dm.max_src_len]
        tgt_tokens = tok(tgt, add_special_tokens=False)["input_ids"][: dm.max_tgt_len - 1]
        n, m = len(src_tokens), len(tgt_tokens)
        src_lens.append(n)
        tgt_lens.append(m + 1)
        assert batch.src_ids[row, :n].tolist() == src_tokens
        assert (batch.src_ids[row, n:] == dm.pad_id).all()
        assert batch.src_mask[row].tolist() == [True] * n + [False] * (src_width - n)
        assert batch.tgt_ids[row, :m].tolist() == tgt_tokens
        assert batch.tgt_ids[row, m].item() == dm.eos_id
        assert (batch.tgt_ids[row, m + 1 :] == dm.pad_id).all()
        assert batch.tgt_mask[row].tolist() == [True] * (m + 1) + [False] * (tgt_width - m - 1)
    assert src_width == max(src_lens) and tgt_width == max(tgt_lens)
    assert not (batch.src_ids[batch.src_mask] == dm.eos_id).any()


def test_tokenizer_facts_before_setup(files: dict[str, str]) -> None:
    dm = make_dm(files)
    assert 261 <= dm.vocab_size <= 300
    assert (dm.pad_id, dm.eos_id, dm.sep_id) == (0, 3, 4)
    assert len(dm.tokenizer_fingerprint) == 64
    assert dm.datasets == {}


def test_fit_batches_have_the_exact_layout(files: dict[str, str]) -> None:
    dm = make_dm(files, max_src_len=6, max_tgt_len=7)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == len(train)
    assert sorted(i for b in batches for i in b.index.tolist()) == list(range(len(PAIRS) * 4))
    for batch in batches:
        check_batch(batch, dm, PAIRS * 4)
        lengths = batch.src_mask.sum(1) + batch.tgt_mask.sum(1)  # cost = B * longest (source + target + EOS)
        assert len(batch) * int(lengths.max()) <= 200 or len(batch) == 1
    val_batches = list(dm.val_dataloader())
    assert sorted(i for b in val_batches for i in b.index.tolist()) == list(range(5))
    for batch in val_batches:
        check_batch(batch, dm, PAIRS[:5])


def test_test_split_accepts_trg_and_keeps_indices(files: dict[str, str]) -> None:
    dm = make_dm(files)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    for batch in batches:
        check_batch(batch, dm, PAIRS[3:])
    order = [i for b in batches for i in b.index.tolist()]
    assert sorted(order) == list(range(len(PAIRS) - 3))


def test_predict_plain_text_has_no_targets(files: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "inputs.txt").write_text("Hello.\n\nWhere is the station?\n", encoding="utf-8")
    dm = make_dm(files, predict_file=str(tmp_path / "inputs.txt"))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert sorted(i for b in batches for i in b.index.tolist()) == [0, 1, 2]
    for batch in batches:
        assert batch.tgt_ids is None and batch.tgt_mask is None and batch.tgt_text is None
        assert not batch.has_targets
        assert batch.src_ids.shape[1] >= 1
    texts = {i: t for b in batches for i, t in zip(b.index.tolist(), b.src_text, strict=True)}
    assert texts == {0: "Hello.", 1: "", 2: "Where is the station?"}


def test_predict_jsonl_with_some_targets_ignores_references(
    files: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "predict.jsonl"
    path.write_text(
        json.dumps({"src": "Hello."}) + "\n" + json.dumps({"src": "Thanks!", "tgt": "¡Gracias!"}) + "\n"
    )
    dm = make_dm(files, predict_file=str(path))
    with caplog.at_level(logging.INFO, logger="lightning_diffusion"):
        dm.setup("predict")
    assert "1 of 2 examples have no target; references are ignored" in caplog.text
    assert all(not b.has_targets for b in dm.predict_dataloader())


def test_collate_layout_by_hand() -> None:
    examples = [
        TokenizedExample(index=4, src_ids=[7, 8, 9], tgt_ids=[5], src_text="a", tgt_text="b"),
        TokenizedExample(index=1, src_ids=[6], tgt_ids=[10, 11, 12], src_text="c", tgt_text="d"),
    ]
    batch = collate_examples(examples, pad_id=0, eos_id=3)
    assert batch.src_ids.tolist() == [[7, 8, 9], [6, 0, 0]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.tgt_ids is not None and batch.tgt_mask is not None
    assert batch.tgt_ids.tolist() == [[5, 3, 0, 0], [10, 11, 12, 3]]
    assert batch.tgt_mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert batch.index.tolist() == [4, 1]
    assert (batch.src_text, batch.tgt_text) == (["a", "c"], ["b", "d"])


def test_collate_empty_sources_keep_one_column() -> None:
    batch = collate_examples(
        [TokenizedExample(index=0, src_ids=[], tgt_ids=None, src_text="", tgt_text=None)], pad_id=0, eos_id=3
    )
    assert batch.src_ids.tolist() == [[0]] and batch.src_mask.tolist() == [[False]]


def test_truncation_and_read_summary_are_reported(
    files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    dm = make_dm(files, max_src_len=10, max_tgt_len=9)
    tok = dm.tokenizer
    train = PAIRS * 4
    src_cut = sum(len(tok(s, add_special_tokens=False)["input_ids"]) > 10 for s, _ in train)
    tgt_cut = sum(len(tok(t, add_special_tokens=False)["input_ids"]) > 8 for _, t in train)
    assert 0 < src_cut < len(train) and 0 < tgt_cut < len(train)
    with caplog.at_level(logging.INFO, logger="lightning_diffusion"):
        dm.setup("fit")
    name = files["train_file"]
    assert f"{name}: 32 examples" in caplog.text
    assert (
        f"{name}: truncated {src_cut} of 32 sources to 10 tokens and {tgt_cut} targets to 8 tokens + EOS"
        in caplog.text
    )
    assert max(len(ex.src_ids) for ex in dm.datasets["train"].examples) == 10
    assert max(len(ex.tgt_ids or []) for ex in dm.datasets["train"].examples) == 8


def test_max_eval_examples(files: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    dm = make_dm(files, max_eval_examples=2)
    with caplog.at_level(logging.INFO, logger="lightning_diffusion"):
        dm.setup("validate")
    assert [ex.src_text for ex in dm.datasets["val"].examples] == [PAIRS[0][0], PAIRS[1][0]]
    assert "using the first 2 of 5 examples (max_eval_examples)" in caplog.text


def _padded_tokens(batch: Seq2SeqBatch) -> int:
    """The batching cost: batch size * longest (source + target + EOS)."""
    assert batch.tgt_mask is not None
    return len(batch) * int((batch.src_mask.sum(1) + batch.tgt_mask.sum(1)).max())


def test_candidates_per_source_divide_the_eval_budget(files: dict[str, str], tmp_path: Path) -> None:
    many = write_pairs(tmp_path / "many.jsonl", PAIRS * 4)
    budget = 300
    dm1 = make_dm(files, val_file=many, test_file=many, predict_file=many, eval_max_tokens=budget)
    dm3 = make_dm(files, val_file=many, test_file=many, predict_file=many, eval_max_tokens=budget)
    assert dm1.candidates_per_source == 1 and dm1.eval_batch_tokens == budget
    dm3.set_candidates_per_source(3)
    assert dm3.candidates_per_source == 3 and dm3.eval_batch_tokens == budget // 3
    for name in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        one, three = list(getattr(dm1, name)()), list(getattr(dm3, name)())
        # nothing dropped, the same (length-sorted) order
        order = [i for b in one for i in b.index.tolist()]
        assert sorted(order) == list(range(len(PAIRS) * 4))
        assert [i for b in three for i in b.index.tolist()] == order
        assert all(_padded_tokens(b) <= budget for b in one)
        assert all(_padded_tokens(b) <= budget // 3 or len(b) == 1 for b in three)
        per_batch_one = sum(map(_padded_tokens, one)) / len(one)
        per_batch_three = sum(map(_padded_tokens, three)) / len(three)
        assert 0.2 < per_batch_three / per_batch_one < 0.45, (per_batch_one, per_batch_three)
        assert len(three) >= 2.5 * len(one)
    # training batches keep the training budget
    train1 = [b.index.tolist() for b in dm1.train_dataloader()]
    assert [b.index.tolist() for b in dm3.train_dataloader()] == train1


def test_candidates_per_source_at_least_one_sentence_per_batch(files: dict[str, str]) -> None:
    dm = make_dm(files, eval_max_tokens=40)
    before = list(dm.val_dataloader())
    dm.set_candidates_per_source(1000)  # budget 40 // 1000 -> 1 token: one example per batch
    assert dm.eval_batch_tokens == 1
    batches = list(dm.val_dataloader())
    assert [len(b) for b in batches] == [1] * 5
    assert [i for b in batches for i in b.index.tolist()] == [i for b in before for i in b.index.tolist()]
    dm.set_candidates_per_source(1)
    assert [b.index.tolist() for b in dm.val_dataloader()] == [b.index.tolist() for b in before]


@pytest.mark.parametrize("bad", [0, -2, 1.5, "3", True, None])
def test_candidates_per_source_is_validated(files: dict[str, str], bad: Any) -> None:
    dm = make_dm(files)
    with pytest.raises(ValueError, match="candidates per source"):
        dm.set_candidates_per_source(bad)
    assert dm.candidates_per_source == 1


def test_empty_examples_policy(files: dict[str, str], tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "gappy.jsonl", PAIRS + [("Empty target.", " ")])
    dm = make_dm(files, train_file=train)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(PAIRS)
    dm = make_dm(files, train_file=train, empty_examples="keep")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(PAIRS) + 1
    dm = make_dm(files, train_file=train, empty_examples="error")
    with pytest.raises(DataError, match=r"gappy\.jsonl:9: field 'tgt': empty"):
        dm.setup("fit")


def test_missing_files_are_clear(tmp_path: Path) -> None:
    dm = Seq2SeqDataModule(tokenizer_cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no tokenizer"):
        _ = dm.vocab_size
    dm = Seq2SeqDataModule(train_file=str(tmp_path / "nope.jsonl"), tokenizer_cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        dm.setup("fit")


def test_stage_needs_its_file(files: dict[str, str]) -> None:
    dm = make_dm({**files, "val_file": None})
    with pytest.raises(ValueError, match="stage 'predict' needs predict_file"):
        dm.setup("predict")
    dm.setup("fit")
    assert dm.val_dataloader() == []


def test_state_dict_and_saved_tokenizer(files: dict[str, str], tmp_path: Path) -> None:
    dm = make_dm(files)
    assert dm.state_dict() == {"tokenizer_fingerprint": dm.tokenizer_fingerprint}
    dm.save_tokenizer(str(tmp_path / "saved"))
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "saved")) == dm.tokenizer_fingerprint
    reloaded = Seq2SeqDataModule(tokenizer=str(tmp_path / "saved"), val_file=files["val_file"])
    assert reloaded.tokenizer_fingerprint == dm.tokenizer_fingerprint
    reloaded.load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="different tokenizer|tokenizer fingerprint"):
        reloaded.load_state_dict({"tokenizer_fingerprint": "0" * 64})


def test_same_recipe_finds_the_cached_tokenizer(files: dict[str, str]) -> None:
    first = make_dm(files)
    second = make_dm(files, predict_file=files["val_file"])
    assert first.tokenizer_fingerprint == second.tokenizer_fingerprint
    assert len(list(Path(files["tokenizer_cache_dir"]).iterdir())) == 1


def test_builtin_quickstart_data(tmp_path: Path) -> None:
    dm = Seq2SeqDataModule(
        train_file="builtin:tatoeba_en_es/valid.jsonl",  # small stand-in for the train split
        val_file="builtin:tatoeba_en_es/test.jsonl",
        tokenizer_vocab_size=300,
        tokenizer_cache_dir=str(tmp_path),
    )
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 300 and len(dm.datasets["val"]) == 300
    assert next(iter(dm.train_dataloader())).has_targets


class RecordingModule(lightning.LightningModule):
    """Records the example indices it sees; its loss is a trivial function of one parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []
        self.predicted: list[int] = []

    def training_step(self, batch: Seq2SeqBatch, batch_idx: int) -> Tensor:
        if batch_idx == 0:
            self.seen.append([])
        self.seen[-1].extend(batch.index.tolist())
        return self.weight * batch.src_ids.float().mean()

    def validation_step(self, batch: Seq2SeqBatch, batch_idx: int) -> None:
        assert batch.has_targets

    def predict_step(self, batch: Seq2SeqBatch, batch_idx: int) -> Tensor:
        self.predicted.extend(batch.index.tolist())
        return batch.index

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_trainer_reshuffles_every_epoch(files: dict[str, str]) -> None:
    dm = make_dm(files, max_tokens=60, predict_file=files["val_file"])
    model = RecordingModule()
    trainer = lightning.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 3
    for epoch in model.seen:
        assert sorted(epoch) == list(range(len(PAIRS) * 4))
    assert model.seen[0] != model.seen[1] != model.seen[2]
    trainer.predict(model, datamodule=dm)
    assert sorted(model.predicted) == list(range(5))


def test_tokenizer_kind_reaches_the_tokenizer_and_the_cache_key(files: dict[str, str]) -> None:
    from lightning_diffusion.data import tokenizer as tokenizer_module

    cache = Path(files["tokenizer_cache_dir"])
    bpe = make_dm(files)
    assert bpe.tokenizer_kind == "bpe" and type(bpe.tokenizer.backend_tokenizer.model).__name__ == "BPE"
    for kind, model in (("unigram", "Unigram"), ("wordpiece", "WordPiece")):
        dm = make_dm(files, tokenizer_kind=kind)
        assert dm.hparams["tokenizer_kind"] == kind
        assert type(dm.tokenizer.backend_tokenizer.model).__name__ == model
        assert dm.tokenizer_fingerprint != bpe.tokenizer_fingerprint
        key = tokenizer_module._recipe_key([Path(files["train_file"])], 300, "src", ["tgt", "trg"], kind)
        assert (cache / key).is_dir()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch.tgt_ids is not None and (batch.tgt_ids == dm.eos_id).any()
    assert len(list(cache.iterdir())) == 3  # one tokenizer per kind, none reused across kinds


def test_bad_tokenizer_kind_names_the_argument(files: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="tokenizer_kind must be one of 'bpe', 'unigram', 'wordpiece'"):
        make_dm(files, tokenizer_kind="spm")
