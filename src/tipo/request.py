"""A user request: every option of ``TIPO.expand``, validated, also from JSON."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InvalidRequestError
from .protocol import Length, Task
from .sampling import SamplingParams
from .templates import DEFAULT_TEMPLATE

_SAMPLING_KEYS = {f.name for f in fields(SamplingParams)}
_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x:/×]\s*(\d+(?:\.\d+)?)\s*$")
MAX_INPUT_CHARS = 200_000


def parse_aspect(value: float | str | tuple[float, float] | None) -> float | None:
    """Width/height from ``1.5``, ``"832x1216"``, ``"16:9"``, ``"3/4"`` or ``(w, h)``."""
    if value is None or value == "":
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        ratio = float(value[0]) / float(value[1]) if float(value[1]) else math.nan
    elif isinstance(value, str) and (match := _ASPECT.match(value)):
        w, h = float(match.group(1)), float(match.group(2))
        ratio = w / h if h else math.nan
    else:
        try:
            ratio = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            ratio = math.nan
    if not (ratio > 0 and math.isfinite(ratio)):
        raise InvalidRequestError(
            f"invalid aspect ratio {value!r}", hint="use width/height like 0.75, 832x1216 or 3:4"
        )
    return ratio


@dataclass(frozen=True)
class ExpandRequest:
    """What to expand and how. ``tags`` and ``nl`` use SD-WebUI prompt syntax; ``template`` is a
    name, template text or file. ``control`` steers decoding (length targets met in one pass,
    bans that hold: see tipo.constraints) where the backend supports it; ``vocabulary`` (on by
    default) also keeps tag fields to known tags. ``retries`` > 0 re-runs a step that came back
    short, feeding its output back (the reference's behaviour, kept for comparison)."""

    tags: str = ""
    nl: str = ""
    tag_length: Length = Length.LONG
    nl_length: Length = Length.LONG
    template: str = DEFAULT_TEMPLATE
    ban: tuple[str, ...] = ()
    seed: int | None = None
    aspect: float | None = None
    expand_tags: bool = True
    expand_nl: bool = True
    tag_first: bool = True
    gen_meta: bool = False
    shuffle: bool = True
    retries: int = 0
    control: bool = True
    vocabulary: bool = True  # costs ~0.05 ms per token and sequence: on (see tipo bench)
    operation: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        for name in ("tags", "nl"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise InvalidRequestError(f"{name} must be a string")
            if len(text) > MAX_INPUT_CHARS:
                raise InvalidRequestError(
                    f"{name} is {len(text):,} characters; the limit is {MAX_INPUT_CHARS:,}",
                    hint="TIPO's context is ~2,000 tokens: give a shorter prompt",
                )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequestError(f"seed must be in 0..2**63-1, got {self.seed}")
        if not 0 <= self.retries <= 20:
            raise InvalidRequestError(f"retries must be in 0..20, got {self.retries}")
        if self.operation is not None:
            task = Task.parse(self.operation)
            object.__setattr__(self, "operation", task.value if task else "tag")

    @classmethod
    def create(cls, **options: Any) -> ExpandRequest:
        """Build from loose values (strings for lengths, a comma string for bans, sampling
        options at the top level), as the CLI, JSON input and the server give them."""
        valid = {f.name for f in fields(cls)} | _SAMPLING_KEYS | {"width", "height"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise InvalidRequestError(
                f"unknown option(s): {', '.join(unknown)}",
                hint=f"valid: {', '.join(sorted(valid))}",
            )
        sampling = options.pop("sampling", None) or SamplingParams()
        if isinstance(sampling, Mapping):
            sampling = SamplingParams(**dict(sampling))
        changes = {k: options.pop(k) for k in list(options) if k in _SAMPLING_KEYS}
        width, height = options.pop("width", None), options.pop("height", None)
        if width is not None or height is not None:
            options.setdefault("aspect", (width or 0, height or 0))
        try:
            return cls(**_coerce(options), sampling=sampling.with_(**changes))
        except TypeError as error:
            raise InvalidRequestError(f"invalid request: {error}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpandRequest:
        if not isinstance(data, Mapping):
            raise InvalidRequestError("a request must be a JSON object")
        return cls.create(**dict(data))

    def with_seed(self, seed: int) -> ExpandRequest:
        return replace(self, seed=seed)


def _coerce(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("tag_length", "nl_length"):
        if key in out and out[key] is not None:
            out[key] = Length.parse(out[key])
        elif key in out:
            del out[key]
    if "ban" in out:
        ban = out["ban"]
        items = ban.split(",") if isinstance(ban, str) else (ban or ())
        out["ban"] = tuple(str(b).strip() for b in items if str(b).strip())
    if "aspect" in out:
        out["aspect"] = parse_aspect(out["aspect"])
    for key in ("tags", "nl"):
        if out.get(key) is None:
            out.pop(key, None)
    if isinstance(out.get("tags"), (list, tuple)):  # JSON users may send a list of tags
        out["tags"] = ", ".join(str(t) for t in out["tags"])
    if out.get("template") is None:
        out.pop("template", None)
    for key in ("seed", "retries"):
        value = out.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidRequestError(f"{key} must be an integer, got {out[key]!r}")
    return out


__all__ = ["ExpandRequest", "parse_aspect"]
