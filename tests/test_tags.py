"""Tag categories: the bundled database, the fixed sets, and a user's autocomplete CSV."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tipo.errors import InvalidRequestError
from tipo.protocol import SPECIAL_TAGS
from tipo.tags import (
    QUALITY_TAGS,
    RATING_TAGS,
    Category,
    SortedNames,
    TagDatabase,
    read_tag_csv,
)

SHARED = Path(os.environ.get("TIPO_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
DANBOORU_CSV = SHARED / "data" / "danbooru.csv"


@pytest.fixture(scope="module")
def db():
    return TagDatabase.bundled()


@pytest.mark.parametrize(
    ("tag", "category", "name"),
    [
        ("1girl", "special", "1girl"),
        ("multiple_girls", "special", "multiple girls"),
        ("hatsune_miku", "characters", "hatsune miku"),
        ("spark (pokemon)", "characters", "spark (pokemon)"),
        ("vocaloid", "copyrights", "vocaloid"),
        ("honkai: star rail", "copyrights", "honkai: star rail"),
        ("ask (askzy)", "artist", "ask (askzy)"),
        ("absurdres", "meta", "absurdres"),
        ("masterpiece", "quality", "masterpiece"),
        ("score_9", "quality", "score_9"),
        ("general", "rating", "general"),
        ("long_hair", "general", "long hair"),
        ("^_^", "general", "^_^"),
    ],
)
def test_bundled_classification(db, tag, category, name):
    assert db.lookup(tag) == (Category(category), name)


def test_bundled_general_names_are_for_the_vocabulary_not_classification(db):
    assert "long hair" in set(db.names(Category.GENERAL))
    assert db.lookup("long_hair") == (Category.GENERAL, "long hair")


def test_fixed_sets_are_not_in_the_lists_so_lookup_order_cannot_matter(db):
    for tag in SPECIAL_TAGS | QUALITY_TAGS | RATING_TAGS:
        for category in (Category.ARTIST, Category.CHARACTERS, Category.COPYRIGHTS, Category.META):
            assert tag not in db._lists[category]


def test_bundled_database_size(db):
    sizes = {c: len(names) for c, names in db._lists.items()}
    assert sizes == {
        Category.ARTIST: 580988,
        Category.CHARACTERS: 322737,
        Category.COPYRIGHTS: 52594,
        Category.META: 939,
        Category.GENERAL: 30782,  # for the tag-vocabulary decoding mode only
    }
    data = Path(__import__("tipo").__file__).parent / "data" / "tags.zlib"
    assert data.stat().st_size < 6_000_000


@given(
    st.sets(st.text(st.characters(blacklist_characters="\n"), min_size=1), max_size=40),
    st.text(st.characters(blacklist_characters="\n"), min_size=1),
)
def test_sorted_names_agrees_with_a_set(names, probe):
    found = SortedNames("\n".join(sorted(names)))
    assert (probe in found) == (probe in names)
    assert all(name in found for name in names)
    assert len(found) == len(names)


def test_classify_keeps_order_and_drops_blanks(db):
    tags = db.classify(["scenery", " ", "1girl", "hatsune miku", "smile"])
    assert tags.general == ["scenery", "smile"] and tags.special == ["1girl"]
    assert tags.all() == ["1girl", "hatsune miku", "scenery", "smile"]


@pytest.fixture(scope="module")
def csv_db(db):
    if not DANBOORU_CSV.is_file():
        pytest.fail(f"{DANBOORU_CSV} is missing: set TIPO_SHARED_DIR to the shared folder")
    return db.with_csv(DANBOORU_CSV)


def test_user_csv_gives_aliases_counts_and_categories(csv_db):
    assert csv_db.canonical("longhair") == "long hair"
    assert csv_db.canonical("sole_female") == "1girl"
    assert csv_db.post_count("long hair") == 4350743
    assert csv_db.post_count("long_hair") == 4350743
    assert csv_db.lookup("highres") == (Category.META, "highres")
    known = list(csv_db.names(Category.GENERAL))
    assert "long hair" in known


def test_bad_csv_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,category\nfoo,notanumber\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError, match=r"bad\.csv:2"):
        read_tag_csv(bad)
    with pytest.raises(InvalidRequestError, match="not found"):
        read_tag_csv(tmp_path / "missing.csv")
