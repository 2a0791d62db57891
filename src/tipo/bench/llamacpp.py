"""Measurements of GGUF files in llama.cpp, for ``tipo bench``: decode speed and the quality of a
quantised file against a reference (F16) file. Both return plain dicts (JSON-ready)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.base import GenerationRequest
from ..backends.llamacpp import LlamaCppBackend, load
from ..checkpoints import Checkpoint
from ..sampling import SamplingParams
from .system import peak_rss_mb
from .workload import bench_requests, decode_figures, random_prompts


def _open(path: str | os.PathLike[str], **options: Any) -> LlamaCppBackend:
    """A backend for a bare GGUF path (no tokenizer needed: we feed ids)."""
    file = Path(path)
    return load(Checkpoint(file, "gguf", str(file), None), **options)


def _reset_peak_rss() -> None:
    """Linux resets VmHWM (peak RSS) when "5" is written to clear_refs; elsewhere the peak is
    the process's whole life."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def time_decode_gguf(
    gguf_path: str | os.PathLike[str],
    batch: int = 1,
    prompt_len: int = 64,
    new_tokens: int = 256,
    *,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """llama.cpp decoding the bench workload (workload.py: ``batch`` variants of one prompt,
    ``new_tokens`` each, EOS ignored), after a short warm-up that allocates the context; the
    same figures under the same names as ``decode.time_decode``."""
    _reset_peak_rss()
    start = time.perf_counter()
    backend = _open(gguf_path, ignore_eos=True, n_threads=n_threads)
    load_seconds = time.perf_counter() - start
    try:
        backend.generate(bench_requests(batch, prompt_len, 2, seed=99))
        requests = bench_requests(batch, prompt_len, new_tokens)
        start = time.perf_counter()
        results = backend.generate(requests)
        wall = time.perf_counter() - start
    finally:
        backend.close()
    return {
        "engine": "llama.cpp",
        "file": str(gguf_path),
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        **decode_figures(results, wall, batch),
        "load_seconds": load_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "generated": [len(r.token_ids) for r in results],
    }


def _greedy(
    backend: LlamaCppBackend, prompts: Sequence[tuple[int, ...]], n: int
) -> list[list[int]]:
    params = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=n)
    results = backend.generate([GenerationRequest(p, params, 0) for p in prompts])
    return [r.token_ids for r in results]


def gguf_quality_report(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    prompts: Sequence[Sequence[int]] | None = None,
    new_tokens: int = 64,
    seed: int = 0,
    *,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """How close ``candidate`` (e.g. a Q8_0 file) computes to ``reference`` (e.g. the F16
    file of the same model), on ``prompts`` (default: 4 random prompts of 32 tokens).

    The reference continues each prompt greedily for ``new_tokens`` tokens (EOS ignored); both
    models then read those same sequences (teacher forcing), and the candidate also continues
    greedily on its own. Returns max/mean absolute logit error (with the reference's largest
    |logit| for scale), top1_agreement (share of positions whose argmax agrees under teacher
    forcing), greedy_identical (share of prompts with identical continuations) and
    greedy_prefix (mean share of each continuation before the first difference)."""
    chosen = [tuple(p) for p in prompts] if prompts else random_prompts(4, 32, seed)
    ref_tokens, ref_logits = _run_model(reference, chosen, None, new_tokens, n_threads)
    cand_tokens, cand_logits = _run_model(candidate, chosen, ref_tokens, new_tokens, n_threads)
    report: dict[str, Any] = {
        "reference": str(reference),
        "candidate": str(candidate),
        "prompts": len(chosen),
        "new_tokens": new_tokens,
    }
    report.update(_logit_errors(chosen, ref_logits, cand_logits))
    report.update(_greedy_agreement(ref_tokens, cand_tokens, new_tokens))
    return report


def _logit_errors(
    prompts: list[tuple[int, ...]], ref: list[Any], cand: list[Any]
) -> dict[str, float]:
    import numpy as np
    import torch

    from .quality import kl_per_position

    # Rows from the prompt's last token to the one before the end predict the continuation.
    pairs = [(a[len(p) - 1 : -1], b[len(p) - 1 : -1]) for p, a, b in zip(prompts, ref, cand,
                                                                        strict=True)]  # fmt: skip
    errors = [np.abs(a - b) for a, b in pairs]
    kl = [kl_per_position(torch.from_numpy(a).double(), torch.from_numpy(b).double())
          for a, b in pairs]  # fmt: skip
    positions = sum(len(a) for a, _ in pairs)
    return {
        "max_abs_logit_error": float(max(e.max() for e in errors)),
        "mean_abs_logit_error": float(np.mean([e.mean() for e in errors])),
        "reference_max_abs_logit": float(max(np.abs(a).max() for a in ref)),
        "top1_agreement": sum(float((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in pairs)
        / positions,
        "mean_kl": sum(float(k.sum()) for k in kl) / positions,
    }


def _greedy_agreement(ref: list[list[int]], cand: list[list[int]], n: int) -> dict[str, float]:
    pairs = list(zip(ref, cand, strict=True))
    return {
        "greedy_identical": sum(a == b for a, b in pairs) / len(pairs),
        "greedy_prefix": sum(_common(a, b) / n for a, b in pairs) / len(pairs),
    }


def _run_model(
    path: str | os.PathLike[str],
    prompts: list[tuple[int, ...]],
    forced: list[list[int]] | None,
    new_tokens: int,
    n_threads: int | None,
) -> tuple[list[list[int]], list[Any]]:
    """Greedy continuations of ``prompts``, and the logits along prompt + ``forced`` (the
    reference's continuations; the model's own when None). One model in memory at a time."""
    backend = _open(path, ignore_eos=True, n_threads=n_threads)
    try:
        tokens = _greedy(backend, prompts, new_tokens)
        along = forced if forced is not None else tokens
        logits = [backend.sequence_logits([*p, *t]) for p, t in zip(prompts, along, strict=True)]
    finally:
        backend.close()
    return tokens, logits


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


__all__ = ["gguf_quality_report", "time_decode_gguf"]
