"""Decode-time control, proven on noise: a backend that samples random logits can only meet
length targets, keep bans and write real tags if the constraints make it (issue: one pass
instead of retries)."""

from __future__ import annotations

import pytest

from checkpoints import llama_tokenizer_model
from tipo import TIPO, ExpandRequest
from tipo.backends.noise import NoiseBackend
from tipo.bans import BanList
from tipo.constraints import DecodeControl, FieldConstraint, StepFields, TokenTable
from tipo.postprocess import split_sentences
from tipo.protocol import Length, ModelRequest, Task, build_prompt
from tipo.tags import Category, TagDatabase
from tipo.tokenizer import TipoTokenizer

SEEDS_PER_CASE = 42  # x 6 cases x 4 lengths = 1,008 requests per tag mode
BANS = ["hat", "official*", ".*text", "blue", "*ing"]
# (tags, nl, options, what the plan produces and must meet the length of)
CASES = [
    ("1girl, scenery", "", {"template": "tags"}, {"tags"}),
    ("", "", {"template": "tags-nl"}, {"tags", "generated"}),
    ("1girl, scenery", "A girl on a hill.", {}, {"tags", "extended"}),
    ("1girl", "A girl on a hill.", {"tag_first": False}, {"tags", "extended"}),
    ("", "A cat sleeps.", {}, {"tags", "extended"}),
    ("scenery", "", {"template": "tags-nl-generated"}, {"tags", "generated"}),
]


@pytest.fixture(scope="module")
def tokenizer():
    return TipoTokenizer.from_sentencepiece(llama_tokenizer_model())


@pytest.fixture(scope="module")
def tipo(tokenizer):
    return TIPO(NoiseBackend.format_aware(tokenizer), tokenizer)


def _requests(length, **extra):
    return [
        (
            case,
            ExpandRequest.create(
                tags=tags, nl=nl, tag_length=length, nl_length=length, seed=seed, **options, **extra
            ),
        )
        for case, (tags, nl, options, _) in enumerate(CASES)
        for seed in range(SEEDS_PER_CASE)
    ]


def _check_lengths(result, length, produced):
    tag_min, tag_max = length.tag_range
    nl_min, nl_max = length.nl_range
    problems = []
    if "tags" in produced:
        counted = len(result.tags.special) + len(result.tags.general)
        if counted < tag_min or len(result.tags.general) > tag_max:
            problems.append(f"{counted} tags")
    for name in ("extended", "generated"):
        if name in produced:
            n = len(split_sentences(getattr(result, name)))
            if n < nl_min or (nl_max is not None and n > nl_max):
                problems.append(f"{n} sentences in {name}")
    return problems


def _check_bans(result, user_tags):
    bans = BanList.parse(BANS)
    new = [t for c, tags in result.tags.items() for t in tags if t not in user_tags]
    return [t for t in new if bans.matches(t)]


@pytest.mark.parametrize("vocabulary", [True, False], ids=["known-tags", "free-tags"])
@pytest.mark.parametrize("length", list(Length))
def test_every_output_meets_its_length_and_bans_in_one_pass(tipo, length, vocabulary):
    requests = _requests(length, ban=BANS, vocabulary=vocabulary)
    results = tipo.run_many([r for _, r in requests])
    failures = []
    for (case, request), result in zip(requests, results, strict=True):
        assert not isinstance(result, Exception), result
        _, _, _, produced = CASES[case]
        problems = _check_lengths(result, length, produced)
        problems += [f"banned {t!r}" for t in _check_bans(result, {"1girl", "scenery"})]
        assert all(s.attempt == 0 for s in result.steps)  # no retry: one pass per step
        if problems:
            failures.append((case, request.seed, problems))
    assert not failures, f"{len(failures)} of {len(requests)} failed, e.g. {failures[:3]}"


def test_without_control_noise_misses_the_targets(tipo):
    """The guarantees above come from the constraints: without them noise fails."""
    requests = _requests(Length.LONG, control=False)[:SEEDS_PER_CASE]
    results = tipo.run_many([r for _, r in requests])
    misses = sum(bool(_check_lengths(res, Length.LONG, {"tags"})) for res in results)
    assert misses > len(results) // 2


def test_vocabulary_mode_writes_only_known_tags(tipo):
    db = TagDatabase.bundled()
    known = set(db.names(Category.SPECIAL)) | set(db.names(Category.GENERAL))
    requests = [
        ExpandRequest.create(
            tags="1girl, scenery",
            tag_length=length,
            vocabulary=True,
            ban=BANS,
            seed=seed,
            template="tags",
        )
        for length in Length
        for seed in range(25)
    ]
    for request, result in zip(requests, tipo.run_many(requests), strict=True):
        new = [
            t for t in result.tags.special + result.tags.general if t not in ("1girl", "scenery")
        ]
        assert set(new) <= known, set(new) - known
        assert not _check_lengths(result, request.tag_length, {"tags"})
        assert not _check_bans(result, {"1girl", "scenery"})


# --- unit tests of the state machine ------------------------------------------------------


@pytest.fixture(scope="module")
def table(tokenizer):
    return TokenTable.build(tokenizer)


def _constraint(table, prompt, task=None, **control):
    return FieldConstraint(
        table,
        StepFields.from_prompt(prompt, task, False),
        DecodeControl(**control),
        TagDatabase.bundled(),
        tag_length=Length.VERY_SHORT,
        nl_length=Length.VERY_SHORT,
        budget=256,
    )


def _allowed(constraint, vocab_size):
    import torch

    logits = torch.zeros(vocab_size)
    constraint.mask_logits(logits)
    return set(torch.nonzero(logits == 0).flatten().tolist())


def test_fields_are_read_from_the_prompt():
    prompt = build_prompt(ModelRequest.create(tags=["a"], nl="b", task="short_to_tag_to_long"))
    assert StepFields.from_prompt(prompt, Task.SHORT_TO_TAG_TO_LONG, False) == StepFields(
        "tag", " a", ("long",)
    )
    assert StepFields.from_prompt("target: <|long|>", None, True) == StepFields(
        None, "", ("tag",), True
    )


def test_users_last_tag_is_not_extended(table, tokenizer):
    c = _constraint(table, "target: <|short|>\ntag: 1girl, sce")
    allowed = _allowed(c, tokenizer.vocab_size)
    assert allowed == {table.comma_id}  # 2 tags < 6: the field cannot end yet


def test_next_key_is_written_for_the_model(table, tokenizer):
    prompt = "target: <|short|> <|tag_to_long|>\ntag: a, b, c, d, e, f, g"
    c = _constraint(table, prompt, Task.TAG_TO_LONG)
    c.accept(table.newline_id)
    forced = []
    while c.phase == "key":
        (token,) = _allowed(c, tokenizer.vocab_size)
        forced.append(token)
        c.accept(token)
    assert tokenizer.decode(forced) == "long:" and c.key == "long"


def test_plain_ban_is_refused_on_the_token_that_writes_it(table, tokenizer):
    c = _constraint(table, "target: <|short|>\ntag:", bans=BanList.parse("hat"))
    for token in tokenizer.encode_fragment(" witch h"):
        assert token in _allowed(c, tokenizer.vocab_size)
        c.accept(token)
    assert not any("at" in table.text[t][:2] for t in _allowed(c, tokenizer.vocab_size))


def test_a_tag_that_cannot_escape_its_ban_is_rolled_back(table, tokenizer):
    c = _constraint(
        table, "target: <|short|>\ntag:", bans=BanList.parse(["[x]y.*"]), max_tag_tokens=3
    )
    path = tokenizer.encode_fragment(" xyzzy")
    dropped = 0
    for token in path:
        dropped = c.accept(token)
        if dropped:
            break
    assert dropped == 3 and c.rollbacks == 1
    assert path[0] not in _allowed(c, tokenizer.vocab_size)  # not the same start again
