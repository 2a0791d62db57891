"""A backend whose "model" is noise: random logits for every sequence at every step.

A random checkpoint writes noise too, at a cost; this one is cheap enough to run the
decode-time constraints over thousands of seeds (tests) and to compare one controlled pass with
the reference's retry loop on identical inputs (``tipo bench``). Every guarantee of the output
must then come from the constraints. ``biased`` tokens (commas, periods, newline, EOS) get a
fixed bonus so the noise ends tags, sentences and fields early and often, like a model that
knows the format but not the lengths (``NoiseBackend.format_aware``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..tokenizer import TipoTokenizer
from .base import Capabilities, FinishReason, Generation, GenerationRequest, TokenCallback


class NoiseBackend:
    name = "noise"
    capabilities = Capabilities(batched=True, constraints=True, rollback=True)

    def __init__(
        self,
        vocab_size: int,
        eos_id: int = 2,
        scale: float = 2.0,
        biased: Sequence[int] = (),
        bonus: float = 9.0,
        context_length: int = 4096,
    ) -> None:
        self.vocab_size, self.eos_id, self.scale = vocab_size, eos_id, scale
        self.context_length = context_length
        self.bias = torch.zeros(vocab_size)
        self.bias[list(biased)] = bonus

    @classmethod
    def format_aware(cls, tokenizer: TipoTokenizer) -> NoiseBackend:
        """Noise that ends tags, sentences and fields often: ",", ".", newline and EOS biased."""
        structural = [tokenizer.token_to_id(t) for t in (",", ".", "<0x0A>")] + [tokenizer.eos_id]
        return cls(tokenizer.vocab_size, tokenizer.eos_id, biased=structural)

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one small vector op at a time: threads only add contention
        try:
            return self._generate(requests)
        finally:
            torch.set_num_threads(threads)

    def _generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        start = time.perf_counter()
        generators = [torch.Generator().manual_seed(r.seed % 2**63) for r in requests]
        outputs: list[list[int]] = [[] for _ in requests]
        finished: list[FinishReason | None] = [None] * len(requests)
        while any(f is None for f in finished):
            for i, request in enumerate(requests):
                if finished[i] is None:
                    finished[i] = self._step(request, generators[i], outputs[i])
        seconds = time.perf_counter() - start
        return [
            Generation(out, reason or "length", len(r.prompt_ids), 0.0, seconds)
            for out, reason, r in zip(outputs, finished, requests, strict=True)
        ]

    def _step(
        self, request: GenerationRequest, generator: torch.Generator, out: list[int]
    ) -> FinishReason | None:
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


__all__ = ["NoiseBackend"]
