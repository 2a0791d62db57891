"""The preallocated key/value cache, organised in rows (one sequence per row).

Layout: ``keys`` and ``values`` are each [layers, rows, KVH, max_len, D]. Rows 0..B-1 hold the
B active sequences (kept contiguous, so a decode step reads one slice, not a gather); the free
rows behind them keep whatever they last held, with the token ids of it (``held``): that is the
prefix cache. A new sequence copies the longest common prefix from any row, active or free, and
computes only the rest of its prompt; the next generate() call, whose prompt repeats the last
one's first lines, starts from the rows the last call left behind.

The cache grows (reallocate + copy) when a batch needs more rows or positions than it has; the
decode loop itself never allocates cache-sized tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import EngineConfig

_LENGTH_STEP = 128  # positions are allocated in multiples of this


class KVCache:
    def __init__(self, config: EngineConfig, dtype: torch.dtype, device: torch.device) -> None:
        self.config, self.dtype, self.device = config, dtype, device
        self.keys = self.values = self._empty(0, 0)
        self.held: list[list[int]] = []  # per row: token ids whose keys/values the row holds

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.keys, self.values

    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def _empty(self, rows: int, length: int) -> Tensor:
        c = self.config
        shape = (c.num_layers, rows, c.num_kv_heads, length, c.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def ensure(self, rows: int, length: int) -> None:
        """Room for ``rows`` rows of ``length`` positions (capped at the model's context)."""
        length = min(self.config.max_position_embeddings, -(-length // _LENGTH_STEP) * _LENGTH_STEP)
        if rows <= self.rows and length <= self.max_len:
            return
        rows, length = max(rows, self.rows), max(length, self.max_len)
        keys, values = self._empty(rows, length), self._empty(rows, length)
        if self.keys.numel():
            keys[:, : self.rows, :, : self.max_len] = self.keys
            values[:, : self.rows, :, : self.max_len] = self.values
        self.keys, self.values = keys, values
        self.held += [[] for _ in range(rows - len(self.held))]

    def copy(self, source: int, target: int, length: int) -> None:
        """Row ``target`` positions [0, length) <- row ``source``'s."""
        if source != target and length > 0:
            self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
            self.values[:, target, :, :length] = self.values[:, source, :, :length]

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """Exchange the first ``length_a`` positions of row a and ``length_b`` of row b."""
        saved_k = self.keys[:, a, :, :length_a].clone()
        saved_v = self.values[:, a, :, :length_a].clone()
        self.copy(b, a, length_b)
        self.keys[:, b, :, :length_a] = saved_k
        self.values[:, b, :, :length_a] = saved_v
        self.held[a], self.held[b] = self.held[b], self.held[a]

    def best_prefix(self, tokens: list[int], limit: int, prefer: int) -> tuple[int, int]:
        """(row, length) of the longest prefix of ``tokens`` (at most ``limit``) held by any row;
        ties go to row ``prefer`` (reuse in place, no copy)."""
        best_row, best = prefer, 0
        for row, held in enumerate(self.held):
            n = common_prefix(held, tokens, limit)
            if n > best or (n == best and row == prefer):
                best_row, best = row, n
        return best_row, best


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


__all__ = ["KVCache", "common_prefix"]
