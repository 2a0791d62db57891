"""A backend whose "model" is noise: random logits for every sequence at every step.

A random tiny checkpoint writes noise too, at a cost; this one is cheap enough to run the
decode-time constraints over thousands of seeds. Every guarantee of the output must then come
from the constraints. ``biased`` tokens (commas, periods, newline, EOS) get a fixed bonus so the
noise ends tags, sentences and fields early and often, like a model that knows the format but
not the lengths: that exercises the minimums as much as the maximums.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from tipo.backends.base import Capabilities, Generation, GenerationRequest

# One vector op at a time: threads only add contention at this size.
torch.set_num_threads(1)


class NoiseBackend:
    name = "noise"
    capabilities = Capabilities(batched=True, constraints=True, rollback=True)

    def __init__(self, vocab_size, eos_id=2, scale=2.0, biased=(), bonus=9.0, context_length=4096):
        self.vocab_size, self.eos_id, self.scale = vocab_size, eos_id, scale
        self.context_length = context_length
        self.bias = torch.zeros(vocab_size)
        self.bias[list(biased)] = bonus

    def generate(self, requests: Sequence[GenerationRequest], on_token=None) -> list[Generation]:
        start = time.perf_counter()
        generators = [torch.Generator().manual_seed(r.seed % 2**63) for r in requests]
        outputs: list[list[int]] = [[] for _ in requests]
        finished = [None] * len(requests)
        while any(f is None for f in finished):
            for i, request in enumerate(requests):
                if finished[i] is None:
                    finished[i] = self._step(request, generators[i], outputs[i])
        seconds = time.perf_counter() - start
        return [
            Generation(out, reason, len(r.prompt_ids), 0.0, seconds)
            for out, reason, r in zip(outputs, finished, requests, strict=True)
        ]

    def _step(self, request, generator, out):
        if len(out) >= request.sampling.max_new_tokens:
            return "length"
        logits = torch.randn(self.vocab_size, generator=generator) * self.scale + self.bias
        if request.constraint is not None:
            request.constraint.mask_logits(logits)
        uniform = torch.rand(self.vocab_size, generator=generator).clamp_(min=1e-12)
        gumbel = -(-uniform.log()).log()
        token = int(torch.argmax(logits + gumbel))
        out.append(token)
        drop = request.constraint.accept(token) if request.constraint is not None else 0
        if drop:
            del out[-drop:]
            return None
        if token == self.eos_id:
            out.pop()
            return "eos"
        return None

    def close(self) -> None:
        pass
