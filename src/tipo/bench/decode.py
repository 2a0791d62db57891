"""Decode speed of our engine (``time_decode``) and of the reference path, transformers
``generate`` fp32 (``time_transformers``), on a checkpoint with random weights
(``write_random_checkpoint``: speed does not depend on their values). ``tipo bench`` runs each
measurement in a fresh process (sections.py), so load time and peak RSS are its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..engine.config import EngineConfig, expected_shapes
from ..engine.engine import Engine
from ..engine.weights import write_safetensors
from .system import peak_rss_mb
from .workload import BENCH_SAMPLING, bench_requests, decode_figures


def write_random_checkpoint(
    directory: str | Path, config: EngineConfig | str = "tipo-200m", *, seed: int = 0,
    std: float = 0.02, dtype: torch.dtype = torch.float32,
) -> Path:  # fmt: skip
    """A Hugging Face folder (config.json + model.safetensors) with random weights."""
    if isinstance(config, str):
        config = EngineConfig.from_name(config)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    hf = config.to_hf_config() | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=dtype)
        else:
            tensors[name] = (torch.randn(shape, generator=generator) * std).to(dtype)
    write_safetensors(path / "model.safetensors", tensors)
    return path


def time_decode(
    checkpoint: str | Path,
    dtype: str | None = None,
    batch: int = 1,
    prompt_len: int = 64,
    new_tokens: int = 256,
    *,
    ignore_eos: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint`` and generate ``new_tokens`` for ``batch`` variants of one prompt.
    Returns tokens/s (all tokens over wall time, and decode-only), ms per decode step, time
    to first token, load time and peak RSS (of the whole process so far)."""
    engine = Engine.load(checkpoint, dtype=dtype, max_batch=max(batch, 1), threads=threads)
    load_seconds, load_rss = engine.load_seconds, peak_rss_mb()
    engine.scheduler.ignore_eos = ignore_eos
    engine.generate(bench_requests(batch, prompt_len, 8, seed=99))  # warm-up
    requests = bench_requests(batch, prompt_len, new_tokens)
    start = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - start
    return {
        "engine": "torch",
        "dtype": engine.format,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        **decode_figures(results, wall, batch),
        "load_seconds": load_seconds,
        "load_peak_rss_mb": load_rss,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        **({"gemm_ms_per_step": weight_gemm_ms(engine.model)} if batch == 1 else {}),
    }


def weight_gemm_ms(model: Any, steps: int = 64) -> float:
    """Milliseconds one batch-1 decode step spends in the weight matrix products alone: every
    linear layer of the model called in order on one token, as a step calls them, and nothing
    else. ms/step minus this is the step's overhead (norms, RoPE, attention, sampling, the
    scheduler, per-op dispatch)."""
    layers = [
        layer
        for block in model.blocks
        for layer in (block.attn.qkv, block.attn.out, block.mlp.gate_up, block.mlp.down)
    ]
    layers.append(model.lm_head)  # fmt: skip
    config = model.config
    widths = {id(b.mlp.down): config.intermediate_size for b in model.blocks}
    widths |= {id(b.attn.out): config.num_heads * config.head_dim for b in model.blocks}
    inputs = [torch.randn(1, 1, widths.get(id(layer), config.hidden_size)).to(model.act_dtype)
              for layer in layers]  # fmt: skip
    with torch.inference_mode():
        for _ in range(4):  # warm-up
            for layer, x in zip(layers, inputs, strict=True):
                layer.forward(x)
        start = time.perf_counter()
        for _ in range(steps):
            for layer, x in zip(layers, inputs, strict=True):
                layer.forward(x)
    return 1000 * (time.perf_counter() - start) / steps


def time_transformers(
    checkpoint: str | Path, batch: int = 1, prompt_len: int = 64, new_tokens: int = 256
) -> dict[str, Any]:
    """The reference: transformers ``generate`` fp32, the batch as one padded-free batch of
    identical prompts (sampling, EOS ignored via min_new_tokens)."""
    from transformers import LlamaForCausalLM

    start = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - start
    prompt = bench_requests(1, prompt_len, 1)[0].prompt_ids
    ids = torch.tensor([prompt] * batch)
    s = BENCH_SAMPLING
    options = dict(do_sample=True, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                   pad_token_id=2, attention_mask=torch.ones_like(ids))  # fmt: skip
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **options)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
        wall = time.perf_counter() - start
    return {"engine": "transformers", "dtype": "float32", "batch": batch,
            "prompt_len": prompt_len, "new_tokens": new_tokens, "tokens": batch * new_tokens,
            "tokens_per_second": batch * new_tokens / wall, "load_seconds": load_seconds,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


__all__ = ["time_decode", "time_transformers", "write_random_checkpoint"]
