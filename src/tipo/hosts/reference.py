"""The reference extension's inputs and outputs, on top of our API.

z-tipo-extension (the ComfyUI nodes and the SD-WebUI script of tipo-kgen) takes tags, a
sentence, bans, a format text, the image size, sampling values, length targets, an operation
and a seed, and gives four texts: ``prompt`` (expanded, formatted), ``user_prompt`` (the input
alone, formatted), ``unformatted_prompt`` (the input, then the new tags and caption) and
``unformatted_user_prompt``. Saved workflows and infotexts hold those values, so every value
the reference accepted maps here to an :class:`~tipo.request.ExpandRequest`, and the outputs
come from one :class:`~tipo.result.ExpandResult` through one path (:func:`format_outputs`).

Deliberate differences, each pinned by a test: weights in the sentence survive (the reference
computes and drops them); ``unformatted_user_prompt`` separates tags and sentence with a line
break (the reference glues them together); ban lists split on newlines too; the format text is
a template or a preset name, never a file path; sampling values the reference passed to
llama.cpp unchecked (``top_p`` 0, negative ``top_k``) keep llama.cpp's meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from ..protocol import Task
from ..render import UserInput, render_prompt
from ..request import ExpandRequest
from ..result import ExpandResult
from ..sampling import SEED_LIMIT
from ..syntax import escape
from ..tags import Category, TagDatabase, Tags
from ..templates import TEMPLATES, Template, get_template, has_slots

# The reference's default format (for Kohaku XL Zeta), byte for byte: saved nodes hold it.
REFERENCE_FORMAT = (
    "<|special|>, \n<|characters|>, <|copyrights|>, \n<|artist|>, \n\n<|general|>,\n\n"
    "<|extended|>.\n\n<|quality|>, <|meta|>, <|rating|>"
)
LENGTHS = ("very_short", "short", "long", "very_long")
# The reference's operation list, sorted as its node shows it; "None" is plain tag continuation.
OPERATIONS = (
    "None",
    "long_to_tag",
    "short_to_tag",
    "short_to_tag_to_long",
    "tag_to_long",
    "tag_to_long_to_short",
    "tag_to_short",
    "tag_to_short_to_long",
)
# Offered by the reference but never trained: no released model has a token for them, so the
# reference sent their names as plain text. Each runs the trained task that writes the same
# kind of output (a caption from tags) instead.
UNTRAINED_OPERATIONS: Mapping[str, str] = {
    "tag_to_short": "tag_to_long",
    "tag_to_long_to_short": "tag_to_long",
}
_BAN_SEPARATORS = re.compile(r"[,\n]")


def operation_task(name: str) -> str:
    """The ``ExpandRequest.operation`` of one of the reference's operation names."""
    name = UNTRAINED_OPERATIONS.get(name, name)
    task = Task.parse(name)
    return task.value if task is not None else "tag"


def host_seed(seed: int) -> int:
    """Any integer a host can hold (ComfyUI INT, WebUI number) as our seed range."""
    return int(seed) % SEED_LIMIT


def split_bans(text: str) -> tuple[str, ...]:
    """A ban box: comma- or newline-separated tags, substrings or patterns."""
    return tuple(part.strip() for part in _BAN_SEPARATORS.split(text or "") if part.strip())


def inline_template(text: str) -> str:
    """A format box: template text with slots, or a preset name; never read as a file path
    (a host's text box must not read files on the server)."""
    if not text.strip() or has_slots(text) or text in TEMPLATES:
        return text
    names = ", ".join(name for name in TEMPLATES if " " not in name)
    raise InvalidRequestError(
        f"the format {text[:60]!r} has no slot such as <|general|> and names no preset",
        hint=f"write a template with <|slots|> or use a preset: {names}",
    )


def reference_sampling(
    temperature: float, top_p: float, min_p: float, top_k: int
) -> dict[str, float | int]:
    """The reference passed these to llama.cpp unchecked; keep llama.cpp's meaning where our
    stricter SamplingParams would refuse: temperature <= 0 is greedy, top_k <= 0 and
    min_p <= 0 are off, top_p <= 0 or min_p >= 1 keep the best token only."""
    options: dict[str, float | int] = {
        "temperature": max(float(temperature), 0.0),
        "top_p": min(float(top_p), 1.0),
        "min_p": max(float(min_p), 0.0),
        "top_k": max(int(top_k), 0),
    }
    if options["top_p"] <= 0 or options["min_p"] >= 1:
        options.update(top_p=1.0, min_p=0.0, top_k=1)
    return options


def reference_request(
    *,
    tags: str,
    nl_prompt: str,
    ban_tags: str,
    format: str,
    width: int,
    height: int,
    temperature: float,
    top_p: float,
    min_p: float,
    top_k: int,
    tag_length: str,
    nl_length: str,
    seed: int,
    operation: str | None = None,
    **options: Any,
) -> ExpandRequest:
    """The request of one run of the reference's TIPO (or TIPOOperation) node."""
    if operation is not None:
        options["operation"] = operation_task(operation)
    return ExpandRequest.create(
        tags=tags or "",
        nl=nl_prompt or "",
        ban=split_bans(ban_tags),
        template=inline_template(format or ""),
        width=width,
        height=height,
        tag_length=tag_length,
        nl_length=nl_length,
        seed=host_seed(seed),
        **reference_sampling(temperature, top_p, min_p, top_k),
        **options,
    )


@dataclass(frozen=True)
class ReferenceOutputs:
    """The four texts of the reference's TIPO and TIPO Format nodes."""

    prompt: str
    user_prompt: str
    unformatted_prompt: str
    unformatted_user_prompt: str

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.prompt, self.user_prompt, self.unformatted_prompt,
                self.unformatted_user_prompt)  # fmt: skip


def operation_outputs(
    result: ExpandResult, request: ExpandRequest, db: TagDatabase
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference's TIPOOperation outputs: ``full_output`` (every tag by category, plus
    ``extended`` and ``generated``, clean) and ``addon_output`` (what TIPO added to the user's
    input, and that input as written, which TIPO Format needs to give it back)."""
    full: dict[str, Any] = result.tags.to_dict()
    full.update(extended=result.extended, generated=result.generated)
    user = UserInput.parse(request.tags, request.nl, db)
    addon = {
        "tags": _added_tags(result.tags, user.tags),
        "nl": result.extended or result.generated,
        "user_tags": request.tags,
        "user_nl": request.nl,
    }
    return full, addon


def format_outputs(
    full_output: Mapping[str, Any],
    addon_output: Mapping[str, Any],
    format: str,
    db: TagDatabase,
) -> ReferenceOutputs:
    """The four texts from TIPOOperation's outputs and a format: what TIPO Format gives.
    Neither input is modified."""
    tags, extended, generated = _read_full_output(full_output)
    user_tags, user_nl = _read_addon_output(addon_output)
    return _outputs(tags, extended, generated, user_tags, user_nl, format, db)


def reference_outputs(
    result: ExpandResult, request: ExpandRequest, db: TagDatabase
) -> ReferenceOutputs:
    """The TIPO node's four texts for one result: TIPO Format's, without the round trip
    through TIPOOperation's dictionaries."""
    return _outputs(result.tags, result.extended, result.generated, request.tags, request.nl,
                    request.template, db)  # fmt: skip


def _outputs(
    tags: Tags,
    extended: str,
    generated: str,
    user_tags: str,
    user_nl: str,
    format: str,
    db: TagDatabase,
) -> ReferenceOutputs:
    user = UserInput.parse(user_tags, user_nl, db)
    template = _template(format)
    prompt = render_prompt(template, tags, extended, generated, user.style)
    caption = user.style.nl.render(extended) if extended else escape(generated)
    added = ", ".join(user.style.render_tags(_added_tags(tags, user.tags)))
    return ReferenceOutputs(
        prompt=prompt,
        user_prompt=user.render(template),
        unformatted_prompt=_lines(_join_tags(user_tags, added), caption),
        unformatted_user_prompt=_lines(user_tags.strip(), user_nl.strip()),
    )


def _added_tags(tags: Tags, user: Tags) -> list[str]:
    """The tags TIPO added: those of ``tags`` not in the user's own, category by category."""
    return [tag for category, values in tags.items() for tag in values if tag not in user[category]]


def _template(format: str) -> Template:
    return get_template(inline_template(format or ""))


def _join_tags(user_tags: str, added: str) -> str:
    user_tags = user_tags.strip().rstrip(",").strip()
    return ", ".join(part for part in (user_tags, added) if part)


def _lines(*parts: str) -> str:
    return "\n".join(part for part in parts if part)


def _read_full_output(full: Mapping[str, Any]) -> tuple[Tags, str, str]:
    if not isinstance(full, Mapping):
        raise InvalidRequestError(
            "full_output must be the full_output of a TIPO Single Operation node",
            hint="connect TIPO Single Operation's full_output to TIPO Format",
        )
    tags = Tags()
    for category in Category:
        values = full.get(category.value, [])
        if not _is_text_list(values):
            raise InvalidRequestError(f"full_output[{category.value!r}] must be a list of tags")
        tags[category] = list(values)
    extended, generated = full.get("extended") or "", full.get("generated") or ""
    if not isinstance(extended, str) or not isinstance(generated, str):
        raise InvalidRequestError("full_output's extended and generated must be text")
    return tags, extended, generated


def _read_addon_output(addon: Mapping[str, Any]) -> tuple[str, str]:
    if not isinstance(addon, Mapping):
        raise InvalidRequestError(
            "addon_output must be the addon_output of a TIPO Single Operation node",
            hint="connect TIPO Single Operation's addon_output to TIPO Format",
        )
    user_tags, user_nl = addon.get("user_tags") or "", addon.get("user_nl") or ""
    if not isinstance(user_tags, str) or not isinstance(user_nl, str):
        raise InvalidRequestError("addon_output's user_tags and user_nl must be text")
    return user_tags, user_nl


def _is_text_list(values: object) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and all(isinstance(v, str) for v in values)
    )


__all__ = [
    "LENGTHS",
    "OPERATIONS",
    "REFERENCE_FORMAT",
    "UNTRAINED_OPERATIONS",
    "ReferenceOutputs",
    "format_outputs",
    "host_seed",
    "inline_template",
    "operation_outputs",
    "operation_task",
    "reference_outputs",
    "reference_request",
    "reference_sampling",
    "split_bans",
]
