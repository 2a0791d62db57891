"""A prefix tree over the token paths of a tag vocabulary.

Each tag is stored as the tokens the model writes for it after ``", "`` — the text with a
leading space (``" long hair"`` -> ``▁long ▁hair``) — so masking the logits to the children of
the current node lets the tag field hold only real tags. Nodes are integers; children live in
one dict per node.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..tags import Category, TagDatabase
from .tokens import TokenTable


class TagTrie:
    def __init__(self) -> None:
        self._children: list[dict[int, int]] = [{}]
        self._tag: list[str | None] = [None]  # the tag that ends at a node, if any
        self._one_token_tags: dict[int, str] | None = None

    ROOT = 0

    @classmethod
    def build(cls, tags: Iterable[str], table: TokenTable) -> TagTrie:
        trie = cls()
        for tag in tags:
            tag = tag.strip()
            if tag and "," not in tag and "\n" not in tag:
                trie.add(tag, table.fragment_ids(" " + tag))
        return trie

    def add(self, tag: str, path: list[int]) -> None:
        node = self.ROOT
        for token in path:
            child = self._children[node].get(token)
            if child is None:
                child = len(self._children)
                self._children.append({})
                self._tag.append(None)
                self._children[node][token] = child
            node = child
        self._tag[node] = tag

    def child(self, node: int, token: int) -> int | None:
        return self._children[node].get(token)

    def next_tokens(self, node: int) -> list[int]:
        return list(self._children[node])

    def tag_at(self, node: int) -> str | None:
        return self._tag[node]

    def one_token_tags(self) -> dict[int, str]:
        """token -> tag for the tags written with a single token (the cheapest to write)."""
        if self._one_token_tags is None:
            self._one_token_tags = {
                token: tag
                for token, node in self._children[self.ROOT].items()
                if (tag := self._tag[node]) is not None
            }
        return self._one_token_tags

    def __len__(self) -> int:
        """Number of tags."""
        return sum(tag is not None for tag in self._tag)

    @property
    def node_count(self) -> int:
        return len(self._children)


def build_vocabulary(db: TagDatabase, table: TokenTable | None) -> TagTrie:
    """The tags a tag field may hold: special and general tags of the database (the bundled
    general list, plus a user's CSV when one is loaded)."""
    if table is None:
        raise ValueError("a vocabulary needs the token table")
    names = dict.fromkeys([*db.names(Category.SPECIAL), *db.names(Category.GENERAL)])
    return TagTrie.build(names, table)


__all__ = ["TagTrie", "build_vocabulary"]
