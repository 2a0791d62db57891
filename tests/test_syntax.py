"""User prompt syntax: weights, escapes, BREAK and extra networks go in clean and come back."""

from __future__ import annotations

import pytest

from tipo.syntax import escape, parse_attention, parse_nl_prompt, parse_tag_prompt


def _tags(text):
    return [(t.text, round(t.weight, 4), t.render()) for t in parse_tag_prompt(text).tags]


def test_attention_grammar():
    assert parse_attention("a (b) [c] (d:1.5) \\(e\\)") == [
        ("a ", 1.0),
        ("b", 1.1),
        (" ", 1.0),
        ("c", pytest.approx(1 / 1.1)),
        (" ", 1.0),
        ("d", 1.5),
        (" ", 1.0),
        ("(", 1.0),
        ("e", 1.0),
        (")", 1.0),
    ]


def test_weighted_tags_are_clean_for_the_model_and_rendered_as_written():
    assert _tags("1girl, (blue sky:1.2), [red eyes], ((smile))") == [
        ("1girl", 1.0, "1girl"),
        ("blue sky", 1.2, "(blue sky:1.2)"),
        ("red eyes", 0.9091, "[red eyes]"),
        ("smile", 1.21, "((smile))"),
    ]


def test_escaped_parentheses_survive():
    assert _tags("spark \\(pokemon go\\), (spark \\(pokemon go\\):1.3)") == [
        ("spark (pokemon go)", 1.0, "spark \\(pokemon go\\)"),
        ("spark (pokemon go)", 1.3, "(spark \\(pokemon go\\):1.3)"),
    ]


def test_group_weight_spanning_several_tags_is_rebuilt_per_tag():
    assert _tags("(a, b:1.2), c") == [("a", 1.2, "(a:1.2)"), ("b", 1.2, "(b:1.2)"), ("c", 1.0, "c")]


def test_unbalanced_bracket_is_not_pasted_back():
    assert _tags("(a, b") == [("a", 1.1, "(a:1.1)"), ("b", 1.1, "(b:1.1)")]


def test_break_and_extra_networks_are_markers_anchored_to_the_previous_tag():
    prompt = parse_tag_prompt("<lora:first:1>, 1girl, scenery BREAK sky, <lora:foo:0.7>")
    assert prompt.clean_tags == ["1girl", "scenery", "sky"]
    assert [(m.text, m.after) for m in prompt.markers] == [
        ("<lora:first:1>", None),
        ("BREAK", "scenery"),
        ("<lora:foo:0.7>", "sky"),
    ]


def test_newlines_separate_tags_and_empty_items_vanish():
    assert parse_tag_prompt("a\nb, , ,c\n\n").clean_tags == ["a", "b", "c"]


def test_escape_only_brackets():
    assert escape("a (b) [c] \\ d:1") == "a \\(b\\) \\[c\\] \\ d:1"


def test_nl_prompt_weights_come_back_on_the_output():
    nl = parse_nl_prompt("a (girl:1.3) on a hill <lora:x:1>")
    assert nl.text == "a girl on a hill"
    assert nl.markers == ("<lora:x:1>",)
    assert nl.render("a girl on a hill (at dusk)") == "a (girl:1.3) on a hill \\(at dusk\\)"


def test_control_characters_and_huge_input_are_handled():
    assert parse_tag_prompt("a\x00b, c\x1b").clean_tags == ["a b", "c"]
    big = ", ".join(f"tag{i}" for i in range(20_000))
    assert len(parse_tag_prompt(big).tags) == 20_000
