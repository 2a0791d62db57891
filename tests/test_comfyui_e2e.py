"""Our ComfyUI nodes inside the real ComfyUI 0.3.75 and its real web frontend (comfyui_env).

The repository itself is the custom node package (``custom_nodes/tipo-prompt`` is a link to
it, as a clone would be) and ComfyUI's venv has only what ComfyUI needs plus our
requirements.txt: no llama.cpp, nothing compiled. ``models/kgen`` holds what users of the
reference have there: the demo workflow's GGUF file under the name the reference saved it
(``<repo>_<file>.gguf``, no tokenizer beside it), and a Hugging Face folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoints import make_tiny_checkpoint, shared_dir
from comfyui_env import (
    ComfyInstall,
    ComfyServer,
    ensure_comfyui,
    open_frontend,
    start_comfyui,
)
from host_cache import progress_visible
from reference_nodes import REFERENCE_FORMAT_TEXT, REFERENCE_OPERATIONS, REFERENCE_TIPO_INPUTS

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_WORKFLOW = shared_dir() / "data" / "z-tipo" / "tipo-demo-workflow.json"
DEMO_MODEL = "KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf"
HF_MODEL = "KBlueLeaf/TIPO-500M-ft"  # a folder TIPO-500M-ft/ in models/kgen
OUTPUTS = ["prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt"]
# Set to a folder to keep the screenshot of the demo workflow (README image).
SCREENSHOT_DIR = os.environ.get("TIPO_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def kgen_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A tiny model twice: a GGUF named as the reference downloads it, and a HF folder."""
    pytest.importorskip("gguf")
    from tipo.convert import convert

    root = tmp_path_factory.mktemp("kgen")
    folder = make_tiny_checkpoint(root / "TIPO-500M-ft", seed=3)
    gguf = convert(folder, root / "gguf" / "TIPO-200M-ft2_TIPO-200M-ft2-F16.gguf")
    assert not (gguf.parent / "tokenizer.model").exists()
    return [folder, gguf]


@pytest.fixture(scope="module")
def comfy_install(pytestconfig: pytest.Config) -> ComfyInstall:
    with progress_visible(pytestconfig):
        return ensure_comfyui()


def _start(install: ComfyInstall, models: list[Path], workdir: Path) -> ComfyServer:
    return start_comfyui(
        install,
        custom_nodes={"tipo-prompt": REPOSITORY},
        models={"kgen": models},
        workdir=workdir,
    )


@pytest.fixture(scope="module")
def server(
    comfy_install: ComfyInstall,
    kgen_models: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[ComfyServer]:
    with progress_visible(pytestconfig):
        started = _start(comfy_install, kgen_models, tmp_path_factory.mktemp("comfyui"))
    with started:
        yield started


def tipo_inputs(**changes: Any) -> dict[str, Any]:
    inputs = {
        "tags": "1girl, scenery, (blue sky:1.2), <lora:foo:0.7>",
        "nl_prompt": "a girl on a (windy:1.3) hill",
        "ban_tags": "text, watermark",
        "tipo_model": HF_MODEL,
        "width": 832,
        "height": 1216,
        "temperature": 0.5,
        "top_p": 0.95,
        "min_p": 0.05,
        "top_k": 80,
        "tag_length": "short",
        "nl_length": "very_short",
        "seed": 1383541548893,
        "device": "cuda",  # the reference's default: runs on the CPU under --cpu
    }
    return {**inputs, **changes}


def with_sinks(graph: dict[str, Any], node: str, outputs: int) -> dict[str, Any]:
    """``graph`` plus one ComfyUI PreviewAny (a core output node) per output of ``node``."""
    sinks = {f"sink{i}": {"class_type": "PreviewAny", "inputs": {"source": [node, i]}}
             for i in range(outputs)}  # fmt: skip
    return {**graph, **sinks}


def run(server: ComfyServer, graph: dict[str, Any]) -> dict[str, list[str]]:
    """Queue ``graph``, wait, and return each sink's texts."""
    prompt_id, answer = server.queue(graph)
    assert prompt_id, answer
    entry = server.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return {key: value["text"] for key, value in server.outputs(prompt_id).items()}


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    ("node", "display", "fifth"),
    [("TIPO", "TIPO", ("format", REFERENCE_TIPO_INPUTS["format"])),
     ("TIPOOperation", "TIPO Single Operation",
      ("operation", (REFERENCE_OPERATIONS, {"default": "None"})))],
)  # fmt: skip
def test_object_info_matches_the_reference(server, node, display, fifth):
    info = server.object_info(node)
    assert (info["display_name"], info["category"]) == (display, "utils/promptgen")
    expected = {(fifth[0] if k == "format" else k): (fifth[1] if k == "format" else v)
                for k, v in as_json(REFERENCE_TIPO_INPUTS).items()}  # fmt: skip
    expected[fifth[0]] = as_json(fifth[1])
    required = info["input"]["required"]
    assert info["input_order"]["required"] == list(expected)
    for name, spec in expected.items():
        if name == "tipo_model":
            assert set(spec[0]) <= set(required[name][0])
        elif name == "seed":
            assert required[name][1]["default"] == 1234
        else:
            assert required[name] == spec, name
    assert "optional" not in info["input"]  # no extra sockets on the reference's nodes


def test_format_node_and_outputs_match_the_reference(server):
    info = server.object_info("TIPOFormat")
    assert info["display_name"] == "TIPO Format"
    assert info["input"]["required"] == {
        "full_output": ["LIST", {"default": []}],
        "addon_output": ["LIST", {"default": []}],
        "format": as_json(REFERENCE_TIPO_INPUTS["format"]),
    }
    assert info["output"] == ["STRING"] * 4 and info["output_name"] == OUTPUTS
    operation = server.object_info("TIPOOperation")
    assert (operation["output"], operation["output_name"]) == (
        ["LIST", "LIST"], ["full_output", "addon_output"])  # fmt: skip


def test_model_list_offers_the_local_files(server):
    choices = server.object_info("TIPO")["input"]["required"]["tipo_model"][0]
    assert DEMO_MODEL in choices and HF_MODEL in choices


def test_tipo_node_runs_and_the_seed_reproduces_after_a_restart(
    server, comfy_install, kgen_models, tmp_path
):
    inputs = {**tipo_inputs(), "format": REFERENCE_FORMAT_TEXT}
    graph = with_sinks({"tipo": {"class_type": "TIPO", "inputs": inputs}}, "tipo", 4)
    texts = run(server, graph)
    prompt, user_prompt, unformatted, unformatted_user = (texts[f"sink{i}"][0] for i in range(4))
    assert prompt.startswith("1girl,") and "(blue sky:1.2)" in prompt
    assert "<lora:foo:0.7>" in prompt and "(windy:1.3)" in prompt
    assert user_prompt.startswith("1girl,")
    assert unformatted.startswith("1girl, scenery, (blue sky:1.2), <lora:foo:0.7>")
    assert unformatted_user == "1girl, scenery, (blue sky:1.2), <lora:foo:0.7>\n" \
        "a girl on a (windy:1.3) hill"  # fmt: skip
    # Reference #54: the same seed gave another prompt after a restart.
    with _start(comfy_install, kgen_models, tmp_path) as restarted:
        assert run(restarted, graph) == texts


def test_operation_then_format(server):
    graph = {
        "op": {"class_type": "TIPOOperation",
               "inputs": {**tipo_inputs(nl_prompt=""), "operation": "tag_to_long"}},
        "format": {"class_type": "TIPOFormat", "inputs": {
            "full_output": ["op", 0], "addon_output": ["op", 1],
            "format": "<|general|>\n<|extended|>"}},
    }  # fmt: skip
    texts = run(server, with_sinks(graph, "format", 4))
    prompt = texts["sink0"][0]
    tags, _, caption = prompt.partition("\n")
    assert tags.startswith("scenery, (blue sky:1.2)") and caption
    assert texts["sink1"] == ["scenery, (blue sky:1.2), <lora:foo:0.7>"]


def test_variants_node_gives_one_prompt_per_image(server):
    inputs = {**tipo_inputs(), "format": "<|general|>", "variants": 3}
    graph = with_sinks({"v": {"class_type": "TIPOVariants", "inputs": inputs}}, "v", 5)
    texts = run(server, graph)
    assert len(texts["sink0"]) == 3 and len(set(texts["sink0"])) == 3
    assert texts["sink4"] == ["1383541548893", "1383541548894", "1383541548895"]
    # Seed i of the list is seed + i (tests/test_comfyui_nodes.py checks each equals a single
    # run on a batch-invariant backend; int8 weights quantise activations per batch, so here
    # a prompt decoded in a batch of three need not equal the same seed decoded alone).


def test_bad_values_are_validation_errors_and_the_server_goes_on(server):
    # Reference #79: saved widgets that shifted position gave exactly this error.
    inputs = {**tipo_inputs(device="True"), "format": REFERENCE_FORMAT_TEXT}
    graph = with_sinks({"tipo": {"class_type": "TIPO", "inputs": inputs}}, "tipo", 1)
    prompt_id, answer = server.queue(graph)
    assert prompt_id is None
    [error] = answer["node_errors"]["tipo"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "device: 'True' not in ['cpu', 'cuda']"
    assert server.object_info("TIPO")["name"] == "TIPO"


def test_a_model_that_is_not_there_says_where_to_put_it(server):
    missing = "KBlueLeaf/TIPO-100M | TIPO-100M-F16.gguf"
    graph = with_sinks({"tipo": {"class_type": "TIPO", "inputs": tipo_inputs(
        tipo_model=missing, format="<|general|>")}}, "tipo", 1)  # fmt: skip
    prompt_id, answer = server.queue(graph)
    assert prompt_id, answer
    entry = server.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    message = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    text = message["exception_message"]
    assert "TIPO-100M-F16.gguf" in text and "models/kgen" in text
    assert "huggingface.co/KBlueLeaf/TIPO-100M" in text
    assert run(server, with_sinks({"t": {"class_type": "TIPO", "inputs": {
        **tipo_inputs(), "format": "<|general|>"}}}, "t", 1))["sink0"]  # fmt: skip


def test_demo_workflow_loads_in_the_frontend_and_runs(server, tmp_path):
    """The reference's example workflow, unchanged, through app.loadGraphData and
    app.graphToPrompt: node 38 (TIPO) gets its saved values and runs on the GGUF file the
    reference would have downloaded. The image nodes need an SDXL checkpoint and
    ShowText|pysssss is a third-party node, so ComfyUI's PreviewAny shows the prompt."""
    workflow = json.loads(DEMO_WORKFLOW.read_text())
    with open_frontend(server) as frontend:
        frontend.load(workflow)
        api = frontend.to_api()
        dialogs = frontend.visible_dialogs()
        shot = frontend.screenshot(tmp_path / "comfyui-tipo-demo.png")
    # The file's "missing nodes" are ShowText|pysssss and an old group node, not TIPO.
    missing = [d.splitlines() for d in dialogs if "missing nodes" in d]
    assert missing and all("TIPO" not in lines for lines in missing), dialogs
    saved = next(n for n in workflow["nodes"] if n["id"] == 38)["widgets_values"]
    names = list(REFERENCE_TIPO_INPUTS)[:13] + ["seed", "control", "device"]
    expected = dict(zip(names, saved, strict=True))
    del expected["control"]  # control_after_generate stays in the UI
    assert api["38"] == {"class_type": "TIPO", "inputs": expected, "_meta": {"title": "TIPO"}}
    texts = run(server, with_sinks({"38": api["38"]}, "38", 1))
    assert texts["sink0"][0].startswith("1girl,")
    assert shot.stat().st_size > 20_000
    if SCREENSHOT_DIR:
        shutil.copyfile(shot, Path(SCREENSHOT_DIR) / shot.name)


def ui_workflow(widgets: list[Any]) -> dict[str, Any]:
    """A saved (UI-format) workflow: TIPO with the given widget values -> Preview as Text."""
    tipo = {
        "id": 1,
        "type": "TIPO",
        "pos": [40, 40],
        "size": [420, 620],
        "flags": {},
        "order": 0,
        "mode": 0,
        "inputs": [],
        "properties": {},
        "outputs": [
            {"name": name, "type": "STRING", "links": [1] if i == 0 else []}
            for i, name in enumerate(OUTPUTS)
        ],
        "widgets_values": widgets,
    }
    preview = {
        "id": 2,
        "type": "PreviewAny",
        "pos": [500, 40],
        "size": [560, 620],
        "flags": {},
        "order": 1,
        "mode": 0,
        "properties": {},
        "outputs": [],
        "inputs": [{"name": "source", "type": "*", "link": 1}],
        "widgets_values": [],
    }
    return {"last_node_id": 2, "last_link_id": 1, "nodes": [tipo, preview],
            "links": [[1, 1, 0, 2, 0, "STRING"]], "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}  # fmt: skip


def test_a_saved_graph_runs_from_the_frontend_run_button(server, tmp_path):
    inputs = tipo_inputs(nl_prompt="", format=REFERENCE_FORMAT_TEXT)
    widgets = [inputs[name] for name in list(REFERENCE_TIPO_INPUTS)[:14]]
    widgets += ["fixed", inputs["device"]]
    before = set(server.get("/history"))
    with open_frontend(server) as frontend:
        frontend.load(ui_workflow(widgets))
        frontend.queue()
        deadline = time.monotonic() + 120
        while not set(server.get("/history")) - before and time.monotonic() < deadline:
            time.sleep(0.5)
        [prompt_id] = set(server.get("/history")) - before
        entry = server.wait(prompt_id)
        frontend.page.wait_for_timeout(500)  # the preview widget shows the text
        shot = frontend.screenshot(tmp_path / "comfyui-tipo.png")
    assert entry["status"]["status_str"] == "success", entry["status"]
    [text] = server.outputs(prompt_id)["2"]["text"]
    assert text.startswith("1girl,") and "(blue sky:1.2)" in text
    if SCREENSHOT_DIR:
        shutil.copyfile(shot, Path(SCREENSHOT_DIR) / shot.name)
