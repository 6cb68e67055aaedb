"""Token ids -> text that never contains U+FFFD from broken byte sequences.

A byte-level BPE can emit token sequences that are not valid UTF-8: a non-autoregressive model picks each
token independently, so it may emit the first byte of a multi-byte character without its continuation
bytes. ``tokenizer.decode`` then writes U+FFFD (the replacement character) in the text. :func:`decode_tokens`
drops such incomplete or invalid byte sequences instead, and gives exactly ``tokenizer.decode``'s text
whenever the bytes are valid UTF-8 (a genuine U+FFFD in the text, bytes EF BF BD, is valid and stays).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from tokenizers import decoders


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte -> the byte.

    The same table as ``tokenizers.pre_tokenizers.ByteLevel`` (which exposes only the characters, not the
    mapping) and the ``bytes_to_unicode`` that transformers no longer exports from its GPT-2 module.
    """
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table: dict[str, int] = {chr(byte): byte for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            table[chr(256 + shifted)] = byte
            shifted += 1
    return table


def _is_byte_level(tokenizer: Any) -> bool:
    """True when the tokenizer is a fast one whose backend decoder is ``decoders.ByteLevel``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode ``ids`` skipping special tokens, like ``tokenizer.decode(ids, skip_special_tokens=True)``.

    For a byte-level tokenizer (backend decoder ``ByteLevel``) the tokens are mapped back to bytes as the
    ByteLevel decoder does (a token with a character outside the byte alphabet, e.g. an added token, stands
    for its own UTF-8 bytes) and decoded as UTF-8 dropping invalid and incomplete byte sequences, so an
    orphan byte token disappears instead of becoming U+FFFD. Unknown ids are skipped, as ``decode`` does.
    No ``clean_up_tokenization_spaces`` is applied (transformers skips it for BPE models too).
    Any other tokenizer: ``tokenizer.decode(ids, skip_special_tokens=True)``.
    """
    ids = [int(i) for i in ids]
    if not _is_byte_level(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=True)
    backend = tokenizer.backend_tokenizer
    special = {index for index, token in backend.get_added_tokens_decoder().items() if token.special}
    table = byte_decoder()
    data = bytearray()
    for index in ids:
        if index in special:
            continue
        token = backend.id_to_token(index)
        if token is None:
            continue
        if all(char in table for char in token):
            data.extend(table[char] for char in token)
        else:
            data.extend(token.encode("utf-8"))
    return data.decode("utf-8", errors="ignore")


__all__ = ["byte_decoder", "decode_tokens"]
