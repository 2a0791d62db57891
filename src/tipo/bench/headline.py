"""Time to a finished prompt: the pipeline's common requests, whole, on every engine (the first
table of ``tipo bench``).

Requests: tags only, tags and a sentence, a sentence only; each at short and long targets; one
variant and 16 (seeds 1..16, one batch). Engines: ours with the default weights, ours without
jump-forward, llama.cpp GGUF files through our planner (one controlled pass each), and the
reference path.

The reference path is transformers (fp32, one sequence at a time, as the reference library
runs it) behind the reference's retry loop. A random checkpoint never stops by itself, so run
as is, every uncontrolled pass would run to its token cap and flatter us. Instead the passes
the retry loop makes on each request (their count, prompt and new tokens) come from the
format-aware noise model (``backends.noise``: it ends tags, sentences and fields at random,
like a model that knows the format but not the lengths, see the retries table), and
transformers computes exactly those passes, timed. One variant is measured that way (seed 1);
16 variants, which the reference runs one after another, are the sum over seeds 1..16 of a
cost model (seconds = a + b prompt tokens + c new tokens) fitted to the measured passes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .requests import RETRY_LOOP, SENTENCE, TAGS, noise_pipeline
from .system import log

KINDS: dict[str, dict[str, str]] = {
    "tags": {"tags": TAGS},
    "tags + sentence": {"tags": TAGS, "nl": SENTENCE},
    "sentence": {"nl": SENTENCE},
}
LENGTHS = ("short", "long")
VARIANTS = (1, 16)
REFERENCE = "reference path"

Cell = tuple[str, str, int]  # (kind, length, variants)


def request(kind: str, length: str, seed: int, **options: Any) -> Any:
    from ..request import ExpandRequest

    return ExpandRequest.create(**KINDS[kind], tag_length=length, nl_length=length, seed=seed,
                                **options)  # fmt: skip


def headline_rows(
    checkpoint: Path,
    gguf_files: dict[str, Path],
    lengths: tuple[str, ...] = LENGTHS,
    variants: tuple[int, ...] = VARIANTS,
) -> list[dict[str, Any]]:
    """One row per request and variant count: seconds to the finished prompt(s) per engine,
    and the new tokens each engine generated for them (a controlled pass writes to the length
    targets; the reference's loop stops when its own check passes, often with fewer)."""
    from ..pipeline import TIPO

    cells = [(kind, length, n) for kind in KINDS for length in lengths for n in variants]
    seconds: dict[str, dict[Cell, float]] = {}
    tokens: dict[str, dict[Cell, int]] = {}
    with TIPO.load(checkpoint) as ours:
        scheduler = ours.backend.engine.scheduler  # type: ignore[attr-defined]
        name = f"ours {ours.backend.engine.format}"  # type: ignore[attr-defined]
        seconds[name], tokens[name] = _time_cells(ours, cells, name)
        scheduler.jump_forward = False
        by_token = f"{name}, token by token"
        seconds[by_token], tokens[by_token] = _time_cells(ours, cells, "token by token")
    for quant, path in gguf_files.items():
        with TIPO.load(path, backend="llamacpp") as loaded:
            engine = f"llama.cpp {quant}"
            seconds[engine], tokens[engine] = _time_cells(loaded, cells, engine)
    seconds[REFERENCE], tokens[REFERENCE] = reference_seconds(checkpoint, cells)
    return [
        {"request": kind, "length": length, "variants": n,
         "seconds": {engine: by_cell[(kind, length, n)] for engine, by_cell in seconds.items()},
         "tokens": {engine: by_cell[(kind, length, n)] for engine, by_cell in tokens.items()}}
        for kind, length, n in cells
    ]  # fmt: skip


def _time_cells(
    tipo: Any, cells: list[Cell], name: str
) -> tuple[dict[Cell, float], dict[Cell, int]]:
    """Seconds and new tokens per cell for whole requests on ``tipo`` (a failed request fails
    the bench)."""
    tipo.run_many([request("tags", "short", 0, max_new_tokens=8)])  # untimed warm-up
    out, tokens = {}, {}
    for kind, length, n in cells:
        batch = [request(kind, length, seed) for seed in range(1, n + 1)]
        start = time.perf_counter()
        outcomes = tipo.run_many(batch)
        out[(kind, length, n)] = time.perf_counter() - start
        errors = [o for o in outcomes if isinstance(o, Exception)]
        if errors:
            raise RuntimeError(f"{name}: {kind}, {length}: {errors[0]}")
        tokens[(kind, length, n)] = sum(o.new_tokens for o in outcomes)
        log(f"headline {name} {kind} {length} x{n}: {out[(kind, length, n)]:.2f} s")
    return out, tokens


def reference_seconds(
    checkpoint: Path, cells: list[Cell]
) -> tuple[dict[Cell, float], dict[Cell, int]]:
    """The reference path's seconds and new tokens per cell (see the module docstring)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    passes = retry_passes(checkpoint, cells)
    measured: list[tuple[int, int, float]] = []  # (prompt tokens, new tokens, seconds)
    first: dict[tuple[str, str], float] = {}
    _generate(model, 16, 2)  # untimed warm-up
    for kind, length in dict.fromkeys((k, ln) for k, ln, _ in cells):
        total = 0.0
        for prompt_tokens, new_tokens in passes[(kind, length)][0]:
            took = _generate(model, prompt_tokens, new_tokens)
            measured.append((prompt_tokens, new_tokens, took))
            total += took
        first[(kind, length)] = total
        log(f"headline {REFERENCE} {kind} {length} x1: {total:.2f} s")
    cost = fit_pass_cost(measured)
    seconds = {
        (kind, length, n): first[(kind, length)] if n == 1 else sum(
            cost(p, t) for seed in passes[(kind, length)][:n] for p, t in seed)
        for kind, length, n in cells
    }  # fmt: skip
    tokens = {(kind, length, n): sum(t for seed in passes[(kind, length)][:n] for _, t in seed)
              for kind, length, n in cells}  # fmt: skip
    return seconds, tokens


def retry_passes(checkpoint: Path, cells: list[Cell]) -> dict[tuple[str, str], list[list]]:
    """Per (kind, length), per seed 1..max variants: the retry loop's passes as (prompt
    tokens, new tokens), on the format-aware noise model."""
    noise = noise_pipeline(checkpoint / "tokenizer.model")
    most = max(n for _, _, n in cells)
    out: dict[tuple[str, str], list[list]] = {}
    for kind, length in dict.fromkeys((k, ln) for k, ln, _ in cells):
        results = noise.run_many([request(kind, length, seed, **RETRY_LOOP)
                                  for seed in range(1, most + 1)])  # fmt: skip
        out[(kind, length)] = [
            [(step.prompt_tokens, step.new_tokens) for step in result.steps]
            for result in results
            if not isinstance(result, Exception)
        ]
    return out


def _generate(model: Any, prompt_tokens: int, new_tokens: int) -> float:
    """Seconds for transformers to read ``prompt_tokens`` and sample ``new_tokens`` (EOS off)."""
    import torch

    from .workload import BENCH_SAMPLING, random_prompts

    ids = torch.tensor([random_prompts(1, prompt_tokens, seed=prompt_tokens)[0]])
    n = max(new_tokens, 1)
    s = BENCH_SAMPLING
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                       min_new_tokens=n, do_sample=True, temperature=s.temperature,
                       top_k=s.top_k, top_p=s.top_p, pad_token_id=2)  # fmt: skip
        return time.perf_counter() - start


def fit_pass_cost(measured: list[tuple[int, int, float]]) -> Any:
    """Least-squares ``seconds = a + b prompt_tokens + c new_tokens`` over measured passes;
    returns the fitted function."""
    import torch

    x = torch.tensor([[1.0, p, t] for p, t, _ in measured], dtype=torch.float64)
    y = torch.tensor([[s] for _, _, s in measured], dtype=torch.float64)
    a, b, c = torch.linalg.lstsq(x, y).solution[:, 0].tolist()
    return lambda prompt, new: a + b * prompt + c * max(new, 1)


__all__ = ["KINDS", "fit_pass_cost", "headline_rows", "reference_seconds"]
