"""``tipo bench``: every engine side by side, in one run, on one checkpoint.

It leads with whole requests: the time to a finished prompt for the pipeline's common requests
on each engine (headline.py).

Speed does not depend on weight values, so by default the checkpoint is the TIPO-200M
architecture with random weights, written to a temporary folder. Each speed row runs in a fresh
process (its own load time and peak RSS) and decodes a fixed number of tokens with EOS ignored.
Rows are compared with the reference path (transformers ``generate``, fp32, batch 1: the
reference library runs variants one after another) and with the memory-bandwidth limit (decode
reads every weight once per step). Quality rows compare each weight format with fp32 on a small
model trained for the purpose (random weights give flat distributions, where any rounding flips
the argmax). The pipeline rows run whole requests: one pass with decode-time control against the
reference's retry loop, and the cost of the constraints in tokens/s.

A group of rows that cannot run here (no llama-cpp-python, no tokenizer.model for the GGUF
files and the pipeline) is skipped with its reason in ``report["skipped"]``; the other rows are
still measured and reported. These machines are noisy: compare ratios from one run, never
absolute figures across days.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TipoError
from .system import log, machine_info, measure_bandwidth, run_isolated

# Bytes read per parameter by each weight format (block scales included).
BYTES_PER_PARAM = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "int8": 1.03,
    "int4": 0.56,
    "F16": 2.0,
    "Q8_0": 1.0625,
    "Q4_K_M": 0.6,
}
GGUF_QUANTS = ("F16", "Q8_0", "Q4_K_M")
NO_TOKENIZER = "requests need a tokenizer: pass --tokenizer tokenizer.model"


@dataclass
class BenchOptions:
    model: Path | None = None  # a HF folder; default: random TIPO-200M weights
    tokenizer: Path | None = None  # tokenizer.model for the pipeline rows
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16", "int8", "int4")
    batches: tuple[int, ...] = (1, 4, 8, 16)
    gguf_batches: tuple[int, ...] = (1, 4, 16)
    prompt_len: int = 64
    new_tokens: int = 256
    llamacpp: bool = True
    quality: bool = True
    pipeline: bool = True
    threads: int | None = None
    retry_seeds: int = 32  # requests per length bucket and mode in retry_rows
    headline: bool = True  # whole requests, time to a finished prompt (headline.py)
    headline_lengths: tuple[str, ...] = ("short", "long")


# --- speed ----------------------------------------------------------------------------------


def _timed_row(
    engine: str, weights: str, batch: int, o: BenchOptions, module: str, function: str,
    **target: str,
) -> dict[str, Any]:  # fmt: skip
    """One speed row, measured in a fresh process; every engine reports the same figures."""
    raw = run_isolated(f"tipo.bench.{module}", function, o.threads, batch=batch,
                       prompt_len=o.prompt_len, new_tokens=o.new_tokens, **target)  # fmt: skip
    row: dict[str, Any] = {"engine": engine, "weights": weights, "batch": batch}
    if "error" in raw:
        row["error"] = raw["error"]
    else:
        row["tokens_per_s"] = raw["tokens_per_second"]
        row["ms_per_token"] = raw.get("ms_per_step", 1000 * batch / raw["tokens_per_second"])
        row["ttft_s"] = raw.get("ttft_seconds", float("nan"))
        row["load_s"] = raw.get("load_seconds", float("nan"))
        row["peak_rss_mb"] = raw.get("peak_rss_mb", float("nan"))
        if "gemm_ms_per_step" in raw:  # the share of a batch-1 step outside the weight GEMMs
            row["outside_gemm"] = 1 - raw["gemm_ms_per_step"] / row["ms_per_token"]
    log(f"{engine} {weights} x{batch}: {row.get('tokens_per_s', row.get('error'))}")
    return row


def speed_rows(checkpoint: Path, o: BenchOptions, gguf: dict[str, Path]) -> list[dict[str, Any]]:
    where = {"checkpoint": str(checkpoint)}
    rows = [_timed_row("transformers (reference)", "float32", 1, o, "decode",
                       "time_transformers", **where)]  # fmt: skip
    rows += [
        _timed_row("torch", dtype, batch, o, "decode", "time_decode", dtype=dtype, **where)
        for dtype in o.dtypes
        for batch in o.batches
    ]
    for quant, path in gguf.items():
        rows += [
            _timed_row(
                "llama.cpp", quant, batch, o, "llamacpp", "time_decode_gguf", gguf_path=str(path)
            )
            for batch in o.gguf_batches
        ]
    return rows


def gguf_files(
    checkpoint: Path, o: BenchOptions, scratch: Path, skipped: list[dict[str, str]]
) -> dict[str, Path]:
    """F16, Q8_0 and Q4_K_M files of ``checkpoint``, or {} with the reason in ``skipped``."""
    reason = llamacpp_missing(o, checkpoint)
    if reason:
        skipped.append({"rows": "llama.cpp speed and headline", "reason": reason})
        return {}
    from ..convert import convert

    return {q: convert(checkpoint, scratch / f"model-{q}.gguf", q) for q in GGUF_QUANTS}


def llamacpp_missing(o: BenchOptions, checkpoint: Path) -> str | None:
    """Why the llama.cpp rows cannot run, or None."""
    if not o.llamacpp:
        return "--no-llamacpp"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install tipo-prompt[llamacpp])"
    if not (checkpoint / "tokenizer.model").is_file():
        return "a GGUF file carries the vocabulary: pass --tokenizer tokenizer.model"
    return None


def add_ratios(rows: list[dict[str, Any]], params: int, bandwidth: float) -> None:
    reference = next((r["tokens_per_s"] for r in rows if "reference" in r["engine"] and
                      "tokens_per_s" in r), None)  # fmt: skip
    for row in rows:
        if "tokens_per_s" not in row:
            continue
        if reference:
            row["x_reference"] = row["tokens_per_s"] / reference
        bytes_per_step = params * BYTES_PER_PARAM.get(row["weights"], 4.0)
        row["bound_tokens_per_s"] = row["batch"] * bandwidth * 1e9 / bytes_per_step
        row["of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]


# --- quality --------------------------------------------------------------------------------


def quality_rows(o: BenchOptions, scratch: Path, skipped: list[dict[str, str]]) -> list[dict]:
    from .quality import make_trained_checkpoint, quality_report

    log("training a small model for the quality rows (a few minutes)...")
    trained = make_trained_checkpoint(scratch / "trained")
    rows = [
        {"engine": "torch", **quality_report(trained, dtype)}
        for dtype in o.dtypes
        if dtype != "float32"
    ]
    tokenizer = find_tokenizer(o)
    if tokenizer is not None:
        shutil.copy(tokenizer, trained / "tokenizer.model")
    reason = llamacpp_missing(o, trained)
    if reason:
        skipped.append({"rows": "llama.cpp quality", "reason": reason})
        return rows
    from ..convert import convert
    from .llamacpp import gguf_quality_report
    from .quality import QUALITY_NEW_TOKENS, quality_prompts

    # The same prompts and continuation length as the torch rows above, so the figures compare.
    prompts, files = quality_prompts(trained), {}
    for quant in GGUF_QUANTS:
        files[quant] = convert(trained, scratch / f"trained-{quant}.gguf", quant)
    for quant in GGUF_QUANTS[1:]:
        report = gguf_quality_report(files["F16"], files[quant], prompts, QUALITY_NEW_TOKENS)
        rows.append({**report, "engine": "llama.cpp", "dtype": quant, "reference": "F16"})
    return rows


def find_tokenizer(o: BenchOptions) -> Path | None:
    candidates = [o.tokenizer, o.model / "tokenizer.model" if o.model else None]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


# --- the run ---------------------------------------------------------------------------------


def prepare_checkpoint(o: BenchOptions, scratch: Path) -> Path:
    if o.model is not None:
        return o.model
    from .decode import write_random_checkpoint

    folder = write_random_checkpoint(scratch / "tipo-200m-random", "tipo-200m")
    tokenizer = find_tokenizer(o)
    if tokenizer is not None:
        shutil.copy(tokenizer, folder / "tokenizer.model")
    return folder


def run(o: BenchOptions) -> dict[str, Any]:
    """Every section of the bench; a section that fails is reported as skipped, not fatal."""
    from ..engine import EngineConfig

    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as tmp:
        scratch = Path(tmp)
        checkpoint = prepare_checkpoint(o, scratch)
        config = EngineConfig.from_hf_config(json.loads((checkpoint / "config.json").read_text()))
        params = count_parameters(config)
        bandwidth = measure_bandwidth()
        skipped: list[dict[str, str]] = []
        report: dict[str, Any] = {
            "machine": machine_info(),
            "bandwidth_gb_s": bandwidth,
            "checkpoint": str(o.model or "random TIPO-200M"),
            "parameters": params,
            "prompt_len": o.prompt_len,
            "new_tokens": o.new_tokens,
            "skipped": skipped,
        }
        try:
            gguf = gguf_files(checkpoint, o, scratch, skipped)
        except (TipoError, OSError, RuntimeError, ValueError) as error:
            skipped.append({"rows": "llama.cpp speed and headline", "reason": _reason(error)})
            gguf = {}
        has_tokenizer = (checkpoint / "tokenizer.model").is_file()
        if o.headline and not has_tokenizer:
            skipped.append({"rows": "headline (whole requests)", "reason": NO_TOKENIZER})
        elif o.headline:
            from .headline import headline_rows

            quantised = {q: path for q, path in gguf.items() if q != "F16"}
            report["headline"] = _section("headline", skipped, headline_rows, checkpoint,
                                          quantised, o.headline_lengths)  # fmt: skip
        report["speed"] = _section("speed", skipped, speed_rows, checkpoint, o, gguf)
        add_ratios(report["speed"], params, bandwidth)
        if o.quality:
            report["quality"] = _section("quality", skipped, quality_rows, o, scratch, skipped)
        if not o.pipeline:
            return report
        if not has_tokenizer:
            skipped.append({"rows": "pipeline and retries", "reason": NO_TOKENIZER})
            return report
        from .requests import pipeline_rows, retry_rows

        report["pipeline"] = _section("pipeline", skipped, pipeline_rows, checkpoint)
        report["retries"] = _section("retries", skipped, retry_rows,
                                     checkpoint / "tokenizer.model", o.retry_seeds)  # fmt: skip
    return report


def _section(name: str, skipped: list[dict[str, str]], rows: Any, *args: Any) -> list[dict]:
    """``rows(*args)``, or [] with the error in ``skipped``: the rows measured so far stay."""
    try:
        return rows(*args)  # type: ignore[no-any-return]
    except (TipoError, OSError, RuntimeError, ValueError) as error:
        skipped.append({"rows": name, "reason": _reason(error)})
        log(f"{name} rows skipped: {_reason(error)}")
        return []


def _reason(error: Exception) -> str:
    """An error's first line, for the report's list of skipped rows."""
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


def count_parameters(config: Any) -> int:
    """Weights a decode step reads: embeddings are gathered, not read, so they are left out."""
    h, d = config.hidden_size, config.head_dim
    attention = h * d * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * h * config.intermediate_size
    return int(config.num_layers * (attention + mlp + 2 * h) + h + config.vocab_size * h)


__all__ = ["BenchOptions", "count_parameters", "run"]
