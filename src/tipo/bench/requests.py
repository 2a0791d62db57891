"""Whole requests through the pipeline: decode-time control in one pass against the reference's
retry loop (on our engine, and on a format-aware noise model with many seeds), and the cost of
the constraints in tokens/s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .system import log


def pipeline_rows(checkpoint: Path) -> list[dict[str, Any]]:
    """Whole requests on our engine (default weights): decode-time control in one pass vs the
    reference's retry loop, and the constraints' cost in tokens/s for 1 and 16 variants."""
    from ..errors import TipoError
    from ..pipeline import TIPO
    from ..request import ExpandRequest

    tipo = TIPO.load(checkpoint)
    # The torch engine counts its forward passes; jump-forward can be switched off to compare.
    scheduler = getattr(getattr(tipo.backend, "engine", None), "scheduler", None)
    base = _REQUEST | {"tag_length": "long", "nl_length": "long", "seed": 1}
    modes: dict[str, tuple[dict[str, Any], bool]] = {
        "one pass, controlled": ({"control": True}, True),
        "one pass, controlled, token by token": ({"control": True}, False),
        "one pass, controlled, free tags": ({"control": True, "vocabulary": False}, True),
        "reference retry loop": (RETRY_LOOP, True),
        "one pass, uncontrolled": ({"control": False}, True),
    }
    # Untimed: the token table and the vocabulary's prefix tree are built on first use.
    tipo.run_many([ExpandRequest.create(tags="1girl", max_new_tokens=8)])
    rows = []
    for variants in (1, 16):
        for name, (options, jump) in modes.items():
            if variants > 1 and name == "reference retry loop":
                continue
            request = ExpandRequest.create(**base, **options)
            batch = [request.with_seed(1 + i) for i in range(variants)]
            if scheduler is not None:
                scheduler.jump_forward = jump
            passes = scheduler.forward_passes if scheduler is not None else 0
            start = time.perf_counter()
            outcomes = tipo.run_many(batch)
            seconds = time.perf_counter() - start
            results = [r for r in outcomes if not isinstance(r, TipoError)]
            rows.append(_pipeline_row(name, variants, results, seconds))
            rows[-1]["failed"] = len(outcomes) - len(results)
            if scheduler is not None:
                forwards = scheduler.forward_passes - passes
                rows[-1]["forwards_per_token"] = forwards / max(rows[-1]["tokens"], 1)
            log(f"pipeline {name} x{variants}: {rows[-1]['tokens_per_s']:.1f} tok/s")
    tipo.close()
    return rows


def _pipeline_row(name: str, variants: int, results: list[Any], seconds: float) -> dict:
    from ..protocol import Length

    tokens = sum(r.new_tokens for r in results)
    done = max(len(results), 1)
    return {
        "mode": name,
        "variants": variants,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "passes_per_request": sum(len(r.steps) for r in results) / done,
        "tokens_per_request": tokens / done,
        "met_targets": sum(not _missed_targets(r, Length.LONG) for r in results),
    }


def retry_rows(tokenizer_path: Path, seeds: int = 32) -> list[dict[str, Any]]:
    """Passes and tokens per request, one controlled pass vs the reference's retry loop (10
    retries), on identical requests, for every length bucket. The "model" is format-aware
    noise (backends/noise.py): it ends tags, sentences and fields at random, like a model that
    knows the format but not the lengths. Cheap, so the counts rest on many seeds."""
    from ..protocol import Length
    from ..request import ExpandRequest

    tipo = noise_pipeline(tokenizer_path)
    rows = []
    for length in Length:
        for mode, options in (("one pass, controlled", {}), ("reference retry loop", RETRY_LOOP)):
            options = options | {"tag_length": length, "nl_length": length}
            requests = [ExpandRequest.create(**_REQUEST, **options, seed=n) for n in range(seeds)]
            results = [r for r in tipo.run_many(requests) if not isinstance(r, Exception)]
            met = sum(not _missed_targets(r, length) for r in results)
            done = max(len(results), 1)
            rows.append({
                "mode": mode,
                "length": length.value,
                "requests": len(requests),
                "failed": len(requests) - len(results),
                "passes_per_request": sum(len(r.steps) for r in results) / done,
                "tokens_per_request": sum(r.new_tokens for r in results) / done,
                "prompt_tokens_per_request": sum(
                    step.prompt_tokens for r in results for step in r.steps
                ) / done,
                "met_targets": met,
            })  # fmt: skip
    return rows


def noise_pipeline(tokenizer_path: Path) -> Any:
    """The pipeline on the format-aware noise model (backends/noise.py): whole requests, and
    the reference's retry loop, at no model cost."""
    from ..backends.noise import NoiseBackend
    from ..pipeline import TIPO
    from ..tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_sentencepiece(tokenizer_path)
    return TIPO(NoiseBackend.format_aware(tokenizer), tokenizer)


# The input of every whole request the bench runs (here and in headline.py).
TAGS, SENTENCE = "1girl, scenery, blue sky", "A girl stands on a hill."
# The request of the pipeline rows: tags and a sentence, expanded, extended and a new caption.
_REQUEST = {"tags": TAGS, "nl": SENTENCE, "template": "tags-nl-generated"}
RETRY_LOOP = {"control": False, "retries": 10}  # the reference's retry loop


def _missed_targets(result: Any, length: Any) -> list[str]:
    """The length targets a result misses: its tag count and each caption's sentence count."""
    from ..postprocess import split_sentences

    missed = []
    tag_min, tag_max = length.tag_range
    if not tag_min <= len(result.tags.special) + len(result.tags.general) <= tag_max:
        missed.append("tags")
    nl_min, nl_max = length.nl_range
    for name in ("extended", "generated"):
        count = len(split_sentences(getattr(result, name)))
        if count < nl_min or (nl_max is not None and count > nl_max):
            missed.append(name)
    return missed


__all__ = ["RETRY_LOOP", "SENTENCE", "TAGS", "noise_pipeline", "pipeline_rows", "retry_rows"]
