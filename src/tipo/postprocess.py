"""Merge one step's parsed output into the request's running draft.

Input tags stay first and in the user's order; new tags are de-duplicated, filtered by the ban
list, shuffled (general only, as the reference does, with the request's seeded RNG) and capped at
the maximum of the *tag* length bucket. Sentences are capped at the NL bucket's maximum.
Differences from the reference, each pinned by a regression test: the tag cap uses the tag
maximum (the reference uses the NL one), an NL output with no NL input does not crash, the
user's own tags are never banned, and sentence order is kept (the reference shuffles sentences,
which breaks a caption's flow).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .bans import BanList
from .planning import Step
from .protocol import Length, ModelOutput, nl_field
from .tags import Category, TagDatabase, Tags

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences without their final period ("1.5" and "ok!" stay whole)."""
    parts = (part.strip() for part in _SENTENCE_BREAK.split(text.strip()))
    return [stripped for part in parts if (stripped := part.rstrip(".").strip())]


def join_sentences(sentences: Iterable[str]) -> str:
    return " ".join(s if s[-1] in ".!?" else f"{s}." for s in sentences if s)


def dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class Draft:
    """The request's state between steps: what the next prompt shows and the result so far."""

    tags: Tags
    nl: str = ""
    extended: str = ""
    generated: str = ""


@dataclass(frozen=True)
class PostOptions:
    tag_length: Length = Length.LONG
    nl_length: Length = Length.LONG
    bans: BanList = field(default_factory=BanList)
    shuffle: bool = True


def output_tags(output: ModelOutput, db: TagDatabase) -> Tags:
    """The categorised tags of an output: metadata lines of category keys (written before the
    content), then the classified tags of its tag line."""
    tags = Tags()
    for key, values in output.meta.items():
        if key in Category._value2member_map_:
            tags[key].extend(values)
    for category, values in db.classify(output.tags).items():
        tags[category].extend(values)
    return tags


def merge_tags(old: Tags, new: Tags, options: PostOptions, rng: random.Random) -> Tags:
    merged = Tags()
    for category, before in old.items():
        fresh = [
            t for t in dedupe(new[category]) if t not in before and not options.bans.matches(t)
        ]
        if category is Category.GENERAL:
            if options.shuffle:
                rng.shuffle(fresh)
            room = max(options.tag_length.tag_range[1] - len(before), 0)
            fresh = fresh[:room]
        merged[category] = [*before, *fresh]
    return merged


def _cap(sentences: list[str], length: Length, keep: int = 0) -> list[str]:
    maximum = length.nl_range[1]
    return sentences if maximum is None else sentences[: max(maximum, keep)]


def merge_extended(before: str, output: str, length: Length) -> str:
    """The input NL followed by its continuation; the model may rewrite the last input
    sentence while continuing it ("a girl" -> "a girl on a hill")."""
    inputs = split_sentences(before)
    added = [s for s in split_sentences(output) if s not in inputs]
    if added and inputs and inputs[-1] in added[0]:
        inputs[-1] = added.pop(0)
    return join_sentences(dedupe(_cap(inputs + added, length, keep=len(inputs))))


def step_nl_outputs(step: Step, nl_input: str, output: ModelOutput) -> tuple[str, str]:
    """(extended, generated) text a step produced. Where the task has no ``short`` field the
    user's NL was written into ``long``, so the ``long`` output extends it."""
    if step.task is None:
        return "", ""
    fields = step.task.fields
    extended = (output.extended or "") if "short" in fields else ""
    generated = (output.generated or "") if "long" in fields else ""
    if nl_input.strip() and nl_field(step.task) == "long":
        return generated, ""
    return extended, generated


def merge_step(
    draft: Draft,
    step: Step,
    output: ModelOutput,
    db: TagDatabase,
    options: PostOptions,
    rng: random.Random,
) -> Draft:
    """The draft after ``step`` produced ``output``."""
    tags = merge_tags(draft.tags, output_tags(output, db), options, rng)
    extended_out, generated_out = step_nl_outputs(step, draft.nl, output)
    extended = draft.extended
    if extended_out:
        extended = merge_extended(draft.nl, extended_out, options.nl_length)
    generated = draft.generated
    if generated_out:
        inputs = split_sentences(draft.nl)
        fresh = [s for s in split_sentences(generated_out) if s not in inputs]
        generated = join_sentences(dedupe(_cap(fresh, options.nl_length)))
    nl = extended or generated or draft.nl
    return Draft(tags=tags, nl=nl, extended=extended, generated=generated)


__all__ = [
    "BanList",
    "Draft",
    "PostOptions",
    "dedupe",
    "join_sentences",
    "merge_extended",
    "merge_step",
    "merge_tags",
    "output_tags",
    "split_sentences",
    "step_nl_outputs",
]
