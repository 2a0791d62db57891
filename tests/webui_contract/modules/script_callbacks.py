"""``on_infotext_pasted``: callbacks that see every pasted infotext's parsed fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

infotext_pasted_callbacks: list[Callable[[str, dict[str, Any]], None]] = []


def on_infotext_pasted(callback: Callable[[str, dict[str, Any]], None]) -> None:
    infotext_pasted_callbacks.append(callback)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    for callback in infotext_pasted_callbacks:
        callback(infotext, params)
