"""Training samples exactly as TIPO was trained (docs/tipo-training.md §1.2–1.9).

A sample is a ``(user, output)`` text pair: the loss covers ``output`` only, and with p 0.7 the
pair is folded into ``("", user + output)`` so the model also learns to write the prompt itself.
Every random choice comes from the ``random.Random`` passed in; :func:`sample_for` derives one
per (seed, record index), so a corpus renders the same on every machine and in every order.

Layout (Danbooru; Coyo has no metadata lines, GBC is a fixed short→long pair)::

    rating: general                    <- prior lines, shuffled; some dropped or withheld
    target: <|long|> <|tag_to_long|>   <- length token, task token, optional <|gen_meta|>
    tag: 1girl, smile                  <- the first field ends the user part ...
    , outdoors, sky                    <- ... and the output continues it
    long: A girl ...                   <- later fields of the task
    artist: xyz                        <- lines withheld by gen_meta, at the very end

Where the recipe (as documented) is silent, we chose:

* a tag-first sample with no input tags (total_drop without special tags) ends the user part with
  ``"tag: "`` and the output has no leading ``", "``, so the text never reads ``"tag: , a"``;
* a Coyo row missing a caption only draws the tasks it can fill (real Coyo rows have both);
* GBC samples have no tags: their bucket is ``very_short`` (N = 0) and no length token is written;
* a trimmed caption is re-joined with ``join_sentences`` (sentences split by
  ``postprocess.split_sentences``, which keeps "1.5" whole); an untrimmed one is kept verbatim.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..errors import InvalidRequestError
from ..postprocess import join_sentences, split_sentences
from ..protocol import GEN_META_TOKEN, Length, Task, task_fields
from ..sampling import derive_seed
from .records import TrainingRecord

# §1.3: the largest bucket whose minimum is <= N; at most MAX_TAGS tags go into a sample.
MIN_TAGS: tuple[tuple[Length, int], ...] = (
    (Length.VERY_LONG, 48),
    (Length.LONG, 36),
    (Length.SHORT, 18),
    (Length.VERY_SHORT, 0),
)
MAX_TAGS: dict[Length, int] = {
    Length.VERY_SHORT: 18,
    Length.SHORT: 36,
    Length.LONG: 48,
    Length.VERY_LONG: 72,
}
# (max paragraphs, max sentences per paragraph) of a Danbooru caption.
NL_BUDGET: dict[Length, tuple[int, int]] = {
    Length.VERY_SHORT: (1, 2),
    Length.SHORT: (1, 4),
    Length.LONG: (2, 4),
    Length.VERY_LONG: (3, 6),
}
P_TOTAL_DROP = 0.10
P_DROP_INFO = 0.30
P_KEEP_LINE = 0.65
P_GEN_META = 0.3  # the authors' comment says 35 %; their code uses 0.3
P_TRAIN_ON_INPUT = 0.7  # their comment says "30% train on input"; the code folds 70 %

_YEAR = re.compile(r"\d{4}")
_PIXTRAL_PREFIX = re.compile(r"^The image (?:is|depicts|features) ")
# Danbooru: the three-step tasks are listed twice, so they are drawn twice as often (§1.6).
_BOTH_CAPTIONS = (Task.TAG_TO_SHORT_TO_LONG, Task.SHORT_TO_LONG_TO_TAG, Task.SHORT_TO_TAG_TO_LONG)


@dataclass(frozen=True)
class Sample:
    """One training pair and the choices that made it (for statistics and tests)."""

    user: str
    output: str
    task: str | None
    bucket: Length
    total_drop: bool
    drop_info: bool
    gen_meta: bool
    train_on_input: bool
    source: str = "danbooru"

    @property
    def text(self) -> str:
        return self.user + self.output


@dataclass(frozen=True)
class _Content:
    """What a record contributes to the content fields, before the task picks the order."""

    tags_in: list[str]
    tags_out: list[str]
    tags_all: list[str]
    short: str | None
    long: str | None


def bucket_for(n_tags: int) -> Length:
    return next(bucket for bucket, minimum in MIN_TAGS if n_tags >= minimum)


def _split_tags(tags: list[str], rng: random.Random) -> tuple[Length, int, int]:
    """Shuffle ``tags`` in place; return (bucket, kept length, number of input tags)."""
    bucket = bucket_for(len(tags))
    length = min(MAX_TAGS[bucket], len(tags))
    rng.shuffle(tags)
    return bucket, length, rng.randint(1, int(0.6 * length) + 1)


def _has_length_token(task: Task | None) -> bool:
    return task is None or task.value.startswith("tag_to") or "to_tag" in task.value


def _target(bucket: Length, task: Task | None, gen_meta: bool) -> str:
    parts = [f"<|{bucket.value}|>"] if _has_length_token(task) else []
    parts += [f"<|{task.value}|>"] if task is not None else []
    parts += [GEN_META_TOKEN] if gen_meta else []
    return "target: " + " ".join(parts)


def _render(
    head: list[str], target: str, task: Task | None, content: _Content, tail: list[str]
) -> tuple[str, str]:
    """The (user, output) split of §1.2: the user part ends inside or after the first field."""
    order = task_fields(task)
    values = {"tag": ", ".join(content.tags_all), "short": content.short, "long": content.long}
    user = "".join(f"{line}\n" for line in head) + f"{target}\n"
    if order[0] == "tag":
        user += "tag: " + ", ".join(content.tags_in)
        comma = ", " if content.tags_in else ""
        output = comma + ", ".join(content.tags_out) if content.tags_out else ""
        rest = [f"{key}: {values[key]}" for key in order[1:]]
        output += "".join(f"\n{line}" for line in rest)
    else:
        user += f"{order[0]}: {values[order[0]]}\n"
        output = "\n".join(f"{key}: {values[key]}" for key in order[1:])
    output += "".join(f"\n{line}" for line in tail)
    return user, output


# --- Danbooru --------------------------------------------------------------------------------


def prior_lines(record: TrainingRecord) -> list[str]:
    """The seven metadata lines in the recipe's fixed order, empty ones left out (§1.2)."""
    ratio = f"{record.width / record.height:.1f}" if record.width and record.height else ""
    values = [
        ("meta", ", ".join(record.meta)),
        ("rating", record.rating or ""),
        ("artist", ", ".join(record.artist)),
        ("aspect ratio", ratio),
        ("characters", ", ".join(record.characters)),
        ("quality", record.quality or ""),
        ("copyrights", ", ".join(record.copyrights)),
    ]
    return [f"{key}: {value}" for key, value in values if value]


def _take(items: list[str], budget: int, rng: random.Random) -> tuple[list[str], bool]:
    """The first item plus a random order-preserving subset, ``budget`` in all."""
    if len(items) <= budget:
        return items, False
    keep = sorted(rng.sample(range(1, len(items)), budget - 1))
    return [items[0]] + [items[i] for i in keep], True


def _trim_paragraph(text: str, max_sentences: int, rng: random.Random) -> str:
    kept, trimmed = _take(split_sentences(text), max_sentences, rng)
    return join_sentences(kept) if trimmed else text.strip()


def _trim_long(text: str, bucket: Length, rng: random.Random) -> str:
    max_paragraphs, max_sentences = NL_BUDGET[bucket]
    paragraphs = [p for p in text.split("\n") if p.strip()]
    kept, _ = _take(paragraphs, max_paragraphs, rng)
    return "\n".join(_trim_paragraph(p, max_sentences, rng) for p in kept)


def _swap_in(
    short: str | None, long: str | None, text: str, threshold: float, rng: random.Random
) -> tuple[str | None, str | None]:
    """Phi-3V / Florence-long captions replace ``short`` (half the time, or always when there is
    none) when a long caption exists and a draw beats ``threshold``; else they replace ``long``."""
    if long is not None and rng.random() > threshold:
        if short is None or rng.random() < 0.5:
            short = text
        return short, long
    return short, text


def danbooru_captions(
    record: TrainingRecord, bucket: Length, rng: random.Random
) -> tuple[str | None, str | None]:
    """(short, long) after the caption choice and trimming of §1.5."""
    short = record.caption("florence_short")
    long = record.caption("pixtral_caption")
    if long is not None:
        long = _PIXTRAL_PREFIX.sub("", long).replace("_", " ")
    if (phi3v := record.caption("phi3v_horny")) is not None:
        short, long = _swap_in(short, long, phi3v, 0.4, rng)
    if (florence_long := record.caption("florence_long")) is not None:
        short, long = _swap_in(short, long, florence_long, 0.3, rng)
    if short is not None:
        short = _trim_paragraph(short, NL_BUDGET[bucket][1], rng)
    if long is not None:
        long = _trim_long(long, bucket, rng)
    return short, long


def danbooru_tasks(short: bool, long: bool, phi3v: bool) -> list[Task | None]:
    """The candidate list of §1.6 plus ``None`` (plain continuation), drawn uniformly."""
    tasks: list[Task | None] = []
    if long:
        tasks += [Task.TAG_TO_LONG, Task.LONG_TO_TAG]
    if short and not phi3v:
        tasks.append(Task.SHORT_TO_TAG)
    if short and long:
        tasks += [*_BOTH_CAPTIONS, *_BOTH_CAPTIONS]
    return [*tasks, None]


def _danbooru(record: TrainingRecord, rng: random.Random) -> Sample:
    general = [tag for tag in record.general if not _YEAR.fullmatch(tag)]
    bucket, length, n_in = _split_tags(general, rng)
    lines = prior_lines(record)
    rng.shuffle(lines)
    total_drop = rng.random() < P_TOTAL_DROP
    drop_info = not total_drop and rng.random() < P_DROP_INFO
    if total_drop:
        n_in, lines = 0, []
    elif drop_info:
        lines = [line for line in lines if rng.random() < P_KEEP_LINE]
    short, long = danbooru_captions(record, bucket, rng)
    phi3v = record.caption("phi3v_horny") is not None
    task = rng.choice(danbooru_tasks(short is not None, long is not None, phi3v))
    gen_meta = not (total_drop or drop_info) and rng.random() < P_GEN_META
    head, tail = lines, []
    if gen_meta:
        # k of the M lines stay in front: at least 1 and at most M-1 (0 when M is 1).
        k = int(min(max(1, rng.random() * len(lines)), len(lines) - 1))
        head, tail = lines[: max(k, 0)], lines[max(k, 0) :]
    special = list(record.special)
    content = _Content(
        special + general[:n_in], general[n_in:length], special + general, short, long
    )
    user, output = _render(head, _target(bucket, task, gen_meta), task, content, tail)
    return Sample(user, output, task and task.value, bucket, total_drop, drop_info, gen_meta, False)


# --- Coyo and GBC ----------------------------------------------------------------------------


def _coyo(record: TrainingRecord, rng: random.Random) -> Sample:
    tags = list(record.general)
    bucket, length, n_in = _split_tags(tags, rng)
    short = record.caption("caption_llava_short")
    long = record.caption("caption_llava")
    have = {"tag": True, "short": short is not None, "long": long is not None}
    # Coyo rows always carry both captions; a row missing one only gets tasks it can fill.
    tasks = [task for task in Task if all(have[name] for name in task.fields)]
    task = rng.choice(tasks) if tasks else None
    content = _Content(tags[:n_in], tags[n_in:length], tags, short, long)
    user, output = _render([], _target(bucket, task, False), task, content, [])
    return Sample(user, output, task and task.value, bucket, False, False, False, False, "coyo")


def _gbc(record: TrainingRecord, rng: random.Random) -> Sample:
    detail = record.caption("detail_caption")
    options = [record.caption("short_caption"), record.caption("original_caption")]
    if detail is None or options == [None, None]:
        raise InvalidRequestError("a GBC record needs detail_caption and a short/original one")
    choice = rng.choice(options)
    short = choice if choice is not None else next(o for o in options if o is not None)
    # No space after "long:" — the authors' code wrote it so, and the models saw it so.
    user = f"target: <|short_to_long|>\nshort: {short}\nlong:"
    task = Task.SHORT_TO_LONG.value
    return Sample(user, detail, task, Length.VERY_SHORT, False, False, False, False, "gbc")


_BUILDERS = {"danbooru": _danbooru, "coyo": _coyo, "gbc": _gbc}


def build_sample(record: TrainingRecord, rng: random.Random) -> Sample:
    """One training sample of ``record``; all randomness comes from ``rng``."""
    sample = _BUILDERS[record.source](record, rng)
    train_on_input = rng.random() < P_TRAIN_ON_INPUT
    user, output = ("", sample.text) if train_on_input else (sample.user, sample.output)
    return Sample(
        user,
        output,
        sample.task,
        sample.bucket,
        sample.total_drop,
        sample.drop_info,
        sample.gen_meta,
        train_on_input,
        record.source,
    )


def sample_for(record: TrainingRecord, seed: int, index: int) -> Sample:
    """The sample of record number ``index`` under ``seed``: the same wherever it is built."""
    return build_sample(record, random.Random(derive_seed(seed, "data", index)))


__all__ = [
    "MAX_TAGS",
    "MIN_TAGS",
    "NL_BUDGET",
    "P_DROP_INFO",
    "P_GEN_META",
    "P_KEEP_LINE",
    "P_TOTAL_DROP",
    "P_TRAIN_ON_INPUT",
    "Sample",
    "bucket_for",
    "build_sample",
    "danbooru_captions",
    "danbooru_tasks",
    "prior_lines",
    "sample_for",
]
