"""Output templates: how the expanded prompt is laid out for the image model.

A template is text with slots ``<|special|> <|characters|> <|copyrights|> <|artist|>
<|general|> <|meta|> <|quality|> <|rating|> <|generated|> <|extended|>``. An empty slot vanishes
with the separator after it; ``<|extended|>`` falls back to the generated caption when the user
gave no sentence. Presets for model families add the quality tags those models were trained
with (only to the formatted prompt, never to what TIPO sees).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequestError
from .tags import Tags

SLOTS: tuple[str, ...] = (
    "special",
    "characters",
    "copyrights",
    "artist",
    "general",
    "meta",
    "quality",
    "rating",
    "generated",
    "extended",
)
NL_SLOTS = ("generated", "extended")
_SLOT = re.compile(r"<\|([a-z_]+)\|>")


@dataclass(frozen=True)
class Template:
    """``add`` lists tags a preset appends to a slot when they are not already there."""

    name: str
    text: str
    description: str = ""
    add: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted({s for s in _SLOT.findall(self.text) if s not in SLOTS})
        if unknown:
            raise InvalidRequestError(
                f"template {self.name!r} has unknown slots: {', '.join(unknown)}",
                hint="slots are " + " ".join(f"<|{s}|>" for s in SLOTS),
            )
        if not _SLOT.search(self.text):
            raise InvalidRequestError(
                f"template {self.name!r} has no slot", hint="e.g. <|general|>"
            )

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(_SLOT.findall(self.text))

    def wants_caption(self, has_nl: bool) -> bool:
        """Does formatting need a newly generated caption (the planner's extra NL step)?"""
        return "generated" in self.slots or ("extended" in self.slots and not has_nl)

    def complete(self, tags: Tags) -> Tags:
        """``tags`` plus the preset's tags that are missing from them."""
        completed = tags.copy()
        for slot, extra in self.add:
            completed[slot] = [*completed[slot], *(t for t in extra if t not in completed[slot])]
        return completed

    def format(self, values: Mapping[str, Sequence[str] | str]) -> str:
        """Fill the slots: lists are joined with ", ", text is used as is."""
        filled = {slot: _join(values.get(slot, "")) for slot in SLOTS}
        if not filled["extended"] and "generated" not in self.slots:
            filled["extended"] = filled["generated"]
        return _tidy(_substitute(self.text, filled))


def _join(value: Sequence[str] | str) -> str:
    if isinstance(value, str):
        return value.strip()
    return ", ".join(v for v in value if v).replace("BREAK, ", "BREAK ")


def _substitute(text: str, filled: Mapping[str, str]) -> str:
    out, position = [], 0
    for match in _SLOT.finditer(text):
        out.append(text[position : match.start()])
        value, position = filled[match.group(1)], match.end()
        rest = text[position:]
        if not value:  # an empty slot takes its separator with it
            position += len(rest) - len(re.sub(r"^[ \t]*[,.]?[ \t]*", "", rest))
        elif value[-1] in ".!?" and rest.startswith("."):
            position += 1  # "sentence." already ends with its own punctuation
        out.append(value)
    out.append(text[position:])
    return "".join(out)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    lines = ["" if not line.strip(" \t,.") else line for line in lines]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    text = re.sub(r"(,\s*)+,", ",", text)
    return text.strip().strip(",").strip()


_TAGS_BLOCK = "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|general|>,"
_TAIL = "<|quality|>, <|meta|>, <|rating|>"

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("tags", f"{_TAGS_BLOCK}\n\n{_TAIL}", "tags only, grouped by category"),
        Template("nl", "<|extended|>.", "the caption only"),
        Template(
            "tags-nl",
            f"{_TAGS_BLOCK}\n\n<|extended|>.\n\n{_TAIL}",
            "tags, then the caption (the reference's recommended layout)",
        ),
        Template(
            "nl-tags",
            "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|extended|>.\n\n"
            f"<|general|>,\n\n{_TAIL}",
            "the caption before the general tags",
        ),
        Template(
            "tags-nl-generated",
            "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|generated|>.\n\n"
            f"<|general|>,\n\n<|extended|>.\n\n{_TAIL}",
            "tags, the user's caption extended, and a second generated caption",
        ),
        Template(
            "kohaku-xl",
            "<|special|>, <|characters|>, <|copyrights|>,\n<|artist|>,\n\n<|general|>,\n\n"
            f"<|extended|>.\n\n{_TAIL}",
            "Kohaku XL (Epsilon/Zeta): category order, caption, quality/year/meta/rating last",
            (("quality", ("masterpiece", "newest")), ("meta", ("absurdres",))),
        ),
        Template(
            "illustrious",
            "<|special|>, <|characters|>, <|copyrights|>, <|artist|>,\n\n<|general|>,\n\n"
            f"<|extended|>.\n\n{_TAIL}",
            "Illustrious XL",
            (
                ("quality", ("masterpiece", "best quality", "very aesthetic")),
                ("meta", ("absurdres",)),
            ),
        ),
        Template(
            "noobai",
            "<|special|>, <|characters|>, <|copyrights|>, <|artist|>,\n\n<|general|>,\n\n"
            f"<|extended|>.\n\n{_TAIL}",
            "NoobAI XL",
            (
                ("quality", ("masterpiece", "best quality", "newest")),
                ("meta", ("absurdres", "highres")),
            ),
        ),
        Template(
            "animagine",
            "<|special|>, <|characters|>, <|copyrights|>, <|rating|>, <|artist|>,\n\n"
            "<|general|>,\n\n<|extended|>.\n\n<|meta|>, <|quality|>",
            "Animagine XL 4: subject, character, series, rating, then the rest, quality last",
            (("quality", ("masterpiece", "high score", "great score")), ("meta", ("absurdres",))),
        ),
        Template(
            "pony",
            "<|quality|>, <|rating|>,\n<|special|>, <|characters|>, <|copyrights|>, "
            "<|artist|>,\n\n<|general|>,\n\n<|extended|>.",
            "Pony Diffusion V6: score tags first",
            (("quality", ("score_9", "score_8_up", "score_7_up", "source_anime")),),
        ),
        Template(
            "flux",
            "<|extended|>.\n\n<|special|>, <|characters|>, <|copyrights|>, <|general|>.",
            "Flux / SD3 style models: the caption first, tags as extra detail, no quality tags",
        ),
    )
}
TEMPLATES["sd3"] = TEMPLATES["flux"]
# The reference extension's format names, so saved settings keep working.
TEMPLATES["tag only (DTG mode)"] = TEMPLATES["tags"]
TEMPLATES["NL only (Tag to NL)"] = TEMPLATES["nl"]
TEMPLATES["Both, tag first (recommend)"] = TEMPLATES["tags-nl"]
TEMPLATES["Both, NL first (recommend)"] = TEMPLATES["nl-tags"]
TEMPLATES["Both + generated NL"] = TEMPLATES["tags-nl-generated"]
DEFAULT_TEMPLATE = "tags-nl"


def has_slots(text: str) -> bool:
    """Does ``text`` contain a template slot such as ``<|general|>``?"""
    return bool(_SLOT.search(text))


def get_template(spec: str | Template | None = None) -> Template:
    """A template by name, literal text (contains a slot), or path of a text file."""
    if isinstance(spec, Template):
        return spec
    if spec is None or spec == "":
        return TEMPLATES[DEFAULT_TEMPLATE]
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if has_slots(spec):
        return Template("custom", spec)
    path = Path(spec).expanduser()
    if len(spec) < 4096 and path.is_file():
        return Template(path.name, path.read_text(encoding="utf-8"))
    names = ", ".join(n for n in TEMPLATES if " " not in n)
    raise InvalidRequestError(
        f"unknown template {spec!r}",
        hint=f"use a name ({names}), template text with <|slots|>, or a file path",
    )


__all__ = ["DEFAULT_TEMPLATE", "SLOTS", "TEMPLATES", "Template", "get_template", "has_slots"]
