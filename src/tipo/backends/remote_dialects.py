"""What differs between the engines the openai backend drives (the backend is ``remote.py``).

One ``Dialect`` per engine turns a ``Call`` into that engine's request body (sampling fields,
bans, the grammar field) and its reply into ``Choice`` objects; ``detect_dialect`` tells which
engine serves a url. Reading order: ``Dialect`` (the OpenAI completion call) -> ``Vllm`` and
``Sglang`` (their grammar fields) -> ``LlamaCpp`` (its own endpoint) -> ``detect_dialect``.

* vLLM and SGLang: ``/v1/completions`` with ``return_token_ids``, bans as ``logit_bias`` -100,
  length targets as a regex or llguidance Lark (vLLM in ``structured_outputs``, SGLang in
  top-level ``regex`` / ``ebnf``).
* llama.cpp: the native ``/completion`` with ``return_tokens`` (its ``/v1/completions`` returns
  text only), bans as ``logit_bias`` false, length targets as GBNF or ``%llguidance`` Lark.

No I/O and no import of ``remote.py``: a dialect reads the backend's options through
``DialectSettings`` and the call's server through ``ReplicaInfo``; detection is handed a
function that fetches ``/props``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..constraints.grammar import ContinuationSpec, to_gbnf, to_lark, to_regex
from ..errors import BackendError
from .base import GenerationRequest

# llama.cpp applies the samplers in this order (transformers' order, as our other backends).
LLAMACPP_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]


class DialectSettings(Protocol):
    """The backend options a request body depends on (``RemoteBackend`` has them)."""

    banned_ids: list[int]  # control and TIPO tokens, never inside a field
    use_grammar: bool  # send length targets as a grammar
    llguidance: bool  # the servers run llguidance: Lark instead of regex / GBNF


class ReplicaInfo(Protocol):
    """What a request body needs of the server it goes to (``remote._Replica`` has it)."""

    model: str | None
    context_length: int | None


@dataclass(frozen=True)
class Call:
    """One HTTP call: ``n`` variants of one prompt (requests ``indices``), seeds seed..seed+n-1."""

    indices: tuple[int, ...]
    request: GenerationRequest
    spec: ContinuationSpec | None
    replica: ReplicaInfo
    seed: int


@dataclass
class Choice:
    token_ids: list[int] | None
    text: str
    finish: str  # the engine's word
    stopped_by_string: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int | None = None  # as the server counted them (a second BOS would show)


class Dialect:
    """How one engine takes a completion call and gives it back."""

    name = ""
    path = "/completions"

    def __init__(self, settings: DialectSettings) -> None:
        self.settings = settings

    def body(self, call: Call, n: int, seed: int) -> dict[str, Any]:
        s = call.request.sampling
        body: dict[str, Any] = {
            "prompt": list(call.request.prompt_ids),
            "n": n,
            "seed": seed % 2**62,  # variants add their index: stay within int64
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k or -1,
            "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty,
            "return_token_ids": True,
            "logit_bias": {str(i): -100 for i in self.settings.banned_ids},
        }
        if call.replica.model:
            body["model"] = call.replica.model
        if call.spec is not None and call.spec.ends_at_newline:
            body["stop"] = ["\n"]
        body.update(self.grammar(call.spec))
        return body

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        return {}

    def choices(self, reply: Any) -> list[Choice]:
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        return [self._choice(c) for c in choices]

    def _choice(self, choice: dict[str, Any]) -> Choice:
        stop = choice.get("stop_reason", choice.get("matched_stop"))
        prompt = choice.get("prompt_token_ids")
        return Choice(
            choice.get("token_ids"),
            choice.get("text", ""),
            choice.get("finish_reason") or "stop",
            stopped_by_string=isinstance(stop, str),
            prompt_tokens=len(prompt) if isinstance(prompt, list) else None,
        )


class Vllm(Dialect):
    """vLLM: ``structured_outputs`` (the old ``guided_*`` fields are silently ignored)."""

    name = "vllm"

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        if spec is None or not self.settings.use_grammar:
            return {}
        if self.settings.llguidance:
            return {"structured_outputs": {"grammar": to_lark(spec)}}
        return {"structured_outputs": {"regex": to_regex(spec)}}


class Sglang(Dialect):
    """SGLang: top-level ``regex`` / ``ebnf``."""

    name = "sglang"

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        if spec is None or not self.settings.use_grammar:
            return {}
        if self.settings.llguidance:
            return {"ebnf": to_lark(spec)}
        return {"regex": to_regex(spec)}


class LlamaCpp(Dialect):
    """llama-server's native ``/completion``: token ids back, ``n`` up to its slot count,
    ``logit_bias`` false = banned, GBNF or (LLGuidance builds) ``%llguidance`` Lark."""

    name = "llamacpp"
    path = "/completion"

    def body(self, call: Call, n: int, seed: int) -> dict[str, Any]:
        s = call.request.sampling
        body: dict[str, Any] = {
            "prompt": list(call.request.prompt_ids),
            "n": n,
            "seed": seed % (2**32 - 1),  # 2**32 - 1 would mean "random"
            "n_predict": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": s.min_p,
            "repeat_penalty": s.repetition_penalty,
            # The whole context, as transformers (-1 is refused by the server).
            "repeat_last_n": call.replica.context_length or 4096,
            "samplers": LLAMACPP_SAMPLERS,
            "return_tokens": True,
            "cache_prompt": True,
            "logit_bias": [[i, False] for i in self.settings.banned_ids],
        }
        if call.spec is not None and call.spec.ends_at_newline:
            body["stop"] = ["\n"]
        if call.spec is not None and self.settings.use_grammar:
            lark = self.settings.llguidance
            body["grammar"] = (
                f"%llguidance {{}}\n{to_lark(call.spec)}" if lark else to_gbnf(call.spec)
            )
        return body

    def choices(self, reply: Any) -> list[Choice]:
        items = reply if isinstance(reply, list) else [reply]
        items = sorted(items, key=lambda c: c.get("index", 0))
        return [self._choice(c) for c in items]

    def _choice(self, choice: dict[str, Any]) -> Choice:
        stop_type = choice.get("stop_type", "")
        finish = {"eos": "stop", "limit": "length", "word": "stop"}.get(stop_type, "stop")
        timings = choice.get("timings") or {}
        seconds = {
            "prefill_seconds": float(timings.get("prompt_ms", 0.0)) / 1000,
            "decode_seconds": float(timings.get("predicted_ms", 0.0)) / 1000,
        }
        evaluated = choice.get("tokens_evaluated")
        return Choice(
            choice.get("tokens"),
            choice.get("content", ""),
            finish,
            stop_type == "word",
            seconds,
            int(evaluated) if evaluated is not None else None,
        )


DIALECT_CLASSES: dict[str, type[Dialect]] = {"vllm": Vllm, "sglang": Sglang, "llamacpp": LlamaCpp}
DIALECTS = tuple(DIALECT_CLASSES)  # ("vllm", "sglang", "llamacpp")


# --- detection ----------------------------------------------------------------------------------


def detect_dialect(url: str, card: dict[str, Any], get_props: Callable[[], Any]) -> str:
    """The engine serving ``url``: the first model card of its ``GET …/v1/models`` names the
    owner (``owned_by`` "vllm", "sglang" or "llamacpp"); failing that, a server whose
    ``GET /props`` (``get_props``, called only then) has ``default_generation_settings`` is
    llama.cpp."""
    owner = str(card.get("owned_by", "")).lower()
    return next((d for d in DIALECTS if d in owner), "") or props_dialect(url, get_props)


def props_dialect(url: str, get_props: Callable[[], Any]) -> str:
    try:
        props = get_props()
    except BackendError:
        props = None
    if isinstance(props, dict) and "default_generation_settings" in props:
        return "llamacpp"
    raise BackendError(
        f"cannot tell which engine serves {url}",
        hint="pass dialect='vllm', 'sglang' or 'llamacpp' to TIPO.load",
    )


def llamacpp_slots(props: Any) -> tuple[int, int | None]:
    """llama.cpp's ``GET /props``: its slot count (the most ``n`` one call takes) and the
    context of one slot, if it says."""
    settings = props.get("default_generation_settings") or {}
    return int(props.get("total_slots") or 1), settings.get("n_ctx")


__all__ = [
    "DIALECTS",
    "DIALECT_CLASSES",
    "LLAMACPP_SAMPLERS",
    "Call",
    "Choice",
    "Dialect",
    "DialectSettings",
    "LlamaCpp",
    "ReplicaInfo",
    "Sglang",
    "Vllm",
    "detect_dialect",
    "llamacpp_slots",
    "props_dialect",
]
