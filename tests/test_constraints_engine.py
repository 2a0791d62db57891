"""Decode-time control on a real (random, tiny) checkpoint through our engine, batched: the
model's raw output is noise, so the guarantees must come from the constraints."""

from __future__ import annotations

import pytest

from tipo import TIPO, ExpandRequest
from tipo.bans import BanList
from tipo.postprocess import split_sentences
from tipo.protocol import Length

BANS = ["hat", "official*", ".*text"]


@pytest.fixture(scope="module")
def tipo(tiny_checkpoint):
    with TIPO.load(tiny_checkpoint, backend="torch", dtype="float32") as loaded:
        yield loaded


@pytest.mark.parametrize("length", list(Length))
def test_lengths_and_bans_hold_on_a_random_checkpoint(tipo, length):
    requests = [
        ExpandRequest.create(
            tags="1girl, scenery",
            nl="A girl on a hill.",
            seed=seed,
            tag_length=length,
            nl_length=length,
            ban=BANS,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
        )
        for seed in range(6)
    ]
    tag_min, tag_max = length.tag_range
    nl_min, nl_max = length.nl_range
    bans = BanList.parse(BANS)
    for result in tipo.run_many(requests):
        assert not isinstance(result, Exception), result
        counted = len(result.tags.special) + len(result.tags.general)
        assert tag_min <= counted and len(result.tags.general) <= tag_max
        sentences = len(split_sentences(result.extended))
        assert nl_min <= sentences and (nl_max is None or sentences <= nl_max)
        new = [t for t in result.tags.all() if t not in ("1girl", "scenery")]
        assert not [t for t in new if bans.matches(t)]
        assert all(step.attempt == 0 for step in result.steps)
