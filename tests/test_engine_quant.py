"""Weight formats: each runs, stays close to fp32, and its portable (non-CPU) path computes
what its CPU kernel computes; the quality report on a small trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tipo.backends.base import GenerationRequest  # noqa: E402
from tipo.bench.quality import (  # noqa: E402
    PROMPTS_FILE,
    TRAINED_CONFIG,
    make_trained_checkpoint,
    quality_report,
)
from tipo.engine.engine import Engine, sequence_logits  # noqa: E402
from tipo.engine.quant import (  # noqa: E402
    DynamicInt8Linear,
    Int4Linear,
    Int8Linear,
    make_linear,
    quantize_int4,
)
from tipo.engine.weights import load_model  # noqa: E402
from tipo.errors import BackendError  # noqa: E402
from tipo.sampling import SamplingParams  # noqa: E402

# Logit error allowed per format, relative to the spread (std) of the fp32 logits.
RELATIVE_TOLERANCE = {"bfloat16": 0.05, "float16": 0.01, "int8": 0.05, "int4": 0.25}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weight(rows: int = 48, cols: int = 64, seed: int = 0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("fmt", sorted(RELATIVE_TOLERANCE))
def test_each_format_stays_close_to_fp32(fmt: str, tiny_checkpoint: Path) -> None:
    ids = (1, *range(100, 140))
    reference = sequence_logits(load_model(tiny_checkpoint, "float32"), ids)
    logits = sequence_logits(load_model(tiny_checkpoint, fmt), ids)
    error = (logits - reference).abs().mean() / reference.std()
    assert error < RELATIVE_TOLERANCE[fmt]


@pytest.mark.parametrize("fmt", sorted(RELATIVE_TOLERANCE))
def test_each_format_generates_a_batch(fmt: str, tiny_gqa_checkpoint: Path) -> None:
    engine = Engine.load(tiny_gqa_checkpoint, dtype=fmt)
    params = SamplingParams(max_new_tokens=12)
    out = engine.generate([GenerationRequest((1, 5, 6, 7), params, seed=s) for s in range(8)])
    assert all(len(g.token_ids) == 12 or g.finish_reason == "eos" for g in out)


def test_unknown_formats_are_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(BackendError, match="int4"):
        load_model(tiny_checkpoint, "int3")


def restore_int4(codes, scales_zeros, group: int = 32):
    scale, zero = (t.float().t().repeat_interleave(group, dim=1) for t in scales_zeros.unbind(-1))
    return (codes.float() - 8) * scale + zero


def test_int4_codes_reconstruct_the_weight_within_half_a_step_of_the_clipped_range() -> None:
    w = weight(32, 128)
    codes, scales_zeros = quantize_int4(w)
    restored = restore_int4(codes, scales_zeros)
    scale = scales_zeros[..., 0].float().t().repeat_interleave(32, dim=1)
    low, high = restored.reshape(-1, 32).aminmax(dim=1)
    inside = (w.reshape(-1, 32) >= low[:, None] - scale.reshape(-1, 32) * 0.5) & (
        w.reshape(-1, 32) <= high[:, None] + scale.reshape(-1, 32) * 0.5
    )
    assert codes.min() >= 0 and codes.max() <= 15
    # Weights inside a group's (clipped) range round to the nearest level.
    error = (restored - w).abs().reshape(-1, 32)
    assert (error[inside] <= scale.reshape(-1, 32)[inside] * 0.5 + 1e-3).all()


def test_int4_range_search_never_does_worse_than_min_max() -> None:
    w = weight(64, 256)
    searched = restore_int4(*quantize_int4(w))
    plain = restore_int4(*quantize_int4(w, ratios=(1.0,)))
    per_group = [(r - w).square().reshape(-1, 32).sum(1) for r in (searched, plain)]
    assert (per_group[0] <= per_group[1] + 1e-9).all()
    assert per_group[0].sum() < per_group[1].sum()


def test_int4_groups_take_a_range_shrunk_by_one_of_the_given_ratios() -> None:
    w = weight(48, 128)
    groups = w.reshape(-1, 32)
    low, high = groups.amin(1), groups.amax(1)

    def scales_for(ratio: float) -> torch.Tensor:  # as the kernel stores them, [groups]
        return ((high - low) * ratio / 15).to(torch.bfloat16)

    for ratios in ((0.8,), (0.9, 0.8)):  # neither starts at the unclipped range
        scales = quantize_int4(w, ratios=ratios)[1][..., 0].t().reshape(-1)
        candidates = torch.stack([scales_for(r) for r in ratios])
        assert (candidates == scales).any(0).all(), ratios


def test_int4_models_keep_an_int8_output_head(tiny_checkpoint: Path) -> None:
    model = load_model(tiny_checkpoint, "int4")
    assert isinstance(model.lm_head, DynamicInt8Linear)
    assert isinstance(model.blocks[0].mlp.down, Int4Linear)


def test_int8_models_quantise_only_robust_inputs_per_call(tiny_checkpoint: Path) -> None:
    """Per-call activation quantisation only where its input tolerates it (gate_up, head);
    q/k/v, the attention output and the MLP down projection are weight-only."""
    model = load_model(tiny_checkpoint, "int8")
    block = model.blocks[0]
    assert isinstance(model.lm_head, DynamicInt8Linear)
    assert isinstance(block.mlp.gate_up, DynamicInt8Linear)
    for layer in (block.attn.qkv, block.attn.out, block.mlp.down):
        assert isinstance(layer, Int8Linear)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_int4_kernel_matches_the_portable_dequantised_path(rows: int) -> None:
    w, x = weight(40, 64), torch.randn(rows, 64, generator=torch.Generator().manual_seed(1))
    kernel = Int4Linear(w, None, large_batch_int8=False, cpu_kernel=True)
    portable = Int4Linear(w, None, large_batch_int8=False, cpu_kernel=False)
    expected = portable(x.bfloat16()).float()
    torch.testing.assert_close(kernel(x.bfloat16()).float(), expected, atol=2e-2, rtol=2e-2)
    assert kernel(x.bfloat16()).shape == (rows, 40)  # padded to 48 rows inside, sliced back


def test_int4_uses_its_int8_copy_for_large_batches() -> None:
    w = weight(32, 64)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    layer = Int4Linear(w, None)
    assert layer.int8 is not None
    expected = layer.int8(x.float()).to(torch.bfloat16)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x).float(), x.float() @ w.T, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("rows", [1, 4, 5, 16])
def test_weight_only_int8_kernels_match_the_portable_path(rows: int) -> None:
    """Up to SMALL_ROWS rows aten's int8-weight kernel, beyond the bf16 copy: both compute the
    int8 weights on bf16 activations, within bf16 rounding of the portable fp32 path."""
    w, bias = weight(), torch.randn(48) * 0.1
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(3))
    kernel, portable = Int8Linear(w, bias, cpu_kernel=True), Int8Linear(w, bias, cpu_kernel=False)
    assert kernel.large is not None and portable.large is None
    torch.testing.assert_close(kernel(x).float(), portable(x), atol=0.01, rtol=0.01)
    torch.testing.assert_close(portable(x), x @ w.T + bias, atol=0.01, rtol=0.01)


def test_weight_only_int8_rows_do_not_depend_on_each_other() -> None:
    """No per-call activation scale: a row computes the same alone as inside a batch."""
    layer = Int8Linear(weight(), None, cpu_kernel=True)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    x[2] *= 100  # an outlier row would coarsen a per-call scale for the others
    torch.testing.assert_close(layer(x)[0], layer(x[:1])[0], atol=0, rtol=0)


def test_dynamic_int8_is_close_to_fp32() -> None:
    w, bias = weight(), torch.randn(48) * 0.1
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    # fbgemm also quantises the activations (8 bits per call): close, not equal.
    torch.testing.assert_close(DynamicInt8Linear(w, bias)(x), x @ w.T + bias, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "float16"])
def test_float_formats_keep_the_weights(fmt: str) -> None:
    w = weight()
    x = torch.randn(2, 64).to(getattr(torch, fmt))
    out = make_linear(w, None, fmt)(x)
    torch.testing.assert_close(out.float(), (x @ w.to(x.dtype).T).float(), atol=1e-2, rtol=1e-2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TRAINED_CONFIG.with_(hidden_size=64, num_layers=2, intermediate_size=192)
    return make_trained_checkpoint(tmp_path_factory.mktemp("trained"), steps=30, config=config,
                                   batch=8, length=32)  # fmt: skip


def test_trained_checkpoint_is_a_loadable_folder_with_prompts(trained: Path) -> None:
    prompts = json.loads((trained / PROMPTS_FILE).read_text())
    assert len(prompts) == 4 and all(p[0] == 1 for p in prompts)
    config = json.loads((trained / "config.json").read_text())
    assert config["final_train_loss"] < 9.0  # it learned something (log 32013 = 10.4)


def test_quality_report_is_exact_for_the_reference_format(trained: Path) -> None:
    report = quality_report(trained, "float32", new_tokens=16)
    assert report["max_abs_logit_error"] == 0.0
    assert report["teacher_forced_agreement"] == 1.0 and report["greedy_agreement"] == 1.0


def test_quality_report_ranks_int4_below_bf16(trained: Path) -> None:
    int4 = quality_report(trained, "int4", new_tokens=16)
    bf16 = quality_report(trained, "bfloat16", new_tokens=16)
    assert set(int4) == set(bf16) and int4["prompts"] == 4
    assert 0 < bf16["mean_abs_logit_error"] < int4["mean_abs_logit_error"]
