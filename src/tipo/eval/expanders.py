"""Prompt expanders behind one interface, so every one runs on the same prompts.

An expander turns each :class:`EvalPrompt` into the prompt the image model gets. ``settings``
is everything that changes its output (model, format, sampling); with the prompt and its seed
it keys the on-disk cache (cache.py), so a rerun only expands what is new. Expanders are built
from a config table by :func:`make_expander` (``kind`` plus that kind's options); baselines.py
holds the other projects' expanders (reference library, Promptist, MagicPrompt, a chat model).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import InvalidRequestError
from .prompts import EvalPrompt


class Expander(Protocol):
    """Expands prompts; ``expand`` returns one output per input, in order."""

    name: str

    def settings(self) -> dict[str, Any]:
        """JSON-able options that change the output (the cache key with each prompt)."""
        ...

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]: ...

    def close(self) -> None: ...


class OriginalPrompt:
    """The prompt as the user wrote it: the baseline every expander is compared with."""

    def __init__(self, name: str = "original") -> None:
        self.name = name

    def settings(self) -> dict[str, Any]:
        return {"kind": "original"}

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        return [prompt.text for prompt in prompts]

    def close(self) -> None:
        pass


class TipoExpander:
    """Our TIPO: any checkpoint, format and backend ``TIPO.load`` takes (a fine-tuned export
    folder, a GGUF file, the noise backend, a remote server). ``options`` are request options
    (``tag_length``, ``nl_length``, ``template``, sampling ...), the same for every prompt;
    each prompt runs with its own seed. Tags-only prompts expand tags then write a caption;
    caption-only prompts run in the paper's NL-only mode (tags from the caption, a new caption)."""

    def __init__(
        self,
        name: str = "tipo",
        *,
        model: str | None = None,
        backend: str = "auto",
        dtype: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        from ..request import ExpandRequest

        self.name = name
        self._load = {"model": model, "backend": backend, "dtype": dtype, "device": device}
        self.batch_size = max(1, int(batch_size))
        self.options = dict(options or {})
        ExpandRequest.create(**self.options)  # bad options fail now, not after loading
        self._tipo: Any = None

    def settings(self) -> dict[str, Any]:
        load = {k: v for k, v in self._load.items() if k != "device"}
        weights = checkpoint_fingerprint(self._load["model"])
        return {"kind": "tipo", **load, "weights": weights, "options": self.options}

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        from ..pipeline import TIPO
        from ..request import ExpandRequest

        if self._tipo is None:
            self._tipo = (
                _noise_tipo(self._load["model"])
                if self._load["backend"] == "noise"
                else TIPO.load(**self._load)
            )
        requests = [
            ExpandRequest.create(
                tags=", ".join(p.tags), nl=p.caption, seed=p.seed % 2**63, **self.options
            )
            for p in prompts
        ]
        outputs: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            results = self._tipo.run_many(requests[start : start + self.batch_size])
            for result in results:
                if isinstance(result, Exception):
                    raise result
                outputs.append(result.prompt)
        return outputs

    def close(self) -> None:
        if self._tipo is not None:
            self._tipo.close()
            self._tipo = None


def checkpoint_fingerprint(model: str | None) -> str | None:
    """For a local checkpoint (folder or file): the names, sizes and modification times of its
    files, hashed, so a model retrained into the same folder is not served from the cache of
    the old one. None for a Hub id (its name pins it) or no model."""
    if not model or not Path(model).exists():
        return None
    root = Path(model)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    listing = [(str(p.relative_to(root) if root.is_dir() else p.name), p.stat().st_size,
                p.stat().st_mtime_ns) for p in files]  # fmt: skip
    return hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def _noise_tipo(model: str | None) -> Any:
    """TIPO on the format-aware noise model (backends/noise.py): the pipeline, its control and
    its formatting at no model cost; ``model`` names the tokenizer (a checkpoint folder or a
    ``tokenizer.model`` file). For testing the evaluation itself, not for results."""
    from ..backends.noise import NoiseBackend
    from ..checkpoints import resolve
    from ..pipeline import TIPO
    from ..tokenizer import TipoTokenizer

    if model and model.endswith(".model"):
        tokenizer = TipoTokenizer.from_sentencepiece(model)
    else:
        tokenizer = resolve(model, offline=True).load_tokenizer()
    return TIPO(NoiseBackend.format_aware(tokenizer), tokenizer)


# kind -> (module of this package, class): a baseline's module is imported only when used.
EXPANDERS: dict[str, tuple[str, str]] = {
    "original": ("expanders", "OriginalPrompt"),
    "tipo": ("expanders", "TipoExpander"),
    "tipo-kgen": ("baselines", "KgenExpander"),
    "promptist": ("baselines", "PromptistExpander"),
    "magicprompt": ("baselines", "MagicPromptExpander"),
    "openai": ("chat", "ChatExpander"),
}
EXPANDER_KINDS: tuple[str, ...] = tuple(EXPANDERS)


def make_expander(name: str, table: Mapping[str, Any]) -> Expander:
    """An expander from its config table: ``kind`` (one of EXPANDER_KINDS) and its options."""
    options = dict(table)
    kind = options.pop("kind", name)
    if kind not in EXPANDERS:
        raise InvalidRequestError(
            f"expander {name!r}: unknown kind {kind!r}", hint=f"use one of {EXPANDER_KINDS}"
        )
    module, attribute = EXPANDERS[kind]
    factory = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    try:
        return factory(name, **options)
    except TypeError as error:
        raise InvalidRequestError(f"expander {name!r}: {error}") from None


__all__ = [
    "EXPANDERS",
    "EXPANDER_KINDS",
    "Expander",
    "OriginalPrompt",
    "TipoExpander",
    "checkpoint_fingerprint",
    "make_expander",
]
