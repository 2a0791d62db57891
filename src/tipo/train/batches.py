"""Which samples each process trains on at each optimizer step: a pure function of the seed.

Per epoch the records are shuffled (seed, epoch) and cut into global batches of
``batch_size x processes x grad_accum`` samples; the remainder (fewer than one global batch) is
left out of that epoch and lands elsewhere in the next shuffle. Each record becomes a fresh sample
every epoch (``sample_for`` with a per-epoch seed: new task, split and drops, as the recipe drew).

A global batch is sorted by text length and cut into micro-batches of ``batch_size``, so a
micro-batch holds similar lengths and pads little. The micro-batches are dealt to the N processes
in rounds of N, every other round in reverse (0..N-1, N-1..0, ...), so that no process always
gets the longest ones while the others wait at the gradient sync. The cut does not depend on the
process count, so 1 process with grad_accum 2 and 2 processes with grad_accum 1 train on the
same micro-batches, and resuming at step s needs no replay: the plan of step s is computed
directly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data import TrainingRecord, sample_for
from ..data.batches import Example, encode_sample, pad_batch
from ..errors import InvalidRequestError
from ..sampling import derive_seed

if TYPE_CHECKING:
    from ..tokenizer import TipoTokenizer


@dataclass(frozen=True)
class BatchPlan:
    records: int
    batch_size: int  # samples per micro-batch (per process per forward)
    micro_batches: int  # per optimizer step, over all processes: world x grad_accum
    seed: int

    def __post_init__(self) -> None:
        if self.records < self.global_batch:
            raise InvalidRequestError(
                f"the data has {self.records} records, fewer than one optimizer step's "
                f"{self.global_batch} (batch_size {self.batch_size} x processes x grad_accum)",
                hint="add records, or lower batch_size or grad_accum",
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.micro_batches

    @property
    def steps_per_epoch(self) -> int:
        return self.records // self.global_batch

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(self.records))
        random.Random(derive_seed(self.seed, "order", epoch)).shuffle(order)
        return order

    def step_records(self, step: int, order: Sequence[int] | None = None) -> list[int]:
        """The record indices of optimizer step ``step`` (0-based, over all epochs)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch) if order is None else order
        return list(order[within * self.global_batch : (within + 1) * self.global_batch])


class StepBatches:
    """The padded micro-batches of one process, step after step."""

    def __init__(
        self,
        records: Sequence[TrainingRecord],
        tokenizer: TipoTokenizer,
        plan: BatchPlan,
        *,
        rank: int,
        world: int,
        cutoff_len: int,
        pad_to_cutoff: bool,
    ) -> None:
        if plan.micro_batches % world:
            raise InvalidRequestError(f"{plan.micro_batches} micro-batches for {world} processes")
        self.records, self.tokenizer, self.plan = records, tokenizer, plan
        self.rank, self.world = rank, world
        self.cutoff_len, self.pad_to_cutoff = cutoff_len, pad_to_cutoff

    def micro_batches(self, step: int, order: Sequence[int] | None = None) -> list[list[Example]]:
        """This process's micro-batches of ``step``, in order."""
        epoch = step // self.plan.steps_per_epoch
        epoch_seed = derive_seed(self.plan.seed, "epoch", epoch)
        indices = self.plan.step_records(step, order)
        samples = sorted(
            ((i, sample_for(self.records[i], epoch_seed, i)) for i in indices),
            key=lambda item: (len(item[1].user) + len(item[1].output), item[0]),
        )
        size = self.plan.batch_size
        mine = [j for j in range(self.plan.micro_batches) if self.owner(j) == self.rank]
        return [
            [
                encode_sample(s, self.tokenizer, self.cutoff_len)
                for _, s in samples[j * size :][:size]
            ]
            for j in mine
        ]

    def owner(self, micro_batch: int) -> int:
        """The process that trains micro-batch ``micro_batch`` of a step (dealt snake-wise)."""
        round_, seat = divmod(micro_batch, self.world)
        return seat if round_ % 2 == 0 else self.world - 1 - seat

    def tensors(self, step: int, order: Sequence[int] | None = None) -> list[dict[str, Any]]:
        pad_to = self.cutoff_len if self.pad_to_cutoff else None
        return [pad_batch(batch, pad_to=pad_to) for batch in self.micro_batches(step, order)]

    def iterate(self, first: int, last: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(step, micro-batch tensors) for steps first..last-1; one shuffle per epoch."""
        order: list[int] | None = None
        epoch = -1
        for step in range(first, last):
            if step // self.plan.steps_per_epoch != epoch:
                epoch = step // self.plan.steps_per_epoch
                order = self.plan.epoch_order(epoch)
            yield step, self.tensors(step, order)


__all__ = ["BatchPlan", "StepBatches"]
