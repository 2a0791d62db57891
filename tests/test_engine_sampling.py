"""The engine's sampling filters against transformers' logits processors on random logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
generation = pytest.importorskip("transformers.generation.logits_process")

from tipo.engine.sampler import (  # noqa: E402
    SamplingBatch,
    apply_repetition_penalty,
    choose,
    draw,
    top_candidates,
    warp_full,
)
from tipo.sampling import SamplingParams  # noqa: E402

VOCAB = 32013


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def transformers_warp(logits, p: SamplingParams):
    """transformers' generate order: temperature, top-k, top-p, min-p (min_tokens_to_keep=1)."""
    warpers = []
    if p.temperature != 1.0:
        warpers.append(generation.TemperatureLogitsWarper(p.temperature))
    if p.top_k != 0:
        warpers.append(generation.TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        warpers.append(generation.TopPLogitsWarper(p.top_p))
    warpers.append(generation.MinPLogitsWarper(p.min_p))
    for warper in warpers:
        logits = warper(None, logits)
    return logits


CASES = [
    SamplingParams(),  # the reference defaults: 0.35 / 0.95 / 60 / 0.1
    SamplingParams(temperature=0.5, top_p=0.95, top_k=80, min_p=0.05),  # the UI defaults
    SamplingParams(temperature=1.0, top_p=0.5, top_k=0, min_p=0.0),  # top-p over all ids
    SamplingParams(temperature=1.3, top_p=1.0, top_k=5, min_p=0.0),
    SamplingParams(temperature=0.7, top_p=1.0, top_k=0, min_p=0.3),
    SamplingParams(temperature=2.0, top_p=0.99, top_k=1000, min_p=0.01),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}")
@pytest.mark.parametrize("scale", [1.0, 6.0])  # flat and peaked distributions
def test_filters_match_transformers_warpers(params: SamplingParams, scale: float) -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(7)) * scale
    expected = transformers_warp(logits.clone(), params)
    actual = warp_full(logits.clone(), params)
    assert torch.equal(torch.isinf(actual), torch.isinf(expected))
    keep = ~torch.isinf(expected)
    torch.testing.assert_close(actual[keep], expected[keep])


def test_ties_at_the_kth_value_are_kept_like_transformers() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(3))
    logits[:, :200] = 5.0  # 200 ids tie with the 60th largest value
    params = SamplingParams(temperature=1.0, top_k=60, top_p=1.0, min_p=0.0)
    expected = transformers_warp(logits.clone(), params)
    assert torch.equal(torch.isinf(warp_full(logits, params)), torch.isinf(expected))


def test_a_row_masked_below_top_k_keeps_to_its_candidates() -> None:
    """Regression: a constraint that leaves fewer than top_k tokens made the k-th value -inf,
    which "tied" with all 32k masked ids, and every step then sorted the whole vocabulary."""
    logits = torch.full((2, VOCAB), float("-inf"))
    logits[:, [5, 9, 11]] = torch.tensor([1.0, 2.0, 0.5])
    params = SamplingParams(temperature=1.0, top_k=60, top_p=1.0, min_p=0.0)
    batch = SamplingBatch.build([params] * 2, VOCAB, logits.device)
    values, ids = top_candidates(logits, batch)
    assert values.shape[1] < VOCAB  # the candidates, not a sort of the vocabulary
    assert ids[:, :3].tolist() == [[9, 5, 11]] * 2 and torch.isinf(values[:, 3:]).all()
    expected = transformers_warp(logits.clone(), params)
    assert torch.equal(torch.isinf(warp_full(logits, params)), torch.isinf(expected))


def test_repetition_penalty_matches_transformers() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, VOCAB, generator=g)
    ids = torch.randint(0, VOCAB, (3, 50), generator=g)
    expected = generation.RepetitionPenaltyLogitsProcessor(1.17)(ids, logits.clone())
    seen = torch.zeros(3, VOCAB, dtype=torch.bool)
    seen.scatter_(1, ids, True)
    actual = apply_repetition_penalty(logits, seen, torch.full((3, 1), 1.17))
    torch.testing.assert_close(actual, expected)


def test_greedy_rows_take_the_argmax_and_sampled_rows_draw_from_the_filtered_set() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2)) * 4
    params = [SamplingParams(temperature=0), SamplingParams(top_k=3), SamplingParams(top_k=3)]
    batch = SamplingBatch.build(params, VOCAB, logits.device)
    for u in (0.0, 0.3, 0.999999):
        tokens = choose(logits.clone(), batch, torch.full((3,), u))
        assert tokens[0] == logits[0].argmax()
        for row in (1, 2):
            assert int(tokens[row]) in logits[row].topk(3).indices.tolist()


def test_an_all_sampled_batch_draws_what_the_same_rows_draw_beside_a_greedy_row() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(4)) * 3
    sampled = [SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05),
               SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)]  # fmt: skip
    alone = SamplingBatch.build(sampled, VOCAB, logits.device)
    mixed = SamplingBatch.build([SamplingParams(temperature=0), *sampled], VOCAB, logits.device)
    for u in (0.1, 0.5, 0.95):
        expected = choose(logits.clone(), mixed, torch.full((3,), u))[1:]
        assert torch.equal(choose(logits[1:].clone(), alone, torch.full((2,), u)), expected)


def test_inverse_cdf_draws_follow_the_probabilities() -> None:
    values = torch.tensor([[2.0, 1.0, float("-inf"), 0.0]])
    ids = torch.tensor([[10, 11, 12, 13]])
    probs = values.softmax(-1)[0]
    uniforms = torch.linspace(0, 1, 2001)[:-1]
    picks = torch.cat([draw(values, ids, u[None]) for u in uniforms])
    counts = torch.stack([(picks == i).float().mean() for i in (10, 11, 12, 13)])
    torch.testing.assert_close(counts, probs, atol=1e-3, rtol=0)
