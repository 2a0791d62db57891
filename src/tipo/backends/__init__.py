"""Backends, by name. Each module is imported only when its backend is asked for."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from ..checkpoints import Checkpoint
from ..errors import InvalidRequestError, MissingDependencyError
from .base import Backend, Capabilities, Generation, GenerationRequest, TokenCallback

# name -> module whose load(checkpoint, device=..., dtype=..., **options) returns a Backend.
BACKENDS: dict[str, str] = {
    "torch": "tipo.backends.torch_engine",
    "transformers": "tipo.backends.hf_transformers",
    "llamacpp": "tipo.backends.llamacpp",
    "openai": "tipo.backends.remote",  # vLLM / SGLang / llama-server over HTTP; never "auto"
    "fake": "tipo.backends.fake",  # scripted, for wiring tests; never picked by "auto"
}
# What "auto" picks per checkpoint format: the first of these whose package is installed. For
# GGUF, llama.cpp (optional, compiled, faster on quantised files), else our engine.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "hf": ("torch", "transformers"),
    "gguf": ("llamacpp", "torch"),
}
# The Python package without which a backend cannot load: "auto" skips a backend without it.
REQUIRES: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "llamacpp": "llama_cpp",
}


def auto_backend(checkpoint_format: str) -> str:
    """The backend "auto" picks for a checkpoint format: the first installed one."""
    choices = AUTO_ORDER.get(checkpoint_format, ())
    if not choices:
        raise InvalidRequestError(f"no backend can run {checkpoint_format} checkpoints yet")
    for name in choices:
        if _importable(REQUIRES[name]):
            return name
    needs = ", ".join(f"{name} needs the package '{REQUIRES[name]}'" for name in choices)
    raise MissingDependencyError(
        f"no backend for {checkpoint_format} checkpoints is installed ({needs})",
        hint='pip install "tipo-prompt[engine]" (our torch engine runs both Hugging Face '
        "folders and GGUF files)",
    )


def _importable(module: str) -> bool:
    """Installed, without importing it (llama_cpp loads its shared library on import); a
    module set to None in sys.modules counts as missing, as it does for ``import``."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def load_backend(
    name: str,
    checkpoint: Checkpoint,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    **options: Any,
) -> Backend:
    if name == "auto":
        name = auto_backend(checkpoint.format)
    if name not in BACKENDS:
        raise InvalidRequestError(
            f"unknown backend {name!r}", hint=f"use one of: auto, {', '.join(BACKENDS)}"
        )
    module = importlib.import_module(BACKENDS[name])
    return module.load(checkpoint, device=device, dtype=dtype, **options)


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "REQUIRES",
    "Backend",
    "Capabilities",
    "Generation",
    "GenerationRequest",
    "TokenCallback",
    "auto_backend",
    "load_backend",
]
