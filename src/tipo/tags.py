"""Tag categories and the tag database.

Categories follow Danbooru plus the three small sets TIPO treats apart (special, quality,
rating). The bundled database (artists, characters, copyrights, meta tags: ~957k names, as in
the reference; plus ~31k general tags, used only as the vocabulary of the "only real tags"
decoding mode) is a zlib-compressed, sorted, newline-separated text per category; it is
decompressed on first use and searched by bisection on the text itself, so loading costs one
decompression and no Python set of a million strings.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cache
from pathlib import Path

from .errors import InvalidRequestError
from .protocol import SPECIAL_TAGS


class Category(str, Enum):
    SPECIAL = "special"
    CHARACTERS = "characters"
    COPYRIGHTS = "copyrights"
    ARTIST = "artist"
    GENERAL = "general"
    META = "meta"
    QUALITY = "quality"
    RATING = "rating"


QUALITY_TAGS: frozenset[str] = frozenset(
    ["masterpiece", "best quality", "great quality", "good quality", "normal quality"]
    + ["low quality", "worse quality", "very aesthetic", "aesthetic", "displeasing"]
    + ["very displeasing", "newest", "recent", "mid", "early", "old"]
    + ["score_9", "score_8_up", "score_7_up", "score_6_up", "score_5_up", "score_4_up"]
    + ["source_anime", "source_cartoon", "source_furry", "source_pony"]
)
RATING_TAGS: frozenset[str] = frozenset(["safe", "general", "sfw", "sensitive", "nsfw", "explicit"])
_FIXED_SETS = (
    (Category.SPECIAL, SPECIAL_TAGS),
    (Category.QUALITY, QUALITY_TAGS),
    (Category.RATING, RATING_TAGS),
)
_DB_CATEGORIES = (Category.ARTIST, Category.CHARACTERS, Category.COPYRIGHTS, Category.META)
# Category numbers of the SD-WebUI tag-autocomplete CSV (Danbooru's own numbering).
CSV_CATEGORIES = {
    0: Category.GENERAL,
    1: Category.ARTIST,
    3: Category.COPYRIGHTS,
    4: Category.CHARACTERS,
    5: Category.META,
}
DATABASE_RESOURCE = "tags.zlib"


@dataclass
class Tags:
    """Tags by category, each list in output order."""

    special: list[str] = field(default_factory=list)
    characters: list[str] = field(default_factory=list)
    copyrights: list[str] = field(default_factory=list)
    artist: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)
    rating: list[str] = field(default_factory=list)

    def __getitem__(self, category: Category | str) -> list[str]:
        return getattr(self, Category(category).value)

    def __setitem__(self, category: Category | str, value: list[str]) -> None:
        setattr(self, Category(category).value, value)

    def items(self) -> Iterator[tuple[Category, list[str]]]:
        for f in fields(self):
            yield Category(f.name), getattr(self, f.name)

    def all(self) -> list[str]:
        return [tag for _, tags in self.items() for tag in tags]

    def copy(self) -> Tags:
        return Tags(**{c.value: list(tags) for c, tags in self.items()})

    def to_dict(self) -> dict[str, list[str]]:
        return {c.value: list(tags) for c, tags in self.items()}


class SortedNames:
    """Membership test on a sorted, newline-separated text, by bisection on the text itself.

    ``text[start:stop]`` holds the lines; sharing one big string between categories avoids
    copying megabytes at load time.
    """

    def __init__(self, text: str, start: int = 0, stop: int | None = None) -> None:
        self._text = text
        self._start = start
        self._stop = len(text) if stop is None else stop

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or "\n" in name:
            return False
        text, lo, hi = self._text, self._start, self._stop
        while lo < hi:  # lo and hi are always at line starts (or at the end)
            mid = (lo + hi) // 2
            start = text.rfind("\n", lo, mid) + 1 or lo
            end = text.find("\n", start, hi)
            end = hi if end < 0 else end
            line = text[start:end]
            if line == name:
                return True
            if line < name:
                lo = end + 1
            else:
                hi = start
        return False

    def __iter__(self) -> Iterator[str]:
        body = self._text[self._start : self._stop]
        return iter(body.split("\n")) if body else iter(())

    def __len__(self) -> int:
        if self._stop <= self._start:
            return 0
        return self._text.count("\n", self._start, self._stop) + 1


def encode_database(names: dict[Category, Iterable[str]]) -> bytes:
    """Serialise category lists to the bundled format (used by tools/build_tag_db.py)."""
    sections = []
    for category, items in names.items():
        clean = sorted({n.strip() for n in items if n.strip() and "\n" not in n})
        sections.append(category.value + "\n" + "\n".join(clean))
    return zlib.compress("\x00".join(sections).encode("utf-8"), 9)


def decode_database(blob: bytes) -> dict[Category, SortedNames]:
    text = zlib.decompress(blob).decode("utf-8")
    result, position = {}, 0
    while position < len(text):
        stop = text.find("\x00", position)
        stop = len(text) if stop < 0 else stop
        header_end = text.find("\n", position, stop)
        header_end = stop if header_end < 0 else header_end
        body_start = min(header_end + 1, stop)
        result[Category(text[position:header_end])] = SortedNames(text, body_start, stop)
        position = stop + 1
    return result


@cache
def _bundled_lists() -> dict[Category, SortedNames]:
    from importlib import resources  # only when the database is first needed

    blob = resources.files("tipo").joinpath("data").joinpath(DATABASE_RESOURCE).read_bytes()
    return decode_database(blob)


@dataclass(frozen=True)
class CsvTag:
    name: str
    category: Category
    post_count: int


class TagDatabase:
    """Classifies tags; optionally knows aliases and post counts from a user's tag CSV."""

    def __init__(
        self,
        lists: dict[Category, SortedNames] | None = None,
        csv_tags: dict[str, CsvTag] | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self._lists = lists if lists is not None else {}
        self._csv = csv_tags or {}
        self._aliases = aliases or {}

    @classmethod
    def bundled(cls) -> TagDatabase:
        """The database shipped in the package (from tipo-kgen 0.3.1's tag lists, Apache-2.0)."""
        return cls(_bundled_lists())

    @classmethod
    def empty(cls) -> TagDatabase:
        """Only the fixed special/quality/rating sets: everything else is general."""
        return cls({})

    def with_csv(self, path: str | Path) -> TagDatabase:
        """This database plus the categories, counts and aliases of an autocomplete CSV
        (``name,category,post_count,"alias1,alias2"``, as in SD-WebUI tag-autocomplete)."""
        csv_tags, aliases = read_tag_csv(path)
        return TagDatabase(self._lists, {**self._csv, **csv_tags}, {**self._aliases, **aliases})

    @property
    def has_csv(self) -> bool:
        return bool(self._csv)

    def lookup(self, tag: str) -> tuple[Category, str]:
        """(category, normalised name). Tries the tag as written, then with ``_`` as spaces;
        unknown tags of 4+ characters get ``_`` turned into spaces (``^_^`` stays)."""
        tag = tag.strip()
        spaced = tag.replace("_", " ")
        for candidate in (tag, spaced):
            for category, names in _FIXED_SETS:
                if candidate in names:
                    return category, candidate
            for category in _DB_CATEGORIES:
                names = self._lists.get(category)
                if names is not None and candidate in names:
                    return category, candidate
            known = self._csv.get(candidate)
            if known is not None:
                return known.category, candidate
        return Category.GENERAL, tag if len(tag) < 4 else spaced

    def category(self, tag: str) -> Category:
        return self.lookup(tag)[0]

    def is_known(self, tag: str) -> bool:
        """Whether any list (general included) or the CSV holds the tag, as written or with
        ``_`` as spaces; aliases count (a CSV alias names a real tag)."""
        tag = tag.strip()
        for candidate in dict.fromkeys((tag, tag.replace("_", " "))):
            if any(candidate in names for _, names in _FIXED_SETS):
                return True
            if any(candidate in names for names in self._lists.values()):
                return True
            if candidate in self._csv or self.canonical(candidate) != candidate:
                return True
        return False

    def canonical(self, tag: str) -> str:
        """The CSV's main name for an alias (``longhair`` -> ``long hair``), else the tag."""
        return self._aliases.get(tag) or self._aliases.get(tag.replace(" ", "_")) or tag

    def post_count(self, tag: str) -> int | None:
        known = self._csv.get(tag) or self._csv.get(tag.replace("_", " "))
        return known.post_count if known else None

    def classify(self, tags: Iterable[str]) -> Tags:
        """Split tags by category, keeping their order; empty items are dropped."""
        result = Tags()
        for tag in tags:
            if tag.strip():
                category, name = self.lookup(tag)
                result[category].append(name)
        return result

    def names(self, category: Category) -> Iterator[str]:
        """Every known name of a category (bundled lists, then CSV entries)."""
        for fixed_category, names in _FIXED_SETS:
            if fixed_category == category:
                yield from sorted(names)
        if category in self._lists:
            yield from self._lists[category]
        for tag in self._csv.values():
            if tag.category == category:
                yield tag.name


def read_tag_csv(path: str | Path) -> tuple[dict[str, CsvTag], dict[str, str]]:
    """Read an autocomplete CSV: ``{name: CsvTag}`` and ``{alias: name}``; names use spaces."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"tag CSV not found: {path}")
    tags: dict[str, CsvTag] = {}
    aliases: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            try:
                category = CSV_CATEGORIES.get(int(row[1]), Category.GENERAL)
                count = int(row[2]) if len(row) > 2 and row[2].strip() else 0
            except (IndexError, ValueError):
                if line_number == 1:  # a header line
                    continue
                raise InvalidRequestError(
                    f"{path}:{line_number}: expected name,category,post_count,aliases",
                    hint="use the SD-WebUI tag-autocomplete CSV format",
                ) from None
            raw = row[0].strip()
            name = raw.replace("_", " ") if len(raw) >= 4 else raw
            tags[name] = CsvTag(name, category, count)
            for alias in row[3].split(",") if len(row) > 3 else []:
                if alias.strip():
                    aliases[alias.strip()] = name
    return tags, aliases


__all__ = [
    "CSV_CATEGORIES",
    "QUALITY_TAGS",
    "RATING_TAGS",
    "Category",
    "CsvTag",
    "SortedNames",
    "TagDatabase",
    "Tags",
    "read_tag_csv",
]
