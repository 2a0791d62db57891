"""Prometheus metrics of one server (its own registry: two apps in a process do not mix)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: a TIPO request takes 0.1 s (one short step) to tens of seconds under load.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
RATE_WINDOW = 10.0  # seconds over which tokens/s is averaged


class TokenRate:
    """Tokens per second over the last ``window`` seconds (thread-safe)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), count))
            self._trim()

    def value(self) -> float:
        with self._lock:
            self._trim()
            return sum(c for _, c in self._events) / self.window

    def _trim(self) -> None:
        cutoff = time.monotonic() - self.window
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "tipo_queue_depth", "Sequences waiting for a place in the decode batch", registry=r
        )
        self.batch_size = Gauge(
            "tipo_batch_size", "Sequences in the engine after its last step", registry=r
        )
        self.in_flight = Gauge("tipo_sequences_in_flight", "Variants admitted", registry=r)
        self.tokens = Counter("tipo_generated_tokens", "Tokens generated", registry=r)
        self.rate = TokenRate()
        tokens_per_second = Gauge(
            "tipo_tokens_per_second",
            f"Tokens generated per second over the last {RATE_WINDOW:.0f} s",
            registry=r,
        )
        tokens_per_second.set_function(self.rate.value)
        self.requests = Counter(
            "tipo_requests", "Finished /v1/expand requests by HTTP status", ["status"], registry=r
        )
        self.errors = Counter("tipo_request_errors", "Errors by kind", ["kind"], registry=r)
        self.latency = Histogram(
            "tipo_request_duration_seconds",
            "Time from a request's arrival to its last byte",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tipo_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def count_tokens(self, count: int) -> None:
        self.tokens.inc(count)
        self.rate.add(count)

    def watch(self, queue_depth: Callable[[], float], batch: Callable[[], float],
              in_flight: Callable[[], float]) -> None:  # fmt: skip
        """Read these gauges from the engine loop when scraped."""
        self.queue_depth.set_function(queue_depth)
        self.batch_size.set_function(batch)
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServerMetrics", "TokenRate"]
