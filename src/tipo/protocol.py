"""The model-facing protocol: the exact text a TIPO checkpoint was trained on, and its parser.

A prompt is one ``key: value`` line per field::

    rating: general                      <- metadata lines, each only when non-empty
    aspect ratio: 1.0
    target: <|long|> <|tag_to_long|>     <- length, task, gen_meta tokens
    tag: 1girl, scenery                  <- content fields in the task's order
    long: a girl on a hill

The builder is byte-identical to the reference (tipo-kgen 0.3.1), because the released weights
were trained on exactly this text; user text is sanitised first so it cannot add lines or special
tokens. The parser reads the model's continuation back into fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .errors import InvalidRequestError

# The 13 tokens TIPO adds to the LLaMA vocabulary, in id order from FIRST_TIPO_TOKEN_ID.
TIPO_TOKENS: tuple[str, ...] = (
    "<|empty|>",
    "<|very_short|>",
    "<|short|>",
    "<|long|>",
    "<|very_long|>",
    "<|tag_to_long|>",
    "<|long_to_tag|>",
    "<|short_to_tag|>",
    "<|short_to_long|>",
    "<|tag_to_short_to_long|>",
    "<|short_to_tag_to_long|>",
    "<|short_to_long_to_tag|>",
    "<|gen_meta|>",
)
FIRST_TIPO_TOKEN_ID = 32000
LLAMA_CONTROL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>")
EMPTY_TOKEN = "<|empty|>"
GEN_META_TOKEN = "<|gen_meta|>"


class Length(str, Enum):
    """Length bucket of the output. Tag and NL limits are per bucket (protocol doc §5)."""

    VERY_SHORT = "very_short"
    SHORT = "short"
    LONG = "long"
    VERY_LONG = "very_long"

    @classmethod
    def parse(cls, value: str | Length) -> Length:
        if isinstance(value, Length):
            return value
        key = str(value).strip().lower().replace(" ", "_").replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidRequestError(
                f"unknown length {value!r}", hint=f"use one of: {choices}"
            ) from None

    @property
    def tag_range(self) -> tuple[int, int]:
        """(minimum, maximum) number of tags."""
        return _TAG_RANGE[self]

    @property
    def nl_range(self) -> tuple[int, int | None]:
        """(minimum, maximum) number of sentences; None means unbounded."""
        return _NL_RANGE[self]


_TAG_RANGE = {
    Length.VERY_SHORT: (6, 18),
    Length.SHORT: (18, 36),
    Length.LONG: (36, 54),
    Length.VERY_LONG: (54, 72),
}
_NL_RANGE: dict[Length, tuple[int, int | None]] = {
    Length.VERY_SHORT: (1, 2),
    Length.SHORT: (2, 4),
    Length.LONG: (4, 8),
    Length.VERY_LONG: (8, None),
}


class Task(str, Enum):
    """The seven trained tasks. Plain tag continuation is ``task=None``."""

    TAG_TO_LONG = "tag_to_long"
    LONG_TO_TAG = "long_to_tag"
    SHORT_TO_TAG = "short_to_tag"
    SHORT_TO_LONG = "short_to_long"
    TAG_TO_SHORT_TO_LONG = "tag_to_short_to_long"
    SHORT_TO_TAG_TO_LONG = "short_to_tag_to_long"
    SHORT_TO_LONG_TO_TAG = "short_to_long_to_tag"

    @classmethod
    def parse(cls, value: str | Task | None) -> Task | None:
        if value is None or isinstance(value, Task):
            return value
        key = str(value).strip().lower()
        if key in ("", "none", "tag"):
            return None
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidRequestError(
                f"unknown task {value!r}", hint=f"use one of: {choices}, or null for tags"
            ) from None

    @property
    def fields(self) -> tuple[str, ...]:
        """Content fields in prompt order, e.g. ('short', 'tag', 'long')."""
        return tuple(self.value.split("_to_"))


def task_fields(task: Task | None) -> tuple[str, ...]:
    return task.fields if task is not None else ("tag",)


def nl_field(task: Task | None) -> str:
    """Where a natural-language input goes: ``short`` if the task has it, else ``long``."""
    return "short" if task is not None and "short" in task.fields else "long"


# Metadata keys in the reference's order; training shuffled them, so any order is in-distribution.
META_KEYS: tuple[str, ...] = (
    "meta",
    "rating",
    "artist",
    "characters",
    "copyrights",
    "quality",
    "aspect ratio",
)
_META_ALIASES = {
    "aspect_ratio": "aspect ratio",
    "character": "characters",
    "copyright": "copyrights",
}

# Tags that the reference writes first in the tag line (protocol doc §6, category "special").
SPECIAL_TAGS: frozenset[str] = frozenset(
    ["1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple girls"]
    + ["1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple boys", "male focus"]
    + ["1other", "2others", "3others", "4others", "5others", "6+others", "multiple others"]
)


# --- sanitising user text --------------------------------------------------------------------

# Anything that would start a new protocol line or is not printable text becomes one space.
_LINE_BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]+")
_CONTROL_STRINGS = re.compile("|".join(re.escape(t) for t in (*TIPO_TOKENS, *LLAMA_CONTROL_TOKENS)))


def sanitize_field(text: str) -> str:
    """Make user text safe to put inside one protocol field.

    Line breaks and control characters become spaces (no injected ``target:`` lines), and the
    text of special tokens is removed until none is left (``<|gen<|empty|>_meta|>`` included),
    so user input can never be tokenised into a control token. Plain text passes unchanged.
    """
    text = _LINE_BREAKING.sub(" ", text)
    while True:
        cleaned = _CONTROL_STRINGS.sub("", text)
        if cleaned == text:
            return text
        text = cleaned


# --- the request and the builder -----------------------------------------------------------


def format_aspect_ratio(value: float) -> str:
    """Training wrote width/height with one decimal (``0.7``)."""
    if not value > 0 or value == float("inf"):
        raise InvalidRequestError(f"aspect ratio must be a positive number, got {value!r}")
    return f"{value:.1f}"


@dataclass(frozen=True)
class ModelRequest:
    """Everything that goes into one model-facing prompt.

    ``tags`` is the content of the ``tag`` field (special tags are moved first); ``meta`` holds
    the metadata lines in the order written; ``expand`` means the model continues the task's last
    field, which is then the end of the prompt, instead of writing it from its key.
    """

    tags: tuple[str, ...] = ()
    nl: str = ""
    task: Task | None = None
    length: Length | None = None
    meta: tuple[tuple[str, str], ...] = ()
    gen_meta: bool = False
    expand: bool = True

    @classmethod
    def create(
        cls,
        tags: Iterable[str] = (),
        nl: str = "",
        task: str | Task | None = None,
        length: str | Length | None = None,
        meta: Mapping[str, str | Sequence[str] | float | None] | None = None,
        gen_meta: bool = False,
        expand: bool = True,
    ) -> ModelRequest:
        """Validate loose input (strings, lists, JSON values) into a request."""
        if isinstance(tags, str):
            raise InvalidRequestError("tags must be a list of strings, not one string")
        if not isinstance(nl, str):
            raise InvalidRequestError(f"nl must be a string, got {type(nl).__name__}")
        return cls(
            tags=tuple(_as_str(t, "tag") for t in tags),
            nl=nl,
            task=Task.parse(task),
            length=Length.parse(length) if length else None,
            meta=normalize_meta(meta or {}),
            gen_meta=bool(gen_meta),
            expand=bool(expand),
        )


def _as_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"each {what} must be a string, got {value!r}")
    return value


def normalize_meta(
    meta: Mapping[str, str | Sequence[str] | float | None],
) -> tuple[tuple[str, str], ...]:
    """Metadata as ``(key, value)`` lines in the reference order; lists are joined with ", "."""
    lines: dict[str, str] = {}
    for raw_key, value in meta.items():
        key = _META_ALIASES.get(raw_key.strip().lower(), raw_key.strip().lower())
        if key not in META_KEYS:
            raise InvalidRequestError(
                f"unknown metadata key {raw_key!r}", hint=f"use one of: {', '.join(META_KEYS)}"
            )
        if value is None:
            continue
        if key == "aspect ratio" and isinstance(value, (int, float)):
            text = format_aspect_ratio(float(value))
        elif isinstance(value, str):
            text = value
        else:
            text = ", ".join(_as_str(v, f"{key} value") for v in value)
        lines[key] = text
    return tuple((key, lines[key]) for key in META_KEYS if key in lines)


def _special_first(tags: Sequence[str]) -> list[str]:
    special = [t for t in tags if t.replace("_", " ") in SPECIAL_TAGS]
    return special + [t for t in tags if t.replace("_", " ") not in SPECIAL_TAGS]


def build_prompt(request: ModelRequest) -> str:
    """The exact model-facing prompt of ``request`` (byte-identical to the reference builder)."""
    lines = [f"{key}: {sanitize_field(value)}\n" for key, value in request.meta if value]
    target = ""
    if request.length is not None:
        target += f"<|{request.length.value}|>"
    if request.task is not None:
        target += f" <|{request.task.value}|>"
    if request.gen_meta:
        target += f" {GEN_META_TOKEN}"
    lines.append(f"target: {target.strip()}\n")

    tags = [sanitize_field(t) for t in request.tags]
    # The reference joins, then trims the outer whitespace and commas of the joined line.
    content = {"tag": ", ".join(_special_first(tags)).strip().strip(",")}
    nl = sanitize_field(request.nl)
    if nl:
        content[nl_field(request.task)] = nl
    order = task_fields(request.task)
    for index, key in enumerate(order):
        value = content.get(key, "")
        if value.strip():
            lines.append(f"{key}: {value}\n")
        elif index < len(order) - 1:
            lines.append(f"{key}: \n")
    prompt = "".join(lines)
    return prompt.strip() if request.expand else f"{prompt}{order[-1]}:"


# --- the parser ---------------------------------------------------------------------------

# A block starts at a line "key:" where key looks like a protocol key (lowercase words), so a
# caption line such as "She said: hi" does not end the caption.
_BLOCK = re.compile(r"^([a-z][a-z0-9_ ]{0,31}):(.*)$")
_TIPO_TOKEN_TEXT = re.compile("|".join(re.escape(t) for t in TIPO_TOKENS))


@dataclass
class ModelOutput:
    """A parsed prompt + continuation: the first block of each key wins, as in training data.

    ``tags`` is the raw tag list of the ``tag`` field; ``extended`` is the ``short`` field,
    ``generated`` the ``long`` field; ``meta`` holds the other lines split on commas.
    """

    tags: list[str] = field(default_factory=list)
    extended: str | None = None
    generated: str | None = None
    meta: dict[str, list[str]] = field(default_factory=dict)


def _split_list(value: str) -> list[str]:
    items = (_TIPO_TOKEN_TEXT.sub("", part).strip() for part in value.split(","))
    return [item for item in items if item]


def _blocks(text: str) -> list[tuple[str, str]]:
    blocks: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        match = _BLOCK.match(line)
        if match:
            blocks.append((match.group(1).strip(), [match.group(2)]))
        elif blocks:
            blocks[-1][1].append(line)
    return [(key, "\n".join(body).strip()) for key, body in blocks]


def parse_output(text: str) -> ModelOutput:
    """Parse a model-facing prompt followed by the model's continuation (EOS removed)."""
    output = ModelOutput()
    seen: set[str] = set()
    for key, value in _blocks(text):
        if key in seen or key == "target":
            continue
        seen.add(key)
        if key == "tag":
            output.tags = _split_list(value)
        elif key in ("short", "long"):
            nl = _TIPO_TOKEN_TEXT.sub("", value).strip()
            if key == "short":
                output.extended = nl or None
            else:
                output.generated = nl or None
        else:
            output.meta[key] = _split_list(value)
    return output


__all__ = [
    "EMPTY_TOKEN",
    "FIRST_TIPO_TOKEN_ID",
    "GEN_META_TOKEN",
    "META_KEYS",
    "SPECIAL_TAGS",
    "TIPO_TOKENS",
    "Length",
    "ModelOutput",
    "ModelRequest",
    "Task",
    "build_prompt",
    "format_aspect_ratio",
    "nl_field",
    "normalize_meta",
    "parse_output",
    "sanitize_field",
    "task_fields",
]
