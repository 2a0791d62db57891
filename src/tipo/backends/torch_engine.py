"""Our own PyTorch LLaMA engine (``tipo.engine``): the default backend for Hugging Face folders,
and for GGUF files when llama-cpp-python is not installed.

Needs only torch (safetensors files are read without the safetensors package) and, for GGUF
files, the pure-Python ``gguf`` package: nothing a Stable Diffusion environment lacks, no
compiler. A GGUF file's tensors are dequantised (F32, F16, BF16, Q8_0, and the K-quants and
others ``gguf`` handles) and stored in the weight format asked for, like a Hugging Face
folder's (engine/gguf_weights.py).

Options: ``dtype`` is the weight format ("float32", "bfloat16", "float16", "int8", "int4";
default: the engine's CPU default, also for GGUF files), ``max_batch`` the most sequences
decoded together, ``threads`` torch's CPU thread count, ``int8_copy`` (default True) whether
int4 models also keep int8 weights for large batches, ``compile_attention`` (default False) a
bf16 KV cache read by a compiled decode attention (CPU, for batches; engine/compiled_attention.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..checkpoints import Checkpoint
from ..errors import BackendError, MissingDependencyError
from .base import Capabilities, Generation, GenerationRequest, TokenCallback


class TorchEngineBackend:
    name = "torch"
    capabilities = Capabilities(
        batched=True, streaming=True, constraints=True, rollback=True, prefix_sharing=True
    )

    def __init__(self, engine: Any) -> None:
        self.engine = engine  # tipo.engine.Engine
        self.context_length = engine.config.max_position_embeddings

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        if self.engine is None:
            raise BackendError("the torch backend was closed", hint="load the model again")
        return self.engine.generate(requests, on_token)

    def stepper(self) -> Any:
        """The engine's scheduler (tipo.engine.Scheduler), for a server's engine loop. The
        loop must then be its only user: ``generate`` drives the same scheduler."""
        if self.engine is None:
            raise BackendError("the torch backend was closed", hint="load the model again")
        return self.engine.scheduler

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None


def load(
    checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None, **options: Any
) -> TorchEngineBackend:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError.for_extra("torch", "engine", "The torch backend") from None
    from ..engine.engine import Engine

    known = ("max_batch", "threads", "int8_copy", "compile_attention")
    unknown = set(options) - set(known)
    if unknown:
        raise BackendError(
            f"unknown torch backend option(s): {', '.join(sorted(unknown))}",
            hint=f"the torch backend takes {', '.join(known)}",
        )
    return TorchEngineBackend(Engine.load(checkpoint.path, dtype=dtype, device=device, **options))
