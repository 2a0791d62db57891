"""What each token of the vocabulary writes, computed once per tokenizer.

Constraints reason about text (commas end tags, newlines end fields, periods end sentences);
masks are lists of token ids, turned lazily into index arrays of the logits' kind so masking
costs one indexed write per rule. Prefix queries ("every token whose text starts with ``at``")
use a sorted copy of the texts and bisection.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer import TipoTokenizer


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "\ufffd"  # part of a multi-byte character


@dataclass
class TokenTable:
    """``text[i]`` is what token i adds to the text ("" for special tokens; byte pieces of
    multi-byte characters add U+FFFD, a word character); the lists are id classes rules use."""

    tokenizer: TipoTokenizer
    text: list[str]
    eos_id: int
    newline_id: int
    comma_id: int
    period_id: int
    specials: list[int]  # control and TIPO tokens, EOS excluded: never inside a field
    with_newline: list[int]
    with_comma: list[int]
    with_comma_joined: list[int]  # comma tokens other than the plain ","
    starts_with_space: list[int]
    starts_non_word: list[int]  # tokens that would end the word before them
    _sorted: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _sorted_stripped: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, tokenizer: TipoTokenizer) -> TokenTable:
        special = tokenizer.special_ids
        text = [
            "" if i in special else tokenizer.token_bytes(i).decode("utf-8", errors="replace")
            for i in range(tokenizer.vocab_size)
        ]
        plain = [i for i in range(len(text)) if i not in special]
        return cls(
            tokenizer=tokenizer,
            text=text,
            eos_id=tokenizer.eos_id,
            newline_id=tokenizer.token_to_id("<0x0A>"),
            comma_id=tokenizer.token_to_id(","),
            period_id=tokenizer.token_to_id("."),
            specials=sorted(special - {tokenizer.eos_id}),
            with_newline=[i for i in plain if "\n" in text[i]],
            with_comma=[i for i in plain if "," in text[i]],
            with_comma_joined=[i for i in plain if "," in text[i] and text[i] != ","],
            starts_with_space=[i for i in plain if text[i].startswith(" ")],
            starts_non_word=[i for i in plain if text[i] and not _is_word_char(text[i][0])],
            _sorted=sorted((text[i], i) for i in plain if text[i]),
            _sorted_stripped=sorted((text[i].lstrip(), i) for i in plain if text[i].strip()),
        )

    def starting_with(self, prefix: str, *, ignore_leading_space: bool = False) -> list[int]:
        """Ids of tokens whose text starts with ``prefix`` (after its leading spaces)."""
        key = ("start", prefix, ignore_leading_space)
        if key not in self._cache:
            entries = self._sorted_stripped if ignore_leading_space else self._sorted
            lo = bisect.bisect_left(entries, (prefix, -1))
            found = []
            for text, token in entries[lo:]:
                if not text.startswith(prefix):
                    break
                found.append(token)
            self._cache[key] = found
        return self._cache[key]  # type: ignore[no-any-return]

    def containing(self, needle: str) -> list[int]:
        key = ("contains", needle)
        if key not in self._cache:
            self._cache[key] = [i for i, t in enumerate(self.text) if needle in t]
        return self._cache[key]  # type: ignore[no-any-return]

    def fragment_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as it appears inside a longer text (no BOS, no prefix)."""
        return self.tokenizer.encode_fragment(text)

    def class_index(self, name: str, like: Any) -> Any:
        """The id class ``name`` (e.g. "specials") as an index array for ``like``, cached."""
        key = ("index", name, type(like), str(getattr(like, "device", "")))
        if key not in self._cache:
            self._cache[key] = as_index(getattr(self, name), like)
        return self._cache[key]

    def cached_index(self, key: object, ids: set[int], like: Any) -> Any:
        """An index array for an id set named by ``key`` (a vocabulary node), built once."""
        full = ("keyed", key, type(like), str(getattr(like, "device", "")))
        if full not in self._cache:
            self._cache[full] = as_index(sorted(ids), like)
        return self._cache[full]

    def class_set(self, name: str) -> frozenset[int]:
        key = ("set", name)
        if key not in self._cache:
            self._cache[key] = frozenset(getattr(self, name))
        return self._cache[key]  # type: ignore[no-any-return]


def as_index(ids: list[int], like: Any) -> Any:
    if type(like).__module__.startswith("torch"):
        import torch

        return torch.tensor(ids, dtype=torch.long, device=like.device)
    import numpy

    return numpy.asarray(ids, dtype=numpy.int64)


__all__ = ["TokenTable", "as_index"]
