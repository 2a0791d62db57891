"""Decode speed: ``time_decode`` (used by ``tipo bench``) and a one-run comparison script.

    python -m tipo.engine.benchmark [--preset tipo-200m] [--new-tokens 256] [--out table.md]

builds a random checkpoint of the preset's architecture in a temp dir and times batch 1/4/8/16
for each weight format, plus transformers ``generate`` fp32 for reference, each measurement in
a fresh subprocess (so peak RSS and load time are its own). These machines are noisy: compare
ratios from one run, never absolute figures from different days.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..backends.base import GenerationRequest
from ..bench import peak_rss_mb
from ..sampling import SamplingParams
from .config import EngineConfig
from .engine import Engine
from .quant import WEIGHT_FORMATS
from .weights import write_safetensors

# The baseline's sampling settings (docs/baselines.md): every row samples.
BENCH_SAMPLING = SamplingParams(temperature=0.5, top_k=60, top_p=0.95, min_p=0.0,
                                repetition_penalty=1.0)  # fmt: skip


def write_random_checkpoint(
    directory: str | Path, config: EngineConfig | str = "tipo-200m", *, seed: int = 0,
    std: float = 0.02, dtype: torch.dtype = torch.float32,
) -> Path:  # fmt: skip
    """A Hugging Face folder (config.json + model.safetensors) with random weights."""
    if isinstance(config, str):
        config = EngineConfig.from_name(config)
    from .config import expected_shapes

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


def bench_requests(
    batch: int, prompt_len: int, new_tokens: int, *, vocab: int = 32000, seed: int = 0,
    sampling: SamplingParams = BENCH_SAMPLING,
) -> list[GenerationRequest]:  # fmt: skip
    """``batch`` variants (seeds) of one random prompt of ``prompt_len`` ids."""
    generator = torch.Generator().manual_seed(seed)
    prompt = (1, *torch.randint(3, vocab, (prompt_len - 1,), generator=generator).tolist())
    params = sampling.with_(max_new_tokens=new_tokens)
    return [GenerationRequest(prompt, params, seed=seed + i) for i in range(batch)]


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
    vocab = min(engine.config.vocab_size, 32000)
    engine.generate(bench_requests(batch, prompt_len, 8, vocab=vocab, seed=99))  # warm-up
    requests = bench_requests(batch, prompt_len, new_tokens, vocab=vocab)
    start = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - start
    ttft = max(r.prefill_seconds for r in results)
    decode = max(r.decode_seconds for r in results)
    produced = sum(len(r.token_ids) + (r.finish_reason == "eos") for r in results)
    steps = max(len(r.token_ids) for r in results)
    return {
        "engine": "torch",
        "dtype": engine.format,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "tokens": produced,
        "tokens_per_second": produced / wall,
        "decode_tokens_per_second": (produced - batch) / decode if decode > 0 else 0.0,
        "ms_per_step": 1000 * decode / max(steps - 1, 1),
        "ttft_seconds": ttft,
        "load_seconds": load_seconds,
        "load_peak_rss_mb": load_rss,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


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


def _run_isolated(
    kind: str, checkpoint: Path, threads: int | None = None, **kwargs: Any
) -> dict[str, Any]:
    """One measurement in a fresh interpreter: its own load time, peak RSS and warm-up."""
    env = os.environ.copy()
    if threads:  # read by torch at start-up, for the engine and transformers alike
        env["OMP_NUM_THREADS"] = str(threads)
    code = (
        "import json, sys; from tipo.engine import benchmark as b; "
        f"print(json.dumps(b.{kind}(sys.argv[1], **json.loads(sys.argv[2]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint), json.dumps(kwargs)],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if out.returncode != 0:
        return {"engine": kind, **kwargs, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | weights | batch | tokens/s (total) | decode tok/s | ms/step | TTFT s | "
        "load s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r.get('dtype')} | {r.get('batch')} | error: "
                         f"{r['error']} |||||")  # fmt: skip
            continue
        cells = [r["engine"], r["dtype"], r["batch"], f"{r['tokens_per_second']:.1f}",
                 _fmt(r, "decode_tokens_per_second", ".1f"), _fmt(r, "ms_per_step", ".2f"),
                 _fmt(r, "ttft_seconds", ".3f"), f"{r['load_seconds']:.2f}",
                 f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tipo-200m")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--dtypes", default=",".join(WEIGHT_FORMATS))
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / args.preset, args.preset)
        common = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                  "threads": args.threads}  # fmt: skip
        for dtype in args.dtypes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(_run_isolated("time_decode", checkpoint, dtype=dtype, batch=batch,
                                          **common))  # fmt: skip
                print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if not args.no_transformers:
            rows.append(_run_isolated("time_transformers", checkpoint, batch=1, **common))
    table = format_table(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
