"""Banned tags and words.

A pattern is one of
* plain text (``hat``): bans every tag that contains it, as the reference does (``witch hat``);
  in captions it bans the word or phrase;
* a wildcard with ``*`` and no other regex character (``official*``, ``*text``, ``a*b``): the
  whole tag must match;
* a regular expression (any other of ``.^$+?{}[]()|\\``), matched from the start of the tag
  like the reference's ``re.match`` (``.*text`` bans ``english text``). A pattern that does not
  compile is plain text.

``_`` and spaces are the same. The decode-time constraints use the kinds: plain text and
literal prefixes are blocked on the token that would write them; other patterns are checked
when a tag or word completes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["plain", "wildcard", "regex"]
_REGEX_CHARS = set(".^$+?{}[]()|\\")


def _normalize(text: str) -> str:
    return text.replace("_", " ")


@dataclass(frozen=True)
class BanPattern:
    text: str
    kind: Kind
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, raw: str) -> BanPattern:
        text = _normalize(raw.strip())
        if _REGEX_CHARS & set(text):
            try:
                return cls(text, "regex", re.compile(text))
            except re.error:
                return cls(text, "plain")
        if "*" in text:
            parts = (re.escape(p) for p in text.split("*"))
            return cls(text, "wildcard", re.compile(".*".join(parts) + r"\Z"))
        return cls(text, "plain")

    @property
    def literal_prefix(self) -> str:
        """A prefix every banned tag starts with, when that alone bans it (``official*``,
        ``official.*``); "" when the pattern needs the whole tag to decide."""
        if self.kind == "wildcard" and self.text.endswith("*") and "*" not in self.text[:-1]:
            return self.text[:-1]
        if self.kind == "regex" and self.text.endswith(".*"):
            head = self.text[:-2]
            if head and not _REGEX_CHARS & set(head) and "*" not in head:
                return head
        return ""

    def matches_tag(self, tag: str) -> bool:
        tag = _normalize(tag)
        if self.kind == "plain":
            return self.text in tag
        assert self.regex is not None
        return bool(self.regex.match(tag))

    def matches_word(self, phrase: str) -> bool:
        """For captions: plain patterns ban whole words/phrases, the others must match a whole
        word (``.*text`` bans "context", not "textbook": a caption word is not a tag)."""
        if self.kind == "plain":
            return phrase.lower() == self.text.lower()
        assert self.regex is not None
        return bool(self.regex.fullmatch(phrase))


@dataclass(frozen=True)
class BanList:
    patterns: tuple[BanPattern, ...] = field(default=())

    @classmethod
    def parse(cls, value: str | Iterable[str] | None) -> BanList:
        items = value.split(",") if isinstance(value, str) else (value or ())
        return cls(tuple(BanPattern.parse(p) for p in items if p and p.strip()))

    def matches(self, tag: str) -> bool:
        return any(p.matches_tag(tag) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def of_kind(self, *kinds: Kind) -> tuple[BanPattern, ...]:
        return tuple(p for p in self.patterns if p.kind in kinds)


__all__ = ["BanList", "BanPattern"]
