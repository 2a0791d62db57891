"""Thin wrappers of llama-cpp-python's low-level API for the llamacpp backend: importing and
initialising the library (its log routed to us), quantising a file, the model, a context with
one KV stream per sequence, a numpy-backed ``llama_batch`` and one sequence's sampler chain.

The names were checked against llama-cpp-python 0.3.36 (llama.cpp's ``llama_memory_*`` KV API,
``llama_sampler_init_penalties(n_vocab, ...)``, ``llama_model_load_from_file``); older releases
named several of them differently.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..errors import BackendError, MissingDependencyError
from ..sampling import SamplingParams
from .base import TokenConstraint

PREFILL_BATCH = 2048  # tokens per llama_decode call while reading prompts
_SEED_MODULUS = 2**32 - 1  # llama.cpp takes uint32 seeds; 0xFFFFFFFF means "random"
_LOG_TAIL: deque[str] = deque(maxlen=20)  # llama.cpp's last warnings/errors, for our messages
_LOG_STATE: dict[str, Any] = {"callback": None, "verbose": False}


def init_llama_cpp(feature: str = "The llamacpp backend", *, verbose: bool = False) -> Any:
    """``llama_cpp``, imported (a MissingDependencyError names the extra), its log routed to us
    and its backends initialised."""
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError.for_extra("llama-cpp-python", "llamacpp", feature) from None
    except OSError as error:  # the package is there but its shared library does not load
        raise BackendError(
            f"llama-cpp-python is installed but its library does not load: {error}",
            hint="reinstall it (see the README's install section for the build flags)",
        ) from None
    _route_logs(llama_cpp, verbose)
    return llama_cpp


def _route_logs(llama_cpp: Any, verbose: bool) -> None:
    """llama.cpp's and ggml's log: warnings and errors are kept for our error messages and
    everything goes to stderr only when ``verbose``. (llama-cpp-python installs a callback at
    import that prints everything, so ours replaces it.)"""
    _LOG_STATE["verbose"] = verbose
    if _LOG_STATE["callback"] is not None:
        return

    def record(level: int, text: bytes | None, _user_data: Any) -> None:
        line = (text or b"").decode("utf-8", errors="replace")
        if level in (2, 3) and line.strip():  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            _LOG_TAIL.append(line.strip())
        if _LOG_STATE["verbose"]:
            sys.stderr.write(line)

    # The ctypes callback must outlive every llama.cpp call: keep it in module state.
    _LOG_STATE["callback"] = llama_cpp.llama_log_callback(record)
    llama_cpp.llama_log_set(_LOG_STATE["callback"], ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


def last_log() -> str:
    """llama.cpp's last warning or error since the last ``_LOG_TAIL.clear()``, for messages."""
    return f" (llama.cpp: {_LOG_TAIL[-1]})" if _LOG_TAIL else ""


def quantize_file(source: os.PathLike[str], target: os.PathLike[str], file_type: int) -> None:
    """Quantise a GGUF file with llama.cpp's own quantiser (the code of ``llama-quantize``);
    ``file_type`` is a ``llama_ftype`` (7 = Q8_0, 15 = Q4_K_M)."""
    llama_cpp = init_llama_cpp("Quantising a GGUF file")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = os.cpu_count() or 1
    _LOG_TAIL.clear()
    status = llama_cpp.llama_model_quantize(
        os.fsencode(source), os.fsencode(target), ctypes.byref(params)
    )
    if status != 0:
        raise BackendError(f"llama.cpp could not quantise {source} (status {status}){last_log()}")


# --- llama.cpp objects --------------------------------------------------------------------------


class TokenBatch:
    """A ``llama_batch`` over numpy arrays we own, filled with vectorised writes (no per-token
    ctypes calls). ``seq_id[i]`` points into ``_seq_values``, a table of all sequence ids."""

    def __init__(self, llama_cpp: Any, capacity: int, n_seq: int) -> None:
        import numpy as np

        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.ones(capacity, np.int32)
        self.logits = np.zeros(capacity, np.int8)
        self._seq_values = np.arange(n_seq, dtype=np.int32)
        self.seq_ptr = np.zeros(capacity, np.uintp)
        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=_pointer(self.token, ctypes.c_int32),
            embd=None,
            pos=_pointer(self.pos, ctypes.c_int32),
            n_seq_id=_pointer(self.n_seq_id, ctypes.c_int32),
            seq_id=_pointer(self.seq_ptr, ctypes.POINTER(ctypes.c_int32)),
            logits=_pointer(self.logits, ctypes.c_int8),
        )

    def fill(self, tokens: Any, positions: Any, seq_ids: Any, want_logits: Any) -> Any:
        n = len(tokens)
        self.token[:n], self.pos[:n], self.logits[:n] = tokens, positions, want_logits
        base = self._seq_values.ctypes.data
        self.seq_ptr[:n] = base + self._seq_values.itemsize * seq_ids.astype(self.seq_ptr.dtype)
        self.struct.n_tokens = n
        return self.struct


def _pointer(array: Any, ctype: Any) -> Any:
    return ctypes.cast(array.ctypes.data, ctypes.POINTER(ctype))


class LlamaModel:
    """A loaded GGUF model (weights only; contexts are made per batch shape)."""

    def __init__(self, llama_cpp: Any, path: str, n_gpu_layers: int) -> None:
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.lib = llama_cpp
        _LOG_TAIL.clear()
        self.ptr = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise BackendError(
                f"llama.cpp could not load {path}{last_log()}",
                hint="check that the file is a complete GGUF of a LLaMA model "
                "(tipo convert writes one from a Hugging Face folder)",
            )
        vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.eos_id = int(llama_cpp.llama_vocab_eos(vocab))
        self.context_length = int(llama_cpp.llama_model_n_ctx_train(self.ptr))

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_model_free(self.ptr)
            self.ptr = None


class LlamaContext:
    """A llama.cpp context: ``n_seq`` KV streams of ``n_ctx_seq`` cells each."""

    def __init__(self, model: LlamaModel, n_seq: int, n_ctx_seq: int, n_threads: int) -> None:
        lib = model.lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx_seq
        params.n_seq_max = n_seq
        params.n_batch = min(PREFILL_BATCH, params.n_ctx)
        params.n_ubatch = min(512, params.n_batch)
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False  # one stream per sequence: see the module docstring
        params.no_perf = True
        self.lib, self.model, self.n_seq, self.n_ctx_seq = lib, model, n_seq, n_ctx_seq
        _LOG_TAIL.clear()
        self.ptr = lib.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise BackendError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens{last_log()}",
                hint="lower the batch size or max_new_tokens (the KV cache may not fit)",
            )
        self.memory = lib.llama_get_memory(self.ptr)
        self.batch = TokenBatch(lib, int(lib.llama_n_batch(self.ptr)), n_seq)

    def decode(self, tokens: Any, positions: Any, seq_ids: Any, want_logits: Any) -> None:
        batch = self.batch.fill(tokens, positions, seq_ids, want_logits)
        _LOG_TAIL.clear()
        status = self.lib.llama_decode(self.ptr, batch)
        if status != 0:
            reason = "the KV cache is full" if status == 1 else f"status {status}"
            raise BackendError(f"llama_decode failed: {reason}{last_log()}")

    def logits(self, index: int) -> Any:
        """The logits after the ``index``-th token of the last decode's batch (a float32 view,
        valid until the next decode)."""
        import numpy as np

        pointer = self.lib.llama_get_logits_ith(self.ptr, index)
        if not pointer:
            raise BackendError(f"llama.cpp has no logits for batch index {index}{last_log()}")
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,))

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, False)  # cells only: no need to zero the data

    def truncate(self, seq_id: int, length: int) -> None:
        """Drop the KV cells of positions >= ``length`` of one sequence."""
        self.lib.llama_memory_seq_rm(self.memory, seq_id, length, -1)

    def copy_sequence(self, source: int, target: int) -> None:
        """Copy a whole KV stream (the shared prompt prefix) to another sequence."""
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_free(self.ptr)
            self.ptr = None


# --- sampling -----------------------------------------------------------------------------------


class Sampler:
    """One sequence's sampling: llama.cpp's penalty sampler, then the constraint's mask, then a
    chain (temperature, top-k, top-p, min-p, dist; or greedy), applied to ``candidates``, a
    numpy copy of the logits laid out as ``llama_token_data`` (id, logit, p)."""

    def __init__(
        self, lib: Any, n_vocab: int, params: SamplingParams, seed: int, window: int
    ) -> None:
        import numpy as np

        self.lib = lib
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.candidates = np.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self.array = lib.llama_token_data_array(
            data=_pointer(self.candidates, lib.llama_token_data), size=n_vocab
        )
        # The window is the whole context and the prompt is accepted into it: transformers'
        # repetition penalty (llama.cpp allocates the window, so not larger than needed).
        self.penalty = lib.llama_sampler_init_penalties(
            n_vocab, window, params.repetition_penalty, 0.0, 0.0
        )
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        for sampler in _chain(lib, params, seed):
            lib.llama_sampler_chain_add(self.chain, sampler)  # the chain owns them now

    def load(self, logits: Any) -> None:
        """Copy a sequence's logits in (they are overwritten by the next decode)."""
        self.candidates["logit"] = logits

    def sample(self, constraint: TokenConstraint | None, banned: int | None) -> int:
        import numpy as np

        self.candidates["id"] = self.ids  # the samplers sort candidates in place
        array = self.array
        array.data = _pointer(self.candidates, self.lib.llama_token_data)
        array.size, array.selected, array.sorted = len(self.ids), -1, False
        if banned is not None:
            self.candidates["logit"][banned] = -np.inf
        self.lib.llama_sampler_apply(self.penalty, ctypes.byref(array))
        if constraint is not None:
            _mask(constraint, self.candidates["logit"])
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(array))
        if array.selected < 0:
            raise BackendError("llama.cpp's sampler selected no token")
        return int(array.data[array.selected].id)

    def accept(self, token: int) -> None:
        self.lib.llama_sampler_accept(self.penalty, token)
        self.lib.llama_sampler_accept(self.chain, token)

    def restart(self, tokens: Sequence[int]) -> None:
        """Forget the history and accept ``tokens`` (after a rollback, or the prompt)."""
        self.lib.llama_sampler_reset(self.penalty)
        for token in tokens:
            self.lib.llama_sampler_accept(self.penalty, token)

    def close(self) -> None:
        self.lib.llama_sampler_free(self.penalty)
        self.lib.llama_sampler_free(self.chain)


def _chain(lib: Any, params: SamplingParams, seed: int) -> list[Any]:
    if params.greedy:
        return [lib.llama_sampler_init_greedy()]
    samplers = [lib.llama_sampler_init_temp(params.temperature)]
    if params.top_k > 0:
        samplers.append(lib.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1:
        samplers.append(lib.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        samplers.append(lib.llama_sampler_init_min_p(params.min_p, 1))
    samplers.append(lib.llama_sampler_init_dist(seed % _SEED_MODULUS))
    return samplers


def _mask(constraint: TokenConstraint, logits: Any) -> None:
    """Let the constraint set banned logits to -inf, in place, through a torch view."""
    import numpy as np
    import torch

    constraint.mask_logits(torch.from_numpy(logits))  # shares memory with the candidates
    if not np.isfinite(logits).any():
        raise BackendError("the token constraint banned every token")


__all__ = [
    "PREFILL_BATCH",
    "LlamaContext",
    "LlamaModel",
    "Sampler",
    "TokenBatch",
    "init_llama_cpp",
    "last_log",
    "quantize_file",
]
