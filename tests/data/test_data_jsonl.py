"""Tests for lightning_diffusion.data.jsonl: reading pairs and the DataError messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lightning_diffusion.data.jsonl import DataError, ReadStats, read_examples, resolve_path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def pair(src: str, tgt: str) -> str:
    return json.dumps({"src": src, "tgt": tgt}, ensure_ascii=False)


def test_reads_pairs_with_line_numbers(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "train.jsonl", [pair("Hello.", "Hola."), "", pair("Thanks!", "¡Gracias!")])
    examples, stats = read_examples(path, require_target=True)
    assert [(ex.src, ex.tgt, ex.line) for ex in examples] == [
        ("Hello.", "Hola.", 1),
        ("Thanks!", "¡Gracias!", 3),
    ]
    assert (stats.lines, stats.examples, stats.blank_lines) == (3, 2, 1)
    assert stats.summary("train.jsonl") == "train.jsonl: 2 examples (1 blank line skipped)"


def test_wrong_type_names_file_line_and_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "train.jsonl", [pair("a", "b"), json.dumps({"src": "a", "tgt": 42})])
    with pytest.raises(DataError) as err:
        read_examples(path, require_target=True)
    assert str(err.value) == f"{path}:2: field 'tgt': expected a string, got int (42)"


def test_wrong_source_type(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"src": ["a"], "tgt": "b"})])
    with pytest.raises(
        DataError, match=r"x\.jsonl:1: field 'src': expected a string, got list \(\[\"a\"\]\)"
    ):
        read_examples(path, require_target=True)


def test_null_target_is_an_error_even_when_optional(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"src": "a", "tgt": None})])
    with pytest.raises(DataError, match=r"x\.jsonl:1: field 'tgt': expected a string, got null"):
        read_examples(path, require_target=False)


def test_invalid_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [pair("a", "b"), pair("c", "d"), '{"src": "a" "tgt": "b"}'])
    with pytest.raises(DataError) as err:
        read_examples(path, require_target=True)
    assert str(err.value).startswith(f"{path}:3: not valid JSON (Expecting ',' delimiter: line 1 column 13")


def test_missing_target_lists_accepted_names(tmp_path: Path) -> None:
    lines = [pair("a", "b")] * 4 + [json.dumps({"src": "a", "target": "b"})]
    path = write_lines(tmp_path / "x.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_examples(path, require_target=True)
    assert str(err.value) == f"{path}:5: missing field 'tgt' (accepted names: 'tgt', 'trg')"


def test_missing_source(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"text": "a", "tgt": "b"})])
    with pytest.raises(DataError, match=r"x\.jsonl:1: missing field 'src'"):
        read_examples(path, require_target=True)


def test_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [pair("a", "b")] * 8 + ['["a", "b"]'])
    with pytest.raises(DataError) as err:
        read_examples(path, require_target=True)
    assert str(err.value) == f"{path}:9: expected a JSON object, got list"


def test_empty_file_and_blank_only_file(tmp_path: Path) -> None:
    empty = tmp_path / "x.jsonl"
    empty.write_text("")
    with pytest.raises(DataError) as err:
        read_examples(empty, require_target=True)
    assert str(err.value) == f"{empty}: file is empty (no examples)"
    blank = write_lines(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"blank\.jsonl: file is empty \(no examples\)"):
        read_examples(blank, require_target=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_examples(tmp_path / "nope.jsonl", require_target=True)
    assert str(err.value) == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_message_uses_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_lines(
        tmp_path / "data" / "train.jsonl", [pair("a", "b")] * 16 + [json.dumps({"src": "a", "tgt": 42})]
    )
    with pytest.raises(DataError) as err:
        read_examples("data/train.jsonl", require_target=True)
    assert str(err.value) == "data/train.jsonl:17: field 'tgt': expected a string, got int (42)"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(pair("a", "b").encode() + b"\n" + b'{"src": "\xff", "tgt": "b"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: not valid UTF-8 \(byte 0xff at column 10\)"):
        read_examples(path, require_target=True)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.csv", ["a,b"])
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type"):
        read_examples(path, require_target=True)


def test_gzip_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(pair("Good night.", "Buenas noches.") + "\n" + pair("Yes.", "Sí.") + "\n")
    examples, stats = read_examples(path, require_target=True)
    assert [(ex.src, ex.tgt) for ex in examples] == [("Good night.", "Buenas noches."), ("Yes.", "Sí.")]
    assert stats.examples == 2


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(b"not gzip at all\n")
    with pytest.raises(DataError, match=r"train\.jsonl\.gz:1: cannot read gzip data"):
        read_examples(path, require_target=True)


def test_plain_text_keeps_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("Hello.\n\nHow are you?\r\n", encoding="utf-8")
    examples, stats = read_examples(path, require_target=False)
    assert [(ex.src, ex.tgt, ex.line) for ex in examples] == [
        ("Hello.", None, 1),
        ("", None, 2),
        ("How are you?", None, 3),
    ]
    assert (stats.lines, stats.examples, stats.blank_lines) == (3, 3, 1)
    assert (stats.empty_kept, stats.empty_skipped) == (1, 0)
    assert stats.summary("inputs.txt") == "inputs.txt: 3 examples (1 with an empty source kept)"


def test_plain_text_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("a\nb", encoding="utf-8")
    examples, _ = read_examples(path, require_target=False)
    assert [ex.src for ex in examples] == ["a", "b"]


def test_plain_text_cannot_give_targets(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "inputs.txt", ["a"])
    with pytest.raises(DataError, match=r"inputs\.txt: plain-text files have sources only"):
        read_examples(path, require_target=True)


def test_plain_text_empty_error_policy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "inputs.txt", ["a", " "])
    with pytest.raises(DataError, match=r"inputs\.txt:2: field 'src': empty"):
        read_examples(path, require_target=False, empty="error")


def test_trg_is_accepted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"src": "a", "trg": "b"})])
    examples, _ = read_examples(path, require_target=True)
    assert (examples[0].src, examples[0].tgt) == ("a", "b")


def test_custom_keys(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"en": "a", "es": "b"})])
    examples, _ = read_examples(path, src_key="en", tgt_keys=("es",), require_target=True)
    assert (examples[0].src, examples[0].tgt) == ("a", "b")


def test_optional_target(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"src": "a"}), pair("c", "d")])
    examples, _ = read_examples(path, require_target=False)
    assert [(ex.src, ex.tgt) for ex in examples] == [("a", None), ("c", "d")]
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"src": "a", "trg": 3})])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'trg': expected a string, got int \(3\)"):
        read_examples(bad, require_target=False)


def empty_pairs_file(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "train.jsonl",
        [pair("a", "b"), pair("c", "   "), pair("e", "f"), pair("g", ""), pair("i", "j")],
    )


def test_empty_policy_skip(tmp_path: Path) -> None:
    examples, stats = read_examples(empty_pairs_file(tmp_path), require_target=True, empty="skip")
    assert [ex.line for ex in examples] == [1, 3, 5]
    assert (stats.examples, stats.empty_skipped, stats.empty_kept, stats.empty_tgt) == (3, 2, 0, 2)
    assert stats.summary("train.jsonl") == "train.jsonl: 3 examples (2 with an empty target skipped)"


def test_empty_policy_keep(tmp_path: Path) -> None:
    examples, stats = read_examples(empty_pairs_file(tmp_path), require_target=True, empty="keep")
    assert [ex.tgt for ex in examples] == ["b", "   ", "f", "", "j"]
    assert (stats.examples, stats.empty_skipped, stats.empty_kept) == (5, 0, 2)
    assert stats.summary("train.jsonl") == "train.jsonl: 5 examples (2 with an empty target kept)"


def test_empty_policy_error(tmp_path: Path) -> None:
    path = empty_pairs_file(tmp_path)
    with pytest.raises(DataError) as err:
        read_examples(path, require_target=True, empty="error")
    assert str(err.value).startswith(f"{path}:2: field 'tgt': empty or whitespace-only")


def test_empty_source_is_named(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [pair("a", "b"), json.dumps({"src": "", "trg": "b"})])
    with pytest.raises(DataError, match=r"x\.jsonl:2: field 'src': empty"):
        read_examples(path, require_target=True, empty="error")


def test_all_examples_skipped_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [pair("", "b")])
    with pytest.raises(DataError, match=r"x\.jsonl: no examples left .*1 with an empty source skipped"):
        read_examples(path, require_target=True)


def test_summary_without_notes() -> None:
    assert ReadStats(lines=1, examples=1).summary("a.jsonl") == "a.jsonl: 1 example"


def test_builtin_paths() -> None:
    path = resolve_path("builtin:tatoeba_en_es/valid.jsonl")
    assert path.is_file()
    assert path.parent.parent.name == "resources"
    examples, stats = read_examples("builtin:tatoeba_en_es/valid.jsonl", require_target=True)
    assert stats.examples == 300 and len(examples) == 300
    assert all(len(ex.src.split()) <= 10 and ex.tgt for ex in examples)
    for split, count in [("train", 20_000), ("test", 300)]:
        assert (
            sum(1 for _ in resolve_path(f"builtin:tatoeba_en_es/{split}.jsonl").open(encoding="utf-8"))
            == count
        )
    with pytest.raises(DataError, match=r"builtin:nope\.jsonl: no such file"):
        read_examples("builtin:nope.jsonl", require_target=True)


def test_plain_paths_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/x.jsonl") == tmp_path / "x.jsonl"
    assert resolve_path("rel/x.jsonl") == Path("rel/x.jsonl")


def test_jsonl_line_escapes_unicode_line_breaks_and_round_trips() -> None:
    from lightning_diffusion.data.jsonl import jsonl_line

    record = {"source": "a\u2028b\u2029c\x85d", "hypothesis": "ñ 😀 \n tab\t"}
    line = jsonl_line(record)
    assert line.endswith("\n") and len(line.splitlines()) == 1  # one record, one line, for any line splitter
    assert json.loads(line) == record
    assert "ñ 😀" in line  # readable UTF-8 otherwise
