"""Training examples as token ids with the recipe's loss mask, and batches of them.

The recipe (docs/tipo-training.md §1.9): ``user + output`` is tokenized with BOS and truncated at
``cutoff_len``; EOS is appended if it fits; the ids of ``user`` (with BOS) are masked out of the
loss with -100. A folded "train on input" sample has ``user == ""``, so only BOS is masked. Labels
equal the input ids elsewhere: the model's loss shifts them by one.

Batching: the recipe right-pads every sample to exactly ``cutoff_len`` with id 0 (``<unk>``),
labels -100 and attention mask 0, with no packing. ``pad_batch(..., pad_to=cutoff_len)`` does the
same; ``pad_to=None`` pads to the longest example, and ``tipo.train.batches`` puts similar
lengths together so that little padding is left. Either way the loss is the same per sample;
only compute changes. The model card's "Real Token Seen" counts non-padding tokens
(:func:`count_tokens`).

torch is imported inside the functions that build tensors, so ``tipo.data`` imports without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from .samples import Sample

if TYPE_CHECKING:
    from ..tokenizer import TipoTokenizer

IGNORE_INDEX = -100
CUTOFF_LEN = 1024  # the v1 configs (200M, 100M, 25M); the 500M toml used 2048
PAD_ID = 0  # the recipe pads with <unk>, not with the config's pad id (2)


@dataclass(frozen=True)
class Example:
    """One tokenized sample: ``labels[i]`` is ``input_ids[i]`` or -100 (no loss)."""

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise InvalidRequestError(
                f"{len(self.input_ids)} input ids but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.input_ids)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_sample(
    sample: Sample, tokenizer: TipoTokenizer, cutoff_len: int = CUTOFF_LEN
) -> Example:
    """The ids and labels of ``sample`` as the recipe trained on them (§1.9)."""
    if cutoff_len < 1:
        raise InvalidRequestError(f"cutoff_len must be at least 1, not {cutoff_len}")
    ids = tokenizer.encode(sample.user + sample.output, add_bos=True, add_eos=False)[:cutoff_len]
    if len(ids) < cutoff_len:
        ids.append(tokenizer.eos_id)
    user_ids = tokenizer.encode(sample.user, add_bos=True, add_eos=False)
    # The recipe masks len(user_ids) positions. SentencePiece can merge across the user/output
    # boundary: a user part ending in "tag: " encodes its trailing space as "▁" (29871), while
    # in the full text that space joins the next word ("▁a"). Masking len(user_ids) would then
    # hide the first output token; we mask only the common prefix, so every id that is not
    # exactly the user's own tokenization gets loss. Elsewhere the two counts are equal.
    masked = common_prefix(user_ids, ids)
    labels = [IGNORE_INDEX] * masked + ids[masked:]
    return Example(ids, labels)


def pad_batch(
    examples: Sequence[Example], pad_id: int = PAD_ID, pad_to: int | None = None
) -> dict[str, Any]:
    """Right-pad ``examples`` into ``input_ids``, ``labels`` and ``attention_mask`` tensors.

    Each is int64 of shape (batch, length), length = ``pad_to`` (the recipe: cutoff_len) or the
    longest example. Padding is ``pad_id`` in the ids, -100 in the labels and 0 in the mask.
    """
    if not examples:
        raise InvalidRequestError("cannot pad an empty batch")
    longest = max(len(example) for example in examples)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise InvalidRequestError(
            f"an example has {longest} tokens, more than pad_to={pad_to}",
            hint="truncate with encode_sample(..., cutoff_len) first",
        )
    import torch

    shape = (len(examples), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def count_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(non-padding tokens, tokens with a label) of a padded batch, as the trainer logged them.

    Label 0 is always -100 (BOS is masked), so counting before or after the loss's shift by one
    gives the same number.
    """
    tokens = int(batch["attention_mask"].sum())
    trained = int((batch["labels"] != IGNORE_INDEX).sum())
    return tokens, trained


__all__ = [
    "CUTOFF_LEN",
    "IGNORE_INDEX",
    "PAD_ID",
    "Example",
    "count_tokens",
    "encode_sample",
    "pad_batch",
]
