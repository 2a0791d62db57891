"""Infotexts: the text stored with every image (its prompt, then ``Key: value`` pairs), and
how a pasted one is read back. A value with a comma, colon or newline is JSON-quoted."""

from __future__ import annotations

import json
import re
from typing import Any

from . import script_callbacks

_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def quote(text: Any) -> str:
    text = str(text)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def unquote(text: str) -> str:
    if len(text) > 1 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def create_infotext(p: Any, index: int) -> str:
    params = {"Steps": 20, "Seed": p.all_seeds[index], "Size": f"{p.width}x{p.height}"}
    params.update(p.extra_generation_params)
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    return f"{p.all_prompts[index]}\n{line}"


def parse_generation_parameters(text: str) -> dict[str, Any]:
    """``{"Prompt": ..., key: value, ...}``, then every ``on_infotext_pasted`` callback."""
    *prompt_lines, last = text.strip().split("\n")
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines)}
    for key, value in _PARAM.findall(last):
        result[key.strip()] = unquote(value.strip())
    script_callbacks.infotext_pasted_callback(text, result)
    return result
