"""`tipo serve --url`: our service with the planner in front of a real llama-server (xllamacpp
wheel) on 127.0.0.1, the way a CPU fleet runs it. The openai backend has no continuous batching
of its own: the engine loop drives it one round at a time, and llama-server batches the round."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from checkpoints import make_tiny_checkpoint
from host_cache import progress_visible
from remote_servers import ServerProcess, ensure_xllamacpp, start_llama_server
from server_utils import parse_sse, replay_stream
from tipo.protocol import Length
from tipo.server import ServerSettings, create_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def llama_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, ServerProcess]]:
    from tipo.convert import convert

    base = tmp_path_factory.mktemp("serve-remote")
    folder = make_tiny_checkpoint(base / "hf", num_heads=2, num_kv_heads=2)
    gguf = convert(folder, base / "tiny-F16.gguf")
    with progress_visible(pytestconfig):
        server = start_llama_server(ensure_xllamacpp(), gguf, base)
    yield folder, server
    server.stop()


def test_serve_in_front_of_llama_server(llama_server: tuple[Path, ServerProcess]) -> None:
    folder, server = llama_server
    settings = ServerSettings(model=str(folder), url=(server.url,), offline=True)
    body = {"tags": "1girl, scenery", "nl": "a girl on a hill", "tag_length": "short",
            "nl_length": "short", "seed": 5}  # fmt: skip
    with TestClient(create_app(settings)) as client:
        model = client.get("/v1/models").json()["data"][0]
        statuses: list[int] = []

        def call(seed: int) -> None:
            statuses.append(client.post("/v1/expand", json={**body, "seed": seed}).status_code)

        threads = [threading.Thread(target=call, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        streamed = client.post("/v1/expand", json={**body, "variants": 2, "stream": True})
        for thread in threads:
            thread.join()
    assert model["backend"] == "openai"
    assert statuses == [200, 200, 200]
    events = parse_sse(streamed.text)
    results = [d["result"] for n, d in events if n == "result"]
    assert len(results) == 2 and [r["seed"] for r in results] == [5, 6]
    # The grammar holds the counts (test_remote_engines.py); a duplicate the post-filter drops
    # may leave a field under its minimum, so only "more tags, never too many" is pinned here.
    for result in results:
        tags = result["tags"]
        assert 2 < len(tags["special"]) + len(tags["general"]) <= Length.SHORT.tag_range[1]
    texts = replay_stream(events)
    for name, data in events:
        if name == "step_end":
            assert texts[(data["variant"], data["step"])] == data["record"]["output"]
