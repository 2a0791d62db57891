"""Post-processing of a step's output, with one regression test per reference bug (§5)."""

from __future__ import annotations

import random

from tipo.planning import Step
from tipo.postprocess import (
    BanList,
    Draft,
    PostOptions,
    merge_extended,
    merge_step,
    split_sentences,
)
from tipo.protocol import Length, ModelOutput, Task
from tipo.tags import TagDatabase, Tags

try:
    from kgen.executor import tipo as kgen_tipo
except ImportError:
    kgen_tipo = None

DB = TagDatabase.bundled()


def _merge(draft, step, output, **options):
    return merge_step(draft, step, output, DB, PostOptions(**options), random.Random(0))


def test_input_tags_stay_first_and_new_ones_are_deduplicated():
    draft = Draft(tags=Tags(special=["1girl"], general=["scenery", "sky"]))
    output = ModelOutput(tags=["1girl", "scenery", "sky", "tree", "tree", "hatsune miku", "cloud"])
    merged = _merge(draft, Step(None, Length.LONG, True), output, shuffle=False)
    assert merged.tags.general == ["scenery", "sky", "tree", "cloud"]
    assert merged.tags.characters == ["hatsune miku"]
    assert merged.tags.special == ["1girl"]


def test_new_general_tags_are_shuffled_with_the_request_rng():
    draft = Draft(tags=Tags(general=["a"]))
    output = ModelOutput(tags=["a", *(f"tag{i}" for i in range(10))])
    step = Step(None, Length.LONG, True)
    first = _merge(draft, step, output).tags.general
    assert first[0] == "a" and sorted(first[1:]) == sorted(f"tag{i}" for i in range(10))
    assert first == _merge(draft, step, output).tags.general  # same seed, same order


def test_tag_cap_uses_the_tag_maximum_not_the_nl_maximum():
    """Regression: the reference cuts new tags at the NL maximum (8 for "long"), so a long tag
    request ends with ~8 tags instead of up to 54."""
    draft = Draft(tags=Tags(general=["a"]))
    output = ModelOutput(tags=["a", *(f"tag{i}" for i in range(100))])
    merged = _merge(draft, Step(None, Length.LONG, True), output, tag_length=Length.LONG)
    assert len(merged.tags.general) == 54
    if kgen_tipo is not None:
        parsed = {"general": ["a", *(f"tag{i}" for i in range(100))]}
        reference = kgen_tipo.post_generate_process(parsed, "a", "", None, "long")
        assert len(reference["general"]) == 8


def test_nl_output_without_nl_input_does_not_crash():
    """Regression: the reference raises IndexError when an NL step returns text but the user
    gave no sentence (it reads the last input sentence of an empty list)."""
    draft = Draft(tags=Tags(general=["a"]))
    output = ModelOutput(tags=["a"], extended="A new sentence. Another one.")
    merged = _merge(draft, Step(Task.SHORT_TO_TAG, Length.LONG, True), output)
    assert merged.extended == "A new sentence. Another one."
    if kgen_tipo is not None:
        try:
            kgen_tipo.post_generate_process(
                {"extended": "A new sentence. Another one."}, "a", "", "short_to_tag", "long"
            )
        except IndexError:
            pass
        else:
            raise AssertionError("the reference no longer crashes: update this test")


def test_user_sentence_is_continued_not_duplicated():
    assert merge_extended("a girl", "a girl on a hill. The sky is blue.", Length.LONG) == (
        "a girl on a hill. The sky is blue."
    )


def test_sentences_are_capped_at_the_nl_maximum_but_keep_the_input():
    text = " ".join(f"Sentence {i}." for i in range(20))
    assert len(split_sentences(merge_extended("Mine.", text, Length.SHORT))) == 4
    long_input = " ".join(f"Input {i}." for i in range(6))
    assert len(split_sentences(merge_extended(long_input, text, Length.SHORT))) == 6


def test_long_output_extends_the_user_sentence_when_the_task_has_no_short_field():
    draft = Draft(tags=Tags(general=["a"]), nl="a girl", extended="a girl")
    output = ModelOutput(tags=["a"], generated="a girl on a hill. Wind blows.")
    merged = _merge(draft, Step(Task.TAG_TO_LONG, Length.LONG, True), output)
    assert merged.extended == "a girl on a hill. Wind blows." and merged.generated == ""


def test_new_caption_is_generated_when_the_sentence_sits_in_short():
    draft = Draft(tags=Tags(general=["a"]), nl="a girl.", extended="a girl.")
    output = ModelOutput(tags=["a"], extended="a girl.", generated="A new caption.")
    merged = _merge(draft, Step(Task.SHORT_TO_TAG_TO_LONG, Length.LONG, False), output)
    assert merged.extended == "a girl." and merged.generated == "A new caption."


def test_plain_tag_step_ignores_captions():
    draft = Draft(tags=Tags(general=["a"]))
    merged = _merge(draft, Step(None, Length.LONG, True), ModelOutput(tags=["a"], generated="x"))
    assert merged.generated == "" and merged.extended == ""


def test_bans_drop_new_tags_by_substring_and_regex_but_never_user_tags():
    bans = BanList.parse("hat, .*text, official_art, ([")
    assert bans.matches("witch hat") and bans.matches("english text")
    assert bans.matches("official art") and not bans.matches("cat")
    draft = Draft(tags=Tags(general=["red hat"]))
    output = ModelOutput(tags=["red hat", "witch hat", "english text", "cat"])
    merged = _merge(draft, Step(None, Length.LONG, True), output, bans=bans)
    assert merged.tags.general == ["red hat", "cat"]


def test_invalid_regex_ban_is_a_plain_substring():
    """Regression: the reference passes every ban to re.match, so "(" crashes the request."""
    assert BanList.parse(["(oops"]).matches("x (oops) y")


def test_decimal_numbers_do_not_split_sentences():
    assert split_sentences("It costs 1.5 dollars. Ok! Why? yes") == [
        "It costs 1.5 dollars",
        "Ok!",
        "Why?",
        "yes",
    ]
