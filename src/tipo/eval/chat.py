"""The paper's GPT-4o-mini baseline (docs/tipo-evaluation.md §4.3) as an expander: any
OpenAI-compatible ``/chat/completions`` server (OpenAI, vLLM, llama-server ...), with
instructions of the same intent as the paper's, written anew."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError, InvalidRequestError, MissingDependencyError
from .baselines import check_positive
from .prompts import EvalPrompt

# The paper's seed phrase for the scenery test, whose prompts are tags without a caption.
SCENERY_PHRASE = "A beautiful scenery of"
CHAT_SYSTEM = (
    "You are a helpful assistant. Follow the user's instructions exactly and answer in "
    "precisely the format they ask for."
)
CHAT_USER = """Additional information:
{info}

Taking the additional information above into account where there is any, write an extended, \
refined version of this text-to-image prompt:
- {phrase}

Your prompt must start with the exact words of the prompt above and go on with a vivid, \
specific description of one scene. Make it long and detailed, with a distinct feeling to it.

Answer with a single line of JSON, {{"prompt": "<your prompt>"}}, and nothing else: no \
explanation and no markdown."""
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ChatTask:
    """One request: ``info`` for the model, the ``phrase`` its prompt must begin with, and the
    ``prefix`` (the tags) that goes before its answer in the final prompt."""

    info: str
    phrase: str
    prefix: str = ""


def chat_task(prompt: EvalPrompt, tags_phrase: str = SCENERY_PHRASE) -> ChatTask:
    """As the paper: tags are given as ``danbooru tags: ...`` info and lead the final prompt;
    a caption is the phrase to begin with, and tags without a caption begin with
    ``tags_phrase``."""
    tags = ", ".join(prompt.tags)
    info = f"danbooru tags: {tags}" if tags else ""
    return ChatTask(info, prompt.caption.strip() or tags_phrase, tags)


def chat_messages(task: ChatTask) -> list[dict[str, str]]:
    user = CHAT_USER.format(info=task.info or "(none)", phrase=task.phrase)
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": user}]


def parse_reply(content: str) -> str:
    """The prompt in a reply: the ``prompt`` of the first JSON object found (the whole reply,
    then line by line), else the reply itself; on one line, code fences dropped."""
    text = re.sub(r"^```\w*\s*|\s*```$", "", content.strip())
    for candidate in (text, *text.splitlines()):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("prompt"), str):
            return " ".join(value["prompt"].split())
    return " ".join(text.split())


def chat_prompt(task: ChatTask, reply: str) -> str:
    """The final prompt: the tags, then the model's prompt (the phrase if it gave none)."""
    text = parse_reply(reply) or task.phrase
    return f"{task.prefix}, {text}" if task.prefix else text


class ChatExpander:
    """An OpenAI-compatible chat model, as the paper's GPT-4o-mini baseline (temperature 1,
    top_p 1, 2048 tokens). One request per prompt carries the prompt's seed; up to
    ``concurrency`` run at once. 429, 5xx and network failures are retried with backoff.
    The key is read from ``$api_key_env`` on the first ``expand`` (``""``: send none)."""

    def __init__(
        self, name: str, *, model: str = "gpt-4o-mini", base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY", temperature: float = 1.0, top_p: float = 1.0,
        max_tokens: int = 2048, timeout: float = 120.0, concurrency: int = 4, retries: int = 4,
        tags_phrase: str = SCENERY_PHRASE,
    ) -> None:  # fmt: skip
        check_positive(max_tokens=max_tokens, timeout=timeout, concurrency=concurrency)
        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.name, self.model, self.base_url = name, model, url.rstrip("/")
        self.api_key_env, self.tags_phrase = api_key_env, tags_phrase
        self.sampling = {"temperature": float(temperature), "top_p": float(top_p),
                         "max_tokens": int(max_tokens)}  # fmt: skip
        self.timeout, self.concurrency, self.retries = timeout, int(concurrency), int(retries)
        self._client: Any = None

    def settings(self) -> dict[str, Any]:
        digest = hashlib.sha256((CHAT_SYSTEM + CHAT_USER).encode()).hexdigest()[:12]
        return {"kind": "openai", "model": self.model, "base_url": self.base_url, **self.sampling,
                "tags_phrase": self.tags_phrase, "instructions": digest}  # fmt: skip

    def expand(self, prompts: Sequence[EvalPrompt]) -> list[str]:
        if not prompts:
            return []
        client = self._client or self._connect()
        tasks = [chat_task(p, self.tags_phrase) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            seeds = [p.seed for p in prompts]
            futures = [
                pool.submit(self._ask, client, t, s) for t, s in zip(tasks, seeds, strict=True)
            ]
            try:
                replies = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return [chat_prompt(task, reply) for task, reply in zip(tasks, replies, strict=True)]

    def _connect(self) -> Any:
        try:
            import httpx
        except ImportError:
            raise MissingDependencyError.for_extra("httpx", "eval", "The chat baseline") from None
        headers = {}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise InvalidRequestError(
                    f"expander {self.name!r} needs an API key in ${self.api_key_env}",
                    hint=f"export {self.api_key_env}=...; for a server that takes no key, "
                    'set api_key_env = ""',
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
        return self._client

    def _ask(self, client: Any, task: ChatTask, seed: int) -> str:
        body = {"model": self.model, "messages": chat_messages(task), **self.sampling,
                "seed": seed % 2**31}  # fmt: skip  # servers read seeds as 32-bit integers
        reply = _post_with_retries(client, "/chat/completions", body, self.retries)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url} sent no chat message: {reply!r:.300}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _post_with_retries(client: Any, path: str, body: dict[str, Any], retries: int) -> Any:
    """The JSON reply of a POST; 408/409/429/5xx and network failures are retried after
    1, 2, 4 ... s (or the server's Retry-After, up to 60 s)."""
    import httpx

    url = f"{client.base_url}{path}"
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            reply = client.post(path, json=body)
        except httpx.HTTPError as error:
            if last:
                raise BackendError(f"the call to {url} failed: {error!r}") from None
            time.sleep(2**attempt)
            continue
        if reply.status_code < 400:
            try:
                return reply.json()
            except ValueError:
                raise BackendError(f"{url} did not answer JSON: {reply.text[:300]}") from None
        if reply.status_code not in _RETRY_STATUSES or last:
            raise BackendError(f"{url} answered {reply.status_code}: {_message(reply)}",
                               hint="check the model name, key and base_url")  # fmt: skip
        time.sleep(_retry_after(reply, 2**attempt))
    raise AssertionError("unreachable")


def _message(reply: Any) -> str:
    try:
        error = reply.json().get("error")
    except (ValueError, AttributeError):
        return reply.text[:300]
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def _retry_after(reply: Any, default: float) -> float:
    try:
        return min(60.0, max(0.0, float(reply.headers.get("retry-after", default))))
    except ValueError:
        return default


__all__ = [
    "CHAT_SYSTEM",
    "CHAT_USER",
    "SCENERY_PHRASE",
    "ChatExpander",
    "ChatTask",
    "chat_messages",
    "chat_prompt",
    "chat_task",
    "parse_reply",
]
