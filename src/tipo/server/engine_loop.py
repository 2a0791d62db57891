"""The engine loop: one thread owns the model, and every client's requests share its batch.

HTTP handlers never run the model. They submit a ``Job`` (the variants of one request) and read
its events. Each turn of the loop

1. turns new jobs into ``RequestRun``s (one per variant),
2. drops the sequences of jobs that were cancelled (client gone) or ran out of time,
3. hands the next generation of every run between steps to the stepper: a run's steps (tags,
   then a caption ...) rejoin the batch one after another,
4. advances the stepper once and turns what happened into events: tokens (as text), rollbacks,
   the end of a step, a variant's result.

With our engine the stepper is its continuous-batching scheduler: sequences join and leave
between decode steps, and a prompt prefix already in the cache (the steps of one request, the
variants of one prompt) is reused instead of computed again. Other backends are driven one
round at a time (``RoundStepper``): correct, but a request waits for the round in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

from ..backends.base import Backend, Generation, GenerationRequest, Stepper, StepResult
from ..errors import BackendError, TipoError
from ..pipeline import TIPO
from ..request import ExpandRequest
from ..run import RequestRun

log = logging.getLogger("tipo.server")

# (event name, JSON-able data); see the README's "Streaming" table for the names.
Emit = Callable[[str, dict[str, Any]], None]
Event = tuple["Job", str, dict[str, Any]]


def deliver_now(events: list[Event]) -> None:
    """Hand each event to its job, on the calling thread."""
    for job, name, data in events:
        job.emit(name, data)


class QueueFullError(TipoError):
    """The server holds as many sequences as it is allowed to; try again shortly."""


class RequestTimeoutError(TipoError):
    """The request took longer than the server's time limit; its sequences were freed."""


class Job:
    """One HTTP request: its variants, where their events go, and whether to stop.

    ``emit`` receives the job's events through the loop's ``deliver`` (by default called on the
    engine thread; the server hands each turn's events to its event loop at once). ``cancel``
    may be called from any thread; the loop ends the job's sequences at its next turn."""

    def __init__(self, requests: list[ExpandRequest], emit: Emit, deadline: float) -> None:
        self.requests = requests
        self.emit = emit
        self.deadline = deadline
        self.cancelled: str | None = None  # why: "client" (disconnected) or "timeout"

    def cancel(self, reason: str = "client") -> None:
        if self.cancelled is None:
            self.cancelled = reason


@dataclass
class _Variant:
    """One variant of a job, as the loop tracks it."""

    job: Job
    index: int
    run: RequestRun
    step: int = 0  # generations started so far
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # the in-flight generation's text as streamed so far

    def send(self, outbox: list[Event], name: str, data: dict[str, Any]) -> None:
        outbox.append((self.job, name, {"variant": self.index, **data}))


class RoundStepper:
    """A ``Stepper`` over a backend without continuous batching: each step runs everything
    queued as one ``generate`` batch, to the end."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queued: dict[int, GenerationRequest] = {}
        self._next_handle = 0

    def add(self, request: GenerationRequest) -> int:
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        self._queued[handle] = request
        return handle

    def cancel(self, handle: int) -> Generation | None:
        request = self._queued.pop(handle, None)
        return None if request is None else Generation([], "stop", len(request.prompt_ids))

    def step(self) -> StepResult:
        handles, requests = list(self._queued), list(self._queued.values())
        self._queued.clear()
        result, streamed = StepResult(), set()

        def on_token(index: int, token: int) -> None:
            streamed.add(index)
            result.tokens.append((handles[index], token))

        generations = self.backend.generate(requests, on_token) if requests else []
        for index, (handle, generation) in enumerate(zip(handles, generations, strict=True)):
            if index not in streamed:  # a backend that does not stream: all at the end
                result.tokens.extend((handle, token) for token in generation.token_ids)
            result.finished.append((handle, generation))
        return result


def stepper_for(backend: Backend) -> Stepper:
    make = getattr(backend, "stepper", None)
    return make() if callable(make) else RoundStepper(backend)


class EngineLoop:
    def __init__(self, tipo: TIPO, *, max_batch: int, max_queue: int) -> None:
        self.tipo = tipo
        self.stepper = stepper_for(tipo.backend)
        self.max_batch = max_batch
        self.capacity = max_batch + max_queue  # sequences admitted at once
        self.batch_size = 0  # sequences in the stepper after the last step (for /metrics)
        self.on_tokens: Callable[[int], None] | None = None  # metrics hook
        # Called once per turn with the turn's events (a server hops to its event loop once).
        self.deliver: Callable[[list[Event]], None] = deliver_now
        self._outbox: list[Event] = []
        self._inbox: SimpleQueue[Job] = SimpleQueue()
        self._admitted = 0  # variants submitted and not finished
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._ready: list[_Variant] = []  # between steps: their next generation is due
        self._in_flight: dict[int, _Variant] = {}  # stepper handle -> variant
        self._thread = threading.Thread(target=self._run, name="tipo-engine-loop", daemon=True)

    # -- called from the server's threads ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def admitted(self) -> int:
        """Variants submitted and not finished."""
        return self._admitted

    @property
    def queue_depth(self) -> int:
        """Variants waiting for a place in the decode batch."""
        return max(0, self._admitted - self.max_batch)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFullError if its variants do not fit."""
        with self._lock:
            if self._admitted + len(job.requests) > self.capacity:
                raise QueueFullError(
                    f"the server is busy ({self._admitted} sequences in progress)",
                    hint="retry after the time in the Retry-After header",
                )
            self._admitted += len(job.requests)
        self._inbox.put(job)
        self._wake.set()

    # -- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._warm_up()
        while not self._stopping:
            self._wake.clear()
            try:
                self._turn()
            except Exception:  # a bug must not kill the loop: fail what is in flight, go on
                log.exception("engine loop error")
                self._fail_in_flight(BackendError("internal error in the engine loop"))
                self._flush()
            if not self._in_flight and not self._ready:
                self._wake.wait(0.25)
        self._cancel_everything()

    def _warm_up(self) -> None:
        """Build the token table and tag vocabulary now rather than in the first request."""
        try:
            self.tipo.start_runs([ExpandRequest()])
        except Exception:
            log.exception("warm-up failed")

    def _turn(self) -> None:
        try:
            self._take_new_jobs()
            self._drop_stopped()
            self._feed()
            if self._in_flight:
                self._step()
        finally:
            self._flush()

    def _flush(self) -> None:
        if self._outbox:
            events, self._outbox = self._outbox, []
            self.deliver(events)

    def _take_new_jobs(self) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except Empty:
                return
            for index, run in enumerate(self.tipo.start_runs(job.requests)):
                if isinstance(run, TipoError):
                    self._end(job, index, error=run)
                else:
                    self._ready.append(_Variant(job, index, run))

    def _drop_stopped(self) -> None:
        now = time.monotonic()
        for variant in [*self._ready, *self._in_flight.values()]:
            if variant.job.cancelled is None and now > variant.job.deadline:
                variant.job.cancel("timeout")
        for handle, variant in list(self._in_flight.items()):
            if variant.job.cancelled is not None:
                del self._in_flight[handle]
                self.stepper.cancel(handle)
                self._end_stopped(variant)
        for variant in [v for v in self._ready if v.job.cancelled is not None]:
            self._ready.remove(variant)
            self._end_stopped(variant)

    def _end_stopped(self, variant: _Variant) -> None:
        if variant.job.cancelled == "timeout":
            error = RequestTimeoutError(
                "the request ran out of time", hint="ask for fewer variants or tokens"
            )
            self._end(variant.job, variant.index, error=error)
        else:
            self._end(variant.job, variant.index)

    def _feed(self) -> None:
        ready, self._ready = self._ready, []
        for variant in ready:
            try:
                request = variant.run.next_generation()
                if request is None:
                    self._end(variant.job, variant.index, result=variant.run.result().to_dict())
                    continue
                handle = self.stepper.add(request)
            except TipoError as error:
                self._end(variant.job, variant.index, error=error)
                continue
            self._in_flight[handle] = variant
            variant.token_ids, variant.text = [], ""
            pending = variant.run.pending
            assert pending is not None
            task = pending.step.task.value if pending.step.task else "tag"
            data = {"step": variant.step, "task": task, "prompt": pending.prompt}
            variant.send(self._outbox, "step", data)

    def _step(self) -> None:
        try:
            result = self.stepper.step()
        except Exception as error:
            if not isinstance(error, TipoError):
                log.exception("backend failure")
                error = BackendError(f"the backend failed: {type(error).__name__}: {error}")
            self._fail_in_flight(error)
            return
        if self.on_tokens is not None:
            self.on_tokens(len(result.tokens))
        for variant, new_tokens in self._apply_tokens(result):
            self._stream_text(variant, new_tokens)
        for handle, generation in result.finished:
            variant = self._in_flight.pop(handle, None)
            if variant is not None:
                self._finish_step(variant, generation)
        self.batch_size = len(self._in_flight)

    def _apply_tokens(self, result: StepResult) -> list[tuple[_Variant, list[int]]]:
        """(variant, its new token ids) for each variant the step changed."""
        touched: dict[int, tuple[_Variant, list[int]]] = {}
        for handle, token in result.tokens:
            variant = self._in_flight.get(handle)
            if variant is not None:
                variant.token_ids.append(token)
                touched.setdefault(handle, (variant, []))[1].append(token)
        for handle, count in result.rollbacks:
            variant = self._in_flight.get(handle)
            if variant is not None:
                del variant.token_ids[max(0, len(variant.token_ids) - count) :]
                touched.setdefault(handle, (variant, []))
        return list(touched.values())

    def _stream_text(self, variant: _Variant, new_tokens: list[int]) -> None:
        """Send the text change since the last event: a rollback of what no longer stands,
        then the new text (held back while it ends in a partial UTF-8 character)."""
        text = self.tipo.tokenizer.decode(variant.token_ids).rstrip("\ufffd")
        sent = variant.text
        common = len(sent) if text.startswith(sent) else _common_prefix(sent, text)
        if common < len(sent):
            data = {"step": variant.step, "chars": len(sent) - common}
            variant.send(self._outbox, "rollback", data)
        if len(text) > common:
            data = {"step": variant.step, "text": text[common:], "tokens": new_tokens}
            variant.send(self._outbox, "token", data)
        variant.text = text

    def _finish_step(self, variant: _Variant, generation: Generation) -> None:
        try:
            variant.run.accept(generation)
        except TipoError as error:
            self._end(variant.job, variant.index, error=error)
            return
        record = variant.run.records[-1]
        variant.send(self._outbox, "step_end", {"step": variant.step, "record": asdict(record)})
        variant.step += 1
        self._ready.append(variant)

    def _fail_in_flight(self, error: TipoError) -> None:
        failed, self._in_flight = list(self._in_flight.items()), {}
        for handle, variant in failed:
            try:
                self.stepper.cancel(handle)
            except Exception:
                log.exception("could not cancel sequence %s after a failure", handle)
            self._end(variant.job, variant.index, error=error)

    def _end(
        self,
        job: Job,
        index: int,
        *,
        result: dict[str, Any] | None = None,
        error: TipoError | None = None,
    ) -> None:
        """A variant is over: send its outcome and free its place. An error is sent as the
        exception itself: the server maps its class to an HTTP status and kind."""
        if error is not None:
            self._outbox.append((job, "error", {"variant": index, "error": error}))
        elif result is not None:
            self._outbox.append((job, "result", {"variant": index, "result": result}))
        else:
            self._outbox.append((job, "cancelled", {"variant": index}))
        with self._lock:
            self._admitted -= 1

    def _cancel_everything(self) -> None:
        for variant in [*self._ready, *self._in_flight.values()]:
            self._end(variant.job, variant.index, error=BackendError("the server is shutting down"))
        self._ready, self._in_flight = [], {}
        self._flush()


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


__all__ = ["EngineLoop", "Job", "QueueFullError", "RequestTimeoutError", "RoundStepper"]
