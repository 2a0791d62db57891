"""The ComfyUI node classes in-process (no ComfyUI): their declared inputs against the
reference's, and what each node returns. tests/test_comfyui_e2e.py runs them in a real
ComfyUI; tests/test_hosts_models.py covers where models are found."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from reference_nodes import REFERENCE_OPERATIONS, REFERENCE_TIPO_INPUTS
from tipo import TIPO
from tipo.errors import InvalidRequestError
from tipo.hosts.comfyui import NODES, node_mappings
from tipo.hosts.models import REFERENCE_MODEL_NAMES, HostRuntime, ModelCache
from tipo.hosts.reference import REFERENCE_FORMAT

INPUTS = {
    "tags": "1girl, scenery, (blue sky:1.2)",
    "nl_prompt": "",
    "ban_tags": "",
    "width": 1024,
    "height": 1024,
    "temperature": 0.5,
    "top_p": 0.95,
    "min_p": 0.05,
    "top_k": 80,
    "tag_length": "long",
    "nl_length": "short",
    "seed": 7,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def kgen_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("models") / "kgen"
    (folder / "tiny").mkdir(parents=True)
    for file in tiny_checkpoint.iterdir():
        (folder / "tiny" / file.name).symlink_to(file)
    return folder


@pytest.fixture(scope="module")
def nodes(kgen_dir):
    """Node classes whose models run on the scripted fake backend."""

    def load(checkpoint, **options):
        return TIPO.load(checkpoint, backend="fake")

    runtime = HostRuntime(lambda: [kgen_dir], cache=ModelCache(load), offline=True)
    return node_mappings(runtime)[0]


def test_nodes_keep_the_reference_ids_display_names_and_category(nodes):
    _, names = node_mappings(HostRuntime(lambda: []))
    assert {k: names[k] for k in ("TIPO", "TIPOOperation", "TIPOFormat")} == {
        "TIPO": "TIPO",
        "TIPOOperation": "TIPO Single Operation",
        "TIPOFormat": "TIPO Format",
    }
    for key in NODES:
        assert nodes[key].CATEGORY == "utils/promptgen" and nodes[key].FUNCTION == "execute"
        assert not getattr(nodes[key], "OUTPUT_NODE", False)


def _assert_reference_inputs(ours: dict, fifth: tuple[str, tuple]) -> None:
    expected = dict(REFERENCE_TIPO_INPUTS)
    expected = {(fifth[0] if k == "format" else k): (fifth[1] if k == "format" else v)
                for k, v in expected.items()}  # fmt: skip
    assert list(ours) == list(expected)  # names and order: saved widget values are positional
    for name, spec in expected.items():
        if name == "tipo_model":  # a superset, defaulting to a model this version runs
            assert set(spec[0]) <= set(ours[name][0])
            assert ours[name][1]["default"] in ours[name][0]
        elif name == "seed":  # the range is declared (reference #87); type and default kept
            assert ours[name][0] == "INT" and ours[name][1]["default"] == 1234
            assert ours[name][1]["min"] <= -1 and ours[name][1]["max"] >= 2**64 - 1
        else:
            assert ours[name] == spec, name


def test_tipo_inputs_are_the_references(nodes):
    spec = nodes["TIPO"].INPUT_TYPES()
    assert list(spec) == ["required"]
    _assert_reference_inputs(spec["required"], ("format", REFERENCE_TIPO_INPUTS["format"]))
    assert nodes["TIPO"].RETURN_TYPES == ("STRING",) * 4
    assert nodes["TIPO"].RETURN_NAMES == (
        "prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt")  # fmt: skip


def test_operation_inputs_are_the_references(nodes):
    spec = nodes["TIPOOperation"].INPUT_TYPES()["required"]
    operation = (REFERENCE_OPERATIONS, {"default": "None"})
    _assert_reference_inputs(spec, ("operation", operation))
    assert nodes["TIPOOperation"].RETURN_TYPES == ("LIST", "LIST")
    assert nodes["TIPOOperation"].RETURN_NAMES == ("full_output", "addon_output")


def test_format_inputs_are_the_references(nodes):
    assert nodes["TIPOFormat"].INPUT_TYPES() == {"required": {
        "full_output": ("LIST", {"default": []}),
        "addon_output": ("LIST", {"default": []}),
        "format": REFERENCE_TIPO_INPUTS["format"],
    }}  # fmt: skip
    assert nodes["TIPOFormat"].RETURN_NAMES == nodes["TIPO"].RETURN_NAMES


def test_model_list_offers_local_checkpoints_too(nodes):
    choices = nodes["TIPO"].INPUT_TYPES()["required"]["tipo_model"][0]
    assert choices[: len(REFERENCE_MODEL_NAMES)] == list(REFERENCE_MODEL_NAMES)
    assert "tiny" in choices


def test_tipo_node_returns_four_texts(nodes):
    outputs = nodes["TIPO"]().execute(tipo_model="tiny", format=REFERENCE_FORMAT, **INPUTS)
    prompt, user_prompt, unformatted, unformatted_user = outputs
    assert prompt.startswith("1girl,") and "(blue sky:1.2)" in prompt
    assert user_prompt == "1girl,\n\nscenery, (blue sky:1.2)"
    assert unformatted.startswith("1girl, scenery, (blue sky:1.2), ")
    assert unformatted_user == INPUTS["tags"]


def test_operation_then_format_equals_tipo_for_the_same_step(nodes):
    operation = nodes["TIPOOperation"]().execute(tipo_model="tiny", operation="None", **INPUTS)
    formatted = nodes["TIPOFormat"]().execute(*operation, format="<|general|>")
    assert formatted[0].startswith("scenery, (blue sky:1.2), ")
    assert formatted[1] == "scenery, (blue sky:1.2)"


def test_variants_are_one_prompt_per_seed(nodes):
    prompts, _, unformatted, _, seeds = nodes["TIPOVariants"]().execute(
        tipo_model="tiny", format=REFERENCE_FORMAT, variants=3, **INPUTS)  # fmt: skip
    assert seeds == [7, 8, 9] and len(prompts) == len(unformatted) == 3
    assert len(set(prompts)) == 3
    single = nodes["TIPO"]()
    for prompt, seed in zip(prompts, seeds, strict=True):
        inputs = {**INPUTS, "seed": seed}
        assert single.execute(tipo_model="tiny", format=REFERENCE_FORMAT, **inputs)[0] == prompt


def test_control_options_reach_the_request(nodes):
    (control,) = nodes["TIPOControl"]().execute(
        length_control=True, only_real_tags=False, expand_tags=False, expand_nl=True,
        tag_first=True, gen_meta=False, shuffle_tags=False, retries=0,
        repetition_penalty=1.1, max_new_tokens=256)  # fmt: skip
    assert control["vocabulary"] is False and control["shuffle"] is False
    assert control["expand_tags"] is False and control["max_new_tokens"] == 256
    prompts, *_ = nodes["TIPOVariants"]().execute(
        tipo_model="tiny", format="<|general|>", variants=1, control=control, **INPUTS
    )
    assert prompts == ["scenery, (blue sky:1.2)"]  # tags kept as given: nothing to run


def test_control_rejects_a_bad_value_at_the_control_node(nodes):
    with pytest.raises(InvalidRequestError, match="retries"):
        nodes["TIPOControl"]().execute(
            length_control=True, only_real_tags=True, expand_tags=True, expand_nl=True,
            tag_first=True, gen_meta=False, shuffle_tags=True, retries=99,
            repetition_penalty=1.1, max_new_tokens=256)  # fmt: skip


def test_unload_node_frees_the_model(nodes):
    nodes["TIPO"]().execute(tipo_model="tiny", format=REFERENCE_FORMAT, **INPUTS)
    runtime = nodes["TIPO"].runtime
    assert len(runtime.cache) == 1
    assert nodes["TIPOUnloadModel"]().execute(text="a prompt") == ("a prompt",)
    assert len(runtime.cache) == 0


class Interrupted(Exception):
    """Stands for comfy.model_management.InterruptProcessingException."""


@pytest.fixture
def comfy_hooks(monkeypatch):
    """ComfyUI's progress bar and interrupt flag, as comfy.utils and comfy.model_management
    give them to nodes (the real modules need a ComfyUI: tests/test_comfyui_e2e.py)."""
    state = {"updates": 0, "interrupt_after": None}

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update(self, value):
            state["updates"] += value

        def update_absolute(self, value):
            state["finished"] = value == self.total

    def throw_exception_if_processing_interrupted():
        if state["interrupt_after"] is not None and state["updates"] >= state["interrupt_after"]:
            state["interrupt_after"] = None  # ComfyUI clears the flag as it raises
            raise Interrupted

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted
    )
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    return state


def test_cancel_stops_generation_and_the_model_runs_again(kgen_dir, comfy_hooks, one_torch_thread):
    runtime = HostRuntime(lambda: [kgen_dir], offline=True)  # the real engine
    tipo = node_mappings(runtime)[0]["TIPO"]()
    comfy_hooks["interrupt_after"] = 5
    with pytest.raises(Interrupted):
        tipo.execute(tipo_model="tiny", format=REFERENCE_FORMAT, **INPUTS)
    assert comfy_hooks["updates"] == 5  # stopped at the token the button was pressed on
    prompt = tipo.execute(tipo_model="tiny", format=REFERENCE_FORMAT, **INPUTS)[0]
    assert prompt.startswith("1girl,") and comfy_hooks["finished"]
    assert comfy_hooks["updates"] > 5
