"""Source lines given by a user (command-line texts or stdin) for ``generate``, read lazily and never fatal.

stdin is read as bytes per line and decoded as UTF-8; bytes that are not UTF-8 (and lone surrogates in
command-line texts) become U+FFFD and are counted, so one bad line never loses the others.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from lightning_diffusion.data.examples import TokenizedExample, collate_examples
from lightning_diffusion.data.tokenizer import SpecialIds
from lightning_diffusion.types import Seq2SeqBatch


def _valid_text(text: str) -> str | None:
    """``text`` with undecodable input (lone surrogates, e.g. from bytes that were not UTF-8 in ``argv``) replaced
    by U+FFFD, or None when there was nothing to replace."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class SourceReader:
    """The sources, lazily: ``texts`` in order, where ``-`` (or no texts at all) reads ``stdin`` line by line.

    stdin is read as bytes per line (when the stream has a byte buffer) and decoded as UTF-8; a line with bytes
    that are not UTF-8 is decoded with U+FFFD in their place and counted in :attr:`replaced`, never an error, so
    no line (and no other line of its batch) is lost.
    """

    def __init__(self, texts: Iterable[str] | None, stdin: IO[Any] | None = None) -> None:
        self.texts = list(texts or []) or ["-"]
        self.stdin = stdin
        self.replaced = 0

    def _clean(self, text: str) -> str:
        fixed = _valid_text(text)
        if fixed is None:
            return text
        self.replaced += 1
        return fixed

    def _stdin_lines(self) -> Iterator[str]:
        stream = self.stdin if self.stdin is not None else sys.stdin
        raw = getattr(stream, "buffer", None)
        if raw is None:  # a text stream without bytes underneath (io.StringIO)
            for line in stream:
                yield self._clean(line.rstrip("\r\n"))
            return
        for line in raw:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = line.decode("utf-8", errors="replace")
                self.replaced += 1
            yield text.rstrip("\r\n")

    def __iter__(self) -> Iterator[str]:
        for item in self.texts:
            if item == "-":
                yield from self._stdin_lines()
            else:
                yield self._clean(item)


def source_batch(
    tokenizer: Any, ids: SpecialIds, texts: list[str], first_index: int, max_src_len: int
) -> tuple[Seq2SeqBatch, list[int]]:
    """Source-only texts -> a collated batch (indices ``first_index ...``, sources cut at ``max_src_len`` tokens,
    tokenized as the data module does: no special tokens added, literal special-token text split) and each text's
    token count before the cut."""
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    examples = [
        TokenizedExample(index=first_index + i, src_ids=list(tokens[:max_src_len]), tgt_ids=None, src_text=text, tgt_text=None)
        for i, (text, tokens) in enumerate(zip(texts, encoded, strict=True))
    ]
    return collate_examples(examples, pad_id=ids.pad, eos_id=ids.eos), [len(tokens) for tokens in encoded]


__all__ = ["SourceReader", "source_batch"]
