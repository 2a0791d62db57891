"""A step's length targets as a grammar, for serving engines that constrain decoding themselves.

Remote engines (vLLM, SGLang, llama.cpp's server) cannot run our ``FieldConstraint``; they take a
grammar instead. ``continuation_spec`` reads what a step's model writes from the constraint the
run made for it (the fields after the prompt, how many tags or sentences each must hold given
what the prompt already has), and three writers turn that into

* ``to_gbnf``: llama.cpp's GBNF (also xgrammar's EBNF: SGLang ``ebnf``, vLLM ``grammar``);
* ``to_regex``: a regular expression matched against the whole continuation (vLLM
  ``structured_outputs.regex``, SGLang ``regex``); no look-around, no back-references;
* ``to_lark``: llguidance's Lark, the only one that can also hold the tag vocabulary and the
  bans (``TAG: /…/ & ~/…/``): terminals are lexemes, so 30k tag literals stay cheap.

The language of a continuation, field by field (``tag:`` shown; captions are alike)::

    <open field>  , tag, tag … \\n tag: tag, tag … \\n long: Sentence. Sentence. …  [\\n meta…]

A tag is 1..``tag_chars`` characters with no comma or newline, not starting with a space, and
tags are joined by ", " exactly as in training; a sentence is 1..``sentence_chars`` characters
without newline or ``.!?``, ended by one of them, and sentences are joined by one space. The
counts are syntactic: a duplicate or an artist name counts here but not in post-processing, so
the minimum can still come back short (the run's ``retries`` then apply) and the maximum holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..bans import BanPattern
from ..protocol import Length
from ..tags import Category

if TYPE_CHECKING:
    from .fields import FieldConstraint

TAG_CHARS = 48  # a longer "tag" is a runaway: the longest common Danbooru tags have ~30
SENTENCE_CHARS = 240
Start = Literal["new", "empty", "after_item", "in_sentence"]


@dataclass(frozen=True)
class FieldSpec:
    """One field of the continuation: its key, what it holds, how many items this continuation
    adds (``high`` None: no limit) and where it starts: ``new`` (``\\nkey:`` is written
    first), ``empty`` (the prompt ends at ``key:``), ``after_item`` (after a complete tag or
    sentence: the next one needs its separator) or ``in_sentence`` (a caption's last sentence
    is open: the continuation first ends it)."""

    key: str
    kind: Literal["tag", "nl"]
    low: int
    high: int | None
    start: Start

    def __post_init__(self) -> None:
        if self.low < 0 or (self.high is not None and self.high < self.low):
            raise ValueError(f"bad item range {self.low}..{self.high} for {self.key}")


@dataclass(frozen=True)
class ContinuationSpec:
    """Everything a step's continuation must be. ``meta_tail``: after the last field the model
    may write metadata lines (``gen_meta``). ``bans`` and ``vocabulary`` are used by the Lark
    writer only (llguidance); the others leave them to the client-side post-filter."""

    fields: tuple[FieldSpec, ...]
    meta_tail: bool = False
    tag_chars: int = TAG_CHARS
    sentence_chars: int = SENTENCE_CHARS
    bans: tuple[BanPattern, ...] = ()
    vocabulary: tuple[str, ...] | None = None

    @property
    def ends_at_newline(self) -> bool:
        """The step writes one field, already open in the prompt, and nothing after it: a
        newline ends the generation, so "\\n" is a safe stop string."""
        return len(self.fields) == 1 and self.fields[0].start != "new" and not self.meta_tail


def _item_range(kind: str, tag_length: Length, nl_length: Length) -> tuple[int, int | None]:
    return tag_length.tag_range if kind == "tag" else nl_length.nl_range


def _minus(limits: tuple[int, int | None], written: int) -> tuple[int, int | None]:
    low, high = limits
    return max(low - written, 0), None if high is None else max(high - written, 0)


def continuation_spec(
    constraint: FieldConstraint,
    *,
    vocabulary: bool = False,
    tag_chars: int = TAG_CHARS,
    sentence_chars: int = SENTENCE_CHARS,
) -> ContinuationSpec:
    """The continuation a freshly made ``FieldConstraint`` allows, as a ``ContinuationSpec``.

    Only the constraint's public state is read: its step fields, lengths and control, and, for
    a prompt that ends inside a field, what that field already counts (the user's tags that
    count toward the length as post-processing will count them; complete sentences)."""
    c = constraint
    steps, lengths = c.fields, c.control.lengths
    fields: list[FieldSpec] = []
    if steps.open_key is not None:
        fields.append(_open_field(c, lengths))
    for key in steps.next_keys:
        kind: Literal["tag", "nl"] = "tag" if key == "tag" else "nl"
        limits = _item_range(kind, c.tag_length, c.nl_length) if lengths else (0, None)
        fields.append(FieldSpec(key, kind, limits[0], limits[1], "new"))
    bans = c.control.bans.patterns
    words = _vocabulary(c) if vocabulary and c.control.vocabulary is not None else None
    return ContinuationSpec(tuple(fields), steps.gen_meta, tag_chars, sentence_chars, bans, words)


def _open_field(c: FieldConstraint, lengths: bool) -> FieldSpec:
    key = c.fields.open_key or ""
    text = c.fields.open_text
    kind: Literal["tag", "nl"] = "tag" if key == "tag" else "nl"
    limits = _item_range(kind, c.tag_length, c.nl_length) if lengths else (0, None)
    if kind == "tag":
        written = c.count + (1 if c.current.strip() and c.counts_toward_length(c.current) else 0)
        start: Start = "after_item" if text.strip() else "empty"
    else:
        written = c.sentences()
        fragment = c.fragment.rstrip()
        if not text.strip():
            start = "empty"
        elif fragment and fragment[-1] not in ".!?":
            start = "in_sentence"
        else:
            start = "after_item"
    low, high = _minus(limits, written)
    return FieldSpec(key, kind, low, high, start)


def _vocabulary(c: FieldConstraint) -> tuple[str, ...]:
    """The tags a tag field may hold, as the run's vocabulary was built (special and general
    tags of its database), without the ones no tag line can carry."""
    names = dict.fromkeys([*c.db.names(Category.SPECIAL), *c.db.names(Category.GENERAL)])
    return tuple(t for t in (n.strip() for n in names) if t and "," not in t and "\n" not in t)


# --- writers --------------------------------------------------------------------------------


def _repeat(low: int, high: int | None) -> str:
    if high is None:
        return "*" if low == 0 else ("+" if low == 1 else f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


_ANY = "[\\s\\S]*"


def _tag_class(chars: int) -> str:
    return f"[^, \\n][^,\\n]{{0,{chars - 1}}}"


def _sentence_class(chars: int) -> str:
    return f"[^ \\n.!?][^\\n.!?]{{0,{chars - 1}}}[.!?]"


def _rest_class(chars: int) -> str:
    return f"[^\\n.!?]{{0,{chars}}}[.!?]"


class _Writer:
    """One grammar syntax: literals, sequences, groups and references to the named parts
    ``tag``, ``sent`` (a sentence), ``rest`` (the end of an open sentence) and ``meta``."""

    separator = " "

    def lit(self, text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    def seq(self, *parts: str) -> str:
        return self.separator.join(p for p in parts if p)

    def group(self, body: str) -> str:
        return f"({body})"

    def ref(self, name: str) -> str:
        return name

    def field(self, spec: FieldSpec) -> str:
        header = self.lit(f"\n{spec.key}:") if spec.start == "new" else ""
        if spec.kind == "tag":
            return self.seq(header, self._tags(spec))
        rest = self.ref("rest") if spec.start == "in_sentence" else ""
        if spec.high == 0:
            return self.seq(header, rest)
        sentences = self.group(self.seq(self.lit(" "), self.ref("sent")))
        return self.seq(header, rest, sentences + _repeat(spec.low, spec.high))

    def _tags(self, spec: FieldSpec) -> str:
        if spec.high == 0:
            return ""
        more = self.group(self.seq(self.lit(", "), self.ref("tag")))
        if spec.start == "after_item":
            return more + _repeat(spec.low, spec.high)
        # The field's first tag follows "key:" with a space, not a comma.
        high = None if spec.high is None else spec.high - 1
        first = self.seq(self.lit(" "), self.ref("tag"), more + _repeat(max(spec.low - 1, 0), high))
        return first if spec.low else self.group(first) + "?"

    def body(self, spec: ContinuationSpec) -> str:
        parts = [self.field(f) for f in spec.fields]
        if spec.meta_tail:
            parts.append(self.group(self.seq(self.lit("\n"), self.ref("meta"))) + "?")
        return self.seq(*parts)


def to_gbnf(spec: ContinuationSpec) -> str:
    """llama.cpp GBNF (and xgrammar EBNF). Bounded repetition is expanded by the parser into
    nested rules; counts stay far below llama.cpp's limit of 2000."""
    w = _Writer()
    t, s = spec.tag_chars, spec.sentence_chars
    return "\n".join(
        [
            f"root ::= {w.body(spec) or chr(34) * 2}",
            f"tag ::= [^, \\n] [^,\\n]{{0,{t - 1}}}",
            f"sent ::= [^ \\n.!?] [^\\n.!?]{{0,{s - 1}}} [.!?]",
            f"rest ::= [^\\n.!?]{{0,{s}}} [.!?]",
            "meta ::= [^\\x00]*",
            "",
        ]
    )


class _Regex(_Writer):
    separator = ""

    def __init__(self, spec: ContinuationSpec) -> None:
        self.parts = {
            "tag": _tag_class(spec.tag_chars),
            "sent": _sentence_class(spec.sentence_chars),
            "rest": _rest_class(spec.sentence_chars),
            "meta": _ANY,
        }

    def lit(self, text: str) -> str:
        return "".join("\\n" if ch == "\n" else (ch if ch == " " else re.escape(ch)) for ch in text)

    def group(self, body: str) -> str:
        return f"(?:{body})"

    def ref(self, name: str) -> str:
        return self.parts[name]


def to_regex(spec: ContinuationSpec) -> str:
    """One regular expression for the whole continuation (engines match it in full)."""
    return _Regex(spec).body(spec)


class _Lark(_Writer):
    def ref(self, name: str) -> str:
        return name.upper()


def _lark_regex(text: str) -> str:
    return "/" + text.replace("/", "\\/") + "/"


def ban_regex(pattern: BanPattern) -> str:
    """A regex matching every tag the ban matches, for llguidance's ``& ~/…/`` (spaces and
    underscores are the same in bans; a regex ban matches from the tag's start)."""

    def literal(text: str) -> str:
        return "".join("[ _]" if ch == " " else re.escape(ch) for ch in text)

    if pattern.kind == "plain":
        return f".*{literal(pattern.text)}.*"
    if pattern.kind == "wildcard":
        return ".*".join(literal(p) for p in pattern.text.split("*"))
    return f"(?:{pattern.text}).*"


def allowed_vocabulary(
    vocabulary: tuple[str, ...], bans: tuple[BanPattern, ...]
) -> tuple[str, ...]:
    """The vocabulary without its banned tags (the bans' own test, so exact)."""
    return tuple(t for t in vocabulary if not any(p.matches_tag(t) for p in bans))


def to_lark(spec: ContinuationSpec) -> str:
    """llguidance Lark. Tags are one lexeme ``TAG``: the vocabulary's literals (banned ones
    left out) when the spec has one, else the free form intersected with a complement per
    ban (``& ~/…/``): either way banned tags cannot be written and no rollback is needed.
    (Complements on the 30k-literal vocabulary exceed llguidance's lexer fuel: "lexer
    precomputation failed", and vLLM then ends the request at once.)"""
    w = _Lark()
    if spec.vocabulary is not None:
        tags = allowed_vocabulary(spec.vocabulary, spec.bans)
        tag = " | ".join(json.dumps(v, ensure_ascii=False) for v in tags)
    else:
        tag = _lark_regex(_tag_class(spec.tag_chars))
        tag += "".join(f" & ~{_lark_regex(ban_regex(p))}" for p in spec.bans)
    return "\n".join(
        [
            f"start: {w.body(spec) or chr(34) * 2}",
            f"TAG: {tag}",
            f"SENT: {_lark_regex(_sentence_class(spec.sentence_chars))}",
            f"REST: {_lark_regex(_rest_class(spec.sentence_chars))}",
            "META: " + _lark_regex(_ANY),
            "",
        ]
    )


__all__ = [
    "SENTENCE_CHARS",
    "TAG_CHARS",
    "ContinuationSpec",
    "FieldSpec",
    "allowed_vocabulary",
    "ban_regex",
    "continuation_spec",
    "to_gbnf",
    "to_lark",
    "to_regex",
]
