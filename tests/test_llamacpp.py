"""The llama.cpp backend on converted tiny checkpoints, against transformers.

The tiny checkpoints store F16-representable weights (``dtype="float16"``), so the F16 GGUF holds
exactly the weights transformers computes with in fp32: what differs is llama.cpp's arithmetic
(F16 activations in matrix products), ~3e-4 on logits of magnitude ~0.8 here. A random model's
top-2 logits are sometimes that close, so the greedy comparisons use fixed seeds whose paths
keep a margin; a failure prints the margin at the first difference to tell a near-tie from a bug.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from checkpoints import make_tiny_checkpoint
from tipo.backends import load_backend
from tipo.backends.base import GenerationRequest
from tipo.checkpoints import Checkpoint, resolve
from tipo.errors import BackendError, InvalidRequestError, MissingDependencyError
from tipo.sampling import SamplingParams

# One thread: these models are tiny, and llama.cpp's spinning thread barriers stall badly when
# the test machine's cores are busy with other work (results do not depend on the count).
THREADS = 1
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=64)
# Token ids from the protocol doc's golden example: TIPO-shaped prompts.
PROMPTS = [
    (1, 21700, 29901, 2498, 13, 294, 1103, 11959, 29901, 29871, 29896, 29889, 29900, 13),
    (1, 4039, 29901, 29871, 29896, 29887, 5168, 29892, 5763, 708),
]


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _tiny(root: Path, **shape: Any) -> Path:
    folder = make_tiny_checkpoint(root, dtype="float16", **shape)
    from tipo.convert import convert

    convert(folder, folder / "model-F16.gguf")
    return folder


@pytest.fixture(scope="module")
def make_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tiny checkpoints with their F16 GGUF inside, by kind: "mha" (4 heads) or "gqa" (4 heads
    sharing 2 key/value heads), each built once."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            kv_heads = {"mha": 4, "gqa": 2}[kind]
            built[kind] = _tiny(tmp_path_factory.mktemp(kind) / "tiny", num_kv_heads=kv_heads)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def folder(make_folder: Any) -> Path:
    return make_folder("gqa")


@pytest.fixture(scope="module")
def backend(llama_cpp: Any, folder: Path) -> Any:
    loaded = load_backend("auto", resolve(folder / "model-F16.gguf"), n_threads=THREADS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module", params=["mha", "gqa"])
def pair(request: pytest.FixtureRequest, llama_cpp: Any, make_folder: Any) -> Any:
    """(llama.cpp backend, transformers model) on the same tiny checkpoint."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    path = make_folder(request.param)
    loaded = load_backend("llamacpp", resolve(path / "model-F16.gguf"), n_threads=THREADS)
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield loaded, model
    loaded.close()


def _hf_greedy(model: Any, prompt: tuple[int, ...], params: SamplingParams) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    output = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        repetition_penalty=params.repetition_penalty,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=2,
        pad_token_id=2,
    )
    tokens = output[0, len(prompt) :].tolist()
    return tokens[:-1] if tokens and tokens[-1] == 2 else tokens


def _hf_logits(model: Any, tokens: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def _generate(backend: Any, prompts: list[tuple[int, ...]], params: SamplingParams, **kw: Any):
    requests = [
        GenerationRequest(p, params, kw.get("seed", 0), kw.get("constraint")) for p in prompts
    ]
    return backend.generate(requests)


# --- parity with transformers ----------------------------------------------------------------


@pytest.mark.parametrize("penalty", [1.0, 1.17, 0.5])
def test_greedy_tokens_match_transformers(pair: Any, penalty: float) -> None:
    """Penalty 0.5 *rewards* seen tokens: it changes the path (see the next test), so the
    penalty rule and its window (prompt included) are compared too."""
    import numpy as np

    backend, hf_model = pair
    params = GREEDY.with_(repetition_penalty=penalty)
    for prompt, result in zip(PROMPTS, _generate(backend, PROMPTS, params), strict=True):
        expected = _hf_greedy(hf_model, prompt, params)
        at = _first_difference(result.token_ids, expected)
        if at is not None:
            top = np.sort(_hf_logits(hf_model, [*prompt, *expected[:at]])[-1])
            pytest.fail(
                f"differs at token {at}; transformers' top-2 margin {top[-1] - top[-2]:.1e}"
            )
        assert result.token_ids == expected
        assert len(result.token_ids) == 64 and result.finish_reason == "length"


def test_the_penalty_changes_the_greedy_path(backend: Any) -> None:
    plain = _generate(backend, PROMPTS, GREEDY)
    penalised = _generate(backend, PROMPTS, GREEDY.with_(repetition_penalty=0.5))
    assert [r.token_ids for r in plain] != [r.token_ids for r in penalised]


def test_logits_are_close_to_transformers(pair: Any) -> None:
    import numpy as np

    backend, hf_model = pair
    tokens = [*PROMPTS[0], *_generate(backend, PROMPTS[:1], GREEDY)[0].token_ids]
    ours, theirs = backend.sequence_logits(tokens), _hf_logits(hf_model, tokens)
    error = float(np.abs(ours - theirs).max())
    print(f"\nmax |logit error| llama.cpp F16 vs transformers fp32: {error:.2e} "
          f"(logits up to {np.abs(theirs).max():.2f})")  # fmt: skip
    assert error < 2e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


# --- batching, seeds, streaming --------------------------------------------------------------


def test_parallel_sequences_give_the_tokens_of_one_at_a_time(backend: Any) -> None:
    prompts = [*PROMPTS, (1, 32003, 32005, 13, 4039), PROMPTS[0] + (4039, 29901)]
    alone = [_generate(backend, [p], GREEDY)[0].token_ids for p in prompts]
    together = [r.token_ids for r in _generate(backend, prompts, GREEDY)]
    assert together == alone


def test_a_shared_prompt_prefix_is_computed_once_and_copied(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same batch with and without prefix sharing: identical sampled tokens, fewer tokens read.
    (A request decoded alone can differ after a near-tie: llama.cpp's one-row and many-row
    matrix kernels round differently, so sampled runs are compared batch for batch.)"""
    from tipo.backends import llamacpp_lib

    fed: list[int] = []  # tokens per llama_decode call
    decode = llamacpp_lib.LlamaContext.decode

    def counting(self: Any, tokens: Any, *rest: Any) -> None:
        fed.append(len(tokens))
        decode(self, tokens, *rest)

    monkeypatch.setattr(llamacpp_lib.LlamaContext, "decode", counting)
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    requests = [GenerationRequest(PROMPTS[0], params, seed) for seed in range(4)]
    shared = [r.token_ids for r in backend.generate(requests)]
    shared_reads, fed[:] = fed[:2], []
    backend.share_prefix = False
    try:
        unshared = [r.token_ids for r in backend.generate(requests)]
    finally:
        backend.share_prefix = True
    assert shared == unshared
    assert len({tuple(t) for t in shared}) == 4  # the seeds really differ
    assert shared_reads == [len(PROMPTS[0]) - 1, 4] and fed[0] == 4 * len(PROMPTS[0])


def test_shared_prefix_leaves_every_sequence_a_token_of_its_own() -> None:
    from tipo.backends.llamacpp import _shared_prefix

    assert _shared_prefix([list(range(20))] * 3) == 19
    assert _shared_prefix([list(range(20)), [*range(10), 99]]) == 10
    assert _shared_prefix([list(range(20)), [0, 1, 2, 99]]) == 0  # too short to be worth it
    assert _shared_prefix([list(range(20))]) == 0


def test_batches_larger_than_a_context_run_in_chunks(backend: Any) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=4)
    requests = [GenerationRequest(PROMPTS[1], params, seed) for seed in range(5)]
    backend.max_parallel, limit = 2, backend.max_parallel
    try:
        chunked = [r.token_ids for r in backend.generate(requests)]
    finally:
        backend.max_parallel = limit
    assert chunked == [r.token_ids for r in backend.generate(requests)]


def test_same_seed_same_tokens(backend: Any) -> None:
    params = SamplingParams(temperature=0.8, top_k=60, top_p=0.95, min_p=0.05, max_new_tokens=32)
    first = _generate(backend, PROMPTS, params, seed=7)
    again = _generate(backend, PROMPTS, params, seed=7)
    other = _generate(backend, PROMPTS, params, seed=8)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]


def test_top_k_1_samples_the_greedy_token(backend: Any) -> None:
    sampled = _generate(backend, PROMPTS, SamplingParams(temperature=0.9, top_k=1, min_p=0,
                                                         repetition_penalty=1.0,
                                                         max_new_tokens=64))  # fmt: skip
    greedy = _generate(backend, PROMPTS, GREEDY)
    assert [r.token_ids for r in sampled] == [r.token_ids for r in greedy]


def test_tokens_stream_as_they_are_sampled(backend: Any) -> None:
    seen: list[tuple[int, int]] = []
    requests = [GenerationRequest(p, GREEDY.with_(max_new_tokens=5), 0) for p in PROMPTS]
    results = backend.generate(requests, on_token=lambda i, t: seen.append((i, t)))
    for index, result in enumerate(results):
        assert [t for i, t in seen if i == index] == result.token_ids
        assert result.finish_reason == "length" and len(result.token_ids) == 5
        assert result.prompt_tokens == len(PROMPTS[index])
        assert result.prefill_seconds > 0 and result.decode_seconds > 0


# --- constraints ------------------------------------------------------------------------------


class Ban:
    """Masks fixed token ids; records what the backend passes in."""

    def __init__(self, banned: set[int]) -> None:
        self.banned, self.accepted, self.logits_types = banned, [], set()

    def mask_logits(self, logits: Any) -> None:
        self.logits_types.add((type(logits).__name__, tuple(logits.shape), str(logits.dtype)))
        for token in self.banned:
            logits[token] = float("-inf")

    def accept(self, token_id: int) -> int:
        self.accepted.append(token_id)
        return 0


class BanAfterTheFact(Ban):
    """Sees ``trigger`` only after it was sampled: bans it and discards ``discard`` tokens, as a
    regex ban that matches a completed tag rolls the tag back."""

    def __init__(self, trigger: int, discard: int) -> None:
        super().__init__(set())
        self.trigger, self.discard = trigger, discard

    def accept(self, token_id: int) -> int:
        super().accept(token_id)
        if token_id == self.trigger and token_id not in self.banned:
            self.banned.add(token_id)
            return self.discard
        return 0


def test_a_constraint_masks_logits_before_sampling(backend: Any) -> None:
    free = _generate(backend, PROMPTS[:1], GREEDY)[0].token_ids
    ban = Ban(set(free[:8]))
    constrained = _generate(backend, PROMPTS[:1], GREEDY, constraint=ban)[0].token_ids
    assert not ban.banned & set(constrained)
    assert ban.accepted == constrained
    assert ban.logits_types == {("Tensor", (32013,), "torch.float32")}


@pytest.mark.parametrize(("after", "discard"), [(3, 1), (6, 3)])
@pytest.mark.parametrize("penalty", [1.0, 1.17])
def test_a_rollback_resumes_from_the_shorter_sequence(
    backend: Any, after: int, discard: int, penalty: float
) -> None:
    """Banning token x when it first appears (past ``after`` tokens) and rolling back must give
    what banning it from the start gives: the KV cache and the penalty history were both
    rolled back. ``discard`` > 1 also drops tokens before x, which are then decoded again."""
    params = GREEDY.with_(repetition_penalty=penalty, max_new_tokens=24)
    for prompt, result in zip(PROMPTS, _generate(backend, PROMPTS, params), strict=True):
        free = result.token_ids
        fresh = [t for i, t in enumerate(free) if i >= after and t not in free[:i]]
        if not fresh:
            continue  # this greedy path loops over earlier tokens
        expected = _generate(backend, [prompt], params, constraint=Ban({fresh[0]}))[0]
        trigger = BanAfterTheFact(fresh[0], discard)
        rolled = _generate(backend, [prompt], params, constraint=trigger)[0]
        assert rolled.token_ids == expected.token_ids
        return
    pytest.fail("no prompt gives a greedy path with a fresh token to ban")


def test_a_constraint_can_end_a_sequence_with_eos(backend: Any) -> None:
    class ForceEos(Ban):
        def mask_logits(self, logits: Any) -> None:
            if len(self.accepted) == 3:
                logits[:2] = float("-inf")
                logits[3:] = float("-inf")

    result = _generate(backend, PROMPTS[:1], GREEDY, constraint=ForceEos(set()))[0]
    assert result.finish_reason == "eos" and len(result.token_ids) == 3


def test_a_constraint_that_always_rolls_back_cannot_spin_forever(backend: Any) -> None:
    from tipo.backends.llamacpp import ROLLBACK_BUDGET

    class Regret(Ban):
        def accept(self, token_id: int) -> int:
            super().accept(token_id)
            return 1

    regret = Regret(set())
    result = _generate(backend, PROMPTS[:1], GREEDY.with_(max_new_tokens=4), constraint=regret)[0]
    assert result.token_ids == [] and result.finish_reason == "length"
    assert len(regret.accepted) == ROLLBACK_BUDGET * 4


def test_a_constraint_that_bans_everything_is_an_error(backend: Any) -> None:
    class BanAll(Ban):
        def mask_logits(self, logits: Any) -> None:
            logits[:] = float("-inf")

    with pytest.raises(BackendError, match="banned every token"):
        _generate(backend, PROMPTS[:1], GREEDY, constraint=BanAll(set()))


# --- loading and errors -----------------------------------------------------------------------


def test_capabilities_and_context(backend: Any) -> None:
    caps = backend.capabilities
    flags = (caps.batched, caps.streaming, caps.constraints, caps.rollback, caps.prefix_sharing)
    assert flags == (True,) * 5
    assert backend.context_length == 2048 and backend.name == "llamacpp"


def test_bad_requests_are_refused(backend: Any) -> None:
    with pytest.raises(InvalidRequestError, match="context"):
        _generate(backend, [(1,) * 2048], GREEDY)
    with pytest.raises(InvalidRequestError, match="outside"):
        _generate(backend, [(1, 32013)], GREEDY)


def test_load_refuses_what_it_cannot_run(llama_cpp: Any, folder: Path, tmp_path: Path) -> None:
    from tipo.backends import llamacpp

    with pytest.raises(BackendError, match="not Hugging Face folders"):
        llamacpp.load(resolve(folder))
    gguf_checkpoint = resolve(folder / "model-F16.gguf")
    with pytest.raises(InvalidRequestError, match="dtype"):
        llamacpp.load(gguf_checkpoint, dtype="float16")
    with pytest.raises(InvalidRequestError, match="not 'mps'"):
        llamacpp.load(gguf_checkpoint, device="mps")
    with pytest.raises(InvalidRequestError, match="n_thread") as error:
        llamacpp.load(gguf_checkpoint, n_thread=2)
    assert "n_threads" in (error.value.hint or "")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes((folder / "model-F16.gguf").read_bytes()[:100_000])
    with pytest.raises(BackendError, match="could not load") as error:
        llamacpp.load(Checkpoint(broken, "gguf", str(broken), folder))
    assert "GGUF" in (error.value.hint or "")


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tipo.backends import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes the import fail
    with pytest.raises(MissingDependencyError) as error:
        llamacpp.load(Checkpoint(tmp_path / "x.gguf", "gguf", "x.gguf", tmp_path))
    assert 'pip install "tipo-prompt[llamacpp]"' in str(error.value)


def test_stderr_stays_clean(llama_cpp: Any, folder: Path, capfd: pytest.CaptureFixture) -> None:
    """llama.cpp logs to the C stderr (fd 2) unless told otherwise."""
    from tipo.backends import llamacpp

    loaded = llamacpp.load(resolve(folder / "model-F16.gguf"))
    _generate(loaded, PROMPTS, GREEDY.with_(max_new_tokens=4))
    loaded.close()
    assert capfd.readouterr().err == ""


def test_tied_embeddings_use_token_embd_as_the_output_head(
    llama_cpp: Any, folder: Path, tmp_path: Path
) -> None:
    """A checkpoint without lm_head (tie_word_embeddings): the GGUF has no output.weight and
    llama.cpp multiplies by token_embd, as transformers does."""
    import json

    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    from tipo.convert import convert

    tied = tmp_path / "tied"
    shutil.copytree(folder, tied, ignore=shutil.ignore_patterns("*.gguf"))
    weights = load_file(tied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    loaded = load_backend("llamacpp", resolve(convert(tied, tied / "m.gguf")), n_threads=THREADS)
    model = transformers.LlamaForCausalLM.from_pretrained(tied, dtype=torch.float32).eval()
    tokens = list(PROMPTS[0])
    error = np.abs(loaded.sequence_logits(tokens) - _hf_logits(model, tokens)).max()
    loaded.close()
    assert error < 2e-3


# --- quantised files and measurements ----------------------------------------------------------


def test_q8_0_quality_against_f16(llama_cpp: Any, folder: Path, tmp_path: Path) -> None:
    from tipo.bench.llamacpp import gguf_quality_report
    from tipo.convert import convert

    q8 = convert(folder, tmp_path / "model-Q8_0.gguf", "Q8_0")
    report = gguf_quality_report(folder / "model-F16.gguf", q8, new_tokens=64, n_threads=THREADS)
    print("\nQ8_0 vs F16:", {k: v for k, v in report.items() if isinstance(v, float)})
    assert report["max_abs_logit_error"] < 0.05 * report["reference_max_abs_logit"]
    assert report["top1_agreement"] > 0.9


def test_time_decode_reports_forced_lengths(llama_cpp: Any, folder: Path) -> None:
    from tipo.bench.llamacpp import time_decode_gguf

    path = folder / "model-F16.gguf"
    timing = time_decode_gguf(path, batch=3, prompt_len=12, new_tokens=10, n_threads=THREADS)
    assert timing["generated"] == [10, 10, 10]  # EOS ignored
    assert timing["tokens_per_second"] > 0 and timing["ttft_seconds"] > 0
    assert timing["peak_rss_mb"] > 0
