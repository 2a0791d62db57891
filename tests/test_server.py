"""`tipo serve`: the API on a tiny random checkpoint (our engine) and on scripted backends.

In-process tests go through FastAPI's TestClient; the ones about sockets (a client that hangs
up, streams cut mid-way) through a real uvicorn server on 127.0.0.1 (server_utils.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server_utils import live_server, parse_sse, replay_stream
from tipo import TIPO
from tipo.backends.base import GenerationRequest
from tipo.backends.fake import ScriptedBackend, toy_script
from tipo.cli import main
from tipo.protocol import ModelRequest, build_prompt
from tipo.request import ExpandRequest
from tipo.server import ServerSettings, create_app
from tipo.server.limits import backtracking_risk
from tipo.server.schemas import ExpandBody

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32_tipo(tiny_checkpoint: Path) -> TIPO:
    """fp32 is batch-invariant: a request gives the same tokens alone or in any batch."""
    tipo = TIPO.load(str(tiny_checkpoint), backend="torch", dtype="float32", offline=True)
    yield tipo
    tipo.close()


def client_for(tipo: TIPO, **settings: Any) -> TestClient:
    return TestClient(create_app(ServerSettings(**settings), tipo=tipo))


SMALL = {"tag_length": "very_short", "nl_length": "very_short", "max_new_tokens": 48}


# -- results ----------------------------------------------------------------------------------


def test_expand_gives_the_cli_json_result_and_variants_get_seed_plus_i(fp32_tipo: TIPO) -> None:
    body = {"tags": "1girl, scenery", "nl": "a girl on a hill", "seed": 7, **SMALL}
    with client_for(fp32_tipo) as client:
        one = client.post("/v1/expand", json=body)
        many = client.post("/v1/expand", json={**body, "variants": 3})
    assert one.status_code == 200 and many.status_code == 200
    assert isinstance(one.json(), dict) and [r["seed"] for r in many.json()] == [7, 8, 9]
    request = ExpandRequest.create(**{k: v for k, v in body.items()})
    expected = [r.to_dict() for r in fp32_tipo.variants(request, 3)]
    assert [untimed(r) for r in many.json()] == [untimed(r) for r in expected]
    assert untimed(one.json()) == untimed(expected[0])


def untimed(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its clock readings."""
    steps = [{k: v for k, v in step.items() if k != "seconds"} for step in result["steps"]]
    return {**result, "timings": None, "steps": steps}


def test_a_stream_replays_to_each_steps_output(fp32_tipo: TIPO) -> None:
    body = {"tags": "1girl", "nl": "a cat", "seed": 3, "variants": 2, "stream": True,
            "ban": ["hat", ".*text"], **SMALL}  # fmt: skip
    with client_for(fp32_tipo) as client:
        response = client.post("/v1/expand", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert events[0][1] == {"variants": 2, "seeds": [3, 4]}
    assert names.count("result") == 2 and "error" not in names
    ends = {(d["variant"], d["step"]): d["record"] for n, d in events if n == "step_end"}
    starts = {(d["variant"], d["step"]): d for n, d in events if n == "step"}
    assert set(ends) == set(starts) and len(ends) >= 4
    texts = replay_stream(events)
    for key, record in ends.items():
        assert texts.get(key, "") == record["output"], key
        assert starts[key]["prompt"] == record["prompt"]
    results = {d["variant"]: d["result"] for n, d in events if n == "result"}
    for variant, result in results.items():
        outputs = [r["output"] for (v, _), r in sorted(ends.items()) if v == variant]
        assert [s["output"] for s in result["steps"]] == outputs


def test_requests_of_different_clients_share_decode_steps(fp32_tipo: TIPO) -> None:
    """Continuous batching: while two clients wait, the engine decodes both in one step."""
    app = create_app(ServerSettings(), tipo=fp32_tipo)
    scheduler = app.state.tipo_server.loop.stepper
    sizes: list[int] = []
    step = scheduler.step

    def counting_step() -> Any:
        result = step()
        sizes.append(len(scheduler.active))
        return result

    scheduler.step = counting_step
    try:
        with TestClient(app) as client:
            outcomes: list[int] = []

            def call(seed: int) -> None:
                body = {"tags": "1girl", "seed": seed, "tag_length": "long", "nl": "a girl"}
                outcomes.append(client.post("/v1/expand", json=body).status_code)

            threads = [threading.Thread(target=call, args=(s,)) for s in (1, 2, 3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        del scheduler.step
    assert outcomes == [200, 200, 200]
    assert max(sizes) >= 2


def test_protocol_models_templates_health(fp32_tipo: TIPO) -> None:
    with client_for(fp32_tipo) as client:
        body = {"tags": ["1girl", "solo"], "nl": "a girl", "task": "tag_to_long", "length": "short"}
        protocol = client.post("/v1/protocol", json=body).json()
        models = client.get("/v1/models").json()["data"]
        templates = client.get("/v1/templates").json()["templates"]
        health = client.get("/health")
    prompt = build_prompt(ModelRequest.create(**body))
    assert protocol == {"prompt": prompt, "token_ids": fp32_tipo.tokenizer.encode(prompt)}
    assert models[0]["backend"] == "torch" and models[0]["format"] == "float32"
    assert models[0]["context_length"] == fp32_tipo.backend.context_length
    assert {"illustrious", "tags-nl"} <= {t["name"] for t in templates}
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_the_body_model_lists_exactly_the_request_options() -> None:
    """ExpandBody documents the options; ExpandRequest.create is what accepts them."""
    valid = {f.name for f in dataclasses.fields(ExpandRequest)} - {"sampling"}
    valid |= {f.name for f in dataclasses.fields(ExpandRequest().sampling)} | {"width", "height"}
    assert set(ExpandBody.model_fields) == valid | {"variants", "stream"}


# -- metrics, security ------------------------------------------------------------------------


def test_metrics_count_tokens_requests_errors_and_latency(fp32_tipo: TIPO) -> None:
    with client_for(fp32_tipo) as client:
        client.post("/v1/expand", json={"tags": "1girl", "seed": 1, **SMALL})
        client.post("/v1/expand", json={"tags": 5})
        text = client.get("/metrics").text
    assert 'tipo_requests_total{status="200"} 1.0' in text
    assert 'tipo_request_errors_total{kind="invalid_request"} 1.0' in text
    assert "tipo_request_duration_seconds_count 1.0" in text
    assert "tipo_time_to_first_token_seconds_count 1.0" in text
    lines = text.splitlines()
    tokens = next(line for line in lines if line.startswith("tipo_generated_tokens_total"))
    assert float(tokens.split()[1]) > 0
    for gauge in ("tipo_queue_depth", "tipo_batch_size", "tipo_tokens_per_second"):
        assert f"# TYPE {gauge} gauge" in text


def test_api_key_guards_v1_and_metrics_but_not_health_or_the_page(fp32_tipo: TIPO) -> None:
    with client_for(fp32_tipo, api_key="s3cret") as client:
        body = {"tags": "1girl", "seed": 1, **SMALL}
        missing = client.post("/v1/expand", json=body)
        wrong = client.post("/v1/expand", json=body, headers={"Authorization": "Bearer nope"})
        basic = client.get("/v1/models", headers={"Authorization": "Basic s3cret"})
        right = client.post("/v1/expand", json=body, headers={"Authorization": "Bearer s3cret"})
        metrics = client.get("/metrics")
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200
    for refused in (missing, wrong, basic, metrics):
        assert refused.status_code == 401
        assert refused.json()["error"]["kind"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200


def test_page_has_a_strict_csp_and_cors_is_off_unless_asked(fp32_tipo: TIPO) -> None:
    with client_for(fp32_tipo) as client:
        page = client.get("/")
        preflight = client.options("/v1/expand", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in preflight.headers
    with client_for(fp32_tipo, cors_origin="https://app.example") as client:
        allowed = client.options("/v1/expand", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
        other = client.options("/v1/expand", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


# -- overload, time, failures -----------------------------------------------------------------


def slow_script(delay: float) -> Any:
    def script(prompt: str, request: GenerationRequest) -> str:
        if "boom" in prompt:
            raise RuntimeError("the model exploded")
        time.sleep(delay)
        return toy_script(prompt, request)

    return script


def scripted_tipo(tiny_checkpoint: Path, delay: float = 0.0) -> TIPO:
    tokenizer = TIPO.load(str(tiny_checkpoint), backend="fake", offline=True).tokenizer
    return TIPO(ScriptedBackend(tokenizer, slow_script(delay)), tokenizer)


def test_a_full_server_answers_429_with_retry_after(tiny_checkpoint: Path) -> None:
    tipo = scripted_tipo(tiny_checkpoint, delay=0.3)
    with client_for(tipo, max_batch=1, max_queue=1) as client:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(
            client.post("/v1/expand", json={"tags": "1girl", "seed": 1}).status_code))
            for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(0.1)
        full = client.post("/v1/expand", json={"tags": "1girl", "variants": 1})
        too_many = client.post("/v1/expand", json={"tags": "1girl", "variants": 3})
        for t in threads:
            t.join()
        after = client.post("/v1/expand", json={"tags": "1girl"})
    assert statuses == [200, 200]
    for refused in (full, too_many):
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["kind"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
    assert after.status_code == 200


def test_a_request_past_its_time_gets_504_and_frees_its_place(tiny_checkpoint: Path) -> None:
    tipo = TIPO.load(str(tiny_checkpoint), backend="torch", dtype="float32", offline=True)
    app = create_app(ServerSettings(timeout=0.3), tipo=tipo)
    loop = app.state.tipo_server.loop
    with TestClient(app) as client:
        body = {"tags": "1girl", "nl": "a girl", "tag_length": "very_long", "variants": 4,
                "nl_length": "very_long", "max_new_tokens": 512, "control": False}  # fmt: skip
        late = client.post("/v1/expand", json=body)
        stream = client.post("/v1/expand", json={**body, "stream": True})
        deadline = time.monotonic() + 5
        while loop.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loop.admitted == 0 and not loop.stepper.active
        assert client.post("/v1/expand", json={"tags": "1girl", **SMALL}).status_code == 200
    tipo.close()
    assert late.status_code == 504 and late.json()["error"]["kind"] == "timeout"
    errors = [d for n, d in parse_sse(stream.text) if n == "error"]
    assert errors and errors[0]["error"]["kind"] == "timeout"


def test_a_backend_failure_fails_its_batch_and_the_loop_goes_on(tiny_checkpoint: Path) -> None:
    with client_for(scripted_tipo(tiny_checkpoint)) as client:
        failed = client.post("/v1/expand", json={"tags": "boom"})
        streamed = client.post("/v1/expand", json={"tags": "boom", "stream": True})
        fine = client.post("/v1/expand", json={"tags": "1girl", "seed": 1})
        assert client.get("/health").status_code == 200
    assert failed.status_code == 500
    assert failed.json()["error"]["kind"] == "backend"
    assert "exploded" in failed.json()["error"]["message"]
    assert [n for n, _ in parse_sse(streamed.text)][-2:] == ["error", "done"]
    assert fine.status_code == 200 and fine.json()["seed"] == 1


def test_a_client_that_hangs_up_frees_its_sequences(tiny_checkpoint: Path) -> None:
    """Streaming and plain requests alike: the engine drops the sequences of a client that is
    gone within a step or so (here: well before they could have finished)."""
    tipo = TIPO.load(str(tiny_checkpoint), backend="torch", dtype="float32", offline=True)
    app = create_app(ServerSettings(), tipo=tipo)
    loop = app.state.tipo_server.loop
    body = {"tags": "1girl", "nl": "a girl", "tag_length": "very_long", "variants": 8,
            "nl_length": "very_long", "max_new_tokens": 512, "control": False}  # fmt: skip
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/expand", json={**body, "stream": True}) as stream:
            lines = stream.iter_lines()
            assert any("event: token" in line for line in lines)
        _wait_until_idle(loop)
        assert 'tipo_requests_total{status="499"} 1.0' in client.get("/metrics").text
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the socket
            client.post("/v1/expand", json=body, timeout=0.3)
        _wait_until_idle(loop)
        assert client.get("/health").status_code == 200
    tipo.close()


def _wait_until_idle(loop: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while (loop.admitted or loop.stepper.active) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.admitted == 0 and not loop.stepper.active


# -- startup ----------------------------------------------------------------------------------


def test_serve_without_a_model_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--model", "/no/such/folder", "--offline"])
    err = capsys.readouterr().err
    assert code == 3 and "tipo: error:" in err and "Traceback" not in err


def test_serve_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIPO_API_KEY", "from-env")
    monkeypatch.setenv("TIPO_URL", "http://a:1/v1,http://b:2/v1")
    monkeypatch.setenv("TIPO_MAX_BATCH", "4")
    settings = ServerSettings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-env"
    assert settings.url == ("http://a:1/v1", "http://b:2/v1") and settings.max_batch == 4
    assert ServerSettings(max_batch=8).max_batch == 8


@pytest.mark.parametrize(("pattern", "risky"), [
    ("(a+)+$", True), ("((a|b)*)*c", True), ("(a|aa)+", True), ("(?:x|y+){2,}", True),
    (".*a.*b.*c", True), ("a*b*c*d", True),
    (".*text", False), ("official*", False), ("(english|chinese) text", False),
    ("[(a+)]+", False), (r"\(a+\)+", False), ("(ab)*", False), ("(?i)logo.*", False),
])  # fmt: skip
def test_ban_patterns_that_could_backtrack_for_long_are_refused(pattern: str, risky: bool) -> None:
    assert (backtracking_risk(pattern) is not None) == risky
