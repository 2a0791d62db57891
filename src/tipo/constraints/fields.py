"""Decode-time control of one generation: the fields the model writes, token by token.

The constraint follows the text as it is sampled — which field the model is in, the tags of a
tag field, the sentences of a caption — and masks the logits so that

* a field cannot end (newline into the next field, or EOS) before its minimum number of tags or
  sentences, and ends at its maximum; after the step's last field generation stops, instead of
  the reference's habit of writing fields it then throws away;
* the next field's key is written for the model (``\\nlong:``), so the output always parses;
* a banned tag cannot be written: plain patterns and literal prefixes are refused on the token
  that would write them, other patterns by refusing to complete a tag that matches; a tag that
  cannot escape its ban (or a dead end of the vocabulary) is rolled back and its first token
  refused at that place; banned words in captions likewise cannot be completed;
* with a vocabulary, a tag field only holds tags from it (a prefix tree over token paths);
* a tag or sentence cannot run on forever, and the token budget is kept for the minimum.

It implements ``backends.base.TokenConstraint``; after a rollback it rebuilds its state by
replaying the kept tokens, which is simple and rare.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from ..bans import BanList
from ..protocol import Length, Task, task_fields
from ..tags import Category, TagDatabase
from .mask import Mask
from .tokens import TokenTable
from .trie import TagTrie

_TERMINAL = ".!?"
_COUNTED = (Category.SPECIAL, Category.GENERAL)


@dataclass(frozen=True)
class DecodeControl:
    """What to control. ``vocabulary`` restricts tag fields to its tags."""

    lengths: bool = True
    bans: BanList = field(default_factory=BanList)
    vocabulary: TagTrie | None = None
    max_tag_tokens: int = 16
    max_sentence_tokens: int = 64
    rollback: bool = True  # the backend can discard tokens (see Capabilities.rollback)


@dataclass(frozen=True)
class StepFields:
    """The fields a step's model writes: the one the prompt ends in (None when the prompt ends
    at the target line), its text so far, and the task's fields after it."""

    open_key: str | None
    open_text: str
    next_keys: tuple[str, ...]
    gen_meta: bool = False

    @classmethod
    def from_prompt(cls, prompt: str, task: Task | None, gen_meta: bool) -> StepFields:
        order = task_fields(task)
        key, _, text = prompt.rsplit("\n", 1)[-1].partition(":")
        if key not in order:  # the prompt ends with its target line
            return cls(None, "", order, gen_meta)
        return cls(key, text, order[order.index(key) + 1 :], gen_meta)


def field_limits(key: str, tag_length: Length, nl_length: Length) -> tuple[int, int | None]:
    return tag_length.tag_range if key == "tag" else nl_length.nl_range


def _is_sentence(text: str) -> bool:
    """As post-processing splits captions: "." alone is no sentence, "Ok!" is one."""
    return bool(text.strip().rstrip(".").strip())


class FieldConstraint:
    def __init__(
        self,
        table: TokenTable,
        fields: StepFields,
        control: DecodeControl,
        db: TagDatabase,
        *,
        tag_length: Length,
        nl_length: Length,
        budget: int,
    ) -> None:
        self.table, self.fields, self.control, self.db = table, fields, control, db
        self.tag_length, self.nl_length, self.budget = tag_length, nl_length, budget
        self.tokens: list[int] = []
        self.excluded: dict[int, set[int]] = {}  # position -> first tokens refused there
        self.rollbacks = 0
        self._count_cache: tuple[object, bool] = (None, False)
        self._version = 0  # bumped by every accepted token: names the state the masks are for
        self._masks: tuple[int, list[Mask]] = (-1, [])
        self._reset()

    # --- state ---------------------------------------------------------------------------

    def _reset(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.phase = "value"
        self.key = self.fields.open_key or ""
        self.next_keys = list(self.fields.next_keys)
        self.forced: list[int] = []
        self._enter_field(self.key, self.fields.open_text)
        if self.fields.open_key is None:
            self._next_field()
        elif self.key == "tag" and self.fields.open_text.strip():
            self.need_separator = True  # the prompt's last tag is the user's: do not extend it

    def _enter_field(self, key: str, text: str) -> None:
        self.key, self.phase = key, "value"
        self.count, self.seen = 0, set()  # tags counted toward the length
        self.current, self.item_tokens, self.item_start = "", 0, len(self.tokens)
        self.node, self.need_separator = TagTrie.ROOT, False
        self.completed, self.fragment, self.sentence_tokens, self.text = 0, "", 0, ""
        for char in text:
            self._feed_char(char)
        self.item_tokens = self.sentence_tokens = 0

    def _next_field(self) -> None:
        if self.next_keys:
            key = self.next_keys.pop(0)
            self.phase, self.key = "key", key
            # After the model's newline the key follows; a prompt that ends at its target
            # line needs the newline too.
            starts_line = bool(self.tokens) or self.fields.open_key is not None
            self.forced = self.table.fragment_ids(f"{key}:" if starts_line else f"\n{key}:")
        else:
            self.phase = "meta" if self.fields.gen_meta else "done"

    # --- feeding tokens ------------------------------------------------------------------

    def accept(self, token_id: int) -> int:
        self._version += 1
        self.tokens.append(token_id)
        self._feed_token(token_id)
        if self.control.rollback and (self._dead_end() or self._boxed_in()):
            return self._rollback_item()
        return 0

    def _feed_token(self, token_id: int) -> None:
        if self.phase == "key":
            self.forced.pop(0)
            if not self.forced:
                self._enter_field(self.key, "")
            return
        if token_id == self.table.eos_id:
            self.phase = "done"
            return
        if self.phase == "value" and self.key == "tag" and self.control.vocabulary is not None:
            child = self.control.vocabulary.child(self.node, token_id)
            self.node = child if child is not None else self.node
        self.item_tokens += 1
        self.sentence_tokens += 1
        for char in self.decoder.decode(self.table.tokenizer.token_bytes(token_id)):
            self._feed_char(char)

    def _feed_char(self, char: str) -> None:
        if self.phase != "value":
            return
        if char == "\n":
            self._complete_field()
            self._next_field()
        elif self.key == "tag":
            self._feed_tag_char(char)
        else:
            self._feed_nl_char(char)

    def _feed_tag_char(self, char: str) -> None:
        if char == ",":
            self._complete_item()
            self.need_separator = False
            self.item_start = len(self.tokens)
        else:
            self.current += char

    def _feed_nl_char(self, char: str) -> None:
        if self.fragment and self.fragment[-1] in _TERMINAL and char.isspace():
            self.completed += _is_sentence(self.fragment)
            self.fragment, self.sentence_tokens = "", 0
        elif self.fragment or not char.isspace():
            self.fragment += char
        self.text += char

    def _complete_item(self) -> None:
        if self.counts_toward_length(self.current):
            self.seen.add(self.db.lookup(self.current)[1])
            self.count += 1
        self.current, self.item_tokens, self.node = "", 0, TagTrie.ROOT

    def _complete_field(self) -> None:
        if self.key == "tag":
            self._complete_item()

    def counts_toward_length(self, raw: str) -> bool:
        """Would this item count toward the tag length, as post-processing will count it
        (a new special or general tag, not banned)? Cached: rules ask twice per token."""
        key = (raw, len(self.seen))
        if self._count_cache[0] != key:
            tag = raw.strip()
            counts = bool(tag) and not self.control.bans.matches(tag)
            if counts:
                category, name = self.db.lookup(tag)
                counts = category in _COUNTED and name not in self.seen
            self._count_cache = (key, counts)
        return self._count_cache[1]

    # --- rollback ------------------------------------------------------------------------

    def _dead_end(self) -> bool:
        if self.phase != "value" or self.key != "tag" or not self.current.strip():
            return False
        banned = self.control.bans.matches(self.current.strip())
        if banned and (self.item_tokens >= self.control.max_tag_tokens or self.tags_hurried()):
            return True
        trie = self.control.vocabulary
        if trie is None:
            return False
        stuck = not trie.next_tokens(self.node)
        return stuck and (trie.tag_at(self.node) is None or banned)

    def _boxed_in(self) -> bool:
        """The tag's strict rules leave no token (a vocabulary path whose only ways on are
        banned): only a rollback keeps the guarantees."""
        if self.phase != "value" or self.key != "tag" or not self.current.strip():
            return False
        from .rules import tag_rules

        return tag_rules(self).is_empty()

    def _rollback_item(self) -> int:
        start = self.item_start
        self.excluded.setdefault(start, set()).add(self.tokens[start])
        kept = self.tokens[:start]
        count = len(self.tokens) - start
        self.tokens = []
        self._reset()
        for token in kept:
            self.tokens.append(token)
            self._feed_token(token)
        self.rollbacks += 1
        return count

    # --- masking -------------------------------------------------------------------------

    def _step_masks(self) -> list[Mask]:
        """This step's masks, strictest first; computed once per state (``forced_token`` and
        ``mask_logits`` both ask)."""
        from .rules import step_masks

        if self._masks[0] != self._version:
            self._masks = (self._version, step_masks(self))
        return self._masks[1]

    def mask_logits(self, logits: Any) -> None:
        for mask in self._step_masks():
            if mask.write(logits):
                return

    def forced_token(self) -> int | None:
        """The one token the next step allows (a key written for the model, the rest of a tag
        whose prefix is unique in the vocabulary, the EOS after the last field), or None when
        the model has a choice. The same rules as ``mask_logits``: sampling with that mask
        could only pick this token, so a decoder may append it without computing logits."""
        for mask in self._step_masks():
            choices = mask.choices()
            if choices is None:
                return None
            if choices:  # the first mask that leaves a token is the one mask_logits writes
                return next(iter(choices)) if len(choices) == 1 else None
        return None

    @property
    def remaining(self) -> int:
        """Tokens left for this field: the budget minus what the fields after it need at
        least (each minimum at its cheapest: one-token tags with commas, short sentences)."""
        reserve = 0
        for key in self.next_keys:
            minimum, _ = field_limits(key, self.tag_length, self.nl_length)
            reserve += 4 + 3 * minimum
        return self.budget - len(self.tokens) - (reserve if self.control.lengths else 0)

    def limits(self) -> tuple[int, int | None]:
        if not self.control.lengths:
            return 0, None
        return field_limits(self.key, self.tag_length, self.nl_length)

    def tags_hurried(self) -> bool:
        """Is the budget down to what the tag minimum needs? Each missing tag then costs two
        tokens (a one-token word and a comma) plus one of slack for words that will not count
        (an artist name, a duplicate)."""
        need = self.limits()[0] - self.count
        return need > 0 and self.remaining <= 3 * need + 2

    def sentences(self) -> int:
        return self.completed + _is_sentence(self.fragment)

    def base_mask(self) -> Mask:
        mask = Mask(self.table)
        mask.forbid_class("specials")
        excluded = self.excluded.get(len(self.tokens))
        if excluded:
            mask.forbid(excluded)
        return mask


__all__ = ["DecodeControl", "FieldConstraint", "StepFields", "field_limits"]
