"""Sampling parameters and seeds (pure: no torch)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from .errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    """The reference library's defaults (its UI uses 0.5 / 0.95 / 80 / 0.05).

    ``temperature`` 0 means greedy. ``top_k`` 0 and ``top_p`` 1 and ``min_p`` 0 disable those
    filters; ``repetition_penalty`` 1 disables the penalty (CTRL-style, as transformers: a seen
    token's positive logit is divided by it, a negative one multiplied)."""

    temperature: float = 0.35
    top_p: float = 0.95
    top_k: int = 60
    min_p: float = 0.1
    repetition_penalty: float = 1.17
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (0 < self.max_new_tokens <= 4096, "max_new_tokens must be in 1..4096"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(f"{message} (got {self})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes: float | int | None) -> SamplingParams:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


SEED_LIMIT = 2**63


def random_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def derive_seed(seed: int, *path: object) -> int:
    """A seed for one part of a request (a step, an attempt, the shuffle), stable across
    processes and Python versions: string seeding hashes with SHA-512, not ``hash()``."""
    key = "/".join(str(p) for p in (seed, *path))
    return random.Random(key).getrandbits(63)


__all__ = ["SEED_LIMIT", "SamplingParams", "derive_seed", "random_seed"]
