"""Training throughput of `tipo train` beside transformers' `Trainer`, measured in one run.

    .venv/bin/python tools/train_bench.py --tokenizer ../shared/llama-tokenizer/tokenizer.model

writes a seeded Danbooru-style JSONL dataset (real tags from the bundled tag database), then
runs every row in turn, --repeats times, each a fresh process training a --preset model from
scratch (same init, fp32, AdamW lr 1e-4, betas (0.9, 0.98), wd 0.01, clip 0.1) on the same
global batches of the same samples: `tipo train` on each of --processes (N > 1: torchrun, gloo;
1 process gets every core, N processes cores/N threads each), and transformers' `Trainer` (1
process, every core) fed `tipo train`'s micro-batches in order (sample_for + encode_sample,
sorted by length within a global batch), padded to the micro-batch's longest and to 1024.

Per row: non-padding tokens/s (sum of tokens / sum of step seconds after --warmup steps; a
`tipo train` step is the wall time from the end of the previous one, waiting for its batch
included, a Trainer step runs from on_step_begin to on_step_end), seconds per step, peak RSS of
the largest process, the median of the repeats and each run, the ratio to Trainer (pad to
longest); then
what TIPO-200M's published pre-training (40B tokens, 4 RTX 3090s, 420 h) means per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tipo.train.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
CUTOFF = 1024
# TIPO-200M's model card: 40B non-padding tokens seen, on 4 RTX 3090s, in 420 hours.
PUBLISHED_TOKENS, PUBLISHED_GPUS, PUBLISHED_HOURS = 40e9, 4, 420
RATINGS = ("general", "sensitive", "questionable", "explicit")
QUALITIES = ("masterpiece", "best quality", "great quality", "good quality", "normal quality",
             "low quality", "worst quality")  # fmt: skip
SHOWN = ("steps", "warmup", "batch_size", "global_batch", "repeats", "records", "seed")
SIZES = ((832, 1216), (1024, 1024), (1216, 832), (768, 1344), (896, 1152), (1536, 640))


def synthesize(path: Path, count: int, seed: int) -> None:
    """``count`` Danbooru rows; general tags drawn with a popularity skew from a fixed pool."""
    from tipo.tags import Category, TagDatabase

    db, rng = TagDatabase.bundled(), random.Random(seed)
    pool = {c: list(db.names(c)) for c in (Category.CHARACTERS, Category.COPYRIGHTS,
                                           Category.ARTIST, Category.META)}  # fmt: skip
    plain = [t for t in db.names(Category.GENERAL) if len(t) <= 20 and t[0].isalpha()]
    general = rng.sample(plain, 3000)  # Danbooru's common tags are short words
    weights = [1 / (rank + 20) for rank in range(len(general))]
    special = ["1girl", "1girl", "1boy", "2girls", "solo", "multiple girls", "no humans"]
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            tags = list(dict.fromkeys(rng.choices(general, weights, k=rng.randint(5, 60))))
            width, height = rng.choice(SIZES)
            row: dict[str, Any] = {
                "special": rng.sample(special, rng.randint(1, 2)), "general": tags,
                "character": rng.sample(pool[Category.CHARACTERS], rng.choice((0, 1, 1, 2))),
                "copyright": rng.sample(pool[Category.COPYRIGHTS], rng.choice((0, 1, 1))),
                "artist": rng.sample(pool[Category.ARTIST], rng.choice((0, 1, 1, 2))),
                "meta": rng.sample(pool[Category.META], rng.choice((0, 0, 1))),
                "rating": rng.choice(RATINGS), "quality": rng.choice(QUALITIES),
                "width": width, "height": height,
            }  # fmt: skip
            if rng.random() < 0.8:
                row["florence_short"] = caption(tags, 1, rng)
            if rng.random() < 0.7:
                long = caption(tags, rng.randint(2, 6), rng)
                row["pixtral_caption"] = "The image depicts " + long[0].lower() + long[1:]
            out.write(json.dumps(row) + "\n")


def caption(tags: list[str], sentences: int, rng: random.Random) -> str:
    """Caption-like prose over the record's own tags, 1-3 paragraphs for longer ones."""
    parts = []
    for index in range(sentences):
        a, b, c = (rng.choice(tags) for _ in range(3))
        opener = rng.choice(("a character with", "the scene shows", "in the background there is",
                             "the figure wears", "the lighting highlights"))  # fmt: skip
        text = f"{opener} {a}, {b} and {c}."
        parts.append(("\n" if index and rng.random() < 0.25 else "") + text[0].upper() + text[1:])
    return " ".join(parts).replace(" \n", "\n")


def run_child(command: list[str], threads: int, log: Path) -> float:
    """Run ``command`` with ``threads`` torch/OpenMP threads per process; the peak RSS (MB) of
    its largest process (the child and its waited-for descendants, from wait4)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("wb") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT)  # fmt: skip
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.terminate()  # torchrun forwards SIGTERM to its workers
            child.wait(60)
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {child.returncode}: {' '.join(command)}\n{tail}")
    return usage.ru_maxrss / 1024  # kB on Linux


def tipo_run(args: argparse.Namespace, data: Path, work: Path, n: int, precision: str) -> dict:
    out = work / f"tipo-{n}p-{precision}-{time.monotonic_ns()}"
    launch = [sys.executable, "-m"]
    if n > 1:
        torchrun = Path(sys.executable).parent / "torchrun"
        launch = [str(torchrun), "--standalone", "--nproc_per_node", str(n), "-m"]
    accum = args.global_batch // (args.batch_size * n)
    command = [*launch, "tipo", "train", "--data", str(data), "--output", str(out),
               "--preset", args.preset, "--tokenizer", str(args.tokenizer), "--device", "cpu",
               "--batch-size", str(args.batch_size), "--grad-accum", str(accum),
               "--max-steps", str(args.warmup + args.steps), "--warmup-steps", "0",
               "--save-every", "1000000", "--log-every", "1000000", "--precision", precision,
               "--seed", str(args.seed)]  # fmt: skip
    rss = run_child(command, max(1, CORES // n), work / f"{out.name}.log")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for bulky in ("checkpoints", "export"):  # 200M: ~3 GB of weights and optimizer state
        shutil.rmtree(out / bulky, ignore_errors=True)
    steps = [(int(line["tokens"]), float(line["seconds"])) for line in lines]
    return {"steps": steps, "rss_mb": rss}


def hf_run(args: argparse.Namespace, data: Path, work: Path, padding: str) -> dict:
    """The Trainer in a fresh process (this file, --hf-worker SPEC) with every core."""
    spec = work / f"hf-{padding}-{time.monotonic_ns()}.json"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    spec.write_text(json.dumps({**settings, "padding": padding, "data": str(data)}))
    rss = run_child([sys.executable, str(Path(__file__).resolve()), "--hf-worker", str(spec)],
                    CORES, spec.with_suffix(".log"))  # fmt: skip
    return {**json.loads(spec.with_suffix(".out").read_text()), "rss_mb": rss}


def hf_worker(spec: Path) -> None:
    """transformers' Trainer over the micro-batches `tipo train` builds; writes SPEC.out."""
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging

    from tipo.data import Example, pad_batch
    from tipo.data.readers import read_records
    from tipo.tokenizer import TipoTokenizer
    from tipo.train.batches import BatchPlan, StepBatches
    from tipo.train.model import new_model, preset_config

    logging.set_verbosity_error()
    args = argparse.Namespace(**json.loads(spec.read_text()))
    tokenizer = TipoTokenizer.from_sentencepiece(args.tokenizer)
    records = list(read_records(args.data))
    micro, total = args.global_batch // args.batch_size, args.warmup + args.steps
    plan = BatchPlan(len(records), args.batch_size, micro, args.seed)
    batches = StepBatches(records, tokenizer, plan, rank=0, world=1, cutoff_len=CUTOFF,
                          pad_to_cutoff=False)  # fmt: skip
    plans = [batches.micro_batches(step) for step in range(total)]  # [step][micro][sample]
    pad_to = CUTOFF if args.padding == "max_length" else None
    computed = sum(len(m) * (pad_to or max(map(len, m))) for step in plans for m in step)
    tokens = [sum(len(e) for m in step for e in m) for step in plans]

    class StepClock(TrainerCallback):  # the step's micro-batches are fetched before begin
        def __init__(self) -> None:
            self.began, self.seconds = 0.0, list[float]()

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seconds.append(time.perf_counter() - self.began)

    def collate(features: list[dict[str, list[int]]]) -> dict[str, Any]:
        examples = [Example(f["input_ids"], f["labels"]) for f in features]
        return pad_batch(examples, pad_to=pad_to)

    dataset = [{"input_ids": e.input_ids, "labels": e.labels}
               for step in plans for m in step for e in m]  # fmt: skip
    model = new_model(preset_config(args.preset), args.seed)  # tipo train's init
    model.config.use_cache = False
    settings = TrainingArguments(
        output_dir=str(spec.parent / "hf-output"), gradient_accumulation_steps=micro,
        per_device_train_batch_size=args.batch_size, max_steps=total, learning_rate=1e-4,
        adam_beta1=0.9, adam_beta2=0.98, weight_decay=0.01, max_grad_norm=0.1, warmup_steps=0,
        lr_scheduler_type="cosine", optim="adamw_torch", use_cpu=True, seed=args.seed,
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
        train_sampling_strategy="sequential",  # the micro-batches in tipo train's order
    )  # fmt: skip
    clock = StepClock()
    Trainer(model=model, args=settings, train_dataset=dataset, data_collator=collate,
            callbacks=[clock]).train()  # fmt: skip
    result = {"steps": list(zip(tokens, clock.seconds, strict=True)),
              "padding_share": 1 - sum(tokens) / computed}  # fmt: skip
    spec.with_suffix(".out").write_text(json.dumps(result))


def plan_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [{"row": f"tipo train, {n} process{'es' if n > 1 else ''}", "kind": "tipo",
             "processes": n, "threads": max(1, CORES // n), "precision": precision,
             "padding": "longest"}
            for precision in (("fp32", "bf16") if args.bf16 else ("fp32",))
            for n in args.processes]  # fmt: skip
    for padding, name in (("longest", "longest"), ("max_length", str(CUTOFF))):
        rows.append({"row": f"HF Trainer, pad to {name}", "kind": "hf", "processes": 1,
                     "threads": CORES, "precision": "fp32", "padding": padding})  # fmt: skip
    return rows


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each repeat runs every row once, in turn, so that a machine whose speed drifts weighs on
    all rows alike."""
    report: dict[str, Any] = {"machine": machine(), "preset": args.preset,
                              "settings": {k: vars(args)[k] for k in SHOWN}}  # fmt: skip
    data = work / "danbooru.jsonl"
    synthesize(data, args.records, args.seed)
    rows = plan_rows(args)
    runs: list[list[dict[str, Any]]] = [[] for _ in rows]
    for repeat in range(args.repeats):
        for row, done in zip(rows, runs, strict=True):
            began = time.monotonic()
            if row["kind"] == "tipo":
                done.append(tipo_run(args, data, work, row["processes"], row["precision"]))
            else:
                done.append(hf_run(args, data, work, row["padding"]))
            rate, took = rate_of(done[-1], args.warmup), time.monotonic() - began
            print(f"repeat {repeat + 1}: {row['row']} ({row['precision']}): {rate:,.0f} tok/s, "
                  f"{took:.0f} s in all", file=sys.stderr, flush=True)  # fmt: skip
    for row, done in zip(rows, runs, strict=True):
        summarize(row, done, args.warmup)
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / rows[-2]["tokens_per_s"]  # Trainer, pad to longest
        row.setdefault("padding_share", rows[-2]["padding_share"])  # the same micro-batches
    step_tokens = {json.dumps([t for t, _ in run["steps"]]) for done in runs for run in done}
    report.update(rows=rows, same_samples=len(step_tokens) == 1,
                  estimate=estimate(max(rows, key=lambda r: r["tokens_per_s"])))  # fmt: skip
    return report


def rate_of(run: dict[str, Any], warmup: int) -> float:
    timed = run["steps"][warmup:]
    return sum(t for t, _ in timed) / max(sum(s for _, s in timed), 1e-9)


def summarize(row: dict[str, Any], runs: list[dict[str, Any]], warmup: int) -> None:
    rates = [rate_of(run, warmup) for run in runs]
    per_step = [statistics.fmean(s for _, s in run["steps"][warmup:]) for run in runs]
    middle = statistics.median(rates)
    row.update(tokens_per_s=middle, runs_tokens_per_s=rates,
               spread=(max(rates) - min(rates)) / middle, s_per_step=statistics.median(per_step),
               rss_mb=max(r["rss_mb"] for r in runs))  # fmt: skip
    if "padding_share" in runs[0]:
        row["padding_share"] = runs[0]["padding_share"]


def estimate(best: dict[str, Any]) -> dict[str, Any]:
    """Published figures, assuming linear scaling over GPUs; ``best``: the fastest row here."""
    per_gpu = PUBLISHED_TOKENS / (PUBLISHED_HOURS * 3600 * PUBLISHED_GPUS)
    rate = best["tokens_per_s"]
    return {
        "tokens_per_s_per_gpu": per_gpu,
        "hours_on_gpus": {n: PUBLISHED_TOKENS / (per_gpu * n) / 3600 for n in (1, 8, 64)},
        "cpu_row": f"{best['row']}, {best['precision']}",
        "cpu_tokens_per_s": rate,
        "cpu_years": PUBLISHED_TOKENS / rate / (3600 * 24 * 365),
    }


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    cpu = names[0] if names else "unknown CPU"
    return f"{cpu}, {CORES} cores, load {os.getloadavg()[0]:.1f} at start"


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"machine: {report['machine']}",
        f"model: {report['preset']} from scratch, fp32 weights (bf16 rows: autocast); global "
        f"batch {s['global_batch']} samples (micro-batch {s['batch_size']}); {s['steps']} timed "
        f"steps after {s['warmup']} warm-up; median of {s['repeats']} runs, rows run in turn",
        "threads: 1 process uses every core, N processes cores/N each (OMP_NUM_THREADS)",
        "",
        "| row | procs x threads | precision | non-pad tok/s | runs | spread | s/step "
        "| x Trainer (longest) | padding share | peak RSS MB/process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        runs = ", ".join(f"{x:,.0f}" for x in r["runs_tokens_per_s"])
        lines.append(f"| {r['row']} | {r['processes']} x {r['threads']} | {r['precision']} | "
                     f"{r['tokens_per_s']:,.0f} | {runs} | {r['spread']:.0%} | "
                     f"{r['s_per_step']:.2f} | {r['ratio']:.2f} | {r['padding_share']:.0%} | "
                     f"{r['rss_mb']:,.0f} |")  # fmt: skip
    same = "yes" if report["same_samples"] else "NO: rows trained on different samples"
    e = report["estimate"]
    hours = "; ".join(f"{n} GPU{'s' if int(n) > 1 else ''} {h:,.0f} h ({h / 24:,.1f} days)"
                      for n, h in e["hours_on_gpus"].items())  # fmt: skip
    lines += ["", f"same samples in every row and run (per-step non-padding tokens equal): {same}",
              "", "ESTIMATE from the published TIPO-200M figures (model card: 40B non-padding "
              "tokens, 4x RTX 3090, 420 h), assuming linear scaling:",
              f"  {e['tokens_per_s_per_gpu']:,.0f} non-padding tokens/s per RTX 3090; 40B tokens "
              f"on {hours}", f"  for scale, at the best rate measured here "
              f"({e['cpu_tokens_per_s']:,.0f} tok/s, {e['cpu_row']}, {report['preset']}, "
              f"{e['tokens_per_s_per_gpu'] / e['cpu_tokens_per_s']:,.0f}x slower than one "
              f"RTX 3090): {e['cpu_years']:,.1f} years"]  # fmt: skip
    if report["preset"] != "tipo-200m":
        lines.append("  (the measured model is not TIPO-200M; it needs more compute per token)")
    return "\n".join(lines)


def counts(text: str) -> list[int]:
    if not all(part.strip().isdigit() and int(part) > 0 for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: process counts, e.g. 1,2")
    return [int(part) for part in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    shared = ROOT.parent / "shared" / "llama-tokenizer" / "tokenizer.model"
    parser.add_argument("--tokenizer", type=Path, default=shared, help="LLaMA tokenizer.model")
    parser.add_argument("--preset", default="tipo-200m", choices=PRESETS, help="model shape")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per forward")
    parser.add_argument("--global-batch", type=int, default=4, help="samples per optimizer step")
    parser.add_argument("--processes", type=counts, default="1,2", help="tipo train's counts")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every row, in turn")
    parser.add_argument("--records", type=int, default=2000, help="synthetic dataset rows")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--bf16", action="store_true", help="also tipo train rows in bf16")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, metrics)")
    parser.add_argument("--hf-worker", type=Path, help=argparse.SUPPRESS)  # a child's spec
    args = parser.parse_args()
    if min(args.steps, args.repeats, args.records) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats and --records must be at least 1, --warmup >= 0")
    for n in args.processes:
        if args.global_batch % (args.batch_size * n):
            parser.error(f"--global-batch must be a multiple of --batch-size x {n} processes")
    if args.records < args.global_batch:
        parser.error("--records must be at least --global-batch")
    if not args.tokenizer.is_file():
        parser.error(f"no tokenizer at {args.tokenizer}: give --tokenizer")
    return args


def main() -> int:
    args = parse_args()
    if args.hf_worker:
        hf_worker(args.hf_worker)
        return 0
    work = Path(tempfile.mkdtemp(prefix="tipo-train-bench-"))
    try:
        report = measure(args, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["same_samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
