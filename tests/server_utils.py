"""A real uvicorn server on 127.0.0.1 in a background thread (real sockets: slow and vanishing
clients, streams cut mid-way), and small SSE helpers shared by the server tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from host_cache import free_port


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL; stops it on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a whole SSE body; comment lines (pings) are skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def replay_stream(events: list[tuple[str, dict[str, Any]]]) -> dict[tuple[int, int], str]:
    """The text of each (variant, step) as a client sees it: tokens appended, rollbacks cut."""
    texts: dict[tuple[int, int], str] = {}
    for name, data in events:
        key = (data.get("variant"), data.get("step"))
        if name == "token":
            texts[key] = texts.get(key, "") + data["text"]
        elif name == "rollback":
            text = texts.get(key, "")
            texts[key] = text[: len(text) - data["chars"]]
    return texts
