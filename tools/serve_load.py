"""Load test of `tipo serve` on loopback: a real server process, real sockets, bounded load.

    python tools/serve_load.py --tokenizer ../shared/llama-tokenizer/tokenizer.model

starts `tipo serve` on a random TIPO-200M-shaped checkpoint (or --model), then for 1, 16 and 64
concurrent clients (each sends its next request when the last one ends) reports requests/s,
tokens/s, latency p50/p95/p99, time to first token and errors; then an overload run (256
clients at once against --max-queue 32) that must give only 200s and 429s, with the server
alive after. Every request streams (SSE), so time to first token is what a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REQUEST = {
    "tags": "1girl, scenery, blue sky",
    "nl": "a girl on a hill",
    "tag_length": "short",
    "nl_length": "short",
}


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    tokens: int = 0
    statuses: Counter[str] = field(default_factory=Counter)

    def row(self) -> dict[str, Any]:
        done = len(self.latencies)
        return {
            "clients": self.clients,
            "requests": done,
            "requests_per_s": done / self.seconds if self.seconds else 0.0,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
            "p50_s": percentile(self.latencies, 50),
            "p95_s": percentile(self.latencies, 95),
            "p99_s": percentile(self.latencies, 99),
            "ttft_p50_s": percentile(self.first_tokens, 50),
            "ttft_p95_s": percentile(self.first_tokens, 95),
            "errors": sum(n for s, n in self.statuses.items() if s != "200"),
            "statuses": dict(self.statuses),
        }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_request(client: httpx.AsyncClient, seed: int, level: Level) -> None:
    start = time.perf_counter()
    first = None
    try:
        body = {**REQUEST, "seed": seed, "stream": True}
        async with client.stream("POST", "/v1/expand", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                level.statuses[str(response.status_code)] += 1
                return
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "token" and first is None:
                    first = time.perf_counter() - start
                elif line.startswith("data: ") and event == "result":
                    level.tokens += json.loads(line[6:])["result"]["tokens"]["new"]
                elif line.startswith("data: ") and event == "error":
                    level.statuses[json.loads(line[6:])["error"]["kind"]] += 1
                    return
    except httpx.HTTPError as error:
        level.statuses[type(error).__name__] += 1
        return
    level.statuses["200"] += 1
    level.latencies.append(time.perf_counter() - start)
    level.first_tokens.append(first if first is not None else float("nan"))


async def run_level(url: str, clients: int, requests: int, seed: int) -> Level:
    """``clients`` closed-loop clients share ``requests`` requests."""
    level = Level(clients)
    seeds = iter(range(seed, seed + requests))
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            for next_seed in seeds:
                await one_request(client, next_seed, level)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        level.seconds = time.perf_counter() - start
    return level


async def overload(url: str, clients: int) -> dict[str, Any]:
    """Everyone at once, plain JSON: only 200 and 429 are right."""
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(seed: int) -> None:
            try:
                response = await client.post("/v1/expand", json={**REQUEST, "seed": seed})
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(s) for s in range(clients)))
        seconds = time.perf_counter() - start
        alive = (await client.get("/health")).status_code == 200
    unexpected = sum(n for s, n in statuses.items() if s not in ("200", "429"))
    return {"clients": clients, "seconds": seconds, "statuses": dict(statuses),
            "unexpected": unexpected, "alive_after": alive}  # fmt: skip


class Server:
    """`tipo serve` as a child process on a free loopback port."""

    def __init__(self, model: Path, *flags: str) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tipo.cli", "serve", "--model", str(model), "--offline",
                   "--host", "127.0.0.1", "--port", str(self.port), *flags]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("tipo serve did not start within 120 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def random_checkpoint(tokenizer: Path, directory: Path) -> Path:
    from tipo.bench import write_random_checkpoint

    path = write_random_checkpoint(directory / "tipo-200m-random", "tipo-200m")
    shutil.copy(tokenizer, path / "tokenizer.model")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: random TIPO-200M)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.model for the random model")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--requests", type=int, default=2, help="requests per client (min 6)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--dtype", help="weight format (default: the engine's)")
    parser.add_argument("--overload", type=int, default=256, help="clients; 0 skips the run")
    parser.add_argument("--max-queue", type=int, default=32, help="for the overload run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every level, in turn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            if args.tokenizer is None:
                parser.error("give --model, or --tokenizer for a random TIPO-200M")
            model = random_checkpoint(args.tokenizer, Path(scratch))
        report = measure(model, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    overloaded = report.get("overload") or {"unexpected": 0, "alive_after": True}
    errors = sum(row["errors"] for row in report["levels"])
    return 1 if errors or overloaded["unexpected"] or not overloaded["alive_after"] else 0


def measure(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Each repeat runs every level once, in turn, so that a machine whose speed drifts (a
    shared host) weighs on all levels alike; the report gives each level's median run."""
    dtype = ("--dtype", args.dtype) if args.dtype else ()
    report: dict[str, Any] = {"machine": machine(), "model": model.name, "request": REQUEST}
    counts = [int(c) for c in args.clients.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    flags = ("--max-batch", str(args.max_batch), "--max-queue", "1024", "--timeout", "900",
             *dtype)  # fmt: skip
    with Server(model, *flags) as server:
        asyncio.run(run_level(server.url, 1, 1, seed=10_000))  # warm-up
        for repeat in range(args.repeat):
            for clients in counts:
                requests = max(6, clients * args.requests)
                row = asyncio.run(run_level(server.url, clients, requests, seed=0)).row()
                runs[clients].append(row)
                print(f"repeat {repeat + 1}: {clients} clients {row['requests_per_s']:.2f} req/s",
                      file=sys.stderr)  # fmt: skip
    report["levels"] = [median_run(runs[c]) for c in counts]
    report["repeats"] = args.repeat
    base = report["levels"][0]["requests_per_s"]
    for row in report["levels"]:
        row["speedup"] = row["requests_per_s"] / base if base else float("nan")
        row["all_requests_per_s"] = [r["requests_per_s"] for r in runs[row["clients"]]]
    if args.overload:
        flags = ("--max-batch", "16", "--max-queue", str(args.max_queue), *dtype)
        with Server(model, *flags) as server:
            report["overload"] = asyncio.run(overload(server.url, args.overload))
            report["overload"]["max_queue"] = args.max_queue
    return report


def median_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (a whole run, so its columns belong together);
    errors are summed over all runs."""
    ordered = sorted(rows, key=lambda r: r["requests_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["errors"] = sum(r["errors"] for r in rows)
    return chosen


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f} at start"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']}", f"model: {report['model']}",
             f"each level: the median of {report['repeats']} runs (levels run in turn)", "",
             "| clients | requests | req/s | × 1 client | tokens/s | p50 s | p95 s | p99 s "
             "| TTFT p50 s | TTFT p95 s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["levels"]:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | "
            f"{r['speedup']:.1f}× | {r['tokens_per_s']:.0f} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {r['p99_s']:.2f} | {r['ttft_p50_s']:.2f} | "
            f"{r['ttft_p95_s']:.2f} | {r['errors']} |"
        )
    lines.append("")
    for r in report["levels"]:
        runs = ", ".join(f"{x:.2f}" for x in r["all_requests_per_s"])
        lines.append(f"{r['clients']} clients, req/s of each run: {runs}")
    if "overload" in report:
        o = report["overload"]
        lines += ["", f"overload: {o['clients']} clients at once, --max-queue {o['max_queue']}: "
                  f"{o['statuses']} in {o['seconds']:.1f} s; other statuses: {o['unexpected']}; "
                  f"server alive after: {o['alive_after']}"]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
