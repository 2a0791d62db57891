"""Point estimates with percentile-bootstrap confidence intervals over the prompts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A metric over a prompt set: its value, the interval (None when not computed) and how
    many prompts it rests on."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: a value that does not apply (NaN: no prompt had tags) becomes None."""
        values = asdict(self)
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in values.items()
        }


def mean_estimate(
    values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """The mean of the finite values and its bootstrap interval (NaN marks "does not apply")."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return Estimate(float("nan"), n=0)
    if resamples < 1 or data.size < 2:
        return Estimate(float(data.mean()), n=int(data.size))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = _percentiles(means, confidence)
    return Estimate(float(data.mean()), low, high, int(data.size))


def set_estimate(
    metric: Callable[[np.ndarray], float],
    n: int,
    *,
    resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``metric(indices)`` of a whole set (e.g. FDD) on all ``n`` items, with a bootstrap
    interval from ``resamples`` index draws with replacement."""
    value = float(metric(np.arange(n)))
    if resamples < 1 or n < 2:
        return Estimate(value, n=n)
    rng = np.random.default_rng(seed)
    draws = np.asarray([metric(rng.integers(0, n, size=n)) for _ in range(resamples)])
    low, high = _percentiles(draws, confidence)
    return Estimate(value, low, high, n)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


__all__ = ["Estimate", "mean_estimate", "set_estimate"]
