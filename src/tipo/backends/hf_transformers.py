"""The reference path: Hugging Face transformers' LlamaForCausalLM.generate, one request at a
time, as the reference library runs it. Fed our token ids, seeded per request."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..checkpoints import Checkpoint
from ..errors import BackendError, MissingDependencyError
from .base import Capabilities, Generation, GenerationRequest, TokenCallback, TokenConstraint


def _import_transformers() -> Any:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as error:
        raise MissingDependencyError.for_extra(
            error.name or "transformers", "transformers", "The transformers backend"
        ) from None
    return transformers


class _Streamer:
    """transformers' streamer protocol: put() gets the prompt first, then each new token."""

    def __init__(self, index: int, on_token: TokenCallback | None) -> None:
        self.index, self.on_token = index, on_token
        self.first_token_at: float | None = None
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.on_token is not None:
            for token in value.reshape(-1).tolist():
                self.on_token(self.index, int(token))

    def end(self) -> None:
        pass


def _constraint_processor(constraint: TokenConstraint, prompt_length: int) -> Any:
    """A logits processor that applies a TokenConstraint inside ``generate``: it tells the
    constraint each new token, then masks the next logits. transformers runs custom processors
    after the repetition penalty and before temperature and top-k/p, as the protocol wants.
    ``generate`` cannot discard tokens, so this backend declares no rollback."""
    from transformers import LogitsProcessor

    class ApplyConstraint(LogitsProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seen = prompt_length

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for token in input_ids[0, self.seen :].tolist():
                constraint.accept(int(token))
            self.seen = input_ids.shape[1]
            constraint.mask_logits(scores[0])
            return scores

    return ApplyConstraint()


class TransformersBackend:
    name = "transformers"
    capabilities = Capabilities(streaming=True, constraints=True)

    def __init__(self, model: Any, eos_id: int, context_length: int) -> None:
        self.model = model
        self.eos_id = eos_id
        self.context_length = context_length

    @classmethod
    def load(
        cls, checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None
    ) -> TransformersBackend:
        transformers = _import_transformers()
        import torch

        if checkpoint.format != "hf":
            raise BackendError(
                "the transformers backend loads Hugging Face folders, not GGUF files",
                hint="use --backend llamacpp for .gguf files",
            )
        torch_dtype = getattr(torch, dtype or "float32")
        key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            model = transformers.LlamaForCausalLM.from_pretrained(
                str(checkpoint.path), **{key: torch_dtype}
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise BackendError(f"transformers could not load {checkpoint.path}: {error}") from None
        model = model.to(device).eval().requires_grad_(False)
        config = checkpoint.config
        return cls(
            model,
            int(config.get("eos_token_id", 2)),
            int(config.get("max_position_embeddings", 2048)),
        )

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        return [self._generate_one(i, r, on_token) for i, r in enumerate(requests)]

    def _generate_one(
        self, index: int, request: GenerationRequest, on_token: TokenCallback | None
    ) -> Generation:
        import torch

        s = request.sampling
        device = self.model.device
        input_ids = torch.tensor([request.prompt_ids], device=device)
        options: dict[str, Any] = {"do_sample": not s.greedy}
        if not s.greedy:
            options.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p)
        if request.constraint is not None:
            options["logits_processor"] = [
                _constraint_processor(request.constraint, len(request.prompt_ids))
            ]
        streamer = _Streamer(index, on_token)
        devices = [device] if device.type == "cuda" else []
        start = time.perf_counter()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(request.seed)
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=s.max_new_tokens,
                repetition_penalty=s.repetition_penalty,
                eos_token_id=self.eos_id,
                pad_token_id=self.eos_id,
                streamer=streamer,
                **options,
            )
        end = time.perf_counter()
        tokens = output[0, input_ids.shape[1] :].tolist()
        finish = "eos" if tokens and tokens[-1] == self.eos_id else "length"
        if finish == "eos":
            tokens.pop()
        first = streamer.first_token_at or end
        return Generation(tokens, finish, len(request.prompt_ids), first - start, end - first)

    def close(self) -> None:
        self.model = None


def load(
    checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None
) -> TransformersBackend:
    return TransformersBackend.load(checkpoint, device=device, dtype=dtype)
