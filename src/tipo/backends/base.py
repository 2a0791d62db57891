"""The backend interface: turn batches of prompt token ids into continuations.

Backends see token ids only: the pipeline tokenises with the training-time tokenizer, so every
backend is fed the sequences the model was trained on (protocol doc §3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..sampling import SamplingParams

FinishReason = Literal["eos", "length", "stop"]
# Called with (index of the request in the batch, new token id) as tokens are sampled.
TokenCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Capabilities:
    batched: bool = False  # decodes several sequences in one forward pass
    streaming: bool = False  # calls the token callback as it goes
    constraints: bool = False  # honours GenerationRequest.constraint (decode-time control)
    prefix_sharing: bool = False  # computes a prompt prefix shared by the batch once


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    seed: int
    # Optional decode-time constraint object (see tipo.constraints); None means free decoding.
    constraint: object | None = None


@dataclass
class Generation:
    token_ids: list[int]  # the continuation, without the EOS token
    finish_reason: FinishReason
    prompt_tokens: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


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


__all__ = [
    "Backend",
    "Capabilities",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "TokenCallback",
]
