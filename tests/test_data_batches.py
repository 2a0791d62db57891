"""tipo.data.batches: ids, loss mask, padding and length buckets of docs/tipo-training.md §1.9.

Golden ids come from the real LLaMA tokenizer + the 13 TIPO tokens (itself checked against the
transformers oracle in test_tokenizer.py); "tag: 1girl" matches GOLDEN_IDS there.
"""

from __future__ import annotations

import pytest
import torch

from checkpoints import llama_tokenizer_model
from test_data_samples import RECORDS
from tipo.data import Example, count_tokens, encode_sample, pad_batch, sample_for
from tipo.data.batches import IGNORE_INDEX, common_prefix
from tipo.data.samples import Sample
from tipo.errors import InvalidRequestError
from tipo.protocol import Length
from tipo.tokenizer import TipoTokenizer

M = IGNORE_INDEX
USER = "target: <|short|> <|tag_to_long|>\ntag: 1girl"
OUTPUT = ", smile\nlong: A girl."
#        <s> ▁target :  ▁  <|short|> ▁ <|tag_to_long|> \n tag  :  ▁  1  g  irl
USER_IDS = [1, 3646, 29901, 29871, 32002, 29871, 32005, 13, 4039, 29901, 29871, 29896, 29887, 5168]
#            ,     ▁smile \n  long  :     ▁A   ▁girl .      </s>
OUTPUT_IDS = [29892, 17819, 13, 5426, 29901, 319, 7826, 29889, 2]


def sample(user: str, output: str) -> Sample:
    return Sample(user, output, "tag_to_long", Length.SHORT, False, False, False, not user)


@pytest.fixture(scope="module")
def tok() -> TipoTokenizer:
    return TipoTokenizer.from_sentencepiece(llama_tokenizer_model())


def test_golden_split_sample(tok: TipoTokenizer) -> None:
    example = encode_sample(sample(USER, OUTPUT), tok)
    assert example.input_ids == USER_IDS + OUTPUT_IDS
    assert example.labels == [M] * len(USER_IDS) + OUTPUT_IDS


def test_folded_sample_masks_only_bos(tok: TipoTokenizer) -> None:
    example = encode_sample(sample("", USER + OUTPUT), tok)
    assert example.input_ids == USER_IDS + OUTPUT_IDS
    assert example.labels == [M] + USER_IDS[1:] + OUTPUT_IDS


def test_eos_iff_it_fits_and_truncation(tok: TipoTokenizer) -> None:
    ids = USER_IDS + OUTPUT_IDS[:-1]  # without EOS: 22 ids
    full = encode_sample(sample(USER, OUTPUT), tok, cutoff_len=len(ids) + 1)
    assert full.input_ids == [*ids, 2]
    cut = encode_sample(sample(USER, OUTPUT), tok, cutoff_len=len(ids))
    assert cut.input_ids == ids and cut.labels[-1] == ids[-1]
    short = encode_sample(sample(USER, OUTPUT), tok, cutoff_len=16)
    assert short.input_ids == ids[:16]
    assert short.labels == [M] * len(USER_IDS) + ids[len(USER_IDS) : 16]
    # The cut falls inside the user part: nothing is left to train on.
    inside = encode_sample(sample(USER, OUTPUT), tok, cutoff_len=5)
    assert inside.input_ids == ids[:5] and inside.labels == [M] * 5
    with pytest.raises(InvalidRequestError):
        encode_sample(sample(USER, OUTPUT), tok, cutoff_len=0)


def test_merge_across_the_boundary_masks_the_common_prefix(tok: TipoTokenizer) -> None:
    # total_drop without input tags: user ends "tag: " and its "▁" (29871) joins "▁smile".
    user = "target: <|short|>\ntag: "
    example = encode_sample(sample(user, "smile, sky"), tok)
    user_ids = tok.encode(user, add_bos=True, add_eos=False)
    assert user_ids[-1] == 29871 and 29871 not in example.input_ids[5:]
    assert example.input_ids == [*user_ids[:-1], 17819, 29892, 14744, 2]
    assert example.labels == [M] * (len(user_ids) - 1) + [17819, 29892, 14744, 2]


def test_prefix_property_over_many_samples(tok: TipoTokenizer) -> None:
    """The user ids are a prefix of the full ids except when the user part ends in "tag: "."""
    split = merged = 0
    for seed in range(10):
        for index, record in enumerate(RECORDS):
            s = sample_for(record, seed, index)
            user_ids = tok.encode(s.user, add_bos=True, add_eos=False)
            example = encode_sample(s, tok)
            shared = common_prefix(user_ids, example.input_ids)
            assert example.labels == [M] * shared + example.input_ids[shared:]
            if not s.user:
                assert shared == 1
                continue
            split += 1
            if s.user.endswith("tag: "):
                merged += 1
                assert shared == len(user_ids) - 1 and user_ids[-1] == 29871
            else:
                assert shared == len(user_ids), (s.user, s.output)
    assert split > 50 and merged > 0


def test_pad_batch_values() -> None:
    a = Example([1, 5, 6, 2], [M, M, 6, 2])
    b = Example([1, 7], [M, 7])
    batch = pad_batch([a, b])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert batch["labels"].tolist() == [[M, M, 6, 2], [M, 7, M, M]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())
    fixed = pad_batch([a, b], pad_id=2, pad_to=6)
    assert fixed["input_ids"].tolist() == [[1, 5, 6, 2, 2, 2], [1, 7, 2, 2, 2, 2]]
    assert fixed["labels"].shape == fixed["attention_mask"].shape == (2, 6)
    with pytest.raises(InvalidRequestError):
        pad_batch([a, b], pad_to=3)
    with pytest.raises(InvalidRequestError):
        pad_batch([])


def test_count_tokens() -> None:
    batch = pad_batch([Example([1, 5, 6, 2], [M, M, 6, 2]), Example([1, 7], [M, 7])], pad_to=8)
    assert count_tokens(batch) == (6, 3)
