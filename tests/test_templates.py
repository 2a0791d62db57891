"""Templates: slots, empty slots vanish cleanly, presets, user templates."""

from __future__ import annotations

import pytest

from tipo.errors import InvalidRequestError
from tipo.tags import Tags
from tipo.templates import SLOTS, TEMPLATES, Template, get_template


def test_default_layout_with_empty_slots():
    template = get_template("tags-nl")
    prompt = template.format(
        {
            "special": ["1girl"],
            "general": ["scenery", "blue sky"],
            "extended": "A girl stands on a hill.",
            "quality": ["masterpiece"],
            "rating": ["general"],
        }
    )
    assert prompt == (
        "1girl,\n\nscenery, blue sky,\n\nA girl stands on a hill.\n\nmasterpiece, general"
    )


def test_empty_caption_takes_its_period_with_it():
    assert get_template("tags-nl").format({"general": ["a"]}) == "a"


def test_extended_falls_back_to_generated():
    assert get_template("nl").format({"generated": "A new caption."}) == "A new caption."
    assert get_template("nl").format({"generated": "No period"}) == "No period."


def test_both_captions_when_the_template_names_both():
    prompt = get_template("tags-nl-generated").format(
        {"general": ["a"], "generated": "Gen.", "extended": "Ext."}
    )
    assert prompt == "Gen.\n\na,\n\nExt."


def test_break_items_join_without_a_comma_after():
    assert Template("t", "<|general|>").format({"general": ["a", "BREAK", "b"]}) == "a, BREAK b"


def test_presets_add_quality_tags_once():
    tags = Tags(general=["scenery"], quality=["masterpiece"])
    completed = get_template("noobai").complete(tags)
    assert completed.quality == ["masterpiece", "best quality", "newest"]
    assert completed.meta == ["absurdres", "highres"]
    assert tags.quality == ["masterpiece"]  # the input is not changed


def test_every_named_template_is_valid_and_formats():
    values = {slot: ["x"] for slot in SLOTS if slot not in ("generated", "extended")}
    for name, template in TEMPLATES.items():
        assert template.format({**values, "extended": "Cap."}), name


def test_user_templates_from_text_and_file(tmp_path):
    assert get_template("<|general|> | <|extended|>").format({"general": ["a"]}) == "a |"
    path = tmp_path / "mine.txt"
    path.write_text("<|characters|>: <|general|>", encoding="utf-8")
    assert get_template(str(path)).format({"general": ["a"], "characters": ["c"]}) == "c: a"


def test_bad_templates_are_clear_errors():
    with pytest.raises(InvalidRequestError, match="unknown slots: nope"):
        get_template("<|nope|>")
    with pytest.raises(InvalidRequestError, match="unknown template"):
        get_template("no-such-template")


def test_caption_wanted_only_when_the_template_uses_it():
    assert get_template("tags-nl").wants_caption(has_nl=False)
    assert not get_template("tags-nl").wants_caption(has_nl=True)
    assert get_template("tags-nl-generated").wants_caption(has_nl=True)
    assert not get_template("tags").wants_caption(has_nl=False)
