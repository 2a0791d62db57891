"""The backend interface: turn batches of prompt token ids into continuations.

Backends see token ids only: the pipeline tokenises with the training-time tokenizer, so every
backend is fed the sequences the model was trained on (protocol doc §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..sampling import SamplingParams

FinishReason = Literal["eos", "length", "stop"]
# Called with (index of the request in the batch, new token id) as tokens are sampled.
TokenCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Capabilities:
    batched: bool = False  # decodes several sequences in one forward pass
    streaming: bool = False  # calls the token callback as it goes
    constraints: bool = False  # honours GenerationRequest.constraint (decode-time control)
    rollback: bool = False  # ...including discarding tokens when TokenConstraint.accept asks
    prefix_sharing: bool = False  # computes a prompt prefix shared by the batch once


@runtime_checkable
class TokenConstraint(Protocol):
    """Decode-time control of one sequence (length targets, bans, tag vocabulary).

    Before sampling each token the backend calls ``mask_logits`` with that sequence's logits (a
    1-D float tensor over the vocabulary, after the repetition penalty, before temperature) and
    the constraint sets forbidden ids to -inf in place. After sampling it calls ``accept`` with
    the token; the return value is how many of the sequence's newest tokens (this one included)
    to discard, 0 normally: a constraint that sees a completed tag match a regex ban rolls the
    tag back and the backend samples again from the shorter sequence. ``accept`` is also told
    about forced tokens, so the constraint's state always follows the sequence."""

    def mask_logits(self, logits: Any) -> None: ...

    def accept(self, token_id: int) -> int: ...


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    seed: int
    # Decode-time control (see TokenConstraint); None means free decoding.
    constraint: TokenConstraint | None = None
    # The same for every generation of one request (its run's seed): remote backends route
    # them to one replica, so its prompt cache serves them all.
    affinity: int | None = None


@dataclass
class Generation:
    token_ids: list[int]  # the continuation, without the EOS token
    finish_reason: FinishReason
    prompt_tokens: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one step of a ``Stepper`` did. Tokens are (handle, token id) in sampling order; a
    rollback is (handle, n): the sequence's newest n tokens (reported earlier or in this step)
    are gone."""

    tokens: list[tuple[int, int]] = field(default_factory=list)
    rollbacks: list[tuple[int, int]] = field(default_factory=list)
    finished: list[tuple[int, Generation]] = field(default_factory=list)


@runtime_checkable
class Stepper(Protocol):
    """Continuous batching: sequences join and leave the batch between steps (a server's
    engine loop drives it). ``add`` queues a request and returns its handle, ``step`` advances
    every sequence once, ``cancel`` ends one now (None if it is unknown or finished)."""

    def add(self, request: GenerationRequest) -> int: ...

    def step(self) -> StepResult: ...

    def cancel(self, handle: int) -> Generation | None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities
    context_length: int  # the model's maximum sequence length (prompt + continuation)

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        """One Generation per request, in order."""
        ...

    def close(self) -> None:
        """Free the model's memory; the backend is unusable afterwards."""
        ...

    # Optional: ``stepper() -> Stepper`` where the backend batches across requests as they
    # come (continuous batching); a server drives other backends one round at a time.


__all__ = [
    "Backend",
    "Capabilities",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "StepResult",
    "Stepper",
    "TokenCallback",
    "TokenConstraint",
]
