"""Shared pytest fixtures. ``tests/`` is on sys.path (no package), so helpers import directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import make_tiny_checkpoint


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose a lot on a busy machine
    (OpenMP workers wait for each other). Torch is imported only by the modules that use it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 64-wide LLaMA with the TIPO vocabulary and tokenizer files."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="session")
def tiny_gqa_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_checkpoint`` with grouped-query attention (4 heads share 2 key/value heads)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-gqa-checkpoint"), num_kv_heads=2)
