"""The machine and the process a bench row runs in: peak RSS, read bandwidth, a summary of the
CPU, and ``run_isolated`` (one measurement in a fresh interpreter). Torch is imported only where
needed, so a llama.cpp row's process does not load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_bandwidth(megabytes: int = 512) -> float:
    """Read bandwidth in GB/s: sum a large array (a decode step reads every weight once)."""
    import torch

    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    start = time.perf_counter()
    for _ in range(5):
        data.sum()
    return 5 * data.numel() * 4 / (time.perf_counter() - start) / 1e9


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


__all__ = ["log", "machine_info", "measure_bandwidth", "peak_rss_mb", "run_isolated"]
