"""The torch engine against transformers on tiny random checkpoints: logits, greedy tokens,
batching, prefix sharing, sampling semantics, constraints, streaming and checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from checkpoints import make_tiny_checkpoint  # noqa: E402
from tipo.backends import load_backend  # noqa: E402
from tipo.backends.base import GenerationRequest  # noqa: E402
from tipo.checkpoints import resolve  # noqa: E402
from tipo.engine.config import EngineConfig  # noqa: E402
from tipo.engine.engine import Engine, sequence_logits  # noqa: E402
from tipo.engine.weights import load_model, read_header, write_safetensors  # noqa: E402
from tipo.errors import BackendError, CheckpointError, InvalidRequestError  # noqa: E402
from tipo.sampling import SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=64)
SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, max_new_tokens=24)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompt(length: int, seed: int = 0) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return (1, *torch.randint(3, 32000, (length - 1,), generator=g).tolist())


def hf_model(path: Path):  # -> LlamaForCausalLM
    return transformers.LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def hf_greedy(model, ids: tuple[int, ...], new_tokens: int, penalty: float = 1.0) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=new_tokens, repetition_penalty=penalty,
                             eos_token_id=2, pad_token_id=2)  # fmt: skip
    tokens = out[0, len(ids) :].tolist()
    return tokens[:-1] if tokens and tokens[-1] == 2 else tokens


def requests(prompts, params=GREEDY, seeds=None, constraints=None):
    seeds = seeds or [0] * len(prompts)
    constraints = constraints or [None] * len(prompts)
    rows = zip(prompts, seeds, constraints, strict=True)
    return [GenerationRequest(p, params, s, c) for p, s, c in rows]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Engine:
    return Engine.load(tiny_checkpoint, dtype="float32")


# -- config ------------------------------------------------------------------------------------


def test_presets_are_exact_names_and_unknown_names_list_the_valid_ones() -> None:
    config = EngineConfig.from_name("tipo-200m")
    assert (config.hidden_size, config.num_layers, config.num_heads) == (768, 20, 12)
    assert (config.intermediate_size, config.vocab_size, config.head_dim) == (2304, 32013, 64)
    with pytest.raises(CheckpointError, match="tipo-200m"):
        EngineConfig.from_name("TIPO-200M")


def test_config_validates_itself() -> None:
    with pytest.raises(CheckpointError, match="num_kv_heads"):
        EngineConfig(vocab_size=10, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=3,
                     intermediate_size=8)  # fmt: skip


def test_config_from_hf_reads_the_tiny_checkpoint(tiny_gqa_checkpoint: Path) -> None:
    raw = json.loads((tiny_gqa_checkpoint / "config.json").read_text())
    config = EngineConfig.from_hf_config(raw)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    assert config.eos_token_id == 2 and not config.tie_word_embeddings


@pytest.mark.parametrize("scaling", [{"type": "linear", "factor": 2.0},
                                     {"rope_type": "llama3", "factor": 8.0}])  # fmt: skip
def test_unsupported_rope_scaling_is_a_checkpoint_error(scaling: dict) -> None:
    raw = EngineConfig.from_name("tipo-200m").to_hf_config() | {"rope_scaling": scaling}
    with pytest.raises(CheckpointError, match="RoPE scaling"):
        EngineConfig.from_hf_config(raw)


def test_default_rope_parameters_are_accepted() -> None:
    raw = EngineConfig.from_name("tipo-200m").to_hf_config()
    raw["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    assert EngineConfig.from_hf_config(raw).rope_theta == 500000.0


# -- logits and greedy parity with transformers ---------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_gqa_checkpoint"])
def test_fp32_logits_match_transformers(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    ids = prompt(48)
    with torch.no_grad():
        expected = hf_model(path)(torch.tensor([ids])).logits[0]
    actual = sequence_logits(load_model(path, "float32"), ids)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_gqa_checkpoint"])
def test_greedy_tokens_match_transformers_generate(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(fixture)
    model, engine = hf_model(path), Engine.load(path, dtype="float32")
    for ids in (prompt(7, 1), prompt(30, 2)):
        expected = hf_greedy(model, ids, 80)
        assert len(expected) == 80
        assert engine.generate(requests([ids], GREEDY.with_(max_new_tokens=80)))[0].token_ids == (
            expected
        )


def test_greedy_with_repetition_penalty_matches_transformers(tiny_checkpoint: Path) -> None:
    ids = prompt(20, 3)
    expected = hf_greedy(hf_model(tiny_checkpoint), ids, 64, penalty=1.3)
    engine = Engine.load(tiny_checkpoint, dtype="float32")
    params = GREEDY.with_(repetition_penalty=1.3)
    assert engine.generate(requests([ids], params))[0].token_ids == expected


def test_batched_ragged_prompts_give_the_one_at_a_time_tokens(tiny_gqa_checkpoint: Path) -> None:
    prompts = [prompt(n, n) for n in (3, 40, 11, 25)]
    alone = [Engine.load(tiny_gqa_checkpoint, dtype="float32").generate(requests([p]))[0]
             for p in prompts]  # fmt: skip
    batched = Engine.load(tiny_gqa_checkpoint, dtype="float32").generate(requests(prompts))
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_tied_embeddings_and_biases_match_transformers(tmp_path: Path) -> None:
    path = _variant_checkpoint(tmp_path, tie=True, bias=True)
    ids = prompt(20)
    with torch.no_grad():
        expected = hf_model(path)(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(sequence_logits(load_model(path, "float32"), ids), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def _variant_checkpoint(tmp_path: Path, *, tie: bool, bias: bool) -> Path:
    """The tiny checkpoint with tied embeddings and/or attention and MLP biases."""
    path = make_tiny_checkpoint(tmp_path / "variant", hidden_size=32, num_heads=2,
                                num_kv_heads=1, intermediate_size=64)  # fmt: skip
    config = json.loads((path / "config.json").read_text())
    config.update(tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias)
    (path / "config.json").write_text(json.dumps(config))
    tensors = _read_all(path / "model.safetensors")
    if tie:
        del tensors["lm_head.weight"]
    g = torch.Generator().manual_seed(5)
    for name in list(tensors):
        if bias and name.endswith("_proj.weight"):
            rows = tensors[name].shape[0]
            tensors[name.replace(".weight", ".bias")] = torch.randn(rows, generator=g) * 0.1
    write_safetensors(path / "model.safetensors", tensors)
    return path


def _read_all(path: Path) -> dict:
    from tipo.engine.weights import TensorReader

    with TensorReader(path.parent) as reader:
        return {name: reader.read([name]) for name in read_header(path)}


def test_sharded_and_bf16_checkpoints_load(tmp_path: Path, tiny_checkpoint: Path) -> None:
    shard_dir = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoint, shard_dir)
    tensors = _read_all(shard_dir / "model.safetensors")
    (shard_dir / "model.safetensors").unlink()
    names = list(tensors)
    weight_map = {}
    for index, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-0000{index + 1}-of-00002.safetensors"
        write_safetensors(shard_dir / file, {n: tensors[n] for n in part})
        weight_map.update(dict.fromkeys(part, file))
    index_json = {"metadata": {}, "weight_map": weight_map}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index_json))
    ids = prompt(16)
    expected = sequence_logits(load_model(tiny_checkpoint, "float32"), ids)
    torch.testing.assert_close(sequence_logits(load_model(shard_dir, "float32"), ids), expected)
    bf16_dir = make_tiny_checkpoint(tmp_path / "bf16", dtype="bfloat16")
    bf16_logits = sequence_logits(load_model(bf16_dir, "float32"), ids)
    assert (bf16_logits - expected).abs().max() < 0.05


# -- prefix sharing ----------------------------------------------------------------------------


def test_prefix_sharing_gives_the_same_tokens_as_no_sharing(tiny_checkpoint: Path) -> None:
    base = prompt(30, 7)
    batch = requests([base] * 4, SAMPLED, seeds=[1, 2, 3, 4])
    shared = Engine.load(tiny_checkpoint, dtype="float32").generate(batch)
    alone = [Engine.load(tiny_checkpoint, dtype="float32").generate([r])[0] for r in batch]
    assert [g.token_ids for g in shared] == [g.token_ids for g in alone]
    assert [g.extra["cached_prompt_tokens"] for g in shared] == [0, 29, 29, 29]
    assert all(g.extra["cached_prompt_tokens"] == 0 for g in alone)


@pytest.mark.parametrize("ragged", [False, True])
def test_shared_prefix_attention_equals_attention_over_each_row(ragged: bool) -> None:
    """Reading the common prefix once and merging with each row's suffix by log-sum-exp gives
    what attention over each row's whole cache gives (GQA: 4 query heads on 2 KV heads)."""
    import torch.nn.functional as F

    from tipo.engine.model import decode_pass, shared_prefix_attention

    g = torch.Generator().manual_seed(0)
    rows, kv_heads, heads, d, shared = 3, 2, 4, 16, 20
    lengths = [33, 29, 35] if ragged else [33, 33, 33]
    keys = torch.randn(rows, kv_heads, 48, d, generator=g)
    values = torch.randn(rows, kv_heads, 48, d, generator=g)
    keys[1:, :, :shared], values[1:, :, :shared] = keys[0, :, :shared], values[0, :, :shared]
    q = torch.randn(rows, heads, 1, d, generator=g)
    p = decode_pass(lengths, torch.device("cpu"), shared=shared)
    assert p.shared == shared and (p.mask is not None) == ragged
    expected = F.scaled_dot_product_attention(
        q, keys[:, :, : p.length].repeat_interleave(2, 1),
        values[:, :, : p.length].repeat_interleave(2, 1), attn_mask=p.mask,
    )  # fmt: skip
    got = shared_prefix_attention(q, keys, values, p, kv_heads)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_variants_decode_the_same_with_the_prefix_read_once(
    tiny_gqa_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tipo.engine.model as model_module

    batch = requests([prompt(40, 3)] * 5, SAMPLED, seeds=[1, 2, 3, 4, 5])
    calls = []
    real = model_module.shared_prefix_attention
    monkeypatch.setattr(model_module, "shared_prefix_attention",
                        lambda *a: calls.append(1) or real(*a))  # fmt: skip
    once = Engine.load(tiny_gqa_checkpoint, dtype="float32").generate(batch)
    assert calls  # the variants did take the shared-prefix path
    monkeypatch.setattr(model_module, "SHARED_PREFIX_MIN", 10**9)
    calls.clear()
    per_row = Engine.load(tiny_gqa_checkpoint, dtype="float32").generate(batch)
    assert not calls
    assert [g.token_ids for g in once] == [g.token_ids for g in per_row]


def test_prefix_cache_is_reused_by_the_next_call(tiny_checkpoint: Path) -> None:
    engine = Engine.load(tiny_checkpoint, dtype="float32")
    first, second = prompt(40, 8), prompt(40, 8)[:25] + prompt(10, 9)[1:]
    engine.generate(requests([first]))
    reused = engine.generate(requests([second]))[0]
    assert reused.extra["cached_prompt_tokens"] == 25
    fresh = Engine.load(tiny_checkpoint, dtype="float32").generate(requests([second]))[0]
    assert reused.token_ids == fresh.token_ids


# -- sampling --------------------------------------------------------------------------------------


def test_sampling_is_reproducible_per_seed_and_independent_of_the_batch(engine: Engine) -> None:
    prompts = [prompt(12, 1), prompt(20, 2), prompt(12, 1)]
    first = engine.generate(requests(prompts, SAMPLED, seeds=[10, 11, 12]))
    again = engine.generate(requests(prompts, SAMPLED, seeds=[10, 11, 12]))
    alone = engine.generate(requests(prompts[1:2], SAMPLED, seeds=[11]))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert first[1].token_ids == alone[0].token_ids
    assert first[0].token_ids != first[2].token_ids  # same prompt, other seed


def test_temperature_zero_is_argmax(engine: Engine) -> None:
    ids = prompt(10, 4)
    tokens = engine.generate(requests([ids], GREEDY.with_(max_new_tokens=8)))[0].token_ids
    logits = sequence_logits(engine.model, ids + tuple(tokens))
    assert logits[len(ids) - 1 : -1].argmax(-1).tolist() == tokens


# -- stopping, streaming, continuous batching -------------------------------------------------


def test_each_sequence_stops_at_its_own_eos(tmp_path: Path, tiny_checkpoint: Path) -> None:
    a, b = prompt(9, 21), prompt(14, 22)
    greedy_a = Engine.load(tiny_checkpoint, dtype="float32").generate(requests([a]))[0].token_ids
    eos = greedy_a[5]  # make the sixth greedy token of ``a`` the end-of-sequence id
    path = tmp_path / "eos"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text()) | {"eos_token_id": eos}
    (path / "config.json").write_text(json.dumps(config))
    out = Engine.load(path, dtype="float32").generate(requests([a, b]))
    assert out[0].finish_reason == "eos" and out[0].token_ids == greedy_a[: greedy_a.index(eos)]
    if eos not in out[1].token_ids:
        assert out[1].finish_reason == "length" and len(out[1].token_ids) == 64


def test_streaming_reports_each_token_in_order(engine: Engine) -> None:
    seen: list[tuple[int, int]] = []
    out = engine.generate(requests([prompt(5, 1), prompt(8, 2)], SAMPLED, seeds=[3, 4]),
                          on_token=lambda i, t: seen.append((i, t)))  # fmt: skip
    for index, generation in enumerate(out):
        assert [t for i, t in seen if i == index] == generation.token_ids
    first_two = [i for i, _ in seen[:2]]
    assert first_two == [0, 1]  # one token per sequence per step, in batch order


def test_scheduler_adds_and_cancels_between_steps(tiny_checkpoint: Path) -> None:
    engine = Engine.load(tiny_checkpoint, dtype="float32")
    scheduler = engine.scheduler
    a, b, c = prompt(6, 31), prompt(9, 32), prompt(13, 33)
    expected = {p: Engine.load(tiny_checkpoint, dtype="float32").generate(requests([p]))[0]
                for p in (a, c)}  # fmt: skip
    ha, hb = scheduler.add(requests([a])[0]), scheduler.add(requests([b])[0])
    collected: dict[int, list[int]] = {}
    with torch.inference_mode():
        for _ in range(5):
            for handle, token in scheduler.step().tokens:
                collected.setdefault(handle, []).append(token)
        cancelled = scheduler.cancel(hb)
        hc = scheduler.add(requests([c])[0])  # joins the running batch
        finished = {}
        while scheduler.busy:
            finished.update(scheduler.step().finished)
    assert cancelled is not None and cancelled.finish_reason == "stop"
    assert cancelled.token_ids == collected[hb] and len(collected[hb]) == 5
    assert finished[ha].token_ids == expected[a].token_ids
    assert finished[hc].token_ids == expected[c].token_ids
    assert scheduler.cancel(hb) is None


def test_scheduler_steps_outside_inference_mode_after_generate(engine: Engine) -> None:
    engine.generate(requests([prompt(6, 61)], GREEDY.with_(max_new_tokens=4)))
    handle = engine.scheduler.add(requests([prompt(6, 62)], GREEDY.with_(max_new_tokens=3))[0])
    finished = {}
    while engine.scheduler.busy:  # no inference_mode here: step() enters it itself
        finished.update(engine.scheduler.step().finished)
    assert len(finished[handle].token_ids) == 3


def test_too_long_prompts_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="at most"):
        engine.generate(requests([prompt(2048)]))


# -- constraints --------------------------------------------------------------------------------


class BanByMask:
    """Forbids ids in ``banned`` up front."""

    def __init__(self, banned: set[int]) -> None:
        self.banned = banned

    def mask_logits(self, logits) -> None:
        logits[list(self.banned)] = float("-inf")

    def accept(self, token_id: int) -> int:
        return 0


class BanByRollback:
    """Learns ``banned`` ids only when one is sampled: rolls it back and masks it from then on
    (greedy decoding must then give what ``BanByMask`` gives)."""

    def __init__(self, banned: set[int]) -> None:
        self.banned, self.learned, self.rollbacks = banned, set(), 0

    def mask_logits(self, logits) -> None:
        if self.learned:
            logits[list(self.learned)] = float("-inf")

    def accept(self, token_id: int) -> int:
        if token_id in self.banned:
            self.learned.add(token_id)
            self.rollbacks += 1
            return 1
        return 0


class RewindOnce:
    """After ``at`` tokens, discards the newest ``count`` once: greedy decoding regrows them."""

    def __init__(self, at: int, count: int) -> None:
        self.at, self.count, self.seen, self.done = at, count, 0, False

    def mask_logits(self, logits) -> None:
        pass

    def accept(self, token_id: int) -> int:
        self.seen += 1
        if self.seen == self.at and not self.done:
            self.done = True
            return self.count
        return 0


def test_rollback_in_a_batch_equals_masking_up_front(tiny_checkpoint: Path) -> None:
    prompts = [prompt(8, 41), prompt(15, 42), prompt(5, 43)]
    params = GREEDY.with_(repetition_penalty=1.3, max_new_tokens=40)
    free = Engine.load(tiny_checkpoint, dtype="float32").generate(requests(prompts, params))
    banned = set(free[1].token_ids[3:12:2])  # ids the middle sequence would produce
    masked = Engine.load(tiny_checkpoint, dtype="float32").generate(
        requests(prompts, params, constraints=[None, BanByMask(banned), None]))  # fmt: skip
    rollback = BanByRollback(banned)
    rolled = Engine.load(tiny_checkpoint, dtype="float32").generate(
        requests(prompts, params, constraints=[None, rollback, None]))  # fmt: skip
    assert not banned & set(masked[1].token_ids)
    assert [g.token_ids for g in rolled] == [g.token_ids for g in masked]
    assert rollback.rollbacks > 0 and rolled[1].extra["rollbacks"] == rollback.rollbacks
    assert rolled[0].token_ids == free[0].token_ids and rolled[2].token_ids == free[2].token_ids


def test_multi_token_rollback_restores_cache_and_penalty_state(tiny_checkpoint: Path) -> None:
    prompts = [prompt(8, 51), prompt(12, 52)]
    params = GREEDY.with_(repetition_penalty=1.3, max_new_tokens=30)
    free = Engine.load(tiny_checkpoint, dtype="float32").generate(requests(prompts, params))
    streamed: list[tuple[int, int]] = []
    rewound = Engine.load(tiny_checkpoint, dtype="float32").generate(
        requests(prompts, params, constraints=[RewindOnce(10, 4), None]),
        on_token=lambda i, t: streamed.append((i, t)),
    )
    assert [g.token_ids for g in rewound] == [g.token_ids for g in free]
    assert [t for i, t in streamed if i == 0] == rewound[0].token_ids  # no rolled-back tokens


# -- backend and checkpoint errors --------------------------------------------------------------


def test_auto_backend_is_the_torch_engine(tiny_checkpoint: Path) -> None:
    backend = load_backend("auto", resolve(tiny_checkpoint), dtype="float32")
    assert backend.name == "torch" and backend.capabilities.constraints
    assert backend.context_length == 2048
    out = backend.generate(requests([prompt(6)], GREEDY.with_(max_new_tokens=3)))
    assert len(out[0].token_ids) == 3
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.generate(requests([prompt(6)]))


def _broken_copy(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "broken"
    shutil.copytree(source, path)
    return path


def test_missing_weights_are_a_checkpoint_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = _broken_copy(tmp_path, tiny_checkpoint)
    tensors = _read_all(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_safetensors(path / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="lacks 1 weight"):
        load_model(path)


def test_wrong_shapes_are_a_checkpoint_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = _broken_copy(tmp_path, tiny_checkpoint)
    config = json.loads((path / "config.json").read_text()) | {"intermediate_size": 96}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shapes do not match"):
        load_model(path)


@pytest.mark.parametrize("damage", ["not json", "truncate", "no weights", "bad config"])
def test_damaged_checkpoints_are_checkpoint_errors(
    damage: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    path = _broken_copy(tmp_path, tiny_checkpoint)
    weights = path / "model.safetensors"
    if damage == "not json":
        (path / "config.json").write_text("{ not json")
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no weights":
        weights.unlink()
    else:
        config = json.loads((path / "config.json").read_text())
        del config["hidden_size"]
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_model(path)
