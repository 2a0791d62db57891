"""Our own PyTorch LLaMA inference engine (the ``torch`` backend: the default for HF folders,
and for GGUF files when llama-cpp-python is not installed).

Reading order: config.py (architecture) -> weights.py (checkpoint -> model; a Hugging Face
folder) -> gguf_weights.py (a GGUF file: the same builder, fed dequantised tensors) -> quant.py
(weight formats and their kernels) -> model.py (the decoder; compiled_attention.py, its opt-in
decode attention over a bf16 cache) -> kv_cache.py (rows + prefix cache) -> sampler.py
(transformers' sampling semantics on tensors) -> scheduler.py (continuous batching) ->
engine.py (``Engine.generate``). ``tipo bench`` (speed and the quality of each weight format)
lives in ``tipo.bench``.

Weight formats (``dtype``): float32, bfloat16, float16, int8 (default on CPU), int4. See
quant.py for the kernels; ``tipo.bench.quality_report(checkpoint, dtype)`` measures what each
costs. tests/test_engine_devices.py runs whole requests on the ``meta`` device (the CUDA code
paths) and fails on any op that mixes host tensors into device work.

Continuous batching (scheduler.py)::

    scheduler = Engine.load(folder).scheduler
    handle = scheduler.add(GenerationRequest(prompt_ids, sampling, seed))  # queued
    result = scheduler.step()   # admits queued requests, decodes one token for every sequence
    result.tokens               # [(handle, token_id)] sampled this step
    result.rollbacks            # [(handle, n)] newest n tokens discarded by a constraint
    result.finished             # [(handle, Generation)]
    scheduler.cancel(handle)    # -> Generation (finish reason "stop") or None

Names are imported on first use, so ``import tipo.engine`` does not import torch.
"""

from __future__ import annotations

from .._lazy import lazy_exports as _lazy_exports

_EXPORTS: dict[str, str] = {
    "EngineConfig": "config",
    "PRESETS": "config",
    "Engine": "engine",
    "DEFAULT_CPU_FORMAT": "engine",
    "default_format": "engine",
    "WEIGHT_FORMATS": "quant",
    "load_model": "weights",
    "Scheduler": "scheduler",
    "StepResult": "scheduler",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
