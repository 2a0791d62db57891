"""Remote serving engines: our planner in front of vLLM, SGLang or llama.cpp's ``llama-server``.

``TIPO.load(model, backend="openai", url="http://host:8000/v1")``: the local ``model`` gives the
tokenizer (the checkpoint the server serves); every generation is one HTTP call. This file holds
the backend: replicas and HTTP, grouping, routing, concurrent calls, ``Generation`` building,
``load`` and its option checks. What differs per engine (request bodies, grammar fields, reply
parsing, detection) is in ``remote_dialects.py``. Reading order: ``RemoteBackend.generate`` ->
``_plan_calls`` (group, route) -> ``remote_dialects.Dialect`` subclasses (one request body and
one reply parser per engine) -> ``_Replica.request`` (HTTP, retries, errors). ``load`` connects
and detects the engines.

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
from dataclasses import dataclass
from typing import Any

from ..checkpoints import Checkpoint
from ..constraints.fields import FieldConstraint
from ..constraints.grammar import SENTENCE_CHARS, TAG_CHARS, ContinuationSpec, continuation_spec
from ..errors import BackendError, InvalidRequestError, MissingDependencyError
from ..tokenizer import TipoTokenizer
from .base import Capabilities, FinishReason, Generation, GenerationRequest, TokenCallback
from .remote_dialects import (
    DIALECT_CLASSES,
    DIALECTS,
    Call,
    Choice,
    Dialect,
    detect_dialect,
    llamacpp_slots,
)

DEFAULT_TIMEOUT = 120.0
CONNECT_RETRIES = 2
_NATIVE_PATHS = ("/completion", "/props")  # llama.cpp's own endpoints, at the server's root


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class _Replica:
    """One server: its OpenAI base url (``…/v1``), its root, the engine and what it allows."""

    url: str
    client: Any  # httpx.Client
    connect_retries: int = CONNECT_RETRIES
    dialect: Dialect | None = None
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

    def _plan_calls(self, requests: Sequence[GenerationRequest]) -> list[Call]:
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
            calls.append(Call(tuple(indices), request, specs[first], replicas[first], request.seed))
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

    def _run_call(self, call: Call) -> list[Generation]:
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

    def _generation(self, call: Call, choice: Choice, seconds: float) -> Generation:
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
    """Which engine serves ``replica`` (``remote_dialects.detect_dialect``), its model name and
    context; llama.cpp's slots."""
    listing = replica.request("GET", replica.url_for("/models"))
    cards = (listing.get("data") or [{}]) if isinstance(listing, dict) else [{}]
    card = cards[0] if isinstance(cards[0], dict) else {}
    replica.model = card.get("id")
    replica.context_length = card.get("max_model_len")

    def props() -> Any:
        return replica.request("GET", replica.url_for("/props"))

    if dialect == "auto":
        dialect = detect_dialect(replica.url, card, props)
    if dialect == "llamacpp":
        replica.max_n, slot_context = llamacpp_slots(props())
        replica.context_length = slot_context or replica.context_length
    replica.dialect = DIALECT_CLASSES[dialect](backend)


def _context_length(checkpoint: Checkpoint, replicas: list[_Replica]) -> int:
    """The smallest context of the checkpoint and every server (llama.cpp: per slot)."""
    known = [int(r.context_length) for r in replicas if r.context_length]
    local = checkpoint.config.get("max_position_embeddings")
    if local:
        known.append(int(local))
    return min(known) if known else 2048


__all__ = ["DIALECTS", "RemoteBackend", "load"]
