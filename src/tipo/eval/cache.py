"""What a rerun of ``tipo eval`` does not redo: JSON Lines key-value files in the run folder.

Each line is ``{"key": ..., "value": ...}``, appended and flushed as results arrive, so an
interrupted run keeps everything finished before the interrupt; a torn last line (killed
mid-write) is skipped on reading. Keys are hashes of everything that determines the value
(:func:`cache_key`), so changing a setting computes anew instead of reusing a stale result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cache_key(*parts: Any) -> str:
    """A stable hex key of JSON-able ``parts`` (dict order does not matter)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    """The content hash of a file (an image's scores follow its pixels, not its name)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class JsonlStore:
    """An append-only key -> JSON value store in one ``.jsonl`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, Any] = {}
        # A file killed mid-line gets a newline before the next append, so only that line is lost.
        self._torn = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by an interrupt: computed again
                    if isinstance(item, dict) and "key" in item:
                        self._values[item["key"]] = item.get("value")

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> Any:
        return self._values.get(key)

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        items = list(items)
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            if self._torn:
                handle.write("\n")
                self._torn = False
            for key, value in items:
                handle.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
                self._values[key] = value
            handle.flush()
            os.fsync(handle.fileno())


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


__all__ = ["JsonlStore", "cache_key", "file_digest"]
