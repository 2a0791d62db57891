"""One raw dataset row, routed to its source and parsed into tags by category and captions.

The three TIPO training sets (docs/tipo-training.md §1.1) have different columns; routing uses
the keys present, as the authors' builder did: ``original_caption`` → GBC10M, ``caption_llava`` →
Coyo-HD-11M, anything else → Danbooru. Pure: no I/O, rows are plain mappings (a parquet row as a
dict, a JSONL object, a kohya sidecar turned into a dict by a reader).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from ..errors import InvalidRequestError

Source = Literal["danbooru", "coyo", "gbc"]
SOURCES: tuple[str, ...] = ("danbooru", "coyo", "gbc")

# Caption columns per source, the names the recipe uses (§1.1).
CAPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "danbooru": ("florence_short", "florence_long", "pixtral_caption", "phi3v_horny"),
    "coyo": ("caption_llava_short", "caption_llava"),
    "gbc": ("short_caption", "original_caption", "detail_caption"),
}

# Record field -> Danbooru metadata column of its tag list.
DANBOORU_COLUMNS = {
    "special": "special",
    "general": "general",
    "artist": "artist",
    "characters": "character",
    "copyrights": "copyright",
    "meta": "meta",
}


def _missing(value: object) -> bool:
    """None, NaN (pandas fills absent parquet cells with it) and blank strings are missing."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def normalize_tag(tag: str, *, all_underscores: bool = False) -> str:
    """Danbooru writes ``long_hair``; TIPO saw ``long hair``. Tags under 4 characters keep their
    underscores (``^_^``, ``o_o`` are emoticons), the same rule as the tag database lookup.
    Coyo's booru/open-images tags replace every underscore (``all_underscores``), as the recipe."""
    tag = tag.strip()
    if all_underscores or len(tag) >= 4:
        tag = tag.replace("_", " ")
    return tag


def parse_tag_list(value: object, *, all_underscores: bool = False) -> tuple[str, ...]:
    """Tags from a list or a string, normalised (:func:`normalize_tag`), empty items dropped.

    The string rule: with a comma it is a comma-separated prompt (``"long hair, smile"``);
    without one it is Danbooru's space-separated field (``"long_hair smile"``), where a space
    separates tags and an underscore is a space inside a tag. So a single multi-word tag without
    underscores must come as a list or end with a comma (``"long hair,"``).
    """
    if _missing(value):
        return ()
    if isinstance(value, str):
        items = value.split(",") if "," in value else value.split()
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        raise InvalidRequestError(f"a tag field must be a string or a list, got {value!r}")
    tags = (normalize_tag(str(item), all_underscores=all_underscores) for item in items)
    return tuple(tag for tag in tags if tag)


def parse_literal_list(value: object) -> tuple[str, ...]:
    """Coyo stores its tag lists as Python literals (``"['dog', 'grass']"``). The authors used
    ``eval``; ``ast.literal_eval`` reads the same literals and cannot run code."""
    if _missing(value):
        return ()
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as error:
            raise InvalidRequestError(f"not a Python list literal: {value[:80]!r}") from error
        if not isinstance(value, (list, tuple)):
            raise InvalidRequestError(f"expected a list literal, got {type(value).__name__}")
    return parse_tag_list(list(value), all_underscores=True)  # type: ignore[call-overload]


def _first(value: object) -> str | None:
    """``quality``/``rating`` may be a list or a string; the recipe takes the first element."""
    if _missing(value):
        return None
    if isinstance(value, str):
        return value.strip()
    items = list(value.tolist() if hasattr(value, "tolist") else value)  # type: ignore[call-overload]
    return str(items[0]).strip() if items and not _missing(items[0]) else None


def _int(value: object) -> int | None:
    if _missing(value):
        return None
    number = int(value)  # type: ignore[call-overload]
    return number if number > 0 else None


@dataclass(frozen=True)
class TrainingRecord:
    """One image's annotations: tags by category, size and captions by recipe column name.

    ``general`` for Coyo holds its open-images tags followed by its booru tags (lower-case,
    underscores as spaces), the list the recipe draws from. GBC records have captions only.
    """

    source: Source
    special: tuple[str, ...] = ()
    general: tuple[str, ...] = ()
    artist: tuple[str, ...] = ()
    characters: tuple[str, ...] = ()
    copyrights: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()
    quality: str | None = None
    rating: str | None = None
    width: int | None = None
    height: int | None = None
    captions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InvalidRequestError(f"unknown source {self.source!r}", hint="danbooru/coyo/gbc")
        unknown = set(self.captions) - set(CAPTION_FIELDS[self.source])
        if unknown:
            raise InvalidRequestError(
                f"caption fields {sorted(unknown)} do not belong to source {self.source}",
                hint=f"use: {', '.join(CAPTION_FIELDS[self.source])}",
            )
        # Frozen and hashable-ish: keep a read-only copy so a caller's dict cannot change it.
        object.__setattr__(self, "captions", MappingProxyType(dict(self.captions)))

    def caption(self, name: str) -> str | None:
        return self.captions.get(name)

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> TrainingRecord:
        """Route and parse one raw row as the recipe does (§1.1)."""
        if "original_caption" in row:
            return cls(source="gbc", captions=_captions(row, "gbc"))
        if "caption_llava" in row:
            tags = parse_literal_list(row.get("tags_open_images"))
            tags += parse_literal_list(row.get("tags_booru"))
            general = tuple(tag.lower() for tag in tags)
            return cls(source="coyo", general=general, captions=_captions(row, "coyo"))
        lists = {name: parse_tag_list(row.get(key)) for name, key in DANBOORU_COLUMNS.items()}
        return cls(
            source="danbooru",
            **lists,
            quality=_first(row.get("quality")),
            rating=_first(row.get("rating")),
            width=_int(row.get("width")),
            height=_int(row.get("height")),
            captions=_captions(row, "danbooru"),
        )


def _captions(row: Mapping[str, object], source: str) -> dict[str, str]:
    found = {name: row.get(name) for name in CAPTION_FIELDS[source]}
    return {name: str(text).strip() for name, text in found.items() if not _missing(text)}


__all__ = [
    "CAPTION_FIELDS",
    "DANBOORU_COLUMNS",
    "SOURCES",
    "Source",
    "TrainingRecord",
    "normalize_tag",
    "parse_literal_list",
    "parse_tag_list",
]
