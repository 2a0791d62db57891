"""The evaluation's prompt sets (docs/tipo-evaluation.md §4.1), built from dataset rows.

* ``scenery`` — Danbooru posts tagged ``scenery``; the prompt keeps only the non-general tags
  plus ``scenery`` (special, artists <= 5, characters <= 5, copyrights <= 5, meta <= 10, rating
  and quality), the paper's "<meta> scenery only" input.
* ``short`` — a dataset's short caption (Coyo-HD ``caption_llava_short``, GBC
  ``short_caption``).
* ``truncated_long`` — the first two sentences of the long caption (Coyo-HD ``caption_llava``,
  GBC ``detail_caption``).

Rows come from anything :func:`tipo.data.readers.read_records` reads (a ``.jsonl`` or
``.parquet`` file, a ``datasets`` folder, a Hugging Face dataset id), so the same files that
train TIPO evaluate it. A set is a fixed-seed sample of ``size`` prompts among the first
``scan`` rows that qualify: reproducible, and bounded on a dataset of millions of rows.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from ..data.records import TrainingRecord
from ..errors import InvalidRequestError

TestKind = Literal["scenery", "short", "truncated_long"]
TEST_KINDS: tuple[str, ...] = ("scenery", "short", "truncated_long")

# The non-general categories the scenery test keeps, with the paper's caps.
SCENERY_CAPS = {"artist": 5, "characters": 5, "copyrights": 5, "meta": 10}
SHORT_CAPTION = {"coyo": "caption_llava_short", "gbc": "short_caption"}
LONG_CAPTION = {"coyo": "caption_llava", "gbc": "detail_caption"}


@dataclass(frozen=True)
class EvalPrompt:
    """One input of one test: what the user typed (``tags`` and/or ``caption``), with a seed
    fixed for this prompt (expanders that sample and the image model use it)."""

    test: str
    id: str
    tags: tuple[str, ...] = ()
    caption: str = ""
    seed: int = 0

    @property
    def text(self) -> str:
        """The original prompt as one string: the tags, then the caption."""
        return ", ".join((*self.tags, self.caption) if self.caption else self.tags)

    @property
    def key(self) -> str:
        """``test/id``: unique within an evaluation, safe as a file name part."""
        return f"{self.test}/{self.id}"


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any values, the same on every machine and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def scenery_prompt(record: TrainingRecord) -> tuple[str, ...] | None:
    """The scenery test's input for a Danbooru record, or None if it is not tagged scenery."""
    if record.source != "danbooru" or "scenery" not in record.general:
        return None
    tags = [*record.special]
    for name, cap in SCENERY_CAPS.items():
        tags += getattr(record, name)[:cap]
    tags += [t for t in (record.rating, record.quality) if t]
    return tuple(dict.fromkeys([*tags, "scenery"]))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def first_sentences(text: str, count: int = 2) -> str:
    """The first ``count`` sentences of ``text`` (ends at ``.``, ``!``, ``?`` and a space)."""
    return " ".join(_SENTENCE_END.split(strip_repeated_suffix(text.strip()))[:count]).strip()


def strip_repeated_suffix(text: str, min_length: int = 8) -> str:
    """Drop a caption's degenerate tail: a run of text (>= ``min_length`` characters) repeated
    back to back at the end is kept once (captioning models loop: "... a tree. a tree. a tree.")."""
    n = len(text)
    for unit in range(min_length, n // 2 + 1):
        tail = text[n - unit :]
        if text[n - 2 * unit : n - unit] != tail:
            continue
        start = n - 2 * unit
        while start >= unit and text[start - unit : start] == tail:
            start -= unit
        return text[: start + unit].rstrip()
    return text


def caption_prompt(record: TrainingRecord, kind: TestKind) -> str | None:
    """The short or truncated-long test's input for a Coyo/GBC record, or None."""
    fields = SHORT_CAPTION if kind == "short" else LONG_CAPTION
    name = fields.get(record.source)
    text = record.caption(name) if name else None
    if not text:
        return None
    text = strip_repeated_suffix(text.strip())
    return first_sentences(text) if kind == "truncated_long" else text


def build_prompt_set(
    records: Iterable[TrainingRecord],
    kind: TestKind,
    *,
    size: int,
    seed: int = 0,
    scan: int | None = None,
    name: str | None = None,
) -> list[EvalPrompt]:
    """``size`` prompts of test ``kind``, sampled with ``seed`` among the first ``scan``
    (default ``20 * size``) records that qualify, in dataset order."""
    if kind not in TEST_KINDS:
        raise InvalidRequestError(f"unknown test {kind!r}", hint=f"use one of {TEST_KINDS}")
    if size < 1:
        raise InvalidRequestError(f"a prompt set needs size >= 1, got {size}")
    test = name or kind
    found = list(islice(_qualifying(records, kind), scan or 20 * size))
    if not found:
        hint = "Danbooru rows tagged scenery" if kind == "scenery" else "Coyo-HD or GBC rows"
        raise InvalidRequestError(f"no rows for the {kind} test in the data", hint=f"give {hint}")
    chosen = sorted(random.Random(seed).sample(range(len(found)), min(size, len(found))))
    prompts = []
    for index in chosen:
        row, tags, caption = found[index]
        prompts.append(EvalPrompt(test, str(row), tags, caption, seed=stable_seed(seed, test, row)))
    return prompts


def _qualifying(
    records: Iterable[TrainingRecord], kind: TestKind
) -> Iterator[tuple[int, tuple[str, ...], str]]:
    """(row number, tags, caption) of the records that give a prompt for ``kind``."""
    for row, record in enumerate(records):
        if kind == "scenery":
            tags = scenery_prompt(record)
            if tags is not None:
                yield row, tags, ""
        elif (caption := caption_prompt(record, kind)) is not None:
            yield row, (), caption


def load_prompt_set(source: str | Path, kind: TestKind, **options: Any) -> list[EvalPrompt]:
    """:func:`build_prompt_set` (same options) over the rows of a file, folder or Hugging
    Face dataset id."""
    from ..data.readers import read_records

    return build_prompt_set(read_records(source), kind, **options)


__all__ = [
    "TEST_KINDS",
    "EvalPrompt",
    "TestKind",
    "build_prompt_set",
    "caption_prompt",
    "first_sentences",
    "load_prompt_set",
    "scenery_prompt",
    "stable_seed",
    "strip_repeated_suffix",
]
