"""Building test hosts' environments once and caching them (the ComfyUI install, the gradio
venvs of the WebUI tests): a cache folder, a lock so parallel runs wait for one build, and
setup commands whose output goes to log files and whose stages are timed on stderr; and a free
loopback port for the servers the tests start."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CACHE_ENV = "TIPO_HOSTS_CACHE"
LOCK_TIMEOUT_S = 40 * 60  # a cold build takes minutes; waiting longer means a stuck holder


class HostSetupError(RuntimeError):
    """A test host could not be set up or did not behave; the message says how to fix it."""


def log(message: str) -> None:
    print(f"[test-hosts] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    log(f"{name} ...")
    started = time.monotonic()
    yield
    log(f"{name}: done in {time.monotonic() - started:.1f} s")


@contextlib.contextmanager
def progress_visible(pytestconfig: Any) -> Iterator[None]:
    """Let ``log`` lines through pytest's capture (session fixtures have no ``capsys``), so a
    CI log shows a cold build's stages as they happen. Tool output stays in ``<cache>/logs``."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        yield


def run_logged(command: Sequence[str | os.PathLike[str]], log_path: Path, **kwargs: Any) -> None:
    """Run a setup command with its output in ``log_path``; on failure raise with the log tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        result = subprocess.run(
            [str(part) for part in command], stdout=out, stderr=subprocess.STDOUT, **kwargs
        )
    if result.returncode:
        raise HostSetupError(
            f"command failed (exit {result.returncode}): {' '.join(map(str, command))}\n"
            f"--- last lines of {log_path} ---\n{tail(log_path, 40)}"
        )


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no file {path})"


def default_cache_dir() -> Path:
    """``$TIPO_HOSTS_CACHE`` or ``<repo>/.cache/hosts`` (git-ignored)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[1] / ".cache" / "hosts"


@contextlib.contextmanager
def cache_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: released by the kernel if the holder dies."""
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        waiting_said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HostSetupError(
                        f"another run has held {path} for over {timeout:.0f} s; if none is "
                        "running, delete the file and retry"
                    ) from None
                if not waiting_said:
                    log(f"waiting for another run that is building the cache ({path})")
                    waiting_said = True
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
