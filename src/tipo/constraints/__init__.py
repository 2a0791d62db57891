"""Decode-time control: length targets in one pass, bans that hold, only real tags."""

from __future__ import annotations

from .fields import DecodeControl, FieldConstraint, StepFields, field_limits
from .tokens import TokenTable
from .trie import TagTrie, build_vocabulary

__all__ = [
    "DecodeControl",
    "FieldConstraint",
    "StepFields",
    "TagTrie",
    "TokenTable",
    "build_vocabulary",
    "field_limits",
]
