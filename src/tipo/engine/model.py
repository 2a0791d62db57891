"""The LLaMA decoder (as Hugging Face ``LlamaForCausalLM`` computes it), written for decoding.

Shapes: B sequences (cache rows), T new tokens per sequence, L cached positions read, H query
heads, G = H / KVH query heads per key/value head, D head_dim, C hidden size, V vocabulary.

One ``forward`` serves prefill (one row, T prompt tokens) and batched decode (B rows, T = 1,
each row at its own position): a ``Pass`` says where the new keys/values go in the cache and
what each query may attend to. Every row keeps its own absolute positions, so ragged prompts
need no left padding: a short row simply reads fewer cache positions (masked), and RoPE sees
the same positions as in a one-at-a-time run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EngineConfig

# torch < 2.5 has neither F.rms_norm nor SDPA's enable_gqa (Stable Diffusion installs still
# ship 2.1-2.3): fall back to the plain formulas there.
_TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
_NATIVE_GQA = _TORCH >= (2, 5)


@dataclass
class Pass:
    """What one forward pass reads and writes in the KV cache."""

    rows: int  # the pass covers cache rows [first_row, first_row + rows)
    positions: Tensor  # [B, T] absolute positions of the new tokens (long)
    length: int  # attention reads cache positions [0, length)
    # [B, 1, T, length]: bool (True = attend) or additive (0 / -inf); None with ``causal`` or
    # when every row reads every position
    mask: Tensor | None
    causal: bool  # True: the plain lower-triangular mask (T == length, first position 0)
    first_row: int = 0
    # Advanced index for the cache write (row ids [B, 1], positions [B, T]); None means every
    # row writes the same block of positions, [length - T, length).
    write_index: tuple[Tensor, Tensor] | None = None
    # Decode only: positions [0, shared) hold the same keys/values in every row of the pass
    # (variants of one prompt); attention reads them once, from the first row.
    shared: int = 0

    def additive_suffix_mask(self, dtype: torch.dtype) -> Tensor | None:
        """The mask over positions [shared, length) as 0 / -inf of ``dtype``, what the CPU
        attention kernel that returns log-sum-exps takes."""
        if self.mask is None:
            return None
        suffix = self.mask[..., self.shared : self.length]
        if suffix.dtype == dtype:
            return suffix
        return torch.zeros(suffix.shape, dtype=dtype, device=suffix.device).masked_fill_(
            ~suffix, float("-inf")
        )


def prefill_pass(row: int, start: int, count: int, device: torch.device) -> Pass:
    """``count`` prompt tokens of one row, at positions start..start+count-1."""
    positions = torch.arange(start, start + count, device=device)[None]  # [1, T]
    if start == 0:
        return Pass(1, positions, count, None, causal=True, first_row=row)
    keys = torch.arange(start + count, device=device)
    mask = (keys[None, :] <= positions[0, :, None])[None, None]  # [1, 1, T, L]
    return Pass(1, positions, start + count, mask, causal=False, first_row=row)


def decode_pass(
    lengths: list[int], device: torch.device, shared: int = 0,
    mask_dtype: torch.dtype = torch.bool,
) -> Pass:  # fmt: skip
    """One new token for each of rows 0..B-1; row b already caches ``lengths[b]`` positions,
    the first ``shared`` of them the same in every row (used where SHARED_PREFIX_MIN <= shared,
    on the CPU: see shared_prefix_attention). A ragged batch's mask is bool, or additive (0 /
    -inf) in ``mask_dtype``, the cache's dtype: attention then uses it as it is in every layer
    instead of converting a bool mask per call (on 2 CPU cores, 16 rows of ~220 positions:
    0.36 instead of 0.52 ms per layer)."""
    count = len(lengths)
    positions = torch.tensor(lengths, device=device)[:, None]  # [B, 1]
    length = max(lengths) + 1
    if count < 2 or shared < SHARED_PREFIX_MIN or device.type != "cpu" or _flash_cpu is None:
        shared = 0
    if min(lengths) == length - 1:  # all rows at one position (e.g. variants of one prompt)
        return Pass(count, positions, length, None, causal=False, shared=shared)
    # Ragged: each row writes at, and reads up to, its own position.
    keys = torch.arange(length, device=device)
    mask = (keys[None, :] <= positions)[:, None, None, :]  # [B, 1, 1, L]
    if mask_dtype != torch.bool:
        mask = torch.zeros(mask.shape, dtype=mask_dtype, device=device).masked_fill_(
            ~mask, float("-inf")
        )
    rows = torch.arange(count, device=device)[:, None]
    return Pass(count, positions, length, mask, causal=False, write_index=(rows, positions),
                shared=shared)  # fmt: skip


# Attention of a decode pass, (q [B, H, 1, D] fp32, k_cache, v_cache, pass) -> [B, H, 1, D] fp32,
# replacing SDPA there: compiled_attention.CompiledDecodeAttention.
DecodeAttention = Callable[[Tensor, Tensor, Tensor, "Pass"], Tensor]

# A shared prefix shorter than this is read per row as before: two attention calls and a merge
# cost more than they save on a few positions.
SHARED_PREFIX_MIN = 16
# The CPU attention kernel that also returns each query's log-sum-exp (None on old torch).
_flash_cpu = getattr(getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu",
                             None), "default", None)  # fmt: skip


def shared_prefix_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, p: Pass, kv_heads: int
) -> Tensor:
    """Decode attention for B rows whose first ``p.shared`` cached positions are the same
    (variants of one prompt): q [B, H, 1, D] -> [B, H, 1, D].

    At 16 variants attention over the cache was about half of a decode step, each row reading
    the prompt's keys and values again. Here the prefix is read once, with all B x H queries
    as the query positions of one sequence (a matrix product instead of B vector products);
    each row's own suffix is read as before; the two softmax halves merge exactly through
    their log-sum-exps: out = out_s + sigmoid(lse_p - lse_s) (out_p - out_s). Query heads
    are grouped by the key/value head they read (GQA), each group as G query positions."""
    b, h, _, d = q.shape
    group = h // kv_heads
    rows = slice(p.first_row, p.first_row + p.rows)
    grouped = q.reshape(b, kv_heads, group, d)  # [B, KVH, G, D]
    as_one = grouped.transpose(0, 1).reshape(1, kv_heads, b * group, d)
    prefix = slice(0, p.shared)
    out_p, lse_p = _flash_cpu(as_one, k_cache[p.first_row, None, :, prefix],
                              v_cache[p.first_row, None, :, prefix])[:2]  # fmt: skip
    suffix = slice(p.shared, p.length)
    out_s, lse_s = _flash_cpu(grouped, k_cache[rows, :, suffix], v_cache[rows, :, suffix],
                              attn_mask=p.additive_suffix_mask(q.dtype))[:2]  # fmt: skip
    out_p = out_p.reshape(kv_heads, b, group, d).transpose(0, 1)
    lse_p = lse_p.reshape(kv_heads, b, group).transpose(0, 1)
    weight = torch.sigmoid(lse_p - lse_s).unsqueeze(-1)  # the prefix's share of the softmax
    return torch.lerp(out_s, out_p, weight).reshape(b, h, 1, d)


class RMSNorm(nn.Module):
    def __init__(self, weight: Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # One call instead of transformers' six ops; in fp32 the same arithmetic, in bf16 it
        # rounds once less (before the gain), which is no worse.
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        normed = x.float()
        normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(config: EngineConfig, device: torch.device) -> Tensor:
    """[max_positions, D/2] complex64: cos + i sin of each position's D/2 angles, computed like
    transformers (fp32 inverse frequencies, fp32 angles)."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    angles = positions[:, None] * inv_freq[None, :]  # [P, D/2]
    return torch.complex(angles.cos(), angles.sin()).to(device=device)


def rope_pair_order(head_dim: int) -> Tensor:
    """Row order [D] that takes one head's q or k projection rows from transformers'
    rotate-half layout (pairs (i, i + D/2)) to interleaved pairs (2i, 2i + 1)."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)


def interleave_rope_rows(weight: Tensor, heads: int, head_dim: int) -> Tensor:
    """q or k projection rows [heads * D, ...] in interleaved pair order (see apply_rope).
    Queries and keys are permuted alike, so every q . k product is unchanged."""
    order = rope_pair_order(head_dim)
    index = (torch.arange(heads)[:, None] * head_dim + order[None, :]).reshape(-1)
    return weight.index_select(0, index.to(weight.device))


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """x [N, heads, D] with each rotated pair adjacent (rows permuted at load time by
    interleave_rope_rows), freqs [N, 1, D/2] complex -> x rotated, [N, heads, D/2, 2] in
    fp32. transformers' ``x * cos + rotate_half(x) * sin`` rotates pairs (i, i + D/2); one
    complex product rotates the same pairs, one op instead of five."""
    pairs = x.unflatten(-1, (-1, 2))
    if pairs.dtype != torch.float32:
        pairs = pairs.float()
    return torch.view_as_real(torch.view_as_complex(pairs) * freqs)


class Attention(nn.Module):
    def __init__(self, config: EngineConfig, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        # qkv: C -> (H + 2 KVH) D, fused q, k, v projections, q and k rows in interleaved
        # RoPE pair order (interleave_rope_rows).
        self.qkv, self.out = qkv, out
        self.heads, self.kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        self.gqa = config.num_kv_heads != config.num_heads
        self.sdpa_options = {"enable_gqa": True} if self.gqa and _NATIVE_GQA else {}
        # Set by Transformer: the compiled decode attention over a bf16 cache, or None
        self.decode_attention: DecodeAttention | None = None

    def forward(self, x: Tensor, rope: Tensor, cache: tuple[Tensor, Tensor], p: Pass) -> Tensor:
        """x [B, T, C], rope [B * T, 1, D/2] complex (per token) -> [B, T, C]."""
        b, t, _ = x.shape
        h, kvh, d = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv.forward(x).view(b * t, h + 2 * kvh, d)
        qk = apply_rope(qkv[:, : h + kvh], rope).view(b, t, h + kvh, d)  # fp32
        k_cache, v_cache = cache  # each [rows, KVH, max_len, D]
        _write(k_cache, qk[:, :, h:], p)
        _write(v_cache, qkv[:, h + kvh :].view(b, t, kvh, d), p)
        compiled = self.decode_attention
        q = qk[:, :, :h].transpose(1, 2)  # [B, H, T, D] fp32
        if compiled is None:
            q = q.to(k_cache.dtype)
        if compiled is not None and t == 1:
            y = compiled(q, k_cache, v_cache, p)
        elif p.shared:
            y = shared_prefix_attention(q, k_cache, v_cache, p, kvh)
        else:
            rows = slice(p.first_row, p.first_row + p.rows)
            keys, values = k_cache[rows, :, : p.length], v_cache[rows, :, : p.length]
            if compiled is not None:  # prefill or a jump-forward run: fp32 copies, read once
                keys, values = keys.float(), values.float()
            if self.gqa and not _NATIVE_GQA:  # old torch: give every query head its own copy
                group = h // kvh
                keys = keys.repeat_interleave(group, 1)
                values = values.repeat_interleave(group, 1)
            y = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=p.mask, is_causal=p.causal, **self.sdpa_options
            )
        return self.out.forward(y.transpose(1, 2).reshape(b, t, h * d).to(x.dtype))


def _write(cache: Tensor, new: Tensor, p: Pass) -> None:
    """Store new keys or values [B, T, KVH, D] in a cache [rows, KVH, max_len, D]."""
    if p.write_index is not None:
        rows, positions = p.write_index
        # advanced index: [B, T] slots <- [B, T, KVH, D]; index_put does not cast (the keys
        # come out of RoPE in fp32, the cache may be bf16)
        cache[rows, :, positions] = new.to(cache.dtype)
    else:  # a strided copy, much cheaper than index_put
        rows, t = slice(p.first_row, p.first_row + p.rows), new.shape[1]
        cache[rows, :, p.length - t : p.length] = new.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, gate_up: nn.Module, down: nn.Module, hidden: int) -> None:
        super().__init__()
        self.gate_up, self.down, self.hidden = gate_up, down, hidden  # gate_up: C -> 2 F

    def forward(self, x: Tensor) -> Tensor:
        gate_up = self.gate_up.forward(x)
        gate, up = gate_up[..., : self.hidden], gate_up[..., self.hidden :]
        return self.down.forward(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, attn_norm: RMSNorm, attn: Attention, mlp_norm: RMSNorm, mlp: FeedForward):
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def forward(self, x: Tensor, rope: Tensor, cache: tuple[Tensor, Tensor], p: Pass) -> Tensor:
        # .forward, not __call__: the module hooks machinery costs more than the small ops
        # here at batch 1.
        x = x + self.attn.forward(self.attn_norm.forward(x), rope, cache, p)
        return x + self.mlp.forward(self.mlp_norm.forward(x))


class Transformer(nn.Module):
    """Embedding -> blocks -> final norm -> lm_head. Weights come from ``weights.load_model``."""

    def __init__(
        self,
        config: EngineConfig,
        embed: Tensor,
        blocks: list[Block],
        norm: RMSNorm,
        lm_head: nn.Module,
        act_dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
        decode_attention: DecodeAttention | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Parameter(embed, requires_grad=False)  # [V, C]
        self.blocks = nn.ModuleList(blocks)
        self.norm, self.lm_head = norm, lm_head
        self.act_dtype = act_dtype
        self.kv_dtype = kv_dtype or act_dtype
        self.decode_attention = decode_attention  # compiled_attention.py; None: SDPA
        for block in blocks:
            block.attn.decode_attention = decode_attention
        self.register_buffer("rope", rope_tables(config, embed.device), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def mask_dtype(self) -> torch.dtype:
        """The dtype of a decode pass's additive mask: what the attention compares it with."""
        return torch.float32 if self.decode_attention is not None else self.kv_dtype

    def forward(
        self, tokens: Tensor, p: Pass, cache: tuple[Tensor, Tensor], logits: str = "last"
    ) -> Tensor | None:
        """tokens [B, T]; cache = (keys, values), each [layers, rows, KVH, max_len, D].
        Returns logits [B, V] for the last token ("last"), [B, T, V] ("all"), or None
        ("none": a prefill whose next-token logits are not needed)."""
        x = F.embedding(tokens, self.embed).to(self.act_dtype)  # [B, T, C]
        # each token's rotation, shared by all layers: [B * T, 1, D/2] complex
        rope = self.rope[p.positions.reshape(-1), None]
        keys, values = cache
        for index, block in enumerate(self.blocks):
            x = block.forward(x, rope, (keys[index], values[index]), p)
        if logits == "none":
            return None
        if logits == "last":
            x = x[:, -1]
        out = self.lm_head.forward(self.norm.forward(x))
        return out[..., : self.config.vocab_size]


__all__ = [
    "Pass",
    "Transformer",
    "apply_rope",
    "decode_pass",
    "interleave_rope_rows",
    "prefill_pass",
    "rope_tables",
    "shared_prefix_attention",
]
