"""Linear layers per weight format, quantised at load time from the checkpoint's weights.

Each layer maps ``x [..., in_features]`` to ``[..., out_features]`` and declares the activation
dtype its kernel wants (``act_dtype``); the model runs its whole residual stream in that dtype.

| format   | weights                               | CPU kernel                          | act. |
|----------|---------------------------------------|-------------------------------------|------|
| float32  | fp32                                  | F.linear                            | fp32 |
| bfloat16 | bf16                                  | oneDNN linear, weights pre-packed   | bf16 |
| float16  | fp16                                  | F.linear                            | fp16 |
| int8     | int8 per output channel, symmetric    | fbgemm dynamic int8 (activations    | fp32 |
|          |                                       | quantised per call, per tensor);    |      |
|          |                                       | q/k/v, attention output and MLP down|      |
|          |                                       | weight-only (weight_only_format,    |      |
|          |                                       | Int8Linear)                         |      |
| int4     | 4-bit, groups of 32 along the input,  | aten._weight_int4pack_mm_for_cpu    | bf16 |
|          | asymmetric (scale + zero per group,   | for <= 5 rows; an int8 copy (fbgemm)|      |
|          | range clipped for least error);       | for larger batches and prefill      |      |
|          | the output head int8 (head_format)    |                                     |      |

The quantised kernels are CPU-only: on any other device the same quantised weights are
dequantised per call and run through F.linear, slower but correct by construction.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BackendError

WeightFormat = Literal["float32", "bfloat16", "float16", "int8", "int4"]
WEIGHT_FORMATS: tuple[str, ...] = ("float32", "bfloat16", "float16", "int8", "int4")
INT4_GROUP = 32
_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _overload(namespace: str, name: str) -> object:
    """``torch.ops.<namespace>.<name>.default``, or None where this torch lacks the op. A
    packet's own __call__ resolves the overload on every call, a few microseconds each, 80
    calls per token."""
    packet = getattr(getattr(torch.ops, namespace), name, None)
    return getattr(packet, "default", packet)


_fbgemm_linear = _overload("quantized", "linear_dynamic")
_mkldnn_linear = _overload("mkldnn", "_linear_pointwise")
_int4_mm = _overload("aten", "_weight_int4pack_mm_for_cpu")
_int8_mm = _overload("aten", "_weight_int8pack_mm")


def activation_dtype(fmt: str) -> torch.dtype:
    """The dtype the residual stream runs in for a weight format (see the table above)."""
    return {"int8": torch.float32, "int4": torch.bfloat16}.get(fmt) or _FLOAT_DTYPES[fmt]


def head_format(fmt: str) -> str:
    """The output head's weight format. int4 models keep an int8 head: the head's error goes
    straight into the logits (the mean KL to fp32 of the quality.py model fell by a tenth),
    and at batch 1 fbgemm's int8 GEMM is faster than the 4-bit kernel on this 32k x 768
    matrix (0.8 vs 1.2 ms measured on 2 cores)."""
    return "int8" if fmt == "int4" else fmt


def weight_only_format(fmt: str) -> str:
    """The format of the layers whose inputs do not tolerate per-call activation quantisation:
    the attention's q/k/v and output projections and the MLP's down projection. On the trained
    model of bench/quality.py, quantising every layer's input per call (fbgemm's dynamic int8)
    gave a mean KL to fp32 of 2.5e-3; with these three weight-only, 3.7e-4 (1.6e-4 on another
    training of that model; llama.cpp Q8_0 to its F16 file: 3.5e-4 and 1.6e-4). Most of it came
    from the down projection, whose input silu(gate) * up is heavy-tailed (it alone exact:
    7e-4). gate_up and the head stay dynamic (fbgemm is faster on them at batch 1 and they
    mattered least). Other formats are unchanged."""
    return "int8_weight_only" if fmt == "int8" else fmt


def kv_cache_dtype(fmt: str, device: torch.device) -> torch.dtype:
    """The KV cache's dtype. On CPU fp32 for every format: without AMX, SDPA on a bf16 cache
    converts every key and value to fp32 on each read, and measured 3-6x slower than on an fp32
    cache (decode, 12 heads, 300-1,500 positions, 2 cores), which at batch 16 was most of a
    step. Elsewhere the weights' float dtype, bf16 for the quantised formats (half the bytes,
    and GPUs have native bf16 attention)."""
    if device.type == "cpu":
        return torch.float32
    return _FLOAT_DTYPES.get(fmt, torch.bfloat16)


class DenseLinear(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features = weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class PackedBf16Linear(nn.Module):
    """bf16 weights pre-packed in oneDNN's blocked layout (CPU): its GEMM skips the per-call
    reordering F.linear does, which is most of the cost of a small-batch bf16 matmul."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return _mkldnn_linear(x, self.packed, self.bias, "none", [], "")

    @staticmethod
    def available(weight: Tensor) -> bool:
        return (weight.is_cpu and weight.dtype == torch.bfloat16
                and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))  # fmt: skip


class Int8Linear(nn.Module):
    """Weight-only int8: per-output-channel symmetric int8 weights, activations not quantised.

    On CPU a call of at most ``SMALL_ROWS`` rows (decoding up to that many sequences) runs
    aten's int8-weight kernel on bf16 activations, reading 1 byte per weight (per token on 2
    cores, TIPO-200M shapes: 59 vs fbgemm's 46 us on q/k/v, 13 vs 19 on the attention output,
    62 vs 56 on the MLP down projection). It is a matrix-vector loop, slow for more rows, so
    larger calls (prefill, batched decode) run oneDNN's bf16 GEMM on a bf16 copy of the same
    quantised weights (3 bytes per weight in memory in all). Unlike fbgemm's dynamic kernel,
    nothing depends on the activations' range, so a row's result does not depend on the other
    rows in its batch (see weight_only_format for what that does to the model's error).
    Elsewhere (GPU) the int8 weights are dequantised per call.
    """

    SMALL_ROWS = 4

    def __init__(self, weight: Tensor, bias: Tensor | None, cpu_kernel: bool | None = None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.qweight, scale = quantize_int8(weight)  # [out, in] int8, [out] fp32
        use_kernel = (weight.is_cpu if cpu_kernel is None else cpu_kernel) and _int8_mm is not None
        dtype = torch.bfloat16 if use_kernel else weight.dtype
        self.scale = scale.to(dtype)
        self.bias = None if bias is None else bias.to(dtype)
        self.large: nn.Module | None = None
        if use_kernel:
            dequantised = (self.qweight.float() * scale[:, None]).to(torch.bfloat16)
            self.large = make_linear(dequantised, self.bias, "bfloat16")

    def forward(self, x: Tensor) -> Tensor:
        """On the CPU kernels the result is bf16 whatever ``x`` is: the model's consumers (the
        residual addition, RoPE, the cache write) promote or cast it anyway, so casting back
        here would be one more op per layer and token."""
        if self.large is None:  # portable path
            out = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        if x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)
        if x.numel() > self.SMALL_ROWS * x.shape[-1]:
            return self.large.forward(x)
        out = _int8_mm(x.reshape(-1, x.shape[-1]), self.qweight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class DynamicInt8Linear(nn.Module):
    """Per-output-channel symmetric int8 weights run by fbgemm's dynamic-quantisation GEMM
    (CPU), which quantises the fp32 activations to uint8 per call (one scale per call, over the
    whole batch, so a row's rounding depends on the other rows). The fastest CPU GEMM from
    about 8 rows on, but the least faithful: it serves int4 models' large calls and head."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.bias = bias.float() if bias is not None else None
        self.packed = _fbgemm_pack(weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _fbgemm_linear(x if x.dtype == torch.float32 else x.float(), self.packed, False)

    @staticmethod
    def available(weight: Tensor) -> bool:
        return weight.is_cpu and hasattr(torch.ops.quantized, "linear_prepack")


def int8_scales(weight: Tensor) -> Tensor:
    """Symmetric per-output-channel scales [out] (fp32): ``w ≈ q * scale``, q in -127..127."""
    weight = weight.float()
    # amax and amin: 10-20x faster than an inf-norm or aminmax, which are slow on CPU
    return torch.maximum(weight.amax(1), weight.amin(1).neg_()).clamp_(min=1e-8).div_(127)


# Quantisation works through the rows in chunks of this many, in one reused buffer: each
# operation on a whole matrix allocated (and page-faulted) a fresh copy of it, which cost more
# than the arithmetic (loads 2-3x slower).
_CHUNK_ROWS = 512


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``weight [out, in]`` -> (int8 [out, in], fp32 scale [out]) with ``w ≈ q * scale``.
    |w| / scale <= 127 by construction, so rounding needs no clamp."""
    weight = weight.float()
    scale = int8_scales(weight)
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    buffer = torch.empty_like(weight[:_CHUNK_ROWS])
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        scaled = buffer[: weight[rows].shape[0]]
        codes[rows] = torch.div(weight[rows], scale[rows, None], out=scaled).round_()
    return codes, scale


def _fbgemm_pack(weight: Tensor, bias: Tensor | None) -> object:
    """fbgemm's packed weight, of quantize_int8's values (the weight-only layers' too):
    wrapping them is 1.8x faster than torch.quantize_per_channel, which also rounds a few
    weights the other way (it multiplies by 1 / scale)."""
    q, scale = quantize_int8(weight)
    zero = torch.zeros(scale.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, the kernel is not (yet)
        warnings.simplefilter("ignore")
        packed = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(packed, bias)


class Int4Linear(nn.Module):
    """4-bit weights in groups of ``INT4_GROUP`` input features, ``w ≈ (q - 8) * s + z`` with
    q in 0..15. The CPU kernel wants N (out features) a multiple of 16: rows are zero-padded
    and the extra outputs sliced off.

    The 4-bit CPU kernel is the fastest at 1-4 rows but falls behind fbgemm's int8 GEMM from
    about 8 rows on (docs/baselines.md), so on CPU the layer also keeps an int8 copy of the
    same weights (half the bytes of bf16 again) and uses it for calls with more than
    ``INT8_FROM_ROWS - 1`` rows: batched decoding and prefill."""

    INT8_FROM_ROWS = 6

    def __init__(
        self, weight: Tensor, bias: Tensor | None, *, large_batch_int8: bool = True,
        cpu_kernel: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.out_features = weight.shape[0]
        qweight, scales_zeros = quantize_int4(_pad_rows(weight.float(), 16))
        self.bias = bias.to(torch.bfloat16) if bias is not None else None
        self.scales_zeros = scales_zeros  # [in / group, out_padded, 2] bf16
        use_kernel = weight.is_cpu if cpu_kernel is None else cpu_kernel
        if use_kernel:
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qweight, 1)
            self.qweight = None
        else:
            self.packed, self.qweight = None, qweight.to(torch.uint8)  # [out_padded, in]
        large = large_batch_int8 and use_kernel and DynamicInt8Linear.available(weight)
        self.int8 = DynamicInt8Linear(weight, bias) if large else None

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.int8 is not None and x2.shape[0] >= self.INT8_FROM_ROWS:
            return self.int8.forward(x).to(x.dtype)
        if self.packed is not None:
            out = _int4_mm(x2, self.packed, INT4_GROUP, self.scales_zeros)
        else:
            out = F.linear(x2, self.dequantize().to(x.dtype))
        if out.shape[1] != self.out_features:
            out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def dequantize(self) -> Tensor:
        """The weight these 4 bits stand for, [out_padded, in] fp32 (portable path)."""
        assert self.qweight is not None
        scale, zero = (t.float().t().repeat_interleave(INT4_GROUP, dim=1)
                       for t in self.scales_zeros.unbind(-1))  # fmt: skip
        return (self.qweight.float() - 8) * scale + zero


# Clipping ratios tried per group by quantize_int4: shrinking a group's range trades a larger
# error on its one or two extreme weights for a finer step on the other 30. On the trained
# model of quality.py this cut the mean KL to fp32 by about a third.
INT4_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def quantize_int4(
    weight: Tensor, group: int = INT4_GROUP, ratios: tuple[float, ...] = INT4_CLIP_RATIOS
) -> tuple[Tensor, Tensor]:
    """``weight [out, in]`` -> (int32 codes 0..15 [out, in], bf16 scales_and_zeros
    [in / group, out, 2]), the layout aten's int4 kernels take. Each group's range is its
    [min, max] shrunk by the ratio in ``ratios`` with the least squared error."""
    out_features, in_features = weight.shape
    if in_features % group:
        raise BackendError(f"int4 needs in_features divisible by {group} (got {in_features})")
    codes = torch.empty(weight.shape, dtype=torch.int32, device=weight.device)
    scales_zeros = torch.empty(in_features // group, out_features, 2, dtype=torch.bfloat16,
                               device=weight.device)  # fmt: skip
    # two buffers of one chunk (a few MB, they stay in cache), reused by every operation
    unrounded = torch.empty(min(out_features, _CHUNK_ROWS) * in_features // group, group,
                            device=weight.device)  # fmt: skip
    rounded = torch.empty_like(unrounded)
    for start in range(0, out_features, _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        groups = weight[rows].float().reshape(-1, group)  # [n, group]
        u, c = unrounded[: groups.shape[0]], rounded[: groups.shape[0]]
        low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)  # see int8_scales
        best_error, best_ratio = None, torch.full_like(low, ratios[0])
        for ratio in ratios:
            scale, zero = _unrounded_codes(groups, low * ratio, high * ratio, u)
            # w - ((code - 8) * scale + zero) = scale * (u - code), u the unrounded code (the
            # same choice as comparing squared errors, up to rounding in near-ties)
            error = torch.linalg.vector_norm(u.sub_(torch.round(u, out=c).clamp_(0, 15)), dim=1,
                                             keepdim=True).mul_(scale)  # fmt: skip
            if best_error is None:
                best_error = error
                continue
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_ratio = torch.where(better, ratio, best_ratio)
        scale, zero = _unrounded_codes(groups, low * best_ratio, high * best_ratio, u)
        count = weight[rows].shape[0]
        codes[rows] = u.round_().clamp_(0, 15).view(count, in_features)
        scales_zeros[:, rows, 0] = scale.view(count, -1).t()
        scales_zeros[:, rows, 1] = zero.view(count, -1).t()
    return codes, scales_zeros


def _unrounded_codes(
    groups: Tensor, low: Tensor, high: Tensor, out: Tensor
) -> tuple[Tensor, Tensor]:
    """Writes the unrounded codes (w - zero) / scale + 8 of ``groups [n, group]`` for the range
    [low, high] [n, 1] into ``out`` and returns (scale, zero) [n, 1]. Scale and zero are
    rounded to bf16 first, so the codes are chosen for the values the kernel will use."""
    scale = ((high - low) / 15).clamp(min=1e-8).to(torch.bfloat16).float()
    zero = (low + 8 * scale).to(torch.bfloat16).float()
    torch.sub(groups, zero, out=out).div_(scale).add_(8)
    return scale, zero


def _pad_rows(weight: Tensor, multiple: int) -> Tensor:
    extra = -weight.shape[0] % multiple
    return weight if extra == 0 else F.pad(weight, (0, 0, 0, extra))


def make_linear(
    weight: Tensor, bias: Tensor | None, fmt: str, *, int8_copy: bool = True
) -> nn.Module:
    """A linear layer holding ``weight [out, in]`` in format ``fmt`` (see WEIGHT_FORMATS);
    ``int8_copy``: int4 layers also keep int8 weights for large batches (see Int4Linear)."""
    if fmt in _FLOAT_DTYPES:
        dtype = _FLOAT_DTYPES[fmt]
        weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
        if PackedBf16Linear.available(weight):
            return PackedBf16Linear(weight, bias)
        return DenseLinear(weight, bias)
    if fmt == "int8" and DynamicInt8Linear.available(weight):
        return DynamicInt8Linear(weight, bias)
    if fmt == "int8_weight_only" and _int8_mm is None and DynamicInt8Linear.available(weight):
        return DynamicInt8Linear(weight, bias)  # torch < 2.3: no int8-weight CPU kernel
    if fmt in ("int8", "int8_weight_only"):
        return Int8Linear(weight, bias)
    if fmt == "int4":
        if weight.is_cpu and not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            raise BackendError(
                f"this torch ({torch.__version__}) has no 4-bit CPU kernel",
                hint="use dtype int8, or torch >= 2.6 for int4",
            )
        return Int4Linear(weight, bias, large_batch_int8=int8_copy)
    raise BackendError(f"unknown weight format {fmt!r}", hint=f"use one of {WEIGHT_FORMATS}")


__all__ = [
    "INT4_CLIP_RATIOS",
    "INT4_GROUP",
    "WEIGHT_FORMATS",
    "DenseLinear",
    "DynamicInt8Linear",
    "Int4Linear",
    "Int8Linear",
    "PackedBf16Linear",
    "WeightFormat",
    "activation_dtype",
    "head_format",
    "kv_cache_dtype",
    "make_linear",
    "quantize_int4",
    "quantize_int8",
    "weight_only_format",
]
