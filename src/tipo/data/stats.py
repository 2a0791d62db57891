"""How often each task, bucket and drop occurs in a set of samples, against the recipe.

The fixed rates of docs/tipo-training.md §1.4–1.9 are checked here; task and bucket rates depend
on the corpus (which captions exist, how many tags), so the caller supplies those expectations.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .samples import P_DROP_INFO, P_GEN_META, P_TOTAL_DROP, P_TRAIN_ON_INPUT, Sample

# Each flag's rate and the samples it is measured over (the recipe's conditions).
EXPECTED: dict[str, dict[str, float]] = {
    "flags": {
        "total_drop": P_TOTAL_DROP,  # of Danbooru samples
        "drop_info": P_DROP_INFO * (1 - P_TOTAL_DROP),  # of Danbooru samples
        "gen_meta": P_GEN_META,  # of Danbooru samples with neither drop
        "train_on_input": P_TRAIN_ON_INPUT,  # of all samples
    }
}


@dataclass(frozen=True)
class Frequency:
    """``hits`` out of ``total`` samples."""

    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0

    def z_score(self, expected: float) -> float:
        """Distance from ``expected`` in binomial standard errors (0 when the rate is certain)."""
        error = math.sqrt(expected * (1 - expected) / self.total) if self.total else 0.0
        if error == 0:
            return 0.0 if self.rate == expected else math.inf
        return (self.rate - expected) / error


def _counts(labels: Iterable[str], total: int) -> dict[str, Frequency]:
    return {label: Frequency(n, total) for label, n in sorted(Counter(labels).items())}


def distribution(samples: Iterable[Sample]) -> dict[str, dict[str, Frequency]]:
    """Frequencies by group: ``source``, ``task`` ("none" is plain continuation), ``bucket`` and
    ``flags`` (each flag over the samples the recipe applies it to, see :data:`EXPECTED`)."""
    items = list(samples)
    danbooru = [s for s in items if s.source == "danbooru"]
    kept = [s for s in danbooru if not (s.total_drop or s.drop_info)]
    return {
        "source": _counts((s.source for s in items), len(items)),
        "task": _counts((s.task or "none" for s in items), len(items)),
        "bucket": _counts((s.bucket.value for s in items), len(items)),
        "flags": {
            "total_drop": Frequency(sum(s.total_drop for s in danbooru), len(danbooru)),
            "drop_info": Frequency(sum(s.drop_info for s in danbooru), len(danbooru)),
            "gen_meta": Frequency(sum(s.gen_meta for s in kept), len(kept)),
            "train_on_input": Frequency(sum(s.train_on_input for s in items), len(items)),
        },
    }


def format_table(
    dist: Mapping[str, Mapping[str, Frequency]],
    expected: Mapping[str, Mapping[str, float]] = EXPECTED,
) -> str:
    """A plain-text table: group, label, hits/total, observed %, expected % and z-score."""
    rows = [
        f"{'group':<8} {'label':<22} {'hits/total':>15} {'observed':>9} {'expected':>9} {'z':>6}"
    ]
    for group, freqs in dist.items():
        for label, freq in freqs.items():
            want = expected.get(group, {}).get(label)
            want_text = f"{want:9.2%}" if want is not None else f"{'':>9}"
            z_text = f"{freq.z_score(want):6.2f}" if want is not None else f"{'':>6}"
            counts = f"{freq.hits}/{freq.total}"
            rows.append(
                f"{group:<8} {label:<22} {counts:>15} {freq.rate:9.2%} {want_text} {z_text}"
            )
    return "\n".join(rows)


__all__ = ["EXPECTED", "Frequency", "distribution", "format_table"]
