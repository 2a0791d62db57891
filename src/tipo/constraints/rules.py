"""The masking rules of one step, from the strictest to the loosest.

``step_masks`` returns a list of masks; the constraint writes the first one that leaves at
least one token. The strict mask adds the soft rules (a tag or sentence that ran too long is
closed, the budget is kept for the minimum) to the hard ones (structure, lengths, bans,
vocabulary); the last mask only keeps special tokens out, so sampling always has a choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .mask import Mask

if TYPE_CHECKING:
    from .fields import FieldConstraint

_TERMINAL = ".!?"


def step_masks(c: FieldConstraint) -> list[Mask]:
    fallback = c.base_mask()
    if c.phase == "key":
        forced = Mask(c.table)
        forced.only(c.forced[:1])
        return [forced]
    if c.phase == "done":
        done = Mask(c.table)
        done.only([c.table.eos_id])
        return [done]
    if c.phase == "meta":
        meta = c.base_mask()
        if c.remaining <= 1:
            meta.only([c.table.eos_id])
        return [meta, fallback]
    hard = tag_rules(c) if c.key == "tag" else nl_rules(c)
    soft = hard.copy()
    (tag_soft_rules if c.key == "tag" else nl_soft_rules)(c, soft)
    return [soft, hard, fallback]


def _end_ids(c: FieldConstraint) -> list[int]:
    last = not c.next_keys
    ids = [c.table.eos_id] if last else []
    if not last or c.fields.gen_meta:
        ids.append(c.table.newline_id)
    return ids


def _structure(c: FieldConstraint, end_ok: bool) -> Mask:
    """Specials never; a newline only as the field's end; EOS only after the last field."""
    mask = c.base_mask()
    allowed_end = set(_end_ids(c)) if end_ok else set()
    mask.forbid({c.table.eos_id, c.table.newline_id} - allowed_end)
    mask.forbid(set(c.table.with_newline) - {c.table.newline_id})
    return mask


# --- tag fields ---------------------------------------------------------------------------


def tag_state(c: FieldConstraint) -> tuple[int, bool, bool]:
    """(tags counted if the current one completed, current tag banned, field may end)."""
    minimum, maximum = c.limits()
    current = c.current.strip()
    counted = c.count + (1 if current else 0)
    if counted in (minimum, maximum):  # only at a limit does the exact (slower) test matter
        counted = c.count + (1 if c.counts_toward_length(c.current) else 0)
    banned = bool(current) and c.control.bans.matches(current)
    return counted, banned, counted >= minimum and not banned


def tag_rules(c: FieldConstraint) -> Mask:
    counted, banned, end_ok = tag_state(c)
    _, maximum = c.limits()
    at_max = maximum is not None and counted >= maximum
    mask = _structure(c, end_ok)
    comma_ok = not at_max and not banned and bool(c.current.strip() or c.need_separator)
    if not comma_ok:
        mask.forbid_class("with_comma")
    else:
        _comma_rules(c, mask)
    _substring_bans(c, mask)
    _prefix_bans(c, mask)
    if c.need_separator:
        mask.only(([c.table.comma_id] if comma_ok else []) + (_end_ids(c) if end_ok else []))
    elif c.control.vocabulary is not None:
        _vocabulary_rules(c, mask, comma_ok, end_ok)
    return mask


def _comma_rules(c: FieldConstraint, mask: Mask) -> None:
    """With a vocabulary or bans a tag ends with the plain comma token only, so the tag it
    completes is exactly the current one (a token like ``s,`` would complete another)."""
    if c.control.vocabulary is not None or c.control.bans:
        mask.forbid_class("with_comma_joined")


def _substring_bans(c: FieldConstraint, mask: Mask) -> None:
    """A plain pattern is refused on the token that would write it, across token joins."""
    for pattern in c.control.bans.of_kind("plain"):
        text = pattern.text
        mask.forbid(c.table.containing(text))
        for k in range(1, len(text)):
            if c.current.endswith(text[:k]):
                mask.forbid(c.table.starting_with(text[k:]))


def _prefix_bans(c: FieldConstraint, mask: Mask) -> None:
    """``official*`` / ``official.*``: refuse the token that makes the tag start with it."""
    written = c.current.lstrip()
    for pattern in c.control.bans.patterns:
        prefix = pattern.literal_prefix
        if prefix and len(written) < len(prefix) and prefix.startswith(written):
            need = prefix[len(written) :]
            mask.forbid(c.table.starting_with(need, ignore_leading_space=not written))


def _vocabulary_rules(c: FieldConstraint, mask: Mask, comma_ok: bool, end_ok: bool) -> None:
    trie = c.control.vocabulary
    assert trie is not None
    allowed = trie.next_tokens(c.node)
    tag = trie.tag_at(c.node)
    closing: list[int] = []
    if tag is not None and not c.control.bans.matches(tag):
        closing = ([c.table.comma_id] if comma_ok else []) + (_end_ids(c) if end_ok else [])
    mask.only(allowed + closing, key=(id(trie), c.node, tuple(closing)))


def tag_soft_rules(c: FieldConstraint, mask: Mask) -> None:
    counted, banned, end_ok = tag_state(c)
    _, maximum = c.limits()
    comma_ok = not banned and (maximum is None or counted < maximum)
    closing = ([c.table.comma_id] if comma_ok else []) + (_end_ids(c) if end_ok else [])
    open_tag = bool(c.current.strip())
    if open_tag and (c.item_tokens >= c.control.max_tag_tokens or 0 < c.remaining <= 2):
        mask.only(closing)
    elif c.tags_hurried():
        # Keep the budget for the minimum: one-token tags, each closed at once.
        mask.only([c.table.comma_id] if open_tag else _one_token_starts(c))
    elif c.remaining <= 1 and end_ok:
        mask.only(_end_ids(c))


def _one_token_starts(c: FieldConstraint) -> list[int]:
    """Tokens that start a tag which can be closed right after them: any word-start token in
    free mode; with a vocabulary, only its one-token tags (a word-start token that begins a
    longer tag would leave the comma unreachable and overrun the budget)."""
    trie = c.control.vocabulary
    if trie is None:
        return c.table.starts_with_space
    bans = c.control.bans
    return [token for token, tag in trie.one_token_tags().items() if not bans.matches(tag)]


# --- caption fields -----------------------------------------------------------------------


def _word_banned(c: FieldConstraint) -> bool:
    """Does the caption end with a banned word or phrase that the next character would
    complete?"""
    text = c.text
    if not text or not text[-1].isalnum():
        return False
    lowered = text.lower()
    start = len(text)
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    word = text[start:]
    for pattern in c.control.bans.patterns:
        if pattern.kind == "plain":
            phrase = pattern.text.lower()
            begin = len(lowered) - len(phrase)
            if lowered.endswith(phrase) and (begin == 0 or not lowered[begin - 1].isalnum()):
                return True
        elif pattern.matches_word(word):
            return True
    return False


def nl_rules(c: FieldConstraint) -> Mask:
    minimum, maximum = c.limits()
    banned = bool(c.control.bans) and _word_banned(c)
    end_ok = c.sentences() >= minimum and not banned
    mask = _structure(c, end_ok)
    if banned:
        mask.forbid(c.table.starts_non_word)
    just_ended = bool(c.fragment) and c.fragment[-1] in _TERMINAL
    full = maximum is not None and (
        c.completed >= maximum or (just_ended and c.completed + 1 >= maximum)
    )
    if full and end_ok:
        mask.only(_end_ids(c))
    return mask


def nl_soft_rules(c: FieldConstraint, mask: Mask) -> None:
    minimum, _ = c.limits()
    needed = minimum - c.sentences()
    just_ended = bool(c.fragment) and c.fragment[-1] in _TERMINAL
    long_sentence = c.sentence_tokens >= c.control.max_sentence_tokens
    hurry = needed > 0 and c.remaining <= 3 * needed + 1
    if c.fragment.strip() and not just_ended and (long_sentence or hurry):
        mask.only([c.table.period_id])
    elif just_ended and (long_sentence or hurry):
        mask.only(c.table.starts_with_space)
    elif c.remaining <= 1 and c.sentences() >= minimum:
        mask.only(_end_ids(c))


__all__ = ["step_masks"]
