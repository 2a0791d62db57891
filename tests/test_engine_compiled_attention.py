"""The opt-in compiled decode attention over a bf16 KV cache (engine/compiled_attention.py):
the same attention as SDPA over the same cache, the same logits as a prefill of the same model,
every pass kind (one row, ragged rows, rows sharing a prefix, with and without a mask), and
clear errors where it cannot run. Compiling takes a while (inductor, C++): one model per module."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tipo.engine.compiled_attention import COMPILED_KV_DTYPE, CompiledDecodeAttention  # noqa: E402
from tipo.engine.engine import Engine, sequence_logits  # noqa: E402
from tipo.engine.kv_cache import KVCache  # noqa: E402
from tipo.engine.model import Transformer, decode_pass, prefill_pass  # noqa: E402
from tipo.engine.weights import load_model  # noqa: E402
from tipo.errors import BackendError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def compiled() -> CompiledDecodeAttention:
    return CompiledDecodeAttention()


@pytest.fixture(scope="module")
def model(tiny_gqa_checkpoint: Path) -> Transformer:
    """fp32 weights (one kernel for any row count), a bf16 cache, the compiled decode."""
    return load_model(tiny_gqa_checkpoint, "float32", compile_attention=True)


@pytest.mark.parametrize(
    ("lengths", "shared"),
    [([30], 0), ([30, 26, 33], 0), ([30, 30, 30], 20), ([30, 26, 33], 20)],
    ids=["one row", "ragged rows", "shared prefix", "shared prefix, ragged"],
)
def test_compiled_attention_equals_sdpa_over_the_same_bf16_cache(
    compiled: CompiledDecodeAttention, lengths: list[int], shared: int
) -> None:
    g = torch.Generator().manual_seed(0)
    rows, kv_heads, heads, d = len(lengths), 2, 4, 16
    keys = torch.randn(rows, kv_heads, 48, d, generator=g).to(COMPILED_KV_DTYPE)
    values = torch.randn(rows, kv_heads, 48, d, generator=g).to(COMPILED_KV_DTYPE)
    keys[1:, :, :shared], values[1:, :, :shared] = keys[0, :, :shared], values[0, :, :shared]
    q = torch.randn(rows, heads, 1, d, generator=g)
    p = decode_pass(lengths, CPU, shared, torch.float32)
    assert p.shared == shared and (p.mask is not None) == (len(set(lengths)) > 1)
    expected = F.scaled_dot_product_attention(
        q, keys[:, :, : p.length].float().repeat_interleave(2, 1),
        values[:, :, : p.length].float().repeat_interleave(2, 1), attn_mask=p.mask,
    )  # fmt: skip
    got = compiled(q, keys, values, p)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["one row", "ragged rows", "variants of one prompt"])
def test_decoding_gives_the_logits_a_prefill_of_the_same_model_gives(
    model: Transformer, case: str
) -> None:
    """Rows decoded one token per pass through the compiled attention, against one prefill
    of each row's whole sequence (SDPA in fp32 over the same bf16-rounded keys and values)."""
    base = [1, *range(40, 64)]  # 25 tokens
    prompts = {
        "one row": [base],
        "ragged rows": [base, [1, *range(100, 118)], [1, *range(200, 230)]],
        # the third variant has two more tokens: a shared prefix and a ragged mask at once
        "variants of one prompt": [base, base, [*base, 300, 301]],
    }[case]
    steps = [[500 + 7 * row + step for row in range(len(prompts))] for step in range(6)]
    cache = KVCache(model.config, model.kv_dtype, CPU)
    cache.ensure(len(prompts), 64)
    decoded: list[list[torch.Tensor]] = [[] for _ in prompts]
    with torch.inference_mode():
        for row, tokens in enumerate(prompts):
            model(torch.tensor([tokens]), prefill_pass(row, 0, len(tokens), CPU), cache.tensors,
                  logits="none")  # fmt: skip
        lengths = [len(tokens) for tokens in prompts]
        shared = len(base) if case == "variants of one prompt" else 0
        for step in steps:
            p = decode_pass(lengths, CPU, shared, model.mask_dtype)
            assert p.shared == shared
            logits = model(torch.tensor([[t] for t in step]), p, cache.tensors)
            for row in range(len(prompts)):
                decoded[row].append(logits[row])
            lengths = [n + 1 for n in lengths]
    for row, tokens in enumerate(prompts):
        sequence = tokens + [step[row] for step in steps]
        expected = sequence_logits(model, sequence)[len(tokens) : len(sequence)]
        torch.testing.assert_close(torch.stack(decoded[row]), expected, atol=1e-4, rtol=1e-4)


def test_an_engine_compiles_at_load_and_never_while_generating(tiny_gqa_checkpoint: Path) -> None:
    """Load compiles every graph a batch needs (one row, rows, rows sharing a prefix), so no
    user's first batch waits for inductor; generation is reproducible per seed."""
    from torch._dynamo.utils import counters

    from tipo.backends.base import GenerationRequest
    from tipo.sampling import SamplingParams

    engine = Engine.load(tiny_gqa_checkpoint, dtype="float32", compile_attention=True)
    assert engine.scheduler.cache.dtype == COMPILED_KV_DTYPE
    graphs = counters["stats"]["unique_graphs"]
    params = SamplingParams(temperature=0.8, top_k=40, max_new_tokens=12)
    prompt = (1, *range(40, 70))
    variants = [GenerationRequest(prompt, params, seed=seed) for seed in (1, 2, 3)]
    ragged = [GenerationRequest((1, *range(100, 100 + n)), params, seed=n) for n in (9, 20, 33)]
    first = [g.token_ids for g in engine.generate(variants)]
    engine.generate(ragged)
    engine.generate(ragged[:1])
    assert [len(tokens) for tokens in first] == [12, 12, 12]
    assert [g.token_ids for g in engine.generate(variants)] == first
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_attention_is_refused_off_the_cpu(tiny_checkpoint: Path) -> None:
    with pytest.raises(BackendError, match="for the CPU"):
        load_model(tiny_checkpoint, "bfloat16", "meta", compile_attention=True)


def test_a_failed_compile_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object) -> None:
        raise RuntimeError("C++ compile error: g++ not found\nmore lines")

    attention = CompiledDecodeAttention()
    monkeypatch.setattr(CompiledDecodeAttention, "__call__", fails)
    with pytest.raises(BackendError, match="g\\+\\+ not found") as caught:
        attention.warm_up(kv_heads=2, head_dim=16, heads=4)
    assert "compile_attention" in (caught.value.hint or "")


def test_the_server_passes_the_flag_to_the_torch_backend_only(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from tipo.pipeline import TIPO
    from tipo.server import ServerSettings
    from tipo.server.app import load_tipo

    given: dict[str, object] = {}
    monkeypatch.setattr(TIPO, "load", staticmethod(lambda *a, **options: given.update(options)))
    load_tipo(ServerSettings(model=str(tiny_checkpoint), backend="torch", compile_attention=True))
    assert given["compile_attention"] is True
    with pytest.raises(BackendError, match="torch backend"):
        load_tipo(ServerSettings(model=str(tiny_checkpoint), backend="transformers",
                                 compile_attention=True))  # fmt: skip
