"""``tipo bench``: every engine side by side, in one run, on one checkpoint.

Speed does not depend on weight values, so by default the checkpoint is the TIPO-200M
architecture with random weights, written to a temporary folder. Each speed row runs in a fresh
process (its own load time and peak RSS) and decodes a fixed number of tokens with EOS ignored.
Rows are compared with the reference path (transformers ``generate``, fp32, batch 1: the
reference library runs variants one after another) and with the memory-bandwidth limit (decode
reads every weight once per step). Quality rows compare each weight format with fp32 on a small
model trained for the purpose (random weights give flat distributions, where any rounding flips
the argmax). The pipeline rows run whole requests: one pass with decode-time control against the
reference's retry loop, and the cost of the constraints in tokens/s.

These machines are noisy: compare ratios from one run, never absolute figures across days.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def run_isolated(module: str, function: str, threads: int | None, **kwargs: Any) -> dict:
    """``module.function(**kwargs)`` in a fresh interpreter; its JSON result or an error row."""
    env = os.environ.copy()
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    code = (
        f"import json, sys; from {module} import {function} as f; "
        "print(json.dumps(f(**json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs, default=str)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- speed ----------------------------------------------------------------------------------


def _torch_row(checkpoint: Path, dtype: str, batch: int, o: BenchOptions) -> dict[str, Any]:
    raw = run_isolated(
        "tipo.engine.benchmark",
        "time_decode",
        o.threads,
        checkpoint=str(checkpoint),
        dtype=dtype,
        batch=batch,
        prompt_len=o.prompt_len,
        new_tokens=o.new_tokens,
    )
    return _row("torch", dtype, batch, raw, "tokens_per_second", "ms_per_step", "ttft_seconds")


def _reference_row(checkpoint: Path, o: BenchOptions) -> dict[str, Any]:
    raw = run_isolated(
        "tipo.engine.benchmark",
        "time_transformers",
        o.threads,
        checkpoint=str(checkpoint),
        batch=1,
        prompt_len=o.prompt_len,
        new_tokens=o.new_tokens,
    )
    row = _row("transformers (reference)", "float32", 1, raw, "tokens_per_second", "", "")
    if "tokens_per_s" in row:
        row["ms_per_token"] = 1000 / row["tokens_per_s"]
    return row


def _gguf_row(path: Path, quant: str, batch: int, o: BenchOptions) -> dict[str, Any]:
    raw = run_isolated(
        "tipo.backends.llamacpp_bench",
        "time_decode_gguf",
        o.threads,
        gguf_path=str(path),
        batch=batch,
        prompt_len=o.prompt_len,
        new_tokens=o.new_tokens,
    )
    return _row(
        "llama.cpp", quant, batch, raw, "tokens_per_s", "ms_per_token", "time_to_first_token_s"
    )


def _row(engine: str, weights: str, batch: int, raw: dict, tps: str, ms: str, ttft: str) -> dict:
    row: dict[str, Any] = {"engine": engine, "weights": weights, "batch": batch}
    if "error" in raw:
        return {**row, "error": raw["error"]}
    row["tokens_per_s"] = raw[tps]
    row["ms_per_token"] = raw.get(ms, float("nan"))
    row["ttft_s"] = raw.get(ttft, float("nan"))
    row["load_s"] = raw.get("load_seconds", float("nan"))
    row["peak_rss_mb"] = raw.get("peak_rss_mb", float("nan"))
    return row


def speed_rows(checkpoint: Path, o: BenchOptions, scratch: Path) -> list[dict[str, Any]]:
    rows = [_reference_row(checkpoint, o)]
    _log(f"reference: {rows[0].get('tokens_per_s', rows[0].get('error'))}")
    for dtype in o.dtypes:
        for batch in o.batches:
            rows.append(_torch_row(checkpoint, dtype, batch, o))
            _log(f"torch {dtype} x{batch}: {rows[-1].get('tokens_per_s', rows[-1].get('error'))}")
    for quant, path in gguf_files(checkpoint, o, scratch).items():
        for batch in o.gguf_batches:
            rows.append(_gguf_row(path, quant, batch, o))
            _log(f"llama.cpp {quant} x{batch}: {rows[-1].get('tokens_per_s', rows[-1])}")
    return rows


def gguf_files(checkpoint: Path, o: BenchOptions, scratch: Path) -> dict[str, Path]:
    if not o.llamacpp:
        return {}
    if not gguf_available():
        _log("llama-cpp-python is missing: no llama.cpp rows (install tipo-prompt[llamacpp])")
        return {}
    from .convert import convert

    return {q: convert(checkpoint, scratch / f"model-{q}.gguf", q) for q in GGUF_QUANTS}


def measure_bandwidth(megabytes: int = 512) -> float:
    """Read bandwidth in GB/s: sum a large array (a decode step reads every weight once)."""
    import torch

    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    start = time.perf_counter()
    for _ in range(5):
        data.sum()
    return 5 * data.numel() * 4 / (time.perf_counter() - start) / 1e9


def add_ratios(rows: list[dict[str, Any]], params: int, bandwidth: float) -> None:
    reference = next((r["tokens_per_s"] for r in rows if "reference" in r["engine"]), None)
    for row in rows:
        if "tokens_per_s" not in row:
            continue
        if reference:
            row["x_reference"] = row["tokens_per_s"] / reference
        bytes_per_step = params * BYTES_PER_PARAM.get(row["weights"], 4.0)
        row["bound_tokens_per_s"] = row["batch"] * bandwidth * 1e9 / bytes_per_step
        row["of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]


# --- quality --------------------------------------------------------------------------------


def quality_rows(o: BenchOptions, scratch: Path) -> list[dict[str, Any]]:
    from .engine import make_trained_checkpoint, quality_report

    _log("training a small model for the quality rows (a few minutes)...")
    trained = make_trained_checkpoint(scratch / "trained")
    rows = [
        {"engine": "torch", **quality_report(trained, dtype)}
        for dtype in o.dtypes
        if dtype != "float32"
    ]
    if o.llamacpp and gguf_available():
        from .backends.llamacpp_bench import gguf_quality_report
        from .convert import convert

        tokenizer = _find_tokenizer(o)
        if tokenizer is None:
            _log("no tokenizer.model: llama.cpp quality rows skipped (pass --tokenizer)")
            return rows
        shutil.copy(tokenizer, trained / "tokenizer.model")
        files = {q: convert(trained, scratch / f"trained-{q}.gguf", q) for q in GGUF_QUANTS}
        for quant in GGUF_QUANTS[1:]:
            report = gguf_quality_report(files["F16"], files[quant], new_tokens=128)
            rows.append({**report, "engine": "llama.cpp", "dtype": quant, "reference": "F16"})
    return rows


def gguf_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _find_tokenizer(o: BenchOptions) -> Path | None:
    candidates = [o.tokenizer, o.model / "tokenizer.model" if o.model else None]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


# --- whole requests -------------------------------------------------------------------------


def pipeline_rows(checkpoint: Path, o: BenchOptions) -> list[dict[str, Any]]:
    """Whole requests on our engine (default weights): decode-time control in one pass vs the
    reference's retry loop, and the constraints' cost in tokens/s for 1 and 16 variants."""
    from .errors import TipoError
    from .pipeline import TIPO
    from .request import ExpandRequest

    tipo = TIPO.load(checkpoint)
    base = _REQUEST | {"tag_length": "long", "nl_length": "long", "seed": 1}
    modes = {
        "one pass, controlled": {"control": True},
        "one pass, controlled, free tags": {"control": True, "vocabulary": False},
        "reference retry loop": _RETRY,
        "one pass, uncontrolled": {"control": False},
    }
    # Untimed: the token table and the vocabulary's prefix tree are built on first use.
    tipo.run_many([ExpandRequest.create(tags="1girl", max_new_tokens=8)])
    rows = []
    for variants in (1, 16):
        for name, options in modes.items():
            if variants > 1 and name == "reference retry loop":
                continue
            request = ExpandRequest.create(**base, **options)
            batch = [request.with_seed(1 + i) for i in range(variants)]
            start = time.perf_counter()
            outcomes = tipo.run_many(batch)
            seconds = time.perf_counter() - start
            results = [r for r in outcomes if not isinstance(r, TipoError)]
            rows.append(_pipeline_row(name, variants, results, seconds))
            rows[-1]["failed"] = len(outcomes) - len(results)
            _log(f"pipeline {name} x{variants}: {rows[-1]['tokens_per_s']:.1f} tok/s")
    tipo.close()
    return rows


def _pipeline_row(name: str, variants: int, results: list[Any], seconds: float) -> dict:
    from .protocol import Length

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
    from .backends.noise import NoiseBackend
    from .pipeline import TIPO
    from .protocol import Length
    from .request import ExpandRequest
    from .tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_sentencepiece(tokenizer_path)
    tipo = TIPO(NoiseBackend.format_aware(tokenizer), tokenizer)
    rows = []
    for length in Length:
        for mode, options in (("one pass, controlled", {}), ("reference retry loop", _RETRY)):
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


# The request of the pipeline rows: tags and a sentence, expanded, extended and a new caption.
_REQUEST = {
    "tags": "1girl, scenery, blue sky",
    "nl": "A girl stands on a hill.",
    "template": "tags-nl-generated",
}
_RETRY = {"control": False, "retries": 10}


def _missed_targets(result: Any, length: Any) -> list[str]:
    """The length targets a result misses: its tag count and each caption's sentence count."""
    from .postprocess import split_sentences

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM on Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# --- the run ---------------------------------------------------------------------------------


def prepare_checkpoint(o: BenchOptions, scratch: Path) -> Path:
    if o.model is not None:
        return o.model
    from .engine import write_random_checkpoint

    folder = write_random_checkpoint(scratch / "tipo-200m-random", "tipo-200m")
    tokenizer = _find_tokenizer(o)
    if tokenizer is not None:
        shutil.copy(tokenizer, folder / "tokenizer.model")
    return folder


def run(o: BenchOptions) -> dict[str, Any]:
    from .engine import EngineConfig

    with tempfile.TemporaryDirectory(prefix="tipo-bench-") as tmp:
        scratch = Path(tmp)
        checkpoint = prepare_checkpoint(o, scratch)
        config = EngineConfig.from_hf_config(json.loads((checkpoint / "config.json").read_text()))
        params = count_parameters(config)
        bandwidth = measure_bandwidth()
        report: dict[str, Any] = {
            "machine": machine_info(),
            "bandwidth_gb_s": bandwidth,
            "checkpoint": str(o.model or "random TIPO-200M"),
            "parameters": params,
            "prompt_len": o.prompt_len,
            "new_tokens": o.new_tokens,
        }
        report["speed"] = speed_rows(checkpoint, o, scratch)
        add_ratios(report["speed"], params, bandwidth)
        if o.quality:
            report["quality"] = quality_rows(o, scratch)
        if o.pipeline:
            if (checkpoint / "tokenizer.model").is_file():
                report["pipeline"] = pipeline_rows(checkpoint, o)
                report["retries"] = retry_rows(checkpoint / "tokenizer.model", o.retry_seeds)
            else:
                _log("no tokenizer.model: pipeline rows skipped (pass --tokenizer)")
    return report


def count_parameters(config: Any) -> int:
    """Weights a decode step reads: embeddings are gathered, not read, so they are left out."""
    h, d = config.hidden_size, config.head_dim
    attention = h * d * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * h * config.intermediate_size
    return int(config.num_layers * (attention + mlp + 2 * h) + h + config.vocab_size * h)


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpus']} cpus {m['machine']} ({m['flags']}), torch {m['torch']}, "
        f"{m['threads']} threads; read bandwidth {report['bandwidth_gb_s']:.1f} GB/s",
        f"checkpoint: {report['checkpoint']} ({report['parameters'] / 1e6:.0f}M weights read "
        f"per step); prompt {report['prompt_len']} tokens, {report['new_tokens']} new, EOS off",
    ]
    sections = [
        ("speed", None, _speed_line,
         ["engine", "weights", "batch", "tokens/s", "ms/step", "TTFT s", "load s",
          "peak RSS MB", "× reference", "of bandwidth bound"]),
        ("quality", None, _quality_line,
         ["engine", "format", "vs", "max logit err", "mean logit err", "top-1 agreement",
          "greedy agreement"]),
        ("pipeline", None, _pipeline_line,
         ["request mode", "variants", "s", "tokens", "tokens/s", "passes/request",
          "tokens/request", "met length targets"]),
        ("retries", "format-aware noise model, same requests in both modes:", _retry_line,
         ["length", "mode", "passes/request", "new tokens/request", "prompt tokens/request",
          "met length targets"]),
    ]  # fmt: skip
    for key, title, line, columns in sections:
        if report.get(key):
            lines += ["", *([title] if title else [])]
            lines += [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
            lines += [line(row) for row in report[key]]
    return "\n".join(lines)


def _speed_line(r: dict[str, Any]) -> str:
    head = f"| {r['engine']} | {r['weights']} | {r['batch']} |"
    if "error" in r:
        return f"{head} error: {r['error']} ||||||"
    return (
        f"{head} {r['tokens_per_s']:.1f} | {r['ms_per_token']:.1f} | {r['ttft_s']:.3f} | "
        f"{r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | {r.get('x_reference', float('nan')):.2f} | "
        f"{r['of_bound']:.0%} |"
    )


def _quality_line(r: dict[str, Any]) -> str:
    top1 = r.get("teacher_forced_agreement", r.get("top1_agreement", float("nan")))
    greedy = r.get("greedy_agreement", r.get("greedy_prefix", float("nan")))
    return (
        f"| {r['engine']} | {r['dtype']} | {r['reference']} | {r['max_abs_logit_error']:.4f} | "
        f"{r['mean_abs_logit_error']:.4f} | {top1:.1%} | {greedy:.1%} |"
    )


def _pipeline_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['mode']} | {r['variants']} | {r['seconds']:.1f} | {r['tokens']} | "
        f"{r['tokens_per_s']:.1f} | {r['passes_per_request']:.1f} | "
        f"{r['tokens_per_request']:.0f} | {_met(r, r['variants'])} |"
    )


def _retry_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['length']} | {r['mode']} | {r['passes_per_request']:.2f} | "
        f"{r['tokens_per_request']:.0f} | {r['prompt_tokens_per_request']:.0f} | "
        f"{_met(r, r['requests'])} |"
    )


def _met(r: dict[str, Any], requests: int) -> str:
    """How many requests met their length targets, of how many; and how many failed."""
    failed = f" ({r['failed']} failed)" if r.get("failed") else ""
    return f"{r['met_targets']}/{requests}{failed}"


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        flags = " ".join(
            f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in text
        )
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "flags": flags,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


__all__ = [
    "BenchOptions",
    "format_report",
    "measure_bandwidth",
    "peak_rss_mb",
    "run",
    "run_isolated",
]
