"""The engine on a GPU, without a GPU: whole requests (prompt, prefix cache, batched and ragged
decoding, jump-forward, repetition penalty, bans and the tag vocabulary) run with the model, the
cache and the sampling on the ``meta`` device, which takes the same code paths as CUDA (portable
quantised layers, bf16 KV cache) and computes shapes, dtypes and devices but no values. A
dispatch mode watches every op: one that mixes a host tensor into device work (other than an
explicit transfer) fails the test, as it would fail or stall on a real GPU.

The one value the decode loop needs back on the host, the chosen token ids (one
device-to-host copy per step), cannot come out of a meta tensor: the test computes the choice
on the device and then hands the scheduler a fixed token sequence instead. Any other read of a
device value in the loop (``.item()``, ``.tolist()``) raises on meta tensors."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

import tipo.engine.scheduler as scheduler_module  # noqa: E402
from tipo import TIPO, ExpandRequest  # noqa: E402

DEVICE = "meta"
aten = torch.ops.aten
# Explicit transfers between host and device: the only ops allowed to see both.
TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
             aten.lift_fresh.default}  # fmt: skip


class DeviceAudit(TorchDispatchMode):
    """Records every op that reads a host tensor (anything but a 0-dim scalar) together with
    device tensors, outside an explicit transfer."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == DEVICE for t in tensors)
        host = [tuple(t.shape) for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if on_device and host and func not in TRANSFERS:
            self.mixed.append(f"{func}: host tensors of shapes {host}")
        self.ops += on_device
        return func(*args, **kwargs)


class _HostTokens(list):
    """What the scheduler reads from ``choose(...)``: the ids, via ``.tolist()``."""

    def tolist(self) -> list[int]:
        return list(self)


@pytest.fixture
def device_choices(monkeypatch: pytest.MonkeyPatch) -> list:
    """``choose`` runs on the device (its inputs and output must be device tensors), then
    returns ids from a fixed cycle of ordinary tokens; returns the output devices seen."""
    real_choose = scheduler_module.choose
    ids = itertools.cycle(range(300, 900, 7))
    devices: list[torch.device] = []

    def choose(logits, batch, uniforms):
        for tensor in (logits, uniforms, batch.temperature):
            assert tensor.device.type == DEVICE, tensor.device
        chosen = real_choose(logits, batch, uniforms)
        devices.append(chosen.device)
        return _HostTokens(next(ids) for _ in range(logits.shape[0]))

    monkeypatch.setattr(scheduler_module, "choose", choose)
    return devices


def _requests() -> list[ExpandRequest]:
    common = {"tags": "1girl, scenery", "tag_length": "short", "ban": ["hat"]}
    return [
        ExpandRequest.create(**common, nl="A girl on a hill.", seed=1, max_new_tokens=40),
        ExpandRequest.create(**common, seed=2, vocabulary=False, max_new_tokens=24),
        ExpandRequest.create(**common, seed=3, temperature=0.0, max_new_tokens=16),
    ]


@pytest.mark.parametrize("fmt", ["bfloat16", "float32", "int8", "int4"])
def test_whole_requests_keep_every_tensor_on_the_device(
    fmt: str, tiny_checkpoint: Path, device_choices: list
) -> None:
    tipo = TIPO.load(tiny_checkpoint, backend="torch", device=DEVICE, dtype=fmt)
    engine = tipo.backend.engine
    for name, tensor in [*engine.model.named_parameters(), *engine.model.named_buffers()]:
        assert tensor.device.type == DEVICE, name
    with DeviceAudit() as audit:
        results = tipo.run_many(_requests())
        alone = tipo.run_many(_requests()[:1])  # alone, after the prefix cache filled up
    for result in [*results, *alone]:
        assert not isinstance(result, Exception), result
    assert not audit.mixed, "\n".join(sorted(set(audit.mixed)))
    assert audit.ops > 1000 and device_choices
    assert all(device.type == DEVICE for device in device_choices)
    keys, values = engine.scheduler.cache.tensors
    assert keys.device.type == values.device.type == DEVICE
    assert keys.dtype == (torch.float32 if fmt == "float32" else torch.bfloat16)
    assert engine.scheduler.seen.device.type == DEVICE
