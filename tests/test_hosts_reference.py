"""The reference extension's inputs and outputs (tipo.hosts.reference) and single operations:
what a saved workflow's values become, and the four texts TIPO gives back."""

from __future__ import annotations

import copy

import pytest

from checkpoints import llama_tokenizer_model
from tipo import TIPO, ExpandRequest
from tipo.backends.fake import ScriptedBackend
from tipo.errors import InvalidRequestError
from tipo.hosts.reference import (
    OPERATIONS,
    REFERENCE_FORMAT,
    UNTRAINED_OPERATIONS,
    format_outputs,
    host_seed,
    operation_outputs,
    operation_task,
    reference_outputs,
    reference_request,
    reference_sampling,
    split_bans,
)
from tipo.protocol import ModelRequest, build_prompt
from tipo.tokenizer import TipoTokenizer

try:
    from kgen.executor import tipo as kgen_tipo
except ImportError:  # the oracle is in the test extra; without it those tests skip
    kgen_tipo = None

DEFAULTS = {
    "tags": "1girl, (blue sky:1.2), <lora:foo:0.7>, scenery",
    "nl_prompt": "a girl on a (windy:1.3) hill",
    "ban_tags": "text,\nwatermark",
    "format": REFERENCE_FORMAT,
    "width": 832,
    "height": 1216,
    "temperature": 0.5,
    "top_p": 0.95,
    "min_p": 0.05,
    "top_k": 80,
    "tag_length": "long",
    "nl_length": "short",
    "seed": 1234,
}


@pytest.fixture(scope="module")
def tipo():
    tokenizer = TipoTokenizer.from_sentencepiece(llama_tokenizer_model())
    return TIPO(ScriptedBackend(tokenizer), tokenizer)


def test_a_saved_node_becomes_one_request():
    request = reference_request(**DEFAULTS)
    assert request.tags == DEFAULTS["tags"] and request.nl == DEFAULTS["nl_prompt"]
    assert request.ban == ("text", "watermark")
    assert request.template == REFERENCE_FORMAT
    assert request.aspect == pytest.approx(832 / 1216)
    assert (request.tag_length.value, request.nl_length.value) == ("long", "short")
    assert request.seed == 1234 and request.operation is None
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.min_p, sampling.top_k) == (
        0.5, 0.95, 0.05, 80)  # fmt: skip


@pytest.mark.parametrize(
    ("saved", "expected"),
    [(0, 0), (1383541548893, 1383541548893), (-1, 2**63 - 1), (2**64 - 1, 2**63 - 1)],
)
def test_every_seed_a_host_can_save_is_a_valid_seed(saved, expected):
    assert host_seed(saved) == expected
    assert reference_request(**{**DEFAULTS, "seed": saved}).seed == expected


def test_ban_box_splits_on_commas_and_newlines():
    assert split_bans(" text, watermark\n.*logo\n\n,") == ("text", "watermark", ".*logo")
    assert split_bans("") == ()


def test_sampling_values_keep_llama_cpp_meaning():
    # top_p 0 and min_p 1 kept only the best token in llama.cpp; negative values were "off".
    assert reference_sampling(0.5, 0.0, 0.05, 80) == {
        "temperature": 0.5, "top_p": 1.0, "min_p": 0.0, "top_k": 1}  # fmt: skip
    assert reference_sampling(-1.0, 0.9, -0.5, -3) == {
        "temperature": 0.0, "top_p": 0.9, "min_p": 0.0, "top_k": 0}  # fmt: skip
    assert reference_sampling(0.5, 1.7, 1.0, 5)["top_k"] == 1


def test_format_box_never_reads_a_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("<|general|> from a file")
    with pytest.raises(InvalidRequestError, match="no slot"):
        reference_request(**{**DEFAULTS, "format": str(secret)})
    assert reference_request(**{**DEFAULTS, "format": "illustrious"}).template == "illustrious"


@pytest.mark.parametrize(
    ("name", "operation"),
    [("None", "tag"), ("short_to_tag", "short_to_tag"), ("tag_to_long", "tag_to_long"),
     ("tag_to_short", "tag_to_long"), ("tag_to_long_to_short", "tag_to_long"),
     ("tag_to_short_to_long", "tag_to_short_to_long")],
)  # fmt: skip
def test_operations_map_to_trained_tasks(name, operation):
    assert operation_task(name) == operation


def test_every_reference_operation_is_accepted():
    for name in OPERATIONS:
        assert reference_request(**DEFAULTS, operation=name).operation is not None


@pytest.mark.skipif(kgen_tipo is None, reason="needs tipo-kgen==0.3.1 (test extra)")
@pytest.mark.parametrize("name", [op for op in OPERATIONS if op not in UNTRAINED_OPERATIONS])
@pytest.mark.parametrize("nl", ["", "a girl on a hill"])
def test_single_operation_prompt_is_the_references(tipo, name, nl):
    """One step, the task's own field expanded, at that field's length: kgen's
    tipo_single_request + apply_tipo_prompt, byte for byte."""
    result = tipo.expand("1girl, scenery", nl=nl, operation=operation_task(name),
                         tag_length="short", nl_length="very_long", seed=5)  # fmt: skip
    assert len(result.steps) == 1
    meta, operations, general, nl_prompt = kgen_tipo.tipo_single_request(
        {"special": ["1girl"], "general": ["scenery"]}, nl, "short", "very_long",
        operation=name)  # fmt: skip
    mode, length, expand = operations[0]
    meta = {k: v for k, v in meta.items() if v}
    expected = kgen_tipo.apply_tipo_prompt(meta, general, nl_prompt, mode, length, expand)
    assert result.steps[0].prompt == expected


def test_operation_option_runs_exactly_one_step(tipo):
    result = tipo.expand("1girl, scenery", operation="tag_to_long", nl_length="short", seed=1)
    (step,) = result.steps
    assert (step.task, step.length, step.expand) == ("tag_to_long", "short", True)
    request = ModelRequest.create(tags=["1girl", "scenery"], task="tag_to_long", length="short")
    assert step.prompt == build_prompt(request)
    with pytest.raises(InvalidRequestError, match="unknown task"):
        ExpandRequest.create(operation="tag_to_everything")


def test_outputs_through_operation_and_format_equal_the_tipo_node(tipo):
    request = reference_request(**DEFAULTS)
    result = tipo.run(request)
    outputs = reference_outputs(result, request, tipo.tag_db)
    assert outputs.prompt == result.prompt
    full, addon = operation_outputs(result, request, tipo.tag_db)
    assert format_outputs(full, addon, request.template, tipo.tag_db) == outputs


def test_user_prompt_is_the_input_alone_in_the_format(tipo):
    outputs = reference_outputs(*_run(tipo, DEFAULTS), tipo.tag_db)
    assert outputs.user_prompt == "1girl,\n\n(blue sky:1.2), <lora:foo:0.7>, scenery,\n\n" \
        "a girl on a (windy:1.3) hill."  # fmt: skip


def test_unformatted_prompt_is_input_then_new_tags_then_caption(tipo):
    outputs = reference_outputs(*_run(tipo, DEFAULTS), tipo.tag_db)
    first, caption = outputs.unformatted_prompt.split("\n")
    assert first.startswith(DEFAULTS["tags"] + ", ")
    added = first.removeprefix(DEFAULTS["tags"] + ", ").split(", ")
    assert added and not {"1girl", "scenery", "blue sky"} & set(added)
    assert caption.startswith("a girl on a (windy:1.3) hill")


def test_regression_weights_in_the_sentence_survive(tipo):
    """The reference computed the weighted sentence and dropped it (since f4a315a)."""
    outputs = reference_outputs(*_run(tipo, DEFAULTS), tipo.tag_db)
    assert "(windy:1.3)" in outputs.prompt and "(windy:1.3)" in outputs.unformatted_prompt


def test_regression_unformatted_user_prompt_has_a_separator(tipo):
    """The reference concatenated tags and sentence with nothing between them."""
    outputs = reference_outputs(*_run(tipo, DEFAULTS), tipo.tag_db)
    assert outputs.unformatted_user_prompt == f"{DEFAULTS['tags']}\n{DEFAULTS['nl_prompt']}"


def test_regression_format_does_not_modify_its_inputs(tipo):
    """The reference's TIPO Format popped user_tags out of the cached upstream output, so a
    second format of the same output lost the user's tags."""
    full, addon = operation_outputs(*_run(tipo, DEFAULTS), tipo.tag_db)
    before = copy.deepcopy((full, addon))
    first = format_outputs(full, addon, REFERENCE_FORMAT, tipo.tag_db)
    assert (full, addon) == before
    assert format_outputs(full, addon, REFERENCE_FORMAT, tipo.tag_db) == first


def test_format_of_something_else_is_a_clear_error(tipo):
    with pytest.raises(InvalidRequestError, match="TIPO Single Operation"):
        format_outputs([], {}, REFERENCE_FORMAT, tipo.tag_db)
    with pytest.raises(InvalidRequestError, match="list of tags"):
        format_outputs({"general": "a, b"}, {}, REFERENCE_FORMAT, tipo.tag_db)


def test_empty_inputs_give_clean_texts(tipo):
    inputs = {**DEFAULTS, "tags": "", "nl_prompt": "", "ban_tags": ""}
    outputs = reference_outputs(*_run(tipo, inputs), tipo.tag_db)
    assert outputs.user_prompt == "" and outputs.unformatted_user_prompt == ""
    assert not outputs.unformatted_prompt.startswith(",")
    assert outputs.prompt


def _run(tipo, inputs):
    """(result, request) of one node run."""
    request = reference_request(**inputs)
    return tipo.run(request), request
