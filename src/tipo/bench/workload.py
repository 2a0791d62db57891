"""What every speed row decodes: the same requests and sampling settings for every engine.

A request of the bench is ``batch`` variants (seeds) of one random prompt, as TIPO is used (N
variants of one prompt for N images), sampled with the baseline's settings (docs/baselines.md:
temperature 0.5, top-k 60, top-p 0.95; no min-p, no repetition penalty, as the transformers
reference row runs). Torch-free, so the llama.cpp rows' processes do not load torch.
"""

from __future__ import annotations

import random

from ..backends.base import GenerationRequest
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


__all__ = ["BENCH_SAMPLING", "bench_requests", "random_prompts"]
