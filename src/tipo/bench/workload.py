"""What every speed row decodes: the same requests and sampling settings for every engine.

A request of the bench is ``batch`` variants (seeds) of one random prompt, as TIPO is used (N
variants of one prompt for N images), sampled with the baseline's settings (docs/baselines.md:
temperature 0.5, top-k 60, top-p 0.95; no min-p, no repetition penalty, as the transformers
reference row runs). Torch-free, so the llama.cpp rows' processes do not load torch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..backends.base import Generation, GenerationRequest
from ..sampling import SamplingParams

BENCH_SAMPLING = SamplingParams(temperature=0.5, top_k=60, top_p=0.95, min_p=0.0,
                                repetition_penalty=1.0)  # fmt: skip
FIRST_ID, LAST_ID = 3, 32000  # ordinary SentencePiece pieces: no control or TIPO tokens


def random_prompts(count: int, length: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` prompts of BOS + ``length - 1`` random ordinary tokens, reproducible."""
    rng = random.Random(seed)
    return [
        (1, *(rng.randrange(FIRST_ID, LAST_ID) for _ in range(length - 1))) for _ in range(count)
    ]


def bench_requests(
    batch: int, prompt_len: int, new_tokens: int, *, seed: int = 0,
    sampling: SamplingParams = BENCH_SAMPLING,
) -> list[GenerationRequest]:  # fmt: skip
    """``batch`` variants (seeds seed, seed + 1, ...) of one random prompt of ``prompt_len``."""
    prompt = random_prompts(1, prompt_len, seed)[0]
    params = sampling.with_(max_new_tokens=new_tokens)
    return [GenerationRequest(prompt, params, seed=seed + i) for i in range(batch)]


def decode_figures(results: Sequence[Generation], wall: float, batch: int) -> dict[str, float]:
    """The figures every speed row reports, from the generations of one timed call that took
    ``wall`` seconds: tokens/s over the call and over decoding alone, ms per decode step, time
    to the first token."""
    produced = sum(len(r.token_ids) + (r.finish_reason == "eos") for r in results)
    decode = max(r.decode_seconds for r in results)
    steps = max(len(r.token_ids) for r in results)
    return {
        "tokens": produced,
        "tokens_per_second": produced / wall,
        "decode_tokens_per_second": (produced - batch) / decode if decode > 0 else 0.0,
        "ms_per_step": 1000 * decode / max(steps - 1, 1),
        "ttft_seconds": max(r.prefill_seconds for r in results),
    }


__all__ = ["BENCH_SAMPLING", "bench_requests", "decode_figures", "random_prompts"]
