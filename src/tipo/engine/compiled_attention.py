"""Decode attention over a bf16 KV cache, compiled by inductor (CPU, opt-in).

At 16 sequences and more, attention over the KV cache is about half of a CPU decode step, and it
is bound by the bytes it reads: torch's attention kernels read an fp32 cache (on a bf16 cache,
without AMX, they convert every key and value first and run 3-6x slower; quant.kv_cache_dtype).
Here the cache is bf16 and the attention of one new token per row is written as plain tensor
arithmetic that inductor compiles into C++ loops which load bf16 and compute in fp32: half the
bytes of the fp32 cache and no converted copy.

Measured (random TIPO-200M, int8 weights, 2 cores, paired fresh processes on a busy host):
16 variants of a 64-token prompt, 256 new tokens, 266 -> 319 tokens/s (1.20x, medians of 9
runs); 64 variants, 192 new tokens, 467 -> 594 (1.27x); one sequence the same or ~5% slower.
The cost: a bf16 cache (mean KL to fp32 of the bench's trained model: +9.5e-5 on fp32 weights,
int8 6.7e-4 -> 7.0e-4) and compiling three graphs at load (one row, many rows, many rows
sharing a prompt prefix): a load of 6-8 s instead of 1 with inductor's cache warm, 24 s with
it empty, and a C++ compiler. So it is for long-lived processes that batch:
``tipo serve --compile-attention``, ``Engine.load(..., compile_attention=True)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import BackendError, first_line
from .model import Pass, decode_pass

COMPILED_KV_DTYPE = torch.bfloat16


def _decode(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """q [B, KVH, G, D] fp32, scaled; keys, values [B, KVH, L, D]; mask [B, 1, 1, L] additive
    -> [B, KVH, G, D]. Broadcast products and sums that inductor fuses into loops over L."""
    scores = (q.unsqueeze(3) * keys.unsqueeze(2).float()).sum(-1) + mask  # [B, KVH, G, L]
    weights = torch.softmax(scores, dim=-1)
    return (weights.unsqueeze(-1) * values.unsqueeze(2).float()).sum(-2)


def _decode_shared(
    q: Tensor, prefix_keys: Tensor, prefix_values: Tensor, keys: Tensor, values: Tensor,
    mask: Tensor,
) -> Tensor:  # fmt: skip
    """As _decode, for rows that share their first P positions: prefix_keys, prefix_values
    [KVH, P, D] from one row (read once for all rows), keys, values [B, KVH, S, D] each row's
    own positions after them, mask [B, 1, 1, S]. One softmax over both parts."""
    prefix = (q.unsqueeze(3) * prefix_keys[None, :, None].float()).sum(-1)  # [B, KVH, G, P]
    own = (q.unsqueeze(3) * keys.unsqueeze(2).float()).sum(-1) + mask  # [B, KVH, G, S]
    weights = torch.softmax(torch.cat([prefix, own], dim=-1), dim=-1)
    p = prefix.shape[-1]
    return (weights[..., :p, None] * prefix_values[None, :, None].float()).sum(-2) + (
        weights[..., p:, None] * values.unsqueeze(2).float()
    ).sum(-2)


class CompiledDecodeAttention:
    """The compiled attention of decode passes (one new token per row) for one model. Sizes
    are symbolic, so a graph serves every batch size and length; torch specialises sizes of 1,
    hence three graphs: one row, many rows, many rows with a shared prefix (whose own part is
    kept at least 2 positions long)."""

    def __init__(self) -> None:
        self._plain = torch.compile(_decode, dynamic=True, fullgraph=True)
        self._shared = torch.compile(_decode_shared, dynamic=True, fullgraph=True)

    def __call__(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, p: Pass) -> Tensor:
        """q [B, H, 1, D] (fp32, RoPE applied), caches [rows, KVH, max_len, D] holding this
        pass's keys and values -> [B, H, 1, D] fp32."""
        b, h, _, d = q.shape
        kv_heads = k_cache.shape[1]
        grouped = q.reshape(b, kv_heads, h // kv_heads, d) * d**-0.5
        rows = slice(p.first_row, p.first_row + p.rows)
        if p.shared:
            start = p.shared - 1  # the rows' own part: at least two positions
            out = self._shared(
                grouped, k_cache[p.first_row, :, :start], v_cache[p.first_row, :, :start],
                k_cache[rows, :, start : p.length], v_cache[rows, :, start : p.length],
                _additive_mask(p, start, q),
            )  # fmt: skip
        else:
            keys, values = k_cache[rows, :, : p.length], v_cache[rows, :, : p.length]
            out = self._plain(grouped, keys, values, _additive_mask(p, 0, q))
        return out.reshape(b, h, 1, d)

    def warm_up(self, kv_heads: int, head_dim: int, heads: int) -> None:
        """Compile the three graphs now, on small inputs, instead of in a user's first batch.
        BackendError (with what to do) when inductor cannot compile here."""
        for lengths, shared in (([5], 0), ([5, 7], 0), ([20, 21], 17)):
            rows, length = len(lengths), max(lengths) + 1
            cache = torch.zeros(rows, kv_heads, length + 3, head_dim, dtype=COMPILED_KV_DTYPE)
            q = torch.zeros(rows, heads, 1, head_dim)
            p = decode_pass(lengths, q.device, shared, torch.float32)
            try:
                self(q, cache, cache, p)
            except Exception as error:  # inductor raises many kinds (no compiler, build errors)
                raise BackendError(
                    f"could not compile the decode attention: {first_line(error)}",
                    hint="it needs torch.compile's inductor and a C++ compiler (g++ or clang); "
                    "load without compile_attention (tipo serve: drop --compile-attention)",
                ) from error


def _additive_mask(p: Pass, start: int, like: Tensor) -> Tensor:
    """The pass's mask over positions [start, length) as 0 / -inf [B, 1, 1, L - start] in
    ``like``'s dtype; zeros where every row reads every position (one graph for both cases)."""
    if p.mask is None:
        return torch.zeros(p.rows, 1, 1, p.length - start, dtype=like.dtype, device=like.device)
    mask = p.mask[..., start : p.length]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill_(
            ~mask, float("-inf")
        )
    # contiguous like the zeros: a strided mask would be compiled as another graph
    return mask.to(like.dtype).contiguous()


__all__ = ["COMPILED_KV_DTYPE", "CompiledDecodeAttention"]
