"""One step's masking rules, collected first and written into the logits at once.

Rules either forbid token ids or restrict the step to an allowed set. Writing refuses to leave
no token at all (it returns False and leaves the logits untouched), so callers can drop their
softer rules and try again: a constraint must never make sampling impossible.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .tokens import TokenTable, as_index


class Mask:
    def __init__(self, table: TokenTable) -> None:
        self.table = table
        self.allowed: set[int] | None = None
        self.allowed_key: object | None = None  # names a cached index of ``allowed``
        self.forbidden: set[int] = set()
        self.forbidden_classes: list[str] = []  # big id classes of the table, by name

    def forbid(self, ids: Iterable[int]) -> None:
        self.forbidden.update(ids)

    def forbid_class(self, name: str) -> None:
        self.forbidden_classes.append(name)

    def only(self, ids: Iterable[int], key: object | None = None) -> None:
        """Restrict to ``ids``. A ``key`` names this id set so its index array is built once
        (the children of a vocabulary node can be thousands of tokens)."""
        ids = set(ids)
        self.allowed_key = key if self.allowed is None else None
        self.allowed = ids if self.allowed is None else self.allowed & ids

    def copy(self) -> Mask:
        twin = Mask(self.table)
        twin.allowed = None if self.allowed is None else set(self.allowed)
        twin.allowed_key = self.allowed_key
        twin.forbidden = set(self.forbidden)
        twin.forbidden_classes = list(self.forbidden_classes)
        return twin

    def _final_allowed(self) -> tuple[set[int], frozenset[int]] | None:
        """The allowed ids left after the forbidden ones, and the ids that were removed."""
        if self.allowed is None:
            return None
        removed = self.allowed & self.forbidden
        for name in self.forbidden_classes:
            removed |= {i for i in self.table.class_set(name) if i in self.allowed}
        return (self.allowed - removed if removed else self.allowed), frozenset(removed)

    def choices(self) -> set[int] | None:
        """The ids this mask leaves (possibly none), or None when it only forbids some."""
        final = self._final_allowed()
        return None if final is None else final[0]

    def is_empty(self) -> bool:
        """True when the rules restrict to a set and nothing of it is left."""
        final = self._final_allowed()
        return final is not None and not final[0]

    def _index(self, allowed: set[int], removed: frozenset[int], logits: Any) -> Any:
        if self.allowed_key is not None:
            return self.table.cached_index((self.allowed_key, removed), allowed, logits)
        return as_index(sorted(allowed), logits)

    def write(self, logits: Any) -> bool:
        """Apply to a 1-D logits row in place; False (nothing written) if no token is left."""
        final = self._final_allowed()
        if final is not None:
            allowed, removed = final
            if not allowed:
                return False
            index = self._index(allowed, removed, logits)
            kept = logits[index].clone() if hasattr(logits, "clone") else logits[index].copy()
            logits[:] = float("-inf")
            logits[index] = kept
            return True
        for name in self.forbidden_classes:
            logits[self.table.class_index(name, logits)] = float("-inf")
        if self.forbidden:
            logits[as_index(sorted(self.forbidden), logits)] = float("-inf")
        return True


__all__ = ["Mask"]
