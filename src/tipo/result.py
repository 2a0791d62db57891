"""What ``TIPO.expand`` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .tags import Tags


@dataclass
class StepRecord:
    """One generation: what the model was shown and what it wrote."""

    task: str  # "tag" for plain continuation, else the task name
    length: str
    expand: bool
    gen_meta: bool
    attempt: int
    seed: int
    prompt: str  # the exact model-facing prompt
    output: str  # the raw continuation the model wrote
    prompt_tokens: int
    new_tokens: int
    finish_reason: str
    seconds: float


@dataclass
class ExpandResult:
    """``prompt`` is ready to paste into the image model; ``tags`` are clean (no weights);
    ``extended`` is the user's sentence(s) continued, ``generated`` a new caption."""

    prompt: str
    tags: Tags
    extended: str
    generated: str
    seed: int
    template: str
    steps: list[StepRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def new_tokens(self) -> int:
        return sum(s.new_tokens for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tags": self.tags.to_dict(),
            "extended": self.extended,
            "generated": self.generated,
            "seed": self.seed,
            "template": self.template,
            "steps": [asdict(s) for s in self.steps],
            "timings": dict(self.timings),
            "tokens": {"prompt": self.prompt_tokens, "new": self.new_tokens},
        }


__all__ = ["ExpandResult", "StepRecord"]
