"""Backends, by name. Each module is imported only when its backend is asked for."""

from __future__ import annotations

import importlib
from typing import Any

from ..checkpoints import Checkpoint
from ..errors import InvalidRequestError
from .base import Backend, Capabilities, Generation, GenerationRequest, TokenCallback

# name -> module whose load(checkpoint, device=..., dtype=..., **options) returns a Backend.
BACKENDS: dict[str, str] = {
    "torch": "tipo.backends.torch_engine",
    "transformers": "tipo.backends.hf_transformers",
    "llamacpp": "tipo.backends.llamacpp",
    "fake": "tipo.backends.fake",  # scripted, for wiring tests; never picked by "auto"
}
# What "auto" picks, in order of preference, per checkpoint format.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "hf": ("torch", "transformers"),
    "gguf": ("llamacpp",),
}


def load_backend(
    name: str,
    checkpoint: Checkpoint,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    **options: Any,
) -> Backend:
    if name == "auto":
        choices = AUTO_ORDER.get(checkpoint.format, ())
        if not choices:
            raise InvalidRequestError(f"no backend can run {checkpoint.format} checkpoints yet")
        name = choices[0]
    if name not in BACKENDS:
        raise InvalidRequestError(
            f"unknown backend {name!r}", hint=f"use one of: auto, {', '.join(BACKENDS)}"
        )
    module = importlib.import_module(BACKENDS[name])
    return module.load(checkpoint, device=device, dtype=dtype, **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "Capabilities",
    "Generation",
    "GenerationRequest",
    "TokenCallback",
    "load_backend",
]
