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


def _jump_requests(vocabulary: bool) -> list[ExpandRequest]:
    """Every length, with and without bans, sampled and greedy, tags and a sentence."""
    return [
        ExpandRequest.create(
            tags="1girl, scenery",
            nl="A girl on a hill." if seed % 2 else "",
            seed=seed,
            tag_length=length,
            nl_length=length,
            ban=BANS if seed % 3 else [],
            vocabulary=vocabulary,
            temperature=0.0 if seed % 4 == 3 else 1.0,
        )
        for seed in range(4)
        for length in Length
    ]


def _outputs(results: list) -> list[dict]:
    """Everything a result says except how long it took."""
    assert not [r for r in results if isinstance(r, Exception)]
    outputs = [{k: v for k, v in r.to_dict().items() if k != "timings"} for r in results]
    for output in outputs:
        for step in output["steps"]:
            del step["seconds"]
    return outputs


@pytest.mark.parametrize("vocabulary", [True, False])
def test_jump_forward_gives_the_same_outputs_in_fewer_passes(tiny_checkpoint, vocabulary):
    """Appending the tokens a constraint forces, instead of sampling them, must not change a
    single output: the random stream and every state stay as token by token. Alone, a sequence
    computes a forced run in one pass; in a batch, rows catch up without sampling. Each mode
    starts from a fresh engine, so both see the same prefix cache."""
    requests = _jump_requests(vocabulary)
    runs = {}
    for jump in (False, True):
        with TIPO.load(tiny_checkpoint, backend="torch", dtype="float32") as fresh:
            scheduler = fresh.backend.engine.scheduler
            scheduler.jump_forward = jump
            alone = [fresh.run_many([request])[0] for request in requests]
            passes = scheduler.forward_passes
            batched = fresh.run_many(requests)
        runs[jump] = (_outputs(alone), _outputs(batched), passes)
    assert runs[True][0] == runs[False][0]  # one sequence at a time
    assert runs[True][1] == runs[False][1]  # all together, in batches
    assert runs[True][2] < runs[False][2]
    print(f"forward passes alone: {runs[False][2]} token by token, {runs[True][2]} jumping")
