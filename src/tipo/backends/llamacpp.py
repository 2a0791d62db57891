"""GGUF files through llama.cpp (llama-cpp-python's low-level API), as an optional extra.

Reading order: ``LlamaCppBackend.generate`` -> ``_Run`` (one batch of parallel sequences in one
llama.cpp context) -> ``llamacpp_lib`` (``Sampler``: one sequence's sampling; ``LlamaContext``,
``TokenBatch``: thin wrappers of the C objects).

* Fed our token ids, never text: llama.cpp's tokenizer need not agree with the training-time
  one (protocol doc §3), so the GGUF's vocabulary is never used to encode.
* The N requests of a batch decode as N parallel sequences of one context. Each sequence has its
  own KV stream (``kv_unified`` off: a token attends only its own cells, so attention does not
  grow with the batch); a prompt prefix shared by every request is computed once and copied to
  the other streams (``llama_memory_seq_cp``).
* Sampling uses llama.cpp's samplers, in transformers' order: repetition penalty, then (our
  TokenConstraint hook), temperature, top-k, top-p, min-p, and ``dist`` seeded per request;
  temperature 0 is ``greedy``. We apply them to a candidate array we own
  (``llama_sampler_apply``), so a constraint can mask the logits between the penalty and the
  rest, and a rollback (``accept`` returning n > 0) drops the newest tokens from the KV cache
  (``llama_memory_seq_rm``) and re-decodes from the shorter sequence.

Differences from the transformers reference (``SamplingParams`` semantics):

* the repetition penalty is llama.cpp's ``penalties`` sampler with its window set to the whole
  context and the prompt fed into it, which is transformers' rule (every token of prompt and
  output, once, divided if positive, multiplied if not). llama.cpp's own default window is the
  last 64 tokens: not used here;
* top-p keeps the smallest set whose probability reaches p (transformers drops tokens whose
  cumulative probability from the bottom is <= 1 - p): they differ only on exact ties;
* random numbers come from llama.cpp's mt19937 seeded with ``seed % (2**32 - 1)``: the same seed
  gives the same tokens here, not the same tokens as transformers. "Here" means the same batch:
  llama.cpp's one-row and many-row matrix kernels round differently (~1e-5 on logits), so a
  request sampled alone and inside a batch can part ways after a near-tie (greedy decoding
  practically never does);
* F16 matrix products round the activations to F16, so logits differ from an fp32 run by ~1e-3
  (tests/test_llamacpp.py reports the figure).

Streaming: ``on_token`` is called for every sampled token. Tokens a constraint later rolls back
are not retracted; ``Generation.token_ids`` is the final word.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints import Checkpoint
from ..errors import BackendError, InvalidRequestError
from ..sampling import SamplingParams
from .base import Capabilities, FinishReason, Generation, GenerationRequest, TokenCallback
from .llamacpp_lib import LlamaContext, LlamaModel, Sampler, init_llama_cpp

MAX_PARALLEL = 32  # sequences per llama.cpp context; larger batches run in chunks
ROLLBACK_BUDGET = 8  # a sequence samples at most this many times max_new_tokens tokens


# --- decoding -----------------------------------------------------------------------------------


@dataclass
class _Sequence:
    """One request's state while its batch decodes."""

    index: int  # position in the caller's request list
    seq_id: int  # llama.cpp sequence id (= KV stream) within the context
    request: GenerationRequest
    sampler: Sampler
    tokens: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    first_token_at: float | None = None
    finished_at: float = 0.0
    sampled: int = 0  # tokens sampled, rolled-back ones included

    @property
    def n_prompt(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def n_new(self) -> int:
        return len(self.tokens) - self.n_prompt


class _Run:
    """Decode one batch of requests as parallel sequences of one context."""

    def __init__(self, backend: LlamaCppBackend, context: LlamaContext, start: int) -> None:
        self.backend, self.context, self.start = backend, context, start
        self.sequences: list[_Sequence] = []

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None
    ) -> list[Generation]:
        model, window = self.backend.model, self.backend.context_length
        started = time.perf_counter()
        try:
            for i, request in enumerate(requests):
                sampler = Sampler(model.lib, model.n_vocab, request.sampling, request.seed, window)
                self.sequences.append(_Sequence(self.start + i, i, request, sampler))
            self._prefill()
            while active := [s for s in self.sequences if s.finish is None]:
                for sequence in active:
                    self._advance(sequence, on_token)
                self._step([s for s in active if s.finish is None])
        finally:
            for sequence in self.sequences:
                sequence.sampler.close()
        return [_result(s, started) for s in self.sequences]

    def _prefill(self) -> None:
        """Read the prompts: a prefix common to all is decoded once in sequence 0 and copied
        to the other streams; each sequence keeps at least its last prompt token to decode
        itself, because its logits are needed per sequence."""
        import numpy as np

        for sequence in self.sequences:
            sequence.tokens = list(sequence.request.prompt_ids)
            sequence.sampler.restart(sequence.tokens)
        shared = (
            _shared_prefix([s.tokens for s in self.sequences]) if self.backend.share_prefix else 0
        )
        if shared:
            prefix = self.sequences[0].tokens[:shared]
            self._feed(prefix, np.arange(shared), np.zeros(shared, np.int32), [])
            for sequence in self.sequences[1:]:
                self.context.copy_sequence(0, sequence.seq_id)
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        outputs: list[tuple[int, _Sequence]] = []
        for sequence in self.sequences:
            own = sequence.tokens[shared:]
            tokens += own
            positions += range(shared, shared + len(own))
            seq_ids += [sequence.seq_id] * len(own)
            outputs.append((len(tokens) - 1, sequence))
        self._feed(tokens, np.array(positions), np.array(seq_ids, np.int32), outputs)

    def _feed(
        self, tokens: list[int], positions: Any, seq_ids: Any, outputs: list[tuple[int, Any]]
    ) -> None:
        """Decode tokens in chunks of the context's batch size; ``outputs`` lists (index into
        ``tokens``, sequence) whose logits each sequence's sampler takes."""
        import numpy as np

        want = np.zeros(len(tokens), np.int8)
        want[[i for i, _ in outputs]] = 1
        owner = dict(outputs)
        size = self.context.batch.capacity
        for begin in range(0, len(tokens), size):
            end = min(begin + size, len(tokens))
            self.context.decode(
                np.array(tokens[begin:end], np.int32),
                positions[begin:end],
                seq_ids[begin:end],
                want[begin:end],
            )
            for i in np.flatnonzero(want[begin:end]):  # logits are looked up by batch index
                owner[begin + int(i)].sampler.load(self.context.logits(int(i)))

    def _step(self, sequences: list[_Sequence]) -> None:
        """Decode the newest token of every unfinished sequence in one batch."""
        import numpy as np

        if not sequences:
            return
        tokens = np.array([s.tokens[-1] for s in sequences], np.int32)
        positions = np.array([len(s.tokens) - 1 for s in sequences], np.int32)
        seq_ids = np.array([s.seq_id for s in sequences], np.int32)
        self.context.decode(tokens, positions, seq_ids, np.ones(len(sequences), np.int8))
        for rank, sequence in enumerate(sequences):
            sequence.sampler.load(self.context.logits(rank))

    def _advance(self, sequence: _Sequence, on_token: TokenCallback | None) -> None:
        """Sample one token for ``sequence``; stop it, or roll it back as its constraint says."""
        backend, constraint = self.backend, sequence.request.constraint
        banned = backend.model.eos_id if backend.ignore_eos else None
        token = sequence.sampler.sample(constraint, banned)
        sequence.sampled += 1
        sequence.first_token_at = sequence.first_token_at or time.perf_counter()
        sequence.sampler.accept(token)
        sequence.tokens.append(token)
        if on_token is not None:
            on_token(sequence.index, token)
        discard = constraint.accept(token) if constraint is not None else 0
        if discard:
            self._rollback(sequence, discard)
        self._check_stop(sequence, None if discard else token)

    def _rollback(self, sequence: _Sequence, discard: int) -> None:
        if not 0 < discard <= sequence.n_new:
            raise BackendError(
                f"the token constraint asked to discard {discard} tokens of "
                f"{sequence.n_new} generated"
            )
        del sequence.tokens[-discard:]
        # The KV cache must hold every token but the newest, which the next step decodes.
        self.context.truncate(sequence.seq_id, len(sequence.tokens) - 1)
        sequence.sampler.restart(sequence.tokens)

    def _check_stop(self, sequence: _Sequence, token: int | None) -> None:
        """Finish ``sequence`` at EOS, at its length limit or at the model's context."""
        limit, eos = sequence.request.sampling.max_new_tokens, self.backend.model.eos_id
        reasons: list[tuple[bool, FinishReason]] = [
            (token == eos and not self.backend.ignore_eos, "eos"),
            (sequence.n_new >= limit, "length"),
            (len(sequence.tokens) >= self.backend.context_length, "length"),
            # A constraint that keeps rolling back must not spin forever.
            (sequence.sampled >= ROLLBACK_BUDGET * limit, "length"),
        ]
        reason = next((r for hit, r in reasons if hit), None)
        if reason is not None:
            sequence.finish, sequence.finished_at = reason, time.perf_counter()


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the prefix every prompt shares, leaving each its last token; 0 for one
    prompt or a prefix too short to be worth a KV copy."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length if length >= 8 else 0


def _result(sequence: _Sequence, started: float) -> Generation:
    tokens = sequence.tokens[sequence.n_prompt :]
    if sequence.finish == "eos":
        tokens.pop()
    first = sequence.first_token_at or sequence.finished_at
    return Generation(
        token_ids=tokens,
        finish_reason=sequence.finish or "length",
        prompt_tokens=sequence.n_prompt,
        prefill_seconds=first - started,
        decode_seconds=max(sequence.finished_at - first, 0.0),
    )


# --- the backend --------------------------------------------------------------------------------


class LlamaCppBackend:
    """A GGUF model in llama.cpp. Options: ``n_threads`` (default: all cores),
    ``max_parallel`` (sequences per context), ``verbose`` (llama.cpp's log on stderr),
    ``ignore_eos`` (never stop at EOS: benchmarks), ``share_prefix`` (compute a prompt prefix
    common to the batch once; on by default)."""

    name = "llamacpp"
    capabilities = Capabilities(
        batched=True, streaming=True, constraints=True, rollback=True, prefix_sharing=True
    )

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_threads: int | None = None,
        max_parallel: int = MAX_PARALLEL,
        ignore_eos: bool = False,
        share_prefix: bool = True,
    ) -> None:
        self.model = model
        self.context_length = model.context_length
        self.n_threads = n_threads or os.cpu_count() or 1
        self.max_parallel = max(1, min(max_parallel, 256))  # llama.cpp's LLAMA_MAX_SEQ
        self.ignore_eos = ignore_eos
        self.share_prefix = share_prefix
        self._context: LlamaContext | None = None

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        if self.model.ptr is None:
            raise BackendError("this backend was closed")
        for request in requests:
            self._check(request)
        results: list[Generation] = []
        for start in range(0, len(requests), self.max_parallel):
            chunk = requests[start : start + self.max_parallel]
            context = self._context_for(chunk)
            results += _Run(self, context, start).generate(chunk, on_token)
        return results

    def _check(self, request: GenerationRequest) -> None:
        ids = request.prompt_ids
        if not ids:
            raise InvalidRequestError("empty prompt: a request needs at least the BOS token")
        if len(ids) >= self.context_length:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens; the model's context is {self.context_length}",
                hint="shorten the prompt",
            )
        if min(ids) < 0 or max(ids) >= self.model.n_vocab:
            raise InvalidRequestError(f"a prompt token id is outside 0..{self.model.n_vocab - 1}")

    def _context_for(self, requests: Sequence[GenerationRequest]) -> LlamaContext:
        """A context with a stream per request, each long enough for prompt + new tokens;
        the current one is reused (emptied) when it is big enough, else replaced by one that
        covers both (contexts only grow, so alternating batch shapes do not thrash)."""
        longest = max(len(r.prompt_ids) + r.sampling.max_new_tokens for r in requests)
        need = _round_up(min(longest, self.context_length), 256)
        context = self._context
        if context is not None and context.n_seq >= len(requests) and context.n_ctx_seq >= need:
            context.clear()
            return context
        n_seq = max(len(requests), context.n_seq if context else 1)
        n_ctx_seq = max(need, context.n_ctx_seq if context else 0)
        self._close_context()
        self._context = LlamaContext(self.model, n_seq, n_ctx_seq, self.n_threads)
        return self._context

    def sequence_logits(self, token_ids: Sequence[int]) -> Any:
        """Logits after every token of ``token_ids`` (``[len, n_vocab]`` float32 numpy), for
        parity tests and quality reports."""
        import numpy as np

        request = GenerationRequest(tuple(token_ids), SamplingParams(max_new_tokens=1), 0)
        self._check(request)
        context = self._context_for([request])
        rows = []
        size = context.batch.capacity
        for begin in range(0, len(token_ids), size):
            chunk = np.array(token_ids[begin : begin + size], np.int32)
            positions = np.arange(begin, begin + len(chunk), dtype=np.int32)
            zeros = np.zeros(len(chunk), np.int32)
            context.decode(chunk, positions, zeros, np.ones(len(chunk), np.int8))
            rows += [context.logits(i).copy() for i in range(len(chunk))]
        return np.stack(rows)

    def _close_context(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None

    def close(self) -> None:
        self._close_context()
        self.model.close()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_OPTIONS = ("n_threads", "max_parallel", "ignore_eos", "share_prefix", "verbose")


def load(
    checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None, **options: Any
) -> LlamaCppBackend:
    """Load a GGUF checkpoint. ``device`` "cuda" offloads every layer (needs a CUDA build of
    llama-cpp-python); ``dtype`` must be None: the GGUF file fixes the weight types. Options:
    see LlamaCppBackend, plus ``verbose``."""
    _check_load_arguments(checkpoint, device, dtype, options)
    llama_cpp = init_llama_cpp(verbose=bool(options.pop("verbose", False)))
    if device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
        raise BackendError(
            "this llama-cpp-python build cannot use a GPU",
            hint='reinstall it with CMAKE_ARGS="-DGGML_CUDA=on", or use --device cpu',
        )
    model = LlamaModel(llama_cpp, str(checkpoint.path), -1 if device == "cuda" else 0)
    return LlamaCppBackend(model, **options)  # n_gpu_layers -1: every layer


def _check_load_arguments(
    checkpoint: Checkpoint, device: str, dtype: str | None, options: dict[str, Any]
) -> None:
    if checkpoint.format != "gguf":
        raise BackendError(
            "the llamacpp backend runs .gguf files, not Hugging Face folders",
            hint="convert the folder first (tipo convert), or use --backend torch/transformers",
        )
    if dtype is not None:
        raise InvalidRequestError(
            f"the llamacpp backend takes no dtype (got {dtype!r})",
            hint="the GGUF file decides the weight types: convert to F16, Q8_0 or Q4_K_M",
        )
    if device not in ("cpu", "cuda"):
        raise InvalidRequestError(f"the llamacpp backend runs on cpu or cuda, not {device!r}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise InvalidRequestError(
            f"unknown llamacpp option(s): {', '.join(unknown)}",
            hint=f"valid: {', '.join(_OPTIONS)}",
        )


__all__ = ["MAX_PARALLEL", "LlamaCppBackend", "load"]
