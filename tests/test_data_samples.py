"""tipo.data: records from raw rows, samples by the TIPO recipe (docs/tipo-training.md §1), stats.

Golden samples use a scripted rng (every draw is written in the test), so the expected strings can
be checked by hand against the recipe without knowing Python's random algorithm.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import pytest

from tipo.data import TrainingRecord, build_sample, distribution, format_table, sample_for
from tipo.data.records import parse_literal_list, parse_tag_list
from tipo.data.samples import (
    MAX_TAGS,
    Sample,
    bucket_for,
    danbooru_captions,
    danbooru_tasks,
    prior_lines,
)
from tipo.data.stats import EXPECTED
from tipo.errors import InvalidRequestError
from tipo.protocol import Length, Task, parse_output


class Scripted(random.Random):
    """An rng whose draws are given: ``random()`` pops ``draws``, ``shuffle`` keeps the order,
    ``randint`` returns ``n_in``, ``choice`` returns ``pick``, ``sample`` takes the first k."""

    def __init__(self, draws: Sequence[float], n_in: int = 1, pick: object = None) -> None:
        super().__init__(0)
        self.draws, self.n_in, self.pick = list(draws), n_in, pick

    def random(self) -> float:
        return self.draws.pop(0)

    def shuffle(self, x: list) -> None:  # type: ignore[override]
        pass

    def randint(self, a: int, b: int) -> int:
        assert a <= self.n_in <= b, (a, b, self.n_in)
        return self.n_in

    def choice(self, seq: Sequence) -> object:  # type: ignore[override]
        assert self.pick in seq, (self.pick, seq)
        return self.pick

    def sample(self, population: Sequence, k: int, **_: object) -> list:  # type: ignore[override]
        return list(population)[:k]


def scripted(record: TrainingRecord, draws: Sequence[float], **kwargs: object) -> Sample:
    rng = Scripted(draws, **kwargs)  # type: ignore[arg-type]
    sample = build_sample(record, rng)
    assert rng.draws == [], "the recipe made fewer random() draws than scripted"
    return sample


GIRL = TrainingRecord.from_row(
    {
        "special": ["1girl"],
        "general": "long_hair smile outdoors sky 2020",
        "rating": "general",
        "artist": ["xyz"],
        "width": 700,
        "height": 1000,
        "florence_short": "A girl smiles. She stands outside. The sky is blue.",
        "pixtral_caption": "The image depicts a smiling girl.\nShe is outdoors.",
    }
)
SHORT = "A girl smiles. She stands outside."
HEAD = "rating: general\nartist: xyz\naspect ratio: 0.7\n"


# --- golden samples -------------------------------------------------------------------------


def test_golden_danbooru_tag_to_long() -> None:
    # draws: total_drop no, drop_info no, gen_meta no, train-on-input fold no.
    s = scripted(GIRL, [0.5, 0.5, 0.5, 0.9], n_in=2, pick=Task.TAG_TO_LONG)
    assert s.user == HEAD + "target: <|very_short|> <|tag_to_long|>\ntag: 1girl, long hair, smile"
    assert s.output == ", outdoors, sky\nlong: a smiling girl."
    assert (s.task, s.bucket, s.total_drop, s.drop_info, s.gen_meta, s.train_on_input) == (
        "tag_to_long",
        Length.VERY_SHORT,
        False,
        False,
        False,
        False,
    )


def test_golden_danbooru_gen_meta_moves_lines_to_the_end() -> None:
    # gen_meta draw 0.1 < 0.3; k = int(min(max(1, 0.5*3), 2)) = 1 line stays in front.
    s = scripted(GIRL, [0.5, 0.5, 0.1, 0.5, 0.9], n_in=2, pick=Task.SHORT_TO_TAG_TO_LONG)
    assert s.user == (
        "rating: general\ntarget: <|very_short|> <|short_to_tag_to_long|> <|gen_meta|>\n"
        f"short: {SHORT}\n"
    )
    assert s.output == (
        "tag: 1girl, long hair, smile, outdoors, sky\nlong: a smiling girl.\n"
        "artist: xyz\naspect ratio: 0.7"
    )
    assert s.gen_meta


def test_gen_meta_with_one_line_moves_it_to_the_end() -> None:
    # M = 1: k = int(min(max(1, 0.5), 0)) = 0, so the only line goes after the content.
    record = TrainingRecord(source="danbooru", general=("smile", "sky"), rating="general")
    s = scripted(record, [0.5, 0.5, 0.1, 0.5, 0.9], n_in=1, pick=None)
    assert s.user == "target: <|very_short|> <|gen_meta|>\ntag: smile"
    assert s.output == ", sky\nrating: general"


def test_golden_danbooru_total_drop_plain_continuation() -> None:
    # total_drop: no prior lines, no general tags in the input (special tags stay), no gen_meta.
    s = scripted(GIRL, [0.05, 0.9], n_in=2, pick=None)
    assert s.user == "target: <|very_short|>\ntag: 1girl"
    assert s.output == ", long hair, smile, outdoors, sky"
    assert s.total_drop and not s.drop_info and s.task is None


def test_golden_danbooru_drop_info_folded_into_output() -> None:
    # drop_info (0.2 < 0.3): lines kept with p 0.65 -> rating kept, artist dropped, ratio kept.
    s = scripted(GIRL, [0.5, 0.2, 0.1, 0.9, 0.5, 0.1], n_in=1, pick=Task.LONG_TO_TAG)
    assert s.user == ""
    assert s.output == (
        "rating: general\naspect ratio: 0.7\ntarget: <|very_short|> <|long_to_tag|>\n"
        "long: a smiling girl.\ntag: 1girl, long hair, smile, outdoors, sky"
    )
    assert s.drop_info and s.train_on_input and not s.gen_meta


def test_golden_coyo() -> None:
    coyo = TrainingRecord.from_row(
        {
            "caption_llava_short": "A dog.",
            "caption_llava": "A dog on grass under a blue sky.",
            "tags_open_images": "['Dog', 'Grass_Field']",
            "tags_booru": "['outdoors', 'blue_sky']",
        }
    )
    assert coyo.general == ("dog", "grass field", "outdoors", "blue sky")
    s = scripted(coyo, [0.9], n_in=1, pick=Task.TAG_TO_SHORT_TO_LONG)
    assert s.user == "target: <|very_short|> <|tag_to_short_to_long|>\ntag: dog"
    long = "long: A dog on grass under a blue sky."
    assert s.output == f", grass field, outdoors, blue sky\nshort: A dog.\n{long}"
    # short_to_long carries no length token.
    s = scripted(coyo, [0.9], n_in=3, pick=Task.SHORT_TO_LONG)
    assert s.user == "target: <|short_to_long|>\nshort: A dog.\n"
    assert s.output == "long: A dog on grass under a blue sky."
    assert (s.source, s.total_drop, s.drop_info, s.gen_meta) == ("coyo", False, False, False)


def test_golden_gbc_long_without_space() -> None:
    gbc = TrainingRecord.from_row(
        {"original_caption": "orig.", "short_caption": "short.", "detail_caption": "Details."}
    )
    s = scripted(gbc, [0.9], pick="orig.")
    assert (s.user, s.output, s.task) == (
        "target: <|short_to_long|>\nshort: orig.\nlong:",
        "Details.",
        "short_to_long",
    )
    assert (
        scripted(gbc, [0.1], pick="short.").output
        == "target: <|short_to_long|>\nshort: short.\nlong:Details."
    )


# --- captions and tasks (§1.5, §1.6) ----------------------------------------------------------


def danbooru(**captions: str) -> TrainingRecord:
    return TrainingRecord(source="danbooru", general=("smile",), captions=captions)


def test_phi3v_replaces_short_or_long() -> None:
    record = danbooru(pixtral_caption="The image is a cat.", phi3v_horny="P.")
    assert danbooru_captions(record, Length.VERY_SHORT, Scripted([0.5])) == ("P.", "a cat.")
    assert danbooru_captions(record, Length.VERY_SHORT, Scripted([0.3])) == (None, "P.")
    both = danbooru(florence_short="S.", pixtral_caption="L.", phi3v_horny="P.")
    assert danbooru_captions(both, Length.VERY_SHORT, Scripted([0.5, 0.4])) == ("P.", "L.")
    assert danbooru_captions(both, Length.VERY_SHORT, Scripted([0.5, 0.6])) == ("S.", "L.")


def test_florence_long_threshold_is_0_3() -> None:
    record = danbooru(pixtral_caption="L.", florence_long="F.")
    assert danbooru_captions(record, Length.VERY_SHORT, Scripted([0.35])) == ("F.", "L.")
    assert danbooru_captions(record, Length.VERY_SHORT, Scripted([0.25])) == (None, "F.")


def test_trimming_keeps_first_sentence_and_paragraph() -> None:
    record = danbooru(
        florence_short="One. Two. Three. Four. Five.",
        pixtral_caption="A. B. C.\nD. E.\nF.\nG.",
    )
    # long bucket: 2 paragraphs of at most 4 sentences; short: 4 sentences.
    short, long = danbooru_captions(record, Length.LONG, Scripted([]))
    assert short == "One. Two. Three. Four."
    assert long == "A. B. C.\nD. E."
    short, long = danbooru_captions(record, Length.VERY_SHORT, Scripted([]))
    assert (short, long) == ("One. Two.", "A. B.")


def test_task_candidates() -> None:
    both = [Task.TAG_TO_SHORT_TO_LONG, Task.SHORT_TO_LONG_TO_TAG, Task.SHORT_TO_TAG_TO_LONG] * 2
    assert danbooru_tasks(False, False, False) == [None]
    assert danbooru_tasks(True, False, False) == [Task.SHORT_TO_TAG, None]
    assert danbooru_tasks(False, True, True) == [Task.TAG_TO_LONG, Task.LONG_TO_TAG, None]
    assert danbooru_tasks(True, True, True) == [Task.TAG_TO_LONG, Task.LONG_TO_TAG, *both, None]
    full = [Task.TAG_TO_LONG, Task.LONG_TO_TAG, Task.SHORT_TO_TAG, *both, None]
    assert danbooru_tasks(True, True, False) == full


@pytest.mark.parametrize(
    ("n", "bucket"),
    [(0, "very_short"), (17, "very_short"), (18, "short"), (35, "short"), (36, "long")]
    + [(47, "long"), (48, "very_long"), (500, "very_long")],
)
def test_buckets(n: int, bucket: str) -> None:
    assert bucket_for(n) is Length(bucket)


# --- records --------------------------------------------------------------------------------


def test_routing_and_tag_strings() -> None:
    assert TrainingRecord.from_row({"original_caption": "x", "detail_caption": "y"}).source == "gbc"
    assert TrainingRecord.from_row({"caption_llava": "x"}).source == "coyo"
    row = {"general": "long_hair ^_^ smile", "quality": ["masterpiece", "x"], "rating": "general"}
    record = TrainingRecord.from_row(row)
    assert record.source == "danbooru"
    assert record.general == ("long hair", "^_^", "smile")
    assert (record.quality, record.rating) == ("masterpiece", "general")
    assert parse_tag_list("long hair, blue_eyes,smile") == ("long hair", "blue eyes", "smile")
    assert parse_tag_list(float("nan")) == ()
    assert TrainingRecord.from_row({"general": "a", "florence_short": float("nan")}).captions == {}


def test_coyo_lists_are_literals_never_code() -> None:
    assert parse_literal_list("['a_b', \"c\"]") == ("a b", "c")
    with pytest.raises(InvalidRequestError):
        parse_literal_list("__import__('os').system('true')")
    with pytest.raises(InvalidRequestError):
        TrainingRecord(source="coyo", captions={"florence_short": "x"})


# --- every sample parses back into what it was built from -------------------------------------


def tags(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(n))


CAPTION_SETS: dict[str, dict[str, str]] = {
    "none": {},
    "short": {"florence_short": "A cat sits. It is calm. The room is bright. It naps."},
    "long": {"pixtral_caption": "The image shows a cat.\nIt sits by a window. It is sunny."},
    "both": {"florence_short": "A cat.", "pixtral_caption": "A cat by a window. It naps."},
    "phi3v+long": {"pixtral_caption": "A cat.", "phi3v_horny": "A calm cat. It naps."},
    "florence_long+long": {"pixtral_caption": "A cat.", "florence_long": "A cat naps."},
    "phi3v": {"phi3v_horny": "A calm cat. It naps. It is warm."},
}
TAG_COUNTS = (0, 5, 17, 18, 30, 36, 47, 48, 80)


def synthetic_records() -> list[TrainingRecord]:
    records = []
    for name, captions in CAPTION_SETS.items():
        for j, n in enumerate(TAG_COUNTS):
            rich = j % 2 == 0
            records.append(
                TrainingRecord(
                    source="danbooru",
                    special=("1girl",) if rich else (),
                    general=tags(f"{name[:4]}tag", n) + (("2019",) if rich else ()),
                    artist=("artist one",) if rich else (),
                    characters=("char a", "char b") if j % 3 == 0 else (),
                    meta=("highres",) if rich else (),
                    rating="general" if j % 3 != 1 else None,
                    quality="masterpiece" if rich else None,
                    width=832 if j % 4 else None,
                    height=1216 if j % 4 else None,
                    captions=captions,
                )
            )
    short_long = {"caption_llava_short": "A dog.", "caption_llava": "A dog runs. It is fast."}
    for n in (3, 20, 40, 60):
        records.append(TrainingRecord(source="coyo", general=tags("coyo", n), captions=short_long))
    gbc = {"short_caption": "A house.", "original_caption": "house", "detail_caption": "A house."}
    records += [TrainingRecord(source="gbc", captions=gbc)] * 3
    return records


RECORDS = synthetic_records()


def target_tokens(text: str) -> list[str]:
    line = re.search(r"^target:(.*)$", text, re.MULTILINE)
    assert line is not None
    return re.findall(r"<\|([a-z_]+)\|>", line.group(1))


def check_round_trip(record: TrainingRecord, sample: Sample) -> None:
    parsed = parse_output(sample.text)
    fields = Task(sample.task).fields if sample.task else ("tag",)
    tokens = target_tokens(sample.text)
    with_length = sample.task is None or "tag" in fields
    expected = [sample.bucket.value] * with_length + [sample.task] * bool(sample.task)
    assert tokens == expected + ["gen_meta"] * sample.gen_meta
    general = {t for t in record.general if not t.isdigit()}
    assert set(parsed.tags) <= general | set(record.special)
    assert set(record.special) <= set(parsed.tags)
    if fields[0] != "tag" and "tag" in fields:
        assert set(parsed.tags) == general | set(record.special)
    elif "tag" in fields:
        n_general = min(len(general), MAX_TAGS[sample.bucket])
        assert len(parsed.tags) == len(record.special) + n_general
    assert (parsed.extended is not None) == ("short" in fields)
    assert (parsed.generated is not None) == ("long" in fields)
    if record.source != "danbooru":
        assert parsed.generated in (
            None,
            record.caption("caption_llava"),
            record.caption("detail_caption"),
        )
    lines = {f"{k}: {', '.join(v)}" for k, v in parsed.meta.items()}
    assert lines <= set(prior_lines(record))
    if record.source == "danbooru" and not (sample.total_drop or sample.drop_info):
        assert lines == set(prior_lines(record))


def test_every_sample_parses_back() -> None:
    for index in range(3000):
        record = RECORDS[index % len(RECORDS)]
        check_round_trip(record, sample_for(record, 7, index))


def test_determinism_per_seed_and_index() -> None:
    record = RECORDS[30]
    assert sample_for(record, 3, 11) == sample_for(record, 3, 11)
    assert len({sample_for(record, 3, i).text for i in range(50)}) > 10
    assert [sample_for(record, 3, i) for i in range(20)] != [
        sample_for(record, 4, i) for i in range(20)
    ]


# --- frequencies over 100k samples match the recipe -------------------------------------------

T3 = ("tag_to_short_to_long", "short_to_long_to_tag", "short_to_tag_to_long")
BOTH_NO_PHI3V = {"none": 0.1, "tag_to_long": 0.1, "long_to_tag": 0.1, "short_to_tag": 0.1} | {
    t: 0.2 for t in T3
}
BOTH_PHI3V = {"none": 1 / 9, "tag_to_long": 1 / 9, "long_to_tag": 1 / 9} | {t: 2 / 9 for t in T3}
LONG_ONLY = {"none": 1 / 3, "tag_to_long": 1 / 3, "long_to_tag": 1 / 3}


def mix(*parts: tuple[float, dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for weight, probs in parts:
        for task, p in probs.items():
            total[task] = total.get(task, 0.0) + weight * p
    return total


# Hand-derived from §1.5-1.6: phi3v with a long caption gives both captions with p 0.6 (draw >
# 0.4), a Florence long caption with p 0.7 (draw > 0.3); otherwise only a long caption.
TASK_PROBS: dict[str, dict[str, float]] = {
    "none": {"none": 1.0},
    "short": {"none": 0.5, "short_to_tag": 0.5},
    "long": LONG_ONLY,
    "both": BOTH_NO_PHI3V,
    "phi3v+long": mix((0.6, BOTH_PHI3V), (0.4, LONG_ONLY)),
    "florence_long+long": mix((0.7, BOTH_NO_PHI3V), (0.3, LONG_ONLY)),
    "phi3v": LONG_ONLY,
    "coyo": {task.value: 1 / 7 for task in Task},
    "gbc": {"short_to_long": 1.0},
}


def record_kind(record: TrainingRecord) -> str:
    if record.source != "danbooru":
        return record.source
    return next(k for k, caps in CAPTION_SETS.items() if dict(record.captions) == caps)


def expected_bucket(record: TrainingRecord) -> str:
    n = sum(not t.isdigit() for t in record.general)
    return "very_short" if n < 18 else "short" if n < 36 else "long" if n < 48 else "very_long"


def test_frequencies_match_the_recipe() -> None:
    n = 100_000
    chosen = [RECORDS[i % len(RECORDS)] for i in range(n)]
    samples = [sample_for(record, 2024, i) for i, record in enumerate(chosen)]
    dist = distribution(samples)

    task_expected: dict[str, float] = {}
    bucket_counts: dict[str, int] = {}
    for record in chosen:
        for task, p in TASK_PROBS[record_kind(record)].items():
            task_expected[task] = task_expected.get(task, 0.0) + p / n
        bucket = expected_bucket(record)
        bucket_counts[bucket] = bucket_counts.get(bucket, 0) + 1
    bucket_expected = {label: count / n for label, count in bucket_counts.items()}
    expected = {**EXPECTED, "task": task_expected, "bucket": bucket_expected}
    print("\n" + format_table(dist, expected))

    # Buckets are a function of the record, so their counts are exact.
    assert {label: f.hits for label, f in dist["bucket"].items()} == bucket_counts
    assert set(dist["task"]) == {t for t, p in task_expected.items() if p > 0}
    # Using the pooled rate's binomial error is conservative for a mixture of records.
    for group in ("task", "flags"):
        for label, freq in dist[group].items():
            z = freq.z_score(expected[group][label])
            assert abs(z) < 4, (group, label, freq, expected[group][label], z)
    # The fold moves the whole text to the output and nothing else.
    assert all((s.user == "") == s.train_on_input for s in samples)
