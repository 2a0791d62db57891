"""``Engine``: a loaded model plus its scheduler; ``generate`` runs a batch to completion."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..backends.base import Generation, GenerationRequest, TokenCallback
from .compiled_attention import CompiledDecodeAttention
from .config import EngineConfig
from .kv_cache import KVCache
from .model import Transformer, prefill_pass
from .quant import WEIGHT_FORMATS
from .scheduler import Scheduler
from .weights import load_model

# The default weight format on CPU: the fastest whose quality we measured good. int8 (q/k/v,
# attention output and MLP down weight-only, the rest fbgemm's dynamic int8: quant.py) agreed
# with fp32 on 99.1% of greedy next tokens with a mean KL of 3.7e-4 (teacher-forced,
# quality_report on the trained synthetic-tag model; llama.cpp Q8_0 to F16 there: 99.7%,
# 3.5e-4); int4 is faster at batch 1-4 but agreed on 96-98% only, so it is opt-in
# (dtype="int4"). On CUDA, bf16.
DEFAULT_CPU_FORMAT = "int8"
DEFAULT_CUDA_FORMAT = "bfloat16"


def default_format(device: str) -> str:
    return DEFAULT_CPU_FORMAT if torch.device(device).type == "cpu" else DEFAULT_CUDA_FORMAT


class Engine:
    def __init__(self, model: Transformer, *, max_batch: int = 16, fmt: str = "") -> None:
        self.model = model
        self.format = fmt
        self.scheduler = Scheduler(model, max_batch=max_batch)
        self.load_seconds = 0.0

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dtype: str | None = None,
        device: str = "cpu",
        max_batch: int = 16,
        threads: int | None = None,
        int8_copy: bool = True,
        compile_attention: bool = False,
    ) -> Engine:
        """Load a Hugging Face LLaMA folder or a GGUF file; ``dtype`` is a weight format
        (WEIGHT_FORMATS), the same for both. ``int8_copy=False`` keeps int4 models purely 4-bit
        (see quant.Int4Linear). ``compile_attention`` (CPU): a bf16 KV cache read by a compiled
        decode attention, faster from about 8 sequences on, compiled here (5-25 s; see
        compiled_attention.py)."""
        if threads:
            torch.set_num_threads(threads)
        fmt = dtype or default_format(device)
        start = time.perf_counter()
        model = load_model(path, fmt, device, int8_copy=int8_copy,
                           compile_attention=compile_attention)  # fmt: skip
        if isinstance(model.decode_attention, CompiledDecodeAttention):
            config = model.config
            with torch.inference_mode():  # as the scheduler runs it: no recompile later
                model.decode_attention.warm_up(config.num_kv_heads, config.head_dim,
                                               config.num_heads)  # fmt: skip
        engine = cls(model, max_batch=max_batch, fmt=fmt)
        engine.load_seconds = time.perf_counter() - start
        return engine

    @property
    def config(self) -> EngineConfig:
        return self.model.config

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        """One Generation per request, in order. ``on_token(index, token)`` streams each
        sequence's tokens; a sequence with a constraint (which may roll tokens back) is
        streamed when it finishes, so the stream always equals the result."""
        scheduler = self.scheduler
        handles = [scheduler.add(request) for request in requests]
        index = {handle: i for i, handle in enumerate(handles)}
        results: dict[int, Generation] = {}
        try:
            with torch.inference_mode():
                while len(results) < len(handles):
                    step = scheduler.step()
                    self._stream(step.tokens, index, requests, on_token)
                    for handle, generation in step.finished:
                        results[handle] = generation
                        if on_token and requests[index[handle]].constraint is not None:
                            for token in generation.token_ids:
                                on_token(index[handle], token)
        finally:
            for handle in handles:
                if handle not in results:
                    scheduler.cancel(handle)
        return [results[handle] for handle in handles]

    def _stream(
        self,
        tokens: list[tuple[int, int]],
        index: dict[int, int],
        requests: Sequence[GenerationRequest],
        on_token: TokenCallback | None,
    ) -> None:
        if on_token is None:
            return
        eos = self.config.eos_token_id
        for handle, token in tokens:
            i = index[handle]
            if token != eos and requests[i].constraint is None:
                on_token(i, token)

    def close(self) -> None:
        self.scheduler = None  # type: ignore[assignment]
        self.model = None  # type: ignore[assignment]


def sequence_logits(model: Transformer, token_ids: Sequence[int]) -> torch.Tensor:
    """Logits [T, V] (fp32) at every position of one sequence, in a single prefill pass
    (teacher forcing: parity tests and quality reports)."""
    cache = KVCache(model.config, model.kv_dtype, model.device)
    cache.ensure(1, len(token_ids))
    tokens = torch.tensor([list(token_ids)], device=model.device)
    with torch.inference_mode():
        logits = model(tokens, prefill_pass(0, 0, len(token_ids), model.device), cache.tensors,
                       logits="all")  # fmt: skip
    assert logits is not None
    return logits[0].float()


__all__ = ["DEFAULT_CPU_FORMAT", "WEIGHT_FORMATS", "Engine", "default_format", "sequence_logits"]
