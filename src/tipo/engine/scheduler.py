"""Continuous batching: sequences join and leave the decode batch between steps.

``Scheduler.add(request) -> handle`` queues a request; ``step()`` admits queued requests (copies
their longest cached prompt prefix, prefills the rest), runs one batched decode step over all
active sequences and returns what happened; ``cancel(handle)`` ends a sequence early. A server
calls ``step()`` in a loop; ``Engine.generate`` (engine.py) drives it until its requests finish.

Per sequence: ``tokens`` = prompt + generated ids. The cache holds the keys/values of all but the
last one, which is the next step's input (so a prompt is prefilled up to its second-to-last
token, and its last token joins the batched decode step that samples the first new token).
Rolling back n tokens just shortens ``tokens``: the cache positions beyond are stale and are
overwritten (or masked) by later steps.

Jump-forward: when a sequence's constraint leaves exactly one allowed token (``forced_token``:
a field key, the rest of a tag whose prefix is unique in the vocabulary), the token is appended
at once instead of being sampled, still drawing the random number sampling would have used, so
the output is the same as token by token. A lone sequence then computes the whole forced run
and the next token in one forward pass; in a batch, a row catches up one token per step without
sampling, never holding the others back.

Not thread-safe: one thread (a server's engine loop) owns the scheduler.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor

from ..backends.base import FinishReason, Generation, GenerationRequest, StepResult
from ..errors import InvalidRequestError
from .kv_cache import KVCache, common_prefix
from .model import Transformer, decode_pass, prefill_pass
from .sampler import SamplingBatch, apply_repetition_penalty, choose

# A constraint may roll back forever (e.g. greedy decoding re-picking a banned tag); after this
# many rollbacks beyond max_new_tokens the sequence ends with finish reason "length".
ROLLBACK_ALLOWANCE = 64


@dataclass
class Sequence:
    handle: int
    request: GenerationRequest
    tokens: list[int]
    generator: torch.Generator
    added_at: float
    first_token_at: float = 0.0
    rollbacks: int = 0
    cached_prefix: int = 0  # prompt tokens whose keys/values came from the prefix cache
    computed: int = 0  # positions whose keys/values this row's cache holds
    forced: int = 0  # tokens appended by jump-forward, without sampling

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def cached(self) -> int:
        """Positions of this sequence held in its cache row: all but the last token, except
        while jump-forward tokens wait to be computed (or after a rollback, fewer)."""
        return min(self.computed, len(self.tokens) - 1)

    @property
    def pending(self) -> int:
        """Tokens not yet in the cache, the next step's input included (1 normally)."""
        return len(self.tokens) - self.cached


class Scheduler:
    def __init__(self, model: Transformer, *, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise InvalidRequestError("max_batch must be >= 1")
        self.model, self.max_batch = model, max_batch
        self.ignore_eos = False  # benchmarks: decode exactly max_new_tokens
        self.jump_forward = True  # append forced tokens without sampling (same output)
        self.forward_passes = 0  # model calls, prefill and decode (the bench reports them)
        self.config = model.config
        self.cache = KVCache(model.config, model.kv_dtype, model.device)
        self.active: list[Sequence] = []  # active[i] lives in cache row i
        self.waiting: deque[Sequence] = deque()
        # seen[i, v]: token v occurs in row i's prompt or output (repetition penalty).
        self.seen = torch.zeros((0, self.config.vocab_size), dtype=torch.bool)
        self._next_handle = 0
        self._sampling: SamplingBatch | None = None  # rebuilt when the batch changes
        self._shared: int | None = None  # prefix all active rows cache alike (None: recompute)

    # -- public API -------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> int:
        """Queue a request; it joins the batch at the next ``step()``. Returns its handle."""
        limit = self.config.max_position_embeddings
        if not request.prompt_ids:
            raise InvalidRequestError("a generation request needs at least one prompt token")
        if len(request.prompt_ids) >= limit:
            raise InvalidRequestError(
                f"the prompt has {len(request.prompt_ids)} tokens; the model reads at most {limit}",
                hint="shorten the prompt (fewer tags or a shorter caption)",
            )
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        generator = torch.Generator().manual_seed(request.seed % 2**64)
        sequence = Sequence(
            handle, request, list(request.prompt_ids), generator, time.perf_counter()
        )
        self.waiting.append(sequence)
        return handle

    @torch.inference_mode()  # every cache update runs in inference mode (its tensors are)
    def cancel(self, handle: int) -> Generation | None:
        """End a queued or active sequence now (finish reason "stop"); None if unknown."""
        for sequence in self.waiting:
            if sequence.handle == handle:
                self.waiting.remove(sequence)
                return self._generation(sequence, "stop")
        for row, sequence in enumerate(self.active):
            if sequence.handle == handle:
                return self._finish(row, "stop")
        return None

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    @torch.inference_mode()
    def step(self) -> StepResult:
        """Admit what fits, then decode one token for every active sequence."""
        result = StepResult()
        self._reserve()
        while self.waiting and len(self.active) < self.max_batch:
            self._admit(self.waiting.popleft())
        if not self.active:
            return result
        tokens = self._decode()
        now = time.perf_counter()
        finished: list[tuple[int, FinishReason]] = []
        for row, (sequence, token) in enumerate(zip(self.active, tokens, strict=True)):
            if token is None:  # catching up on jump-forward tokens: nothing sampled
                continue
            reason = self._accept(row, sequence, token, now, result)
            if reason is None and self.jump_forward:
                reason = self._jump_forward(row, sequence, now, result)
            if reason is not None:
                finished.append((row, reason))
        for row, reason in reversed(finished):  # from the back: rows move down on removal
            result.finished.append((self.active[row].handle, self._finish(row, reason)))
        result.finished.reverse()
        return result

    # -- admission: prefix cache + prefill ------------------------------------------------------

    def _reserve(self) -> None:
        """Grow the cache once for everything about to be admitted (growing it row by row
        would copy the whole cache once per new sequence)."""
        count = min(len(self.waiting), self.max_batch - len(self.active))
        if count > 0:
            joining = list(islice(self.waiting, count))
            length = max(len(s.tokens) + s.request.sampling.max_new_tokens for s in joining)
            limit = self.config.max_position_embeddings
            self.cache.ensure(len(self.active) + count, min(length, limit))
            self._grow_seen(self.cache.rows)

    def _admit(self, sequence: Sequence) -> None:
        row = len(self.active)
        prompt = sequence.tokens
        budget = len(prompt) + sequence.request.sampling.max_new_tokens
        self.cache.ensure(row + 1, min(budget, self.config.max_position_embeddings))
        self._grow_seen(self.cache.rows)
        for index, other in enumerate(self.active):  # active rows hold all but their last token
            self.cache.held[index] = other.tokens[: other.cached]
        # The last prompt token is computed in the decode step, so reuse at most len - 1.
        source, reused = self.cache.best_prefix(prompt, len(prompt) - 1, prefer=row)
        self.cache.copy(source, row, reused)
        if reused < len(prompt) - 1:
            rest = torch.tensor([prompt[reused:-1]], device=self.model.device)
            self.model(rest, prefill_pass(row, reused, rest.shape[1], self.model.device),
                       self.cache.tensors, logits="none")  # fmt: skip
            self.forward_passes += 1
        sequence.cached_prefix, sequence.computed = reused, len(prompt) - 1
        self.cache.held[row] = []  # active: tracked through the sequence itself
        self._reset_seen(row, prompt)
        self.active.append(sequence)
        self._sampling = self._shared = None

    def _grow_seen(self, rows: int) -> None:
        if self.seen.shape[0] < rows:
            grown = torch.zeros((rows, self.config.vocab_size), dtype=torch.bool)
            grown[: self.seen.shape[0]] = self.seen
            self.seen = grown.to(self.model.device)

    def _reset_seen(self, row: int, tokens: list[int]) -> None:
        self.seen[row] = False
        self.seen[row, torch.tensor(tokens, device=self.seen.device)] = True

    # -- one decode step ------------------------------------------------------------------------

    def _decode(self) -> list[int | None]:
        """Run the batch forward and choose the next token of every row whose input is its last
        token; a row still catching up on jump-forward tokens gets None."""
        device, batch = self.model.device, len(self.active)
        logits = self._forward()
        sampled = [s.computed == len(s.tokens) for s in self.active]  # the input was the last
        if self._sampling is None:
            params = [s.request.sampling for s in self.active]
            self._sampling = SamplingBatch.build(params, self.config.vocab_size, device)
        sampling = self._sampling
        penalised = any(p.repetition_penalty != 1.0 for p in sampling.params)
        if penalised:
            logits = apply_repetition_penalty(logits, self.seen[:batch], sampling.penalty)
        for row, sequence in enumerate(self.active):
            if sampled[row] and sequence.request.constraint is not None:
                sequence.request.constraint.mask_logits(logits[row])
        chosen = choose(logits, sampling, self._uniforms(sampling, sampled)).tolist()
        # Only rows with a penalty read ``seen``, and they update it whenever they decode.
        if penalised:
            rows = [row for row in range(batch) if sampled[row]]
            self.seen[rows, [chosen[row] for row in rows]] = True
        return [token if sampled[row] else None for row, token in enumerate(chosen)]

    def _forward(self) -> Tensor:
        """Logits [B, V] (fp32) after each row's next uncomputed token. A lone row computes all
        its pending tokens at once (one pass for a jump-forward run and the token after it);
        in a batch every row advances one position. Updates each row's ``computed``."""
        device = self.model.device
        self.forward_passes += 1
        if len(self.active) == 1 and self.active[0].pending > 1:
            sequence = self.active[0]
            start = sequence.cached
            run = torch.tensor([sequence.tokens[start:]], device=device)
            p = prefill_pass(0, start, run.shape[1], device)
            sequence.computed = len(sequence.tokens)
        else:
            starts = [s.cached for s in self.active]
            run = torch.tensor([[s.tokens[i]] for s, i in zip(self.active, starts, strict=True)],
                               device=device)  # fmt: skip
            p = decode_pass(starts, device, self._shared_prefix(), self.model.mask_dtype)
            for sequence, start in zip(self.active, starts, strict=True):
                sequence.computed = start + 1
        logits = self.model(run, p, self.cache.tensors, logits="last")
        assert logits is not None
        return logits.float()

    def _shared_prefix(self) -> int:
        """Cached positions every active row holds alike: the tokens' common prefix, computed
        when the batch changes (rows only add positions in between, so it stays valid)."""
        if self._shared is None:
            first = self.active[0].tokens
            shared = min(s.cached for s in self.active)
            for sequence in self.active[1:]:
                shared = common_prefix(first, sequence.tokens, shared)
            self._shared = shared
        return self._shared

    def _uniforms(self, sampling: SamplingBatch, sampled: list[bool]) -> Tensor:
        """One uniform draw per sampled row, from that sequence's own generator (greedy rows and
        rows catching up draw nothing)."""
        rows = zip(self.active, sampling.greedy, sampled, strict=True)
        draws = [torch.rand(1, generator=s.generator) if take and not greedy else torch.zeros(1)
                 for s, greedy, take in rows]  # fmt: skip
        return torch.cat(draws).to(self.model.device)

    def _jump_forward(
        self, row: int, sequence: Sequence, now: float, result: StepResult
    ) -> FinishReason | None:
        """Append the tokens the constraint forces after the one just accepted, each as
        sampling would have: its random draw taken, its ``seen`` bit set."""
        constraint = sequence.request.constraint
        forced_token = getattr(constraint, "forced_token", None)
        if forced_token is None:
            return None
        greedy = sequence.request.sampling.greedy
        while (token := forced_token()) is not None:
            if not greedy:
                torch.rand(1, generator=sequence.generator)
            self.seen[row, token] = True
            sequence.forced += 1
            reason = self._accept(row, sequence, token, now, result)
            if reason is not None:
                return reason
        return None

    def _accept(
        self, row: int, sequence: Sequence, token: int, now: float, result: StepResult
    ) -> FinishReason | None:
        """Record a sampled token; the finish reason if the sequence is done."""
        sequence.tokens.append(token)
        if not sequence.first_token_at:
            sequence.first_token_at = now
        result.tokens.append((sequence.handle, token))
        constraint = sequence.request.constraint
        discard = constraint.accept(token) if constraint is not None else 0
        if discard > 0:
            discard = min(discard, len(sequence.generated))
            del sequence.tokens[len(sequence.tokens) - discard :]
            sequence.computed = min(sequence.computed, len(sequence.tokens))
            sequence.rollbacks += 1
            self._shared = None
            self._reset_seen(row, sequence.tokens)
            result.rollbacks.append((sequence.handle, discard))
        elif token == self.config.eos_token_id and not self.ignore_eos:
            return "eos"
        sampling = sequence.request.sampling
        steps_left = sampling.max_new_tokens + ROLLBACK_ALLOWANCE - sequence.rollbacks
        if len(sequence.generated) >= sampling.max_new_tokens or steps_left <= 0:
            return "length"
        if len(sequence.tokens) >= self.config.max_position_embeddings:
            return "length"
        return None

    # -- leaving the batch ----------------------------------------------------------------------

    def _finish(self, row: int, reason: FinishReason) -> Generation:
        """Remove row ``row`` from the batch; the last active row moves into its place."""
        sequence = self.active[row]
        last = len(self.active) - 1
        held = sequence.tokens[: sequence.cached]
        if row != last:
            moved = self.active[last]
            self.cache.held[last] = moved.tokens[: moved.cached]
            if self._prompt_cached_elsewhere(sequence, row):
                self.cache.copy(last, row, moved.cached)  # drop this row's cache entry
            else:  # keep it as a prefix-cache entry in the freed row
                self.cache.swap(row, last, len(held), moved.cached)
                self.cache.held[last] = held
            self.seen[row] = self.seen[last]
            self.active[row] = moved
        else:
            self.cache.held[row] = held
        self.active.pop()
        self._sampling = self._shared = None
        return self._generation(sequence, reason)

    def _prompt_cached_elsewhere(self, sequence: Sequence, row: int) -> bool:
        prompt = sequence.tokens[: sequence.prompt_len - 1]
        others = [s.tokens for i, s in enumerate(self.active) if i != row]
        others += [h for i, h in enumerate(self.cache.held) if i >= len(self.active)]
        return any(common_prefix(o, prompt, len(prompt)) == len(prompt) for o in others)

    def _generation(self, sequence: Sequence, reason: FinishReason) -> Generation:
        tokens = sequence.generated
        if reason == "eos":
            tokens = tokens[:-1]
        end = time.perf_counter()
        first = sequence.first_token_at or end
        return Generation(
            tokens,
            reason,
            sequence.prompt_len,
            prefill_seconds=first - sequence.added_at,
            decode_seconds=end - first,
            extra={
                "cached_prompt_tokens": float(sequence.cached_prefix),
                "rollbacks": float(sequence.rollbacks),
                "forced_tokens": float(sequence.forced),
            },
        )


__all__ = ["ROLLBACK_ALLOWANCE", "Scheduler", "Sequence", "StepResult"]
