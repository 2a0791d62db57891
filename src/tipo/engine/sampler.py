"""Next-token choice on tensors, with transformers ``generate`` semantics.

Order, as transformers applies its processors: repetition penalty (CTRL: a seen token's
positive logit is divided by the penalty, a negative one multiplied; over prompt + generated
ids), then the decode-time constraint's mask, then - only when sampling - temperature, top-k
(ties with the k-th value kept), top-p (ascending cumulative probability <= 1 - top_p removed,
the most likely token always kept) and min-p (probability < min_p x the top probability
removed), each on the output of the previous one. Temperature 0 is greedy: argmax after the
penalty and the mask, as transformers' greedy search.

The filters run on the top candidates only: top-k bounds the set, so one ``topk`` over the
vocabulary replaces transformers' full sorts. Tokens outside the candidate set were removed by
top-k anyway, and a tie with the k-th value reaching past it falls back to a full sort, so the
result is the same set of tokens.

Each sequence draws from its own ``torch.Generator`` (CPU, seeded by the request), one uniform
number per sampled token, and picks the token by inverse CDF: deterministic across runs,
processes and devices, and independent of the other sequences in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..sampling import SamplingParams

# Extra candidates beyond the largest top_k, so ties at the k-th value rarely force a full sort.
_TIE_MARGIN = 32


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of a decode batch, as tensors [B, 1] on the logits' device,
    plus what the whole batch needs (so a step skips the filters no row uses)."""

    params: list[SamplingParams]
    temperature: Tensor
    top_k: Tensor  # long; vocab size where top-k is off
    top_p: Tensor
    min_p: Tensor
    penalty: Tensor
    greedy: list[bool]
    k: list[int]  # top_k per row, on the host (vocab size where top-k is off)
    any_top_p: bool = True  # some row has top_p < 1
    any_min_p: bool = True  # some row has min_p > 0

    @classmethod
    def build(cls, params: list[SamplingParams], vocab: int, device: torch.device) -> SamplingBatch:
        def column(values: list, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        top_k = [min(p.top_k, vocab) or vocab for p in params]
        return cls(
            params=params,
            temperature=column([p.temperature or 1.0 for p in params]),
            top_k=column(top_k, torch.long),
            top_p=column([p.top_p for p in params]),
            min_p=column([p.min_p for p in params]),
            penalty=column([p.repetition_penalty for p in params]),
            greedy=[p.greedy for p in params],
            k=top_k,
            any_top_p=any(p.top_p < 1 for p in params),
            any_min_p=any(p.min_p > 0 for p in params),
        )

    def rows(self, rows: list[int]) -> SamplingBatch:
        """The sub-batch of rows ``rows``, built without reading anything back from the
        device."""
        index = torch.tensor(rows, device=self.temperature.device)
        return SamplingBatch(
            params=[self.params[i] for i in rows],
            temperature=self.temperature[index],
            top_k=self.top_k[index],
            top_p=self.top_p[index],
            min_p=self.min_p[index],
            penalty=self.penalty[index],
            greedy=[self.greedy[i] for i in rows],
            k=[self.k[i] for i in rows],
            any_top_p=self.any_top_p,
            any_min_p=self.any_min_p,
        )


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """logits [B, V] float, seen [B, V] bool (token in prompt or output), penalty [B, 1]."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_candidates(logits: Tensor, batch: SamplingBatch) -> tuple[Tensor, Tensor]:
    """Logits [B, V] -> temperature-scaled (values, ids) [B, K] sorted by descending value,
    with the filtered-out candidates at -inf.

    The candidates are chosen on the logits and only they are divided by the temperature
    (a positive divisor keeps the order; rounding may merge neighbours into ties, which the
    tie check below sees, as it compares scaled values)."""
    vocab = logits.shape[-1]
    largest_k = max(batch.k)
    # On the CPU the largest k plus a margin are enough unless ties run past them (checked
    # below, a host read that costs nothing there); on a GPU a full sort is cheap and keeps
    # the step free of host reads and of data-dependent shapes.
    count = (
        vocab if largest_k + _TIE_MARGIN >= vocab or not logits.is_cpu else largest_k + _TIE_MARGIN
    )
    if count < vocab:
        values, ids = logits.topk(count, dim=-1)
    else:
        values, ids = logits.sort(dim=-1, descending=True)
    values = values / batch.temperature
    kth = values.gather(1, batch.top_k - 1)  # [B, 1] the k-th largest value per row
    # A k-th value of -inf (a constraint left fewer than k tokens) ties with every masked
    # token, but those stay filtered: no need to look past the candidates.
    if count < vocab and bool(((values[:, -1:] >= kth) & (kth > float("-inf"))).any()):
        # ties run past the candidates: all of them, as transformers would see them
        values, ids = (logits / batch.temperature).sort(dim=-1, descending=True)
    values = values.masked_fill(values < kth, float("-inf"))  # top-k, ties kept
    if batch.any_top_p:
        values = _top_p(values, batch.top_p)
    if batch.any_min_p:
        values = _min_p(values, batch.min_p)
    return values, ids


def _top_p(values: Tensor, top_p: Tensor) -> Tensor:
    """values [B, K] descending. transformers sums probabilities in ascending order: the
    flipped cumsum reproduces that order exactly."""
    probs = values.softmax(dim=-1)
    ascending_mass = probs.flip(-1).cumsum(dim=-1).flip(-1)  # mass of this token and all smaller
    remove = ascending_mass <= 1 - top_p
    remove[:, 0] = False  # min_tokens_to_keep = 1: the most likely token stays
    return values.masked_fill(remove & (top_p < 1), float("-inf"))


def _min_p(values: Tensor, min_p: Tensor) -> Tensor:
    probs = values.softmax(dim=-1)
    remove = probs < min_p * probs[:, :1]  # probs[:, 0] is the top probability
    remove[:, 0] = False
    return values.masked_fill(remove, float("-inf"))


def draw(values: Tensor, ids: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF sampling: values [B, K] filtered scores, uniforms [B] in [0, 1) -> ids [B]."""
    cdf = values.softmax(dim=-1).cumsum(dim=-1)
    # right=True never lands on a zero-probability candidate (its CDF equals its predecessor's).
    choice = torch.searchsorted(cdf, uniforms[:, None] * cdf[:, -1:], right=True)
    return ids.gather(1, choice.clamp(max=ids.shape[1] - 1))[:, 0]


def choose(logits: Tensor, batch: SamplingBatch, uniforms: Tensor) -> Tensor:
    """Penalised, masked logits [B, V] fp32 -> next token ids [B]. ``uniforms`` [B] are used
    by the sampled rows only."""
    if not any(batch.greedy):  # the usual case: every row samples
        return draw(*top_candidates(logits, batch), uniforms)
    tokens = logits.argmax(dim=-1)
    if all(batch.greedy):
        return tokens
    rows = [i for i, g in enumerate(batch.greedy) if not g]
    sampled = torch.tensor(rows, device=logits.device)
    sub = batch.rows(rows)
    values, ids = top_candidates(logits[sampled], sub)
    tokens[sampled] = draw(values, ids, uniforms[sampled])
    return tokens


def warp_full(logits: Tensor, params: SamplingParams) -> Tensor:
    """The scores [B, V] transformers' warpers would produce (filtered ids at -inf): the
    candidate-space filters scattered back over the vocabulary. For tests and reports."""
    batch = SamplingBatch.build([params] * logits.shape[0], logits.shape[-1], logits.device)
    values, ids = top_candidates(logits, batch)
    full = torch.full_like(logits, float("-inf"))
    return full.scatter(1, ids, values)


__all__ = [
    "SamplingBatch",
    "apply_repetition_penalty",
    "choose",
    "draw",
    "top_candidates",
    "warp_full",
]
