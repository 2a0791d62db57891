"""A scripted backend for wiring tests of the pipeline, CLI and server (no model, no torch).

A script maps the model-facing prompt to the continuation text; the default script is a toy
"model" that answers the field the prompt asks for (more tags, a caption) from a small word list,
chosen by the request's seed. Continuations are emitted as SentencePiece byte tokens
(``<0xNN>``), which decode to exactly the scripted text whatever it contains.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..checkpoints import Checkpoint
from ..tokenizer import TipoTokenizer
from .base import Capabilities, Generation, GenerationRequest, TokenCallback

Script = Callable[[str, GenerationRequest], str]

TOY_TAGS = [
    "scenery",
    "blue sky",
    "cloud",
    "tree",
    "grass",
    "flower",
    "smile",
    "long hair",
    "hat",
    "outdoors",
    "day",
    "sunlight",
    "river",
    "mountain",
    "looking at viewer",
    "dress",
    "bird",
    "wind",
    "petals",
    "field",
]
TOY_SENTENCES = (
    "A girl stands on a hill.",
    "The sky is clear and blue.",
    "Wind moves the grass.",
    "Flowers bloom along the path.",
    "Soft light falls on the scene.",
)


def toy_script(prompt: str, request: GenerationRequest) -> str:
    """Continue the field the prompt ends in, or write the one it names (a new ``tag`` line
    when the prompt ends at its target line); tags are followed by a caption when the task
    ends with one, as a real model writes the task's fields in order."""
    rng = random.Random(request.seed)
    last = prompt.rsplit("\n", 1)[-1]
    key = last.split(":", 1)[0]
    tags = ", ".join(rng.sample(TOY_TAGS, 8))
    caption = " ".join(rng.sample(TOY_SENTENCES, 3))
    then_caption = f"\nlong: {caption}" if "_to_long|>" in prompt else ""
    if key == "target":
        return f"\ntag: {tags}{then_caption}"
    if key == "tag":
        return (f" {tags}" if last.endswith(":") else f", {tags}") + then_caption
    return f" {caption}"


class ScriptedBackend:
    name = "fake"
    capabilities = Capabilities(batched=True, streaming=True)

    def __init__(
        self, tokenizer: TipoTokenizer, script: Script = toy_script, context_length: int = 2048
    ) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.context_length = context_length
        self.prompts: list[str] = []
        self._byte_ids = [tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)]

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        return [self._one(i, r, on_token) for i, r in enumerate(requests)]

    def _one(
        self, index: int, request: GenerationRequest, on_token: TokenCallback | None
    ) -> Generation:
        start = time.perf_counter()
        prompt = self.tokenizer.decode(request.prompt_ids).removeprefix(" ")
        self.prompts.append(prompt)
        ids = [self._byte_ids[b] for b in self.script(prompt, request).encode("utf-8")]
        limit = request.sampling.max_new_tokens
        finish = "eos" if len(ids) < limit else "length"
        ids = ids[:limit]
        if on_token is not None:
            for token in ids:
                on_token(index, token)
        return Generation(ids, finish, len(request.prompt_ids), 0.0, time.perf_counter() - start)

    def close(self) -> None:
        pass


def load(
    checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None, **options: Any
) -> ScriptedBackend:
    """The fake backend for a checkpoint folder: only its tokenizer and context are used."""
    context = int(checkpoint.config.get("max_position_embeddings", 2048))
    return ScriptedBackend(checkpoint.load_tokenizer(), context_length=context, **options)


__all__ = ["TOY_TAGS", "ScriptedBackend", "toy_script"]
