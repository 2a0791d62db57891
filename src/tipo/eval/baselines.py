"""The other projects the paper compares TIPO with (docs/tipo-evaluation.md §4.3), as expanders.

* :class:`PromptistExpander` — microsoft/Promptist (GPT-2, SFT + RL): ``"<prompt> Rephrase:"``,
  8-beam search, as its model card runs it.
* :class:`MagicPromptExpander` — Gustavosta/MagicPrompt-Stable-Diffusion (GPT-2 on Lexica
  prompts): the prompt is the prefix of a sampled continuation, as its demo space runs it.
* the GPT-4o-mini baseline is chat.py's :class:`~tipo.eval.chat.ChatExpander`.
* :class:`KgenExpander` — TIPO through the reference library (tipo-kgen), for an A/B of the two
  implementations on the same checkpoint.

Models load on the first ``expand``; heavy libraries are imported there too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidRequestError, MissingDependencyError, ModelNotFoundError
from .expanders import checkpoint_fingerprint
from .prompts import EvalPrompt

# --- Hugging Face causal LMs (Promptist, MagicPrompt) -------------------------------------------


def _load_causal_lm(model: str, tokenizer: str | None, device: str) -> tuple[Any, Any, str]:
    """(model in eval mode on ``device``, tokenizer that pads on the left with EOS, device)."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise MissingDependencyError.for_extra(
            error.name or "transformers", "eval", "The Promptist and MagicPrompt baselines"
        ) from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    hint = f"give a local folder, or download it first: huggingface-cli download {model}"
    try:
        lm = transformers.AutoModelForCausalLM.from_pretrained(model)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load the model {model!r}: {error}", hint) from None
    source = tokenizer or model
    hint = 'set tokenizer = "gpt2" (what the model cards use) or a folder that has one'
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"no tokenizer in {source!r}: {error}", hint) from None
    # transformers 5 builds an empty tokenizer from a folder without tokenizer files.
    if not tok("a").input_ids:
        raise ModelNotFoundError(f"no tokenizer files in {source!r}", hint)
    # Batches are padded on the left so every row's continuation starts at the same column.
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    return lm.eval().requires_grad_(False).to(device), tok, device


def _encode(tokenizer: Any, texts: list[str], device: str) -> Any:
    return tokenizer(texts, return_tensors="pt", padding=True).to(device)


def check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise InvalidRequestError(f"{key} must be > 0, got {value!r}")


class PromptistExpander:
    """microsoft/Promptist as its model card runs it: ``"<prompt> Rephrase:"``, beam search
    (8 beams, 75 new tokens, length penalty -1), the best beam's continuation, batches padded
    on the left with EOS. The card loads the ``gpt2`` tokenizer; the default here is the
    model folder's own (``tokenizer`` overrides)."""

    def __init__(
        self, name: str, *, model: str = "microsoft/Promptist", tokenizer: str | None = None,
        num_beams: int = 8, max_new_tokens: int = 75, length_penalty: float = -1.0,
        device: str = "auto", batch_size: int = 8,
    ) -> None:  # fmt: skip
        check_positive(num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.num_beams, self.max_new_tokens = int(num_beams), int(max_new_tokens)
        self.length_penalty, self.batch_size = float(length_penalty), int(batch_size)
        self._loaded: tuple[Any, Any, str] | None = None

    def settings(self) -> dict[str, Any]:
        return {"kind": "promptist", "model": self.model,
                "weights": checkpoint_fingerprint(self.model), "tokenizer": self.tokenizer,
                "num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                "length_penalty": self.length_penalty}  # fmt: skip

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        import torch

        if not prompts:
            return []
        if self._loaded is None:
            self._loaded = _load_causal_lm(self.model, self.tokenizer, self.device)
        lm, tok, device = self._loaded
        texts = [f"{p.text.strip()} Rephrase:" for p in prompts]
        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = _encode(tok, texts[start : start + self.batch_size], device)
            with torch.inference_mode():
                ids = lm.generate(
                    **batch, do_sample=False, num_beams=self.num_beams,
                    max_new_tokens=self.max_new_tokens, length_penalty=self.length_penalty,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                )  # fmt: skip
            new = ids[:, batch["input_ids"].shape[1] :]  # (batch, new tokens)
            outputs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return outputs

    def close(self) -> None:
        self._loaded = None


# The demo space drops words with a dot inside (site names such as "artstation.com").
_DOTTED = re.compile(r"\S+\.\S+")


def clean_continuation(text: str) -> str:
    """MagicPrompt's continuation as part of one prompt: its first line, without dotted words
    or angle brackets (as the demo space cleans it) and trailing separators, whitespace runs
    as one space."""
    line = text.split("\n", 1)[0]
    line = _DOTTED.sub("", line).replace("<", "").replace(">", "")
    return re.sub(r"\s+", " ", line).rstrip(" ,;:-")


class MagicPromptExpander:
    """Gustavosta/MagicPrompt-Stable-Diffusion as its demo space runs it: the prompt is the
    prefix of a sampled continuation. The space runs the text-generation pipeline with GPT-2's
    sampling defaults (temperature 1, top-k 50, no repetition penalty) and a random budget of
    60-90 tokens (75: its middle). Each row samples with a generator seeded by its prompt's
    seed, so an output never depends on the batch. Output: the input, then the continuation's
    cleaned first line."""

    def __init__(
        self, name: str, *, model: str = "Gustavosta/MagicPrompt-Stable-Diffusion",
        max_new_tokens: int = 75, temperature: float = 1.0, top_k: int = 50,
        repetition_penalty: float = 1.0, device: str = "auto", batch_size: int = 8,
    ) -> None:  # fmt: skip
        check_positive(max_new_tokens=max_new_tokens, temperature=temperature,
                        repetition_penalty=repetition_penalty, batch_size=batch_size)  # fmt: skip
        self.name, self.model, self.device = name, model, device
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.top_k, self.repetition_penalty = max(0, int(top_k)), float(repetition_penalty)
        self.batch_size = int(batch_size)
        self._loaded: tuple[Any, Any, str] | None = None

    def settings(self) -> dict[str, Any]:
        return {"kind": "magicprompt", "model": self.model,
                "weights": checkpoint_fingerprint(self.model),
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_k": self.top_k,
                "repetition_penalty": self.repetition_penalty}  # fmt: skip

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        if not prompts:
            return []
        if self._loaded is None:
            self._loaded = _load_causal_lm(self.model, None, self.device)
        lm, tok, device = self._loaded
        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = prompts[start : start + self.batch_size]
            texts = [p.text.strip() for p in rows]
            batch = _encode(tok, texts, device)
            pads = (batch["attention_mask"] == 0).sum(dim=1).tolist()
            sampler = _row_sampler([p.seed for p in rows], pads, self.settings(), device)
            # Greedy over the sampler's one-hot scores: the sampler makes every choice.
            with torch.inference_mode():
                ids = lm.generate(
                    **batch, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                    logits_processor=LogitsProcessorList([sampler]),
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                )  # fmt: skip
            new = tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs += [t + clean_continuation(c) for t, c in zip(texts, new, strict=True)]
        return outputs

    def close(self) -> None:
        self._loaded = None


def _row_sampler(seeds: list[int], pads: list[int], options: dict[str, Any], device: str) -> Any:
    """A logits processor that picks each row's next token with that row's own generator
    (repetition penalty over the row's own tokens, temperature, top-k, sampling) and leaves
    only that token possible. transformers' own repetition penalty would also count a row's
    left padding (EOS), which depends on its batch mates."""
    import torch
    from transformers import LogitsProcessor

    penalty, top_k = options["repetition_penalty"], options["top_k"]
    generators = [torch.Generator(device=device).manual_seed(s % 2**64) for s in seeds]

    class SampleEachRow(LogitsProcessor):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            logits = scores.float()  # (batch, vocab)
            if penalty != 1.0:
                for row, pad in enumerate(pads):
                    seen = input_ids[row, pad:]
                    got = logits[row, seen]
                    logits[row, seen] = torch.where(got < 0, got * penalty, got / penalty)
            logits = logits / options["temperature"]
            if 0 < top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            chosen = [
                torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)
            ]
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter_(1, torch.stack(chosen), 0.0)

    return SampleEachRow()


# --- the reference library (tipo-kgen) ----------------------------------------------------------

# The reference extension's node defaults (z-tipo-extension nodes/tipo.py); a 1024x1024 image.
KGEN_DEFAULTS: dict[str, Any] = {
    "tag_length": "long", "nl_length": "long", "temperature": 0.5, "top_p": 0.95,
    "min_p": 0.05, "top_k": 80, "width": 1024, "height": 1024, "format": None, "ban_tags": "",
    "max_new_tokens": 512, "max_retry": 10,
}  # fmt: skip
# kgen keeps one model in module globals: the (model, device) it holds and the open
# expanders using it (weakly: an expander dropped without close() frees its hold).
_kgen_holders: dict[str, Any] = {"loaded": None, "users": weakref.WeakSet()}


def _import_kgen() -> tuple[Any, Any, Any]:
    """kgen's (formatter, models, executor.tipo), its log sent to stderr: kgen logs to stdout,
    where the CLI writes results."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its import-time warnings
            from kgen import formatter, models
            from kgen.executor import tipo
            from kgen.logging import logger
    except ImportError:
        raise MissingDependencyError(
            "the tipo-kgen expander needs the reference library 'kgen', which is not installed",
            hint="pip install tipo-kgen",
        ) from None
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(_Stderr())
    return formatter, models, tipo


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (the CLI or pytest may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class KgenExpander:
    """TIPO through tipo-kgen 0.3.1, as the reference extension's TIPO node calls it: tags by
    category, ``parse_tipo_request``, ``tipo_runner`` with the node's sampling defaults and the
    prompt's seed, ``apply_format`` with the node's default format, and parentheses in tags
    escaped as the node does. ``options`` override :data:`KGEN_DEFAULTS` (``max_new_tokens``
    and ``max_retry`` are kgen's own defaults). kgen holds one model in module globals, so
    KgenExpanders of different models (or devices) cannot be open at once: the second raises
    until the first is closed. kgen also reseeds Python's ``random`` and torch's global
    generator for every prompt."""

    def __init__(
        self, name: str, *, model: str, device: str = "cpu",
        options: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        unknown = set(options or {}) - set(KGEN_DEFAULTS)
        if unknown:
            raise InvalidRequestError(
                f"expander {name!r}: unknown kgen options {sorted(unknown)}",
                hint=f"use some of {sorted(KGEN_DEFAULTS)}",
            )
        from ..hosts.reference import LENGTHS, REFERENCE_FORMAT

        self.name, self.model, self.device = name, str(model), device
        self.options = {**KGEN_DEFAULTS, **(options or {})}
        self.options["format"] = self.options["format"] or REFERENCE_FORMAT
        for key in ("tag_length", "nl_length"):
            if self.options[key] not in LENGTHS:
                raise InvalidRequestError(f"expander {name!r}: {key} must be one of {LENGTHS}")
        check_positive(width=self.options["width"], height=self.options["height"])
        self._kgen: Any = None

    def settings(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            kgen = version("tipo-kgen")
        except PackageNotFoundError:
            kgen = None  # expand() says what to install
        weights = checkpoint_fingerprint(self.model)
        return {"kind": "tipo-kgen", "model": self.model, "weights": weights, "kgen": kgen,
                "options": self.options}  # fmt: skip

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        if not prompts:
            return []
        kgen = self._kgen or self._load()
        return [self._expand_one(kgen, prompt) for prompt in prompts]

    def _load(self) -> Any:
        formatter, models, tipo = _import_kgen()
        key = (self.model, self.device)
        if _kgen_holders["users"] and _kgen_holders["loaded"] != key:
            raise InvalidRequestError(
                f"expander {self.name!r}: kgen holds one model at a time and "
                f"{_kgen_holders['loaded'][0]!r} is in use",
                hint="close the other tipo-kgen expander first, or evaluate them in two runs",
            )
        if _kgen_holders["loaded"] != key or models.text_model is None:
            try:
                models.load_model(self.model, device=self.device)
            except OSError as error:
                raise ModelNotFoundError(
                    f"kgen cannot load {self.model!r}: {error}",
                    hint="give a TIPO checkpoint folder (config.json, weights, tokenizer)",
                ) from None
            _kgen_holders["loaded"] = key
        _kgen_holders["users"].add(self)
        self._kgen = (formatter, tipo)
        return self._kgen

    def _expand_one(self, kgen: Any, prompt: EvalPrompt) -> str:
        formatter, tipo = kgen
        o = self.options
        tipo.BAN_TAGS = [t.strip() for t in o["ban_tags"].split(",") if t.strip()]
        nl = prompt.caption.strip()
        meta, operations, general, nl = tipo.parse_tipo_request(
            formatter.seperate_tags(list(prompt.tags)), nl,
            tag_length_target=o["tag_length"], nl_length_target=o["nl_length"],
            # The node writes a second caption when the format shows one it would lack.
            generate_extra_nl_prompt=(not nl and "<|extended|>" in o["format"])
            or "<|generated|>" in o["format"],
        )  # fmt: skip
        meta["aspect_ratio"] = f"{o['width'] / o['height']:.1f}"
        result, _ = tipo.tipo_runner(
            meta, operations, general, nl,
            seed=prompt.seed or 2**63,  # kgen draws a random seed for 0; stable seeds are < 2**63
            temperature=o["temperature"], top_p=o["top_p"], min_p=o["min_p"], top_k=o["top_k"],
            max_new_tokens=o["max_new_tokens"], max_retry=o["max_retry"],
        )  # fmt: skip
        escaped = {
            key: [t.replace("(", "\\(").replace(")", "\\)") for t in value]
            if isinstance(value, list) else value
            for key, value in result.items()
        }  # fmt: skip
        return formatter.apply_format(escaped, o["format"])

    def close(self) -> None:
        if self._kgen is None:
            return
        self._kgen = None
        _kgen_holders["users"].discard(self)
        if not _kgen_holders["users"]:
            from kgen import models

            models.text_model = models.tokenizer = None
            _kgen_holders["loaded"] = None


__all__ = [
    "KGEN_DEFAULTS",
    "KgenExpander",
    "MagicPromptExpander",
    "PromptistExpander",
    "check_positive",
    "clean_continuation",
]
