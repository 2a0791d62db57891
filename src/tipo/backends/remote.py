"""Remote serving engines: our planner in front of vLLM, SGLang or llama.cpp's ``llama-server``.

``TIPO.load(model, backend="openai", url="http://host:8000/v1")``: the local ``model`` gives the
tokenizer (the checkpoint the server serves); every generation is one HTTP call. Reading order:
``RemoteBackend.generate`` -> ``_plan_calls`` (group, route) -> ``_Dialect`` subclasses (one
request body and one reply parser per engine) -> ``_Replica.request`` (HTTP, retries,
errors). ``load`` connects and detects the engines.

* Prompts are the training-time token ids, never text, and the engine's token ids come back
  (vLLM and SGLang ``return_token_ids``; llama.cpp's native ``/completion`` with
  ``return_tokens``, as its ``/v1/completions`` returns text only). Token-id prompts get no
  second BOS from any of the three. A reply with text only is re-tokenised with our tokenizer
  (``Generation.extra["retokenised"]``): the text is right, the ids may differ.
* Requests of one ``generate`` call with the same prompt, sampling, grammar and replica are
  one call with ``n`` = their number and ``seed`` = the first one's: variant i gets engine seed
  ``seed + i`` (vLLM and llama.cpp both do that; SGLang only honours seeds with
  ``--enable-deterministic-inference``). Calls run concurrently: engines batch across requests.
* Length targets travel as a grammar made from the run's ``FieldConstraint``
  (``constraints.grammar``): a regex for vLLM/SGLang, GBNF for llama.cpp, or llguidance Lark
  (also bans and the tag vocabulary) with ``llguidance=True`` when the server runs it.
* Several urls are replicas: a request's generations go to the replica chosen by rendezvous
  hashing of ``GenerationRequest.affinity`` (the run's seed: every step and retry of a request
  lands on one replica and its prompt cache), else of the prompt's first tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints import Checkpoint
from ..constraints.fields import FieldConstraint
from ..constraints.grammar import (
    SENTENCE_CHARS,
    TAG_CHARS,
    ContinuationSpec,
    continuation_spec,
    to_gbnf,
    to_lark,
    to_regex,
)
from ..errors import BackendError, InvalidRequestError, MissingDependencyError
from ..tokenizer import TipoTokenizer
from .base import Capabilities, FinishReason, Generation, GenerationRequest, TokenCallback

DIALECTS = ("vllm", "sglang", "llamacpp")
DEFAULT_TIMEOUT = 120.0
CONNECT_RETRIES = 2
_NATIVE_PATHS = ("/completion", "/props")  # llama.cpp's own endpoints, at the server's root
# llama.cpp applies the samplers in this order (transformers' order, as our other backends).
LLAMACPP_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class _Replica:
    """One server: its OpenAI base url (``…/v1``), its root, the engine and what it allows."""

    url: str
    client: Any  # httpx.Client
    connect_retries: int = CONNECT_RETRIES
    dialect: _Dialect | None = None
    model: str | None = None
    context_length: int | None = None
    max_n: int | None = None  # llama.cpp: n is limited to its slots

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def url_for(self, path: str) -> str:
        """OpenAI paths hang off ``…/v1``; llama.cpp's native ones (``/completion``,
        ``/props``) off the server's root."""
        return self.root + path if path in _NATIVE_PATHS else self.url + path

    def request(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """JSON reply of one call. Connection failures are retried (the request never reached
        the server); timeouts and error statuses are not."""
        import httpx

        for attempt in range(self.connect_retries + 1):
            try:
                reply = self.client.request(method, url, json=body)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt == self.connect_retries:
                    raise BackendError(
                        f"cannot reach the server at {url}: {error}",
                        hint="start the server, or check the url (e.g. http://host:8000/v1)",
                    ) from None
                time.sleep(0.25 * 2**attempt)
            except httpx.TimeoutException:
                raise BackendError(
                    f"the server at {url} did not answer within {self.client.timeout.read} s",
                    hint="raise the timeout, or lower the load on the server",
                ) from None
            except httpx.HTTPError as error:
                raise BackendError(f"the call to {url} failed: {error}") from None
        if reply.status_code >= 400:
            raise BackendError(
                f"the server at {url} answered {reply.status_code}: {_server_message(reply)}",
                hint=_status_hint(reply.status_code),
            )
        try:
            return reply.json()
        except ValueError:
            raise BackendError(f"the server at {url} did not answer JSON") from None


def _server_message(reply: Any) -> str:
    try:
        data = reply.json()
    except ValueError:
        return reply.text[:500] or reply.reason_phrase
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return str(error)[:1000]


def _status_hint(status: int) -> str | None:
    if status in (401, 403):
        return "pass the server's API key (api_key / --remote-api-key)"
    if status == 404:
        return "the url must be the server's OpenAI base, ending in /v1"
    return None


# --- engines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One HTTP call: ``n`` variants of one prompt (requests ``indices``), seeds seed..seed+n-1."""

    indices: tuple[int, ...]
    request: GenerationRequest
    spec: ContinuationSpec | None
    replica: _Replica
    seed: int


@dataclass
class _Choice:
    token_ids: list[int] | None
    text: str
    finish: str  # the engine's word
    stopped_by_string: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int | None = None  # as the server counted them (a second BOS would show)


class _Dialect:
    """How one engine takes a completion call and gives it back."""

    name = ""
    path = "/completions"

    def __init__(self, backend: RemoteBackend) -> None:
        self.backend = backend

    def body(self, call: _Call, n: int, seed: int) -> dict[str, Any]:
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
            "logit_bias": {str(i): -100 for i in self.backend.banned_ids},
        }
        if call.replica.model:
            body["model"] = call.replica.model
        if call.spec is not None and call.spec.ends_at_newline:
            body["stop"] = ["\n"]
        body.update(self.grammar(call.spec))
        return body

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        return {}

    def choices(self, reply: Any) -> list[_Choice]:
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        return [self._choice(c) for c in choices]

    def _choice(self, choice: dict[str, Any]) -> _Choice:
        stop = choice.get("stop_reason", choice.get("matched_stop"))
        prompt = choice.get("prompt_token_ids")
        return _Choice(
            choice.get("token_ids"),
            choice.get("text", ""),
            choice.get("finish_reason") or "stop",
            stopped_by_string=isinstance(stop, str),
            prompt_tokens=len(prompt) if isinstance(prompt, list) else None,
        )


class _Vllm(_Dialect):
    """vLLM: ``structured_outputs`` (the old ``guided_*`` fields are silently ignored)."""

    name = "vllm"

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        if spec is None or not self.backend.use_grammar:
            return {}
        if self.backend.llguidance:
            return {"structured_outputs": {"grammar": to_lark(spec)}}
        return {"structured_outputs": {"regex": to_regex(spec)}}


class _Sglang(_Dialect):
    """SGLang: top-level ``regex`` / ``ebnf``."""

    name = "sglang"

    def grammar(self, spec: ContinuationSpec | None) -> dict[str, Any]:
        if spec is None or not self.backend.use_grammar:
            return {}
        if self.backend.llguidance:
            return {"ebnf": to_lark(spec)}
        return {"regex": to_regex(spec)}


class _LlamaCpp(_Dialect):
    """llama-server's native ``/completion``: token ids back, ``n`` up to its slot count,
    ``logit_bias`` false = banned, GBNF or (LLGuidance builds) ``%llguidance`` Lark."""

    name = "llamacpp"
    path = "/completion"

    def body(self, call: _Call, n: int, seed: int) -> dict[str, Any]:
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
            "logit_bias": [[i, False] for i in self.backend.banned_ids],
        }
        if call.spec is not None and call.spec.ends_at_newline:
            body["stop"] = ["\n"]
        if call.spec is not None and self.backend.use_grammar:
            lark = self.backend.llguidance
            body["grammar"] = (
                f"%llguidance {{}}\n{to_lark(call.spec)}" if lark else to_gbnf(call.spec)
            )
        return body

    def choices(self, reply: Any) -> list[_Choice]:
        items = reply if isinstance(reply, list) else [reply]
        items = sorted(items, key=lambda c: c.get("index", 0))
        return [self._choice(c) for c in items]

    def _choice(self, choice: dict[str, Any]) -> _Choice:
        stop_type = choice.get("stop_type", "")
        finish = {"eos": "stop", "limit": "length", "word": "stop"}.get(stop_type, "stop")
        timings = choice.get("timings") or {}
        seconds = {
            "prefill_seconds": float(timings.get("prompt_ms", 0.0)) / 1000,
            "decode_seconds": float(timings.get("predicted_ms", 0.0)) / 1000,
        }
        evaluated = choice.get("tokens_evaluated")
        return _Choice(
            choice.get("tokens"),
            choice.get("content", ""),
            finish,
            stop_type == "word",
            seconds,
            int(evaluated) if evaluated is not None else None,
        )


_DIALECTS: dict[str, type[_Dialect]] = {"vllm": _Vllm, "sglang": _Sglang, "llamacpp": _LlamaCpp}


# --- the backend --------------------------------------------------------------------------------


class RemoteBackend:
    """Generations on OpenAI-compatible completion servers. Options (``TIPO.load``):
    ``url`` (one or a list / comma-separated replicas, each ending in /v1), ``api_key``,
    ``timeout`` (seconds per call), ``dialect`` (auto, vllm, sglang, llamacpp),
    ``connect_retries``, ``grammar`` (send length targets; on by default), ``llguidance``
    (the servers run llguidance: bans and the tag vocabulary go into the grammar too),
    ``tag_chars`` / ``sentence_chars`` (longest tag / sentence the grammar allows),
    ``max_concurrency`` (calls in flight at once)."""

    name = "openai"
    capabilities = Capabilities(batched=True, constraints=True, rollback=False)

    def __init__(
        self,
        replicas: list[_Replica],
        tokenizer: TipoTokenizer,
        context_length: int,
        *,
        grammar: bool = True,
        llguidance: bool = False,
        tag_chars: int = TAG_CHARS,
        sentence_chars: int = SENTENCE_CHARS,
        max_concurrency: int = 16,
    ) -> None:
        self.replicas = replicas
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.use_grammar = grammar
        self.llguidance = llguidance
        self.tag_chars, self.sentence_chars = tag_chars, sentence_chars
        self.max_concurrency = max(1, max_concurrency)
        # Control and TIPO tokens never appear inside a field (the local constraint's rule).
        self.banned_ids = sorted(tokenizer.special_ids - {tokenizer.eos_id})
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # -- generate ---------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None
    ) -> list[Generation]:
        if self._closed:
            raise BackendError("this backend was closed")
        for request in requests:
            self._check(request)
        calls = self._plan_calls(requests)
        results: list[Generation | None] = [None] * len(requests)
        pool = self._executor()
        for call, generations in zip(calls, pool.map(self._run_call, calls), strict=True):
            for index, generation in zip(call.indices, generations, strict=True):
                results[index] = generation
                if on_token is not None:  # not streamed: reported when the call is back
                    for token in generation.token_ids:
                        on_token(index, token)
        return [r for r in results if r is not None]

    def _check(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise InvalidRequestError("empty prompt: a request needs at least the BOS token")
        if len(request.prompt_ids) >= self.context_length:
            raise InvalidRequestError(
                f"the prompt has {len(request.prompt_ids)} tokens; the server's context is "
                f"{self.context_length}",
                hint="shorten the prompt",
            )

    def _plan_calls(self, requests: Sequence[GenerationRequest]) -> list[_Call]:
        """Route every request, then make one call of the requests that go to the same replica
        with the same prompt, sampling and grammar (variants: the engine runs the prompt once).
        Routing first keeps each request on its replica at every step."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        specs: list[ContinuationSpec | None] = []
        replicas: list[_Replica] = []
        for index, request in enumerate(requests):
            spec = self._spec(request)
            specs.append(spec)
            replicas.append(self._route(request))
            key = (id(replicas[-1]), request.prompt_ids, request.sampling, spec)
            groups.setdefault(key, []).append(index)
        calls = []
        for indices in groups.values():
            first = indices[0]
            request = requests[first]
            calls.append(
                _Call(tuple(indices), request, specs[first], replicas[first], request.seed)
            )
        return calls

    def _spec(self, request: GenerationRequest) -> ContinuationSpec | None:
        constraint = request.constraint
        if not isinstance(constraint, FieldConstraint):
            return None  # free decoding, or a constraint we cannot translate
        return continuation_spec(
            constraint,
            vocabulary=self.llguidance,
            tag_chars=self.tag_chars,
            sentence_chars=self.sentence_chars,
        )

    def _route(self, request: GenerationRequest) -> _Replica:
        """Rendezvous hashing: each replica scores the key, the highest wins; adding or
        removing a replica moves only the keys that scored highest on it."""
        if len(self.replicas) == 1:
            return self.replicas[0]
        if request.affinity is not None:
            key = str(request.affinity)
        else:
            key = ",".join(map(str, request.prompt_ids[:64]))

        def score(replica: _Replica) -> bytes:
            return hashlib.blake2b(f"{replica.url}|{key}".encode(), digest_size=8).digest()

        return max(self.replicas, key=score)

    def _run_call(self, call: _Call) -> list[Generation]:
        """The call's n variants; llama.cpp's n is capped by its slots, so larger groups go
        as several calls with seeds continuing where the previous one stopped."""
        replica, n = call.replica, len(call.indices)
        assert replica.dialect is not None
        chunk = min(n, replica.max_n or n)
        generations: list[Generation] = []
        for offset in range(0, n, chunk):
            size = min(chunk, n - offset)
            body = replica.dialect.body(call, size, call.seed + offset)
            started = time.perf_counter()
            reply = replica.request("POST", replica.url_for(replica.dialect.path), body)
            seconds = time.perf_counter() - started
            choices = replica.dialect.choices(reply)
            if len(choices) != size:
                raise BackendError(
                    f"the server at {replica.url} returned {len(choices)} choices for n={size}"
                )
            generations += [self._generation(call, c, seconds) for c in choices]
        return generations

    def _generation(self, call: _Call, choice: _Choice, seconds: float) -> Generation:
        extra: dict[str, float] = {"replica": float(self.replicas.index(call.replica))}
        if choice.prompt_tokens is not None:
            extra["server_prompt_tokens"] = float(choice.prompt_tokens)
        ids = choice.token_ids
        if ids is None:  # an engine that answers text only
            ids, extra["retokenised"] = self.tokenizer.encode_fragment(choice.text), 1.0
        ids = [int(i) for i in ids]
        finish: FinishReason = "length" if choice.finish == "length" else "stop"
        if ids and ids[-1] == self.tokenizer.eos_id:
            ids.pop()
            finish = "eos"
        elif choice.finish != "length" and not choice.stopped_by_string:
            finish = "eos"  # the engine's EOS, not reported in the ids
        if choice.stopped_by_string:
            ids = self._cut_at_newline(ids)
        timings = choice.timings or {"decode_seconds": seconds}
        return Generation(
            token_ids=ids,
            finish_reason=finish,
            prompt_tokens=len(call.request.prompt_ids),
            prefill_seconds=timings.get("prefill_seconds", 0.0),
            decode_seconds=timings.get("decode_seconds", 0.0),
            extra=extra,
        )

    def _cut_at_newline(self, ids: list[int]) -> list[int]:
        """A stop string ends the text at the field's newline; engines may return tokens past
        it (llama.cpp does): keep the ids before the token that writes the newline."""
        for position, token in enumerate(ids):
            if b"\n" in self.tokenizer.token_bytes(token):
                return ids[:position]
        return ids

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="tipo-remote")
        return self._pool

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        closed = set()
        for replica in self.replicas:
            if id(replica.client) not in closed:
                replica.client.close()
                closed.add(id(replica.client))


# --- loading ------------------------------------------------------------------------------------

_OPTIONS = (
    "url",
    "api_key",
    "timeout",
    "dialect",
    "model",
    "connect_retries",
    "grammar",
    "llguidance",
    "tag_chars",
    "sentence_chars",
    "max_concurrency",
)


def load(
    checkpoint: Checkpoint, device: str = "cpu", dtype: str | None = None, **options: Any
) -> RemoteBackend:
    """Connect to the server(s) in ``url``, tell their engine (``dialect`` "auto"), and use
    the checkpoint's tokenizer. ``device`` is the server's business and ignored here."""
    _check_options(dtype, options)
    try:
        import httpx
    except ImportError:
        raise MissingDependencyError.for_extra("httpx", "remote", "the openai backend") from None
    urls = _urls(options.pop("url", None))
    timeout = float(options.pop("timeout", DEFAULT_TIMEOUT))
    api_key = options.pop("api_key", None)
    dialect = str(options.pop("dialect", "auto")).lower()
    model = options.pop("model", None)
    retries = int(options.pop("connect_retries", CONNECT_RETRIES))
    if dialect not in ("auto", *DIALECTS):
        raise InvalidRequestError(
            f"unknown dialect {dialect!r}", hint=f"use one of: auto, {', '.join(DIALECTS)}"
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    concurrency = int(options.get("max_concurrency", 16))
    client = httpx.Client(
        timeout=httpx.Timeout(timeout),
        headers=headers,
        limits=httpx.Limits(max_connections=max(concurrency, 4)),
    )
    backend = RemoteBackend(
        [_Replica(url, client, retries) for url in urls],
        checkpoint.load_tokenizer(),
        0,
        **options,
    )
    try:
        for replica in backend.replicas:
            _probe(replica, dialect, backend)
            if model:
                replica.model = str(model)
    except BaseException:
        backend.close()
        raise
    backend.context_length = _context_length(checkpoint, backend.replicas)
    if backend.llguidance and any(
        r.dialect and r.dialect.name == "llamacpp" for r in backend.replicas
    ):
        backend.close()
        raise InvalidRequestError(
            "llguidance grammars do not work on llama-server with TIPO's vocabulary (b11549: "
            "'Parser Error: token … doesn't satisfy the grammar', then it decodes unconstrained)",
            hint="leave llguidance off for llama-server: length targets go as GBNF",
        )
    return backend


def _check_options(dtype: str | None, options: dict[str, Any]) -> None:
    if dtype is not None:
        raise InvalidRequestError(
            f"the openai backend takes no dtype (got {dtype!r})",
            hint="the server decides the weight types",
        )
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise InvalidRequestError(
            f"unknown openai option(s): {', '.join(unknown)}", hint=f"valid: {', '.join(_OPTIONS)}"
        )
    if not options.get("url"):
        raise InvalidRequestError(
            "the openai backend needs the server's url",
            hint="pass url='http://host:8000/v1' (--url), several separated by commas",
        )


def _urls(value: str | Sequence[str] | None) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value or ())
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError(
                f"not an http(s) url: {url!r}", hint="e.g. http://127.0.0.1:8000/v1"
            )
    return [u if u.endswith("/v1") else f"{u}/v1" for u in urls]


def _probe(replica: _Replica, dialect: str, backend: RemoteBackend) -> None:
    """Which engine serves ``replica``, its model name and context; llama.cpp's slots.

    Detection: ``GET …/v1/models`` names the owner (``owned_by`` "vllm", "sglang" or
    "llamacpp"); failing that, a server whose ``GET /props`` has
    ``default_generation_settings`` is llama.cpp."""
    listing = replica.request("GET", replica.url_for("/models"))
    cards = (listing.get("data") or [{}]) if isinstance(listing, dict) else [{}]
    card = cards[0] if isinstance(cards[0], dict) else {}
    replica.model = card.get("id")
    replica.context_length = card.get("max_model_len")
    if dialect == "auto":
        owner = str(card.get("owned_by", "")).lower()
        dialect = next((d for d in DIALECTS if d in owner), "") or _props_dialect(replica)
    if dialect == "llamacpp":
        props = replica.request("GET", replica.url_for("/props"))
        settings = props.get("default_generation_settings") or {}
        replica.max_n = int(props.get("total_slots") or 1)
        replica.context_length = settings.get("n_ctx") or replica.context_length
    replica.dialect = _DIALECTS[dialect](backend)


def _props_dialect(replica: _Replica) -> str:
    try:
        props = replica.request("GET", replica.url_for("/props"))
    except BackendError:
        props = None
    if isinstance(props, dict) and "default_generation_settings" in props:
        return "llamacpp"
    raise BackendError(
        f"cannot tell which engine serves {replica.url}",
        hint="pass dialect='vllm', 'sglang' or 'llamacpp' to TIPO.load",
    )


def _context_length(checkpoint: Checkpoint, replicas: list[_Replica]) -> int:
    """The smallest context of the checkpoint and every server (llama.cpp: per slot)."""
    known = [int(r.context_length) for r in replicas if r.context_length]
    local = checkpoint.config.get("max_position_embeddings")
    if local:
        known.append(int(local))
    return min(known) if known else 2048


__all__ = ["DIALECTS", "RemoteBackend", "load"]
