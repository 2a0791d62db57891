"""The user's prompt syntax (SD-WebUI / ComfyUI style) in and out.

The model must see clean tags (``blue sky``, ``spark (pokemon go)``); the final prompt must
give the user's syntax back: ``(blue sky:1.2)``, ``[red eyes]``, ``spark \\(pokemon go\\)``,
``BREAK`` and ``<lora:name:0.8>`` where they were. Parsing keeps, for every tag, the text the
user wrote, and anchors BREAK and extra networks to the tag before them.

Grammar (the de-facto standard of SD-WebUI): ``(x)`` multiplies the weight by 1.1, ``[x]``
divides it by 1.1, ``(x:1.3)`` sets the factor, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are
literal characters, unbalanced brackets apply to the end, ``BREAK`` splits chunks, and
``<name:args>`` is an extra network (LoRA, hypernetwork, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_ATTENTION_TOKEN = re.compile(
    r"""
    \\[\\()\[\]]                      # escaped bracket or backslash
  | \\                                # lone backslash
  | \(|\[                             # openers
  | :\s*([+-]?[.\d]+)\s*\)            # weighted closer
  | \)|\]                             # closers
  | [^\\()\[\]:]+                     # text
  | :                                 # a colon that is not a weight
    """,
    re.X,
)
_ITEM_SEPARATOR = re.compile(r"[,\n]|(\bBREAK\b)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SENTINEL = re.compile(r"^\x00(\d+)\x00$")
_ROUND, _SQUARE = 1.1, 1 / 1.1
BREAK = "BREAK"


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (literal text, weight) chunks; brackets and escapes are resolved."""
    chunks: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            chunks.append([token[-1], 1.0])
        elif token == "(":
            round_open.append(len(chunks))
        elif token == "[":
            square_open.append(len(chunks))
        elif weight is not None and round_open:
            scale(round_open.pop(), _parse_weight(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), _SQUARE)
        else:
            chunks.append([token, 1.0])
    for start in round_open:
        scale(start, _ROUND)
    for start in square_open:
        scale(start, _SQUARE)
    return [(text, weight) for text, weight in chunks]


def _parse_weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "1.2.3": SD-WebUI would fail; we keep the text weight-neutral
        return 1.0


def format_weight(weight: float) -> str:
    return f"{weight:.4g}"


def escape(text: str) -> str:
    """Escape brackets so SD-WebUI reads them as characters (``spark \\(pokemon go\\)``)."""
    return re.sub(r"([()\[\]])", r"\\\1", text)


@dataclass(frozen=True)
class PromptTag:
    """One tag of the user's prompt: the clean text, its weight, and how the user wrote it."""

    text: str
    weight: float = 1.0
    written: str = ""

    def render(self) -> str:
        if self.written:
            return self.written
        if abs(self.weight - 1.0) < 1e-6:
            return escape(self.text)
        return f"({escape(self.text)}:{format_weight(self.weight)})"


@dataclass(frozen=True)
class Marker:
    """``BREAK`` or an extra network, placed after the tag ``after`` (None: at the start)."""

    text: str
    after: str | None


@dataclass
class UserPrompt:
    tags: list[PromptTag] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)

    @property
    def clean_tags(self) -> list[str]:
        return [tag.text for tag in self.tags]


def parse_tag_prompt(text: str) -> UserPrompt:
    """Parse a comma- or newline-separated tag prompt."""
    text = _CONTROL.sub(" ", text)
    networks: list[str] = []

    def stash(match: re.Match[str]) -> str:
        networks.append(match.group(0))
        return f",\x00{len(networks) - 1}\x00,"

    text = _EXTRA_NETWORK.sub(stash, text)
    prompt = UserPrompt()
    for raw, pieces in _items(text):
        sentinel = _SENTINEL.match(raw)
        if raw == BREAK or sentinel:
            marker = BREAK if raw == BREAK else networks[int(sentinel.group(1))]
            prompt.markers.append(Marker(marker, prompt.tags[-1].text if prompt.tags else None))
        else:
            prompt.tags.append(_item_tag(raw, pieces))
    return prompt


def _split(text: str) -> list[str]:
    """Split at commas, newlines and BREAK; BREAK stays as an item of its own."""
    parts, position = [], 0
    for match in _ITEM_SEPARATOR.finditer(text):
        parts.append(text[position : match.start()])
        if match.group(1):
            parts.append(BREAK)
        position = match.end()
    parts.append(text[position:])
    return parts


def _items(text: str) -> list[tuple[str, list[tuple[str, float]]]]:
    """Pair each raw item with its weighted pieces. Weights come from the whole prompt, so
    ``(a, b:1.2)`` gives both items 1.2 although neither item is balanced on its own.
    Separators only occur inside text tokens, so both splits yield the same items."""
    items: list[list[tuple[str, float]]] = [[]]
    for chunk_text, weight in parse_attention(text):
        parts = _split(chunk_text)
        items[-1].append((parts[0], weight))
        items.extend([(part, weight)] for part in parts[1:])
    raws = _split(text)
    if len(raws) != len(items):  # e.g. a newline inside "(x:\n1.2)": keep weights only
        raws = [""] * len(items)
    pairs = zip(raws, items, strict=True)
    return [(raw.strip(), pieces) for raw, pieces in pairs if _clean(pieces)]


def _clean(pieces: list[tuple[str, float]]) -> str:
    return " ".join("".join(text for text, _ in pieces).split())


def _weighted(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(" ".join(t.split()), round(w, 6)) for t, w in pieces if t.strip()]


def _balanced(raw: str) -> bool:
    """True when every bracket of ``raw`` closes inside it, so it can be pasted back alone."""
    stack: list[str] = []
    for match in _ATTENTION_TOKEN.finditer(raw):
        token = match.group(0)
        if token in ("(", "["):
            stack.append(token)
        elif token == "]" or (token.endswith(")") and not token.startswith("\\")):
            opener = "[" if token == "]" else "("
            if not stack or stack.pop() != opener:
                return False
    return not stack


def _item_tag(raw: str, pieces: list[tuple[str, float]]) -> PromptTag:
    """The tag of one item; it keeps the user's text when that text means the same alone."""
    clean = _clean(pieces)
    weights = [w for text, w in pieces if text.strip()]
    # "blue (sky)" has two weights; a rebuilt form uses the strongest for the whole tag.
    weight = max(weights, key=lambda w: abs(w - 1.0)) if weights else 1.0
    if _balanced(raw) and _weighted(parse_attention(raw)) == _weighted(pieces):
        return PromptTag(clean, weight, raw)
    return PromptTag(clean, weight)


@dataclass(frozen=True)
class NaturalPrompt:
    """A natural-language prompt: the clean text, weighted phrases, and stripped markers."""

    text: str
    weighted: tuple[tuple[str, float], ...] = ()
    markers: tuple[str, ...] = ()

    def render(self, output: str) -> str:
        """Escape brackets in the model's text and put the user's weights back on the first
        occurrence of each weighted phrase that survived."""
        rendered = escape(output)
        for phrase, weight in self.weighted:
            target = escape(phrase)
            if target in rendered:
                rendered = rendered.replace(target, f"({target}:{format_weight(weight)})", 1)
        return rendered


def parse_nl_prompt(text: str) -> NaturalPrompt:
    text = _CONTROL.sub(" ", text)
    markers = tuple(m.group(0) for m in _EXTRA_NETWORK.finditer(text))
    text = _EXTRA_NETWORK.sub(" ", text)
    chunks = parse_attention(text)
    clean = " ".join("".join(t for t, _ in chunks).replace(BREAK, " ").split())
    clean = re.sub(r"\s+([,.!?;:])", r"\1", clean)
    weighted = tuple(
        (" ".join(t.split()), w) for t, w in chunks if t.strip() and abs(w - 1.0) > 1e-6
    )
    return NaturalPrompt(clean, weighted, markers)


__all__ = [
    "BREAK",
    "Marker",
    "NaturalPrompt",
    "PromptTag",
    "UserPrompt",
    "escape",
    "format_weight",
    "parse_attention",
    "parse_nl_prompt",
    "parse_tag_prompt",
]
