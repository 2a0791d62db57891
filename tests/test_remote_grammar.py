"""constraints.grammar: a step's length targets as GBNF / regex / llguidance Lark (pure, fast).

The regex is checked by meaning with Python's ``re`` (its syntax is the common subset the
engines take); GBNF and Lark are pinned as exact text and run on real servers in
tests/test_remote_engines.py.
"""

from __future__ import annotations

import random
import re

import pytest

from checkpoints import llama_tokenizer_model
from tipo.bans import BanList, BanPattern
from tipo.constraints import DecodeControl, FieldConstraint, StepFields, TokenTable
from tipo.constraints.grammar import (
    ContinuationSpec,
    FieldSpec,
    ban_regex,
    continuation_spec,
    to_gbnf,
    to_lark,
    to_regex,
)
from tipo.postprocess import split_sentences
from tipo.protocol import Length, ModelRequest, Task, build_prompt
from tipo.tags import TagDatabase
from tipo.tokenizer import TipoTokenizer


@pytest.fixture(scope="module")
def table() -> TokenTable:
    return TokenTable.build(TipoTokenizer.from_sentencepiece(llama_tokenizer_model()))


@pytest.fixture(scope="module")
def db() -> TagDatabase:
    return TagDatabase.bundled()


def _spec(table, db, request: ModelRequest, tag=Length.SHORT, nl=Length.SHORT, **control):
    prompt = build_prompt(request)
    fields = StepFields.from_prompt(prompt, request.task, request.gen_meta)
    constraint = FieldConstraint(
        table,
        fields,
        DecodeControl(**control),
        db,
        tag_length=tag,
        nl_length=nl,
        budget=512,
    )
    return continuation_spec(constraint)


# --- from the run's constraint ----------------------------------------------------------------


def test_open_tag_field_counts_the_users_tags(table, db):
    # "1girl" and "scenery" count; the artist-looking unknown also counts as general.
    request = ModelRequest(tags=("1girl", "scenery", "long hair"), length=Length.SHORT)
    spec = _spec(table, db, request)
    assert spec.fields == (FieldSpec("tag", "tag", 15, 33, "after_item"),)
    assert spec.ends_at_newline


def test_duplicates_do_not_count_toward_the_minimum(table, db):
    request = ModelRequest(tags=("scenery", "scenery"), length=Length.SHORT)
    assert _spec(table, db, request).fields[0].low == 17


def test_prompt_that_ends_at_its_target_line_writes_the_field_from_its_key(table, db):
    request = ModelRequest(length=Length.LONG, gen_meta=True)
    assert build_prompt(request).endswith("target: <|long|> <|gen_meta|>")
    spec = _spec(table, db, request, tag=Length.VERY_SHORT)
    assert spec.fields == (FieldSpec("tag", "tag", 6, 18, "new"),)
    assert spec.meta_tail and not spec.ends_at_newline


def test_empty_tags_then_a_new_caption_field(table, db):
    request = ModelRequest(task=Task.TAG_TO_LONG, length=Length.LONG)
    spec = _spec(table, db, request, tag=Length.VERY_SHORT, nl=Length.LONG)
    assert spec.fields == (
        FieldSpec("tag", "tag", 6, 18, "empty"),
        FieldSpec("long", "nl", 4, 8, "new"),
    )
    assert not spec.ends_at_newline


def test_write_mode_starts_at_an_empty_key(table, db):
    request = ModelRequest(tags=("1girl",), task=Task.TAG_TO_LONG, expand=False)
    spec = _spec(table, db, request, nl=Length.VERY_LONG)
    assert spec.fields == (FieldSpec("long", "nl", 8, None, "empty"),)


def test_open_caption_mid_sentence_and_after_one(table, db):
    mid = ModelRequest(nl="A girl. She walks", task=Task.TAG_TO_LONG)
    assert _spec(table, db, mid).fields[0] == FieldSpec("long", "nl", 0, 2, "in_sentence")
    done = ModelRequest(nl="A girl. She walks.", task=Task.TAG_TO_LONG)
    assert _spec(table, db, done).fields[0] == FieldSpec("long", "nl", 0, 2, "after_item")


def test_lengths_off_leaves_only_the_structure(table, db):
    request = ModelRequest(task=Task.SHORT_TO_TAG, nl="a cat", length=Length.SHORT)
    spec = _spec(table, db, request, lengths=False)
    assert [(f.low, f.high) for f in spec.fields] == [(0, None), (0, None)]


def test_bans_are_carried_for_llguidance(table, db):
    spec = _spec(table, db, ModelRequest(tags=("1girl",)), bans=BanList.parse("hat, official*"))
    assert [p.text for p in spec.bans] == ["hat", "official*"]
    assert "& ~/.*hat.*/" in to_lark(spec)


# --- the regex, by meaning ----------------------------------------------------------------------


def _tags(rng: random.Random, count: int) -> list[str]:
    words = ["long hair", "smile", "blue sky", "1girl", "x", "a b c", "über", "^_^"]
    return [rng.choice(words) for _ in range(count)]


def _sentences(rng: random.Random, count: int) -> str:
    bodies = ["A girl stands", "Sky is blue", "Is it 3", "Wow", "Light falls on her hair"]
    return " ".join(rng.choice(bodies) + rng.choice(".!?") for _ in range(count))


def test_regex_accepts_exactly_the_allowed_tag_counts():
    spec = ContinuationSpec((FieldSpec("tag", "tag", 4, 7, "after_item"),))
    pattern = re.compile(to_regex(spec))
    rng = random.Random(0)
    for count in range(10):
        text = "".join(f", {t}" for t in _tags(rng, count))
        assert bool(pattern.fullmatch(text)) == (4 <= count <= 7), (count, text)


def test_regex_new_fields_and_sentences():
    spec = ContinuationSpec(
        (FieldSpec("tag", "tag", 2, 3, "new"), FieldSpec("long", "nl", 2, 4, "new"))
    )
    pattern = re.compile(to_regex(spec))
    rng = random.Random(1)
    for tags in range(1, 5):
        for sentences in range(1, 6):
            tag_text = ", ".join(_tags(rng, tags))
            nl_text = _sentences(rng, sentences)
            text = f"\ntag: {tag_text}\nlong: {nl_text}"
            ok = 2 <= tags <= 3 and 2 <= sentences <= 4
            assert bool(pattern.fullmatch(text)) == ok, text
            if ok:  # post-processing counts the same sentences
                assert len(split_sentences(nl_text)) == sentences


def test_regex_refuses_runaway_items_and_stray_lines():
    spec = ContinuationSpec((FieldSpec("tag", "tag", 1, 3, "after_item"),), tag_chars=10)
    pattern = re.compile(to_regex(spec))
    assert pattern.fullmatch(", abcdefghij")
    assert not pattern.fullmatch(", abcdefghijk")  # 11 characters
    assert not pattern.fullmatch(",  leading space")
    assert not pattern.fullmatch(", tag\nlong: more")


def test_regex_open_sentence_is_ended_first_and_unbounded_maximum():
    spec = ContinuationSpec((FieldSpec("long", "nl", 1, None, "in_sentence"),))
    pattern = re.compile(to_regex(spec))
    assert pattern.fullmatch(" on a hill. The sky is blue.")
    assert pattern.fullmatch(". A. B. C. D. E. F. G. H. I.")
    assert not pattern.fullmatch(" on a hill.")  # one more sentence is needed
    assert not pattern.fullmatch(" on a hill")


def test_regex_meta_tail_is_optional():
    spec = ContinuationSpec((FieldSpec("tag", "tag", 1, 2, "empty"),), meta_tail=True)
    pattern = re.compile(to_regex(spec))
    assert pattern.fullmatch(" a, b")
    assert pattern.fullmatch(" a, b\nrating: general\nartist: x")
    assert not pattern.fullmatch(", a")  # an empty field starts with a space


def test_field_that_is_already_full_writes_nothing():
    spec = ContinuationSpec((FieldSpec("tag", "tag", 0, 0, "after_item"),))
    assert re.compile(to_regex(spec)).fullmatch("")
    assert 'root ::= ""' in to_gbnf(spec)


# --- exact texts ---------------------------------------------------------------------------------

TWO_FIELDS = ContinuationSpec(
    (FieldSpec("tag", "tag", 16, 34, "after_item"), FieldSpec("long", "nl", 4, 8, "new")),
    meta_tail=True,
)


def test_gbnf_text():
    assert to_gbnf(TWO_FIELDS) == (
        'root ::= (", " tag){16,34} "\\nlong:" (" " sent){4,8} ("\\n" meta)?\n'
        "tag ::= [^, \\n] [^,\\n]{0,47}\n"
        "sent ::= [^ \\n.!?] [^\\n.!?]{0,239} [.!?]\n"
        "rest ::= [^\\n.!?]{0,240} [.!?]\n"
        "meta ::= [^\\x00]*\n"
    )


def test_gbnf_first_tag_of_an_empty_field():
    spec = ContinuationSpec((FieldSpec("tag", "tag", 6, 18, "new"),))
    assert to_gbnf(spec).splitlines()[0] == 'root ::= "\\ntag:" " " tag (", " tag){5,17}'


def test_lark_vocabulary_leaves_banned_tags_out():
    spec = ContinuationSpec(
        (FieldSpec("tag", "tag", 1, 2, "after_item"),),
        bans=(BanPattern.parse("witch hat"),),
        vocabulary=("1girl", "witch hat"),
    )
    assert to_lark(spec).splitlines()[:2] == ['start: (", " TAG){1,2}', 'TAG: "1girl"']


def test_lark_free_tags_with_bans():
    spec = ContinuationSpec(
        (FieldSpec("tag", "tag", 1, 2, "after_item"),),
        bans=BanList.parse("hat, official*").patterns,
    )
    assert to_lark(spec).splitlines()[1] == (
        "TAG: /[^, \\n][^,\\n]{0,47}/ & ~/.*hat.*/ & ~/official.*/"
    )


@pytest.mark.parametrize(
    ("ban", "tags"),
    [
        ("hat", ["hat", "witch hat", "hats", "chat room", "cap"]),
        ("official*", ["official art", "official", "unofficial", "art"]),
        ("*text", ["english text", "text", "textbook"]),
        (".*text", ["english text", "text", "textbook", "tex"]),
        ("long_hair", ["long hair", "long_hair", "very long hair", "short hair"]),
    ],
)
def test_ban_regex_matches_what_the_ban_matches(ban, tags):
    pattern = BanPattern.parse(ban)
    regex = re.compile(ban_regex(pattern))
    for tag in tags:
        assert bool(regex.fullmatch(tag)) == pattern.matches_tag(tag), (ban, tag)
