"""The TIPO script's controls built with the real gradio of each WebUI, in a venv of its own:
3.41.2 as AUTOMATIC1111 1.10 pins it, 4.40.0 as Forge pins it. The WebUI around the script is
the contract harness (tests/webui_contract, not A1111): the controls must keep the reference
extension's labels, kinds, defaults and order, since the WebUI saves ui-config values by label
and API callers send the values by position."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_cache import cache_lock, default_cache_dir, log, progress_visible, run_logged, stage
from tipo.hosts import webui
from tipo.hosts.models import DEFAULT_HOST_MODEL

pytestmark = pytest.mark.e2e

BUILD_UI = Path(__file__).resolve().parent / "webui_contract" / "build_ui.py"
# Each WebUI's gradio and the web framework versions it pins with it (requirements_versions.txt).
WEBUIS = {
    "a1111-1.10": (
        "gradio==3.41.2",
        "fastapi==0.94.0",
        "httpcore==0.15.0",
        "httpx==0.24.1",
        "huggingface_hub==0.25.2",
    ),
    "forge": (
        "gradio==4.40.0",
        "fastapi==0.104.1",
        "pydantic==2.8.2",
        "httpx==0.24.1",
        "huggingface_hub==0.26.2",
    ),
}
LENGTHS = ["very short", "short", "long", "very long"]
FORMATS = ["tag only (DTG mode)", "NL only (Tag to NL)", "Both, tag first (recommend)",
           "Both, NL first (recommend)", "Both + generated NL", "custom"]  # fmt: skip


def ensure_gradio(webui_name: str) -> Path:
    """The python of a cached venv with ``WEBUIS[webui_name]`` installed."""
    pins = WEBUIS[webui_name]
    cache = default_cache_dir()
    venv = cache / f"gradio-{webui_name}"
    marker = venv / "tipo-ready.json"
    cache.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache / f"gradio-{webui_name}.lock"):
        if marker.is_file() and json.loads(marker.read_text()) == list(pins):
            return venv / "bin" / "python"
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        with stage(f"venv with {', '.join(pins)}"):
            run_logged([sys.executable, "-m", "venv", venv], cache / "logs" / f"{venv.name}.log")
            pip = [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check"]
            run_logged([*pip, *pins], cache / "logs" / f"{venv.name}-pip.log")
        marker.write_text(json.dumps(list(pins)))
        log(f"{venv.name} ready in {time.monotonic() - started:.1f} s")
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("webui-models")
    (root / "kgen").mkdir()
    (root / "kgen" / "my-tipo-Q8_0.gguf").write_bytes(b"GGUF")  # listed, never loaded
    return root


def _case_id(case: tuple[str, bool]) -> str:
    return f"{case[0]}-{'input-accordion' if case[1] else 'plain-accordion'}"


@pytest.fixture(
    scope="module",
    ids=_case_id,
    params=[(name, accordion) for name in WEBUIS for accordion in (True, False)],
)
def built(request, models, pytestconfig) -> dict:
    name, accordion = request.param
    with progress_visible(pytestconfig):
        python = ensure_gradio(name)
    command = [str(python), str(BUILD_UI), str(models)]
    if not accordion:
        command.append("--no-input-accordion")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["input_accordion"] = accordion
    return report


def expected_controls(input_accordion: bool) -> list[dict]:
    """The reference's controls in argument order: (kind, label, default, choices, range)."""
    timings = [webui.TIMING_BEFORE, webui.TIMING_AFTER]
    enabled = ("InputAccordion", "TIPO") if input_accordion else ("Checkbox", "Enabled")
    rows = [
        (*enabled, False, None, None),
        ("Dropdown", "Upsampling timing", webui.TIMING_AFTER, timings, None),
        ("Number", "Seed for upsampling tags", -1, None, (-1, None, None)),
        ("Radio", "Tags Length target", "long", LENGTHS, None),
        ("Radio", "NL Length target", "long", LENGTHS, None),
        ("Textbox", "Ban tags", "", None, None),
        ("Dropdown", "Prompt Format", "Both, tag first (recommend)", FORMATS, None),
        ("TextArea", "Custom Prompt Format", webui.ScriptArgs().format_text, None, None),
        ("Slider", "Temperature", 0.5, None, (0.1, 1.5, 0.05)),
        ("Slider", "Top-p", 0.95, None, (0, 1, 0.05)),
        ("Slider", "Top-k", 80, None, (0, 150, 1)),
        ("Dropdown", "Model", DEFAULT_HOST_MODEL, None, None),
        ("Checkbox", "Use CPU (GGUF)", False, None, None),
        ("Checkbox", "No formatting", False, None, None),
        ("Textbox", "Tag Prompt", "", None, None),
        ("Textbox", "Natural Language Prompt", "", None, None),
    ]
    return [{"type": t, "label": label, "value": value, "choices": choices, "range": span}
            for t, label, value, choices, span in rows]  # fmt: skip


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_controls_keep_the_reference_labels_defaults_and_order(built, tab):
    controls = built[tab]["controls"]
    for ours, expected in zip(controls, expected_controls(built["input_accordion"]), strict=True):
        assert (ours["type"], ours["label"]) == (expected["type"], expected["label"])
        assert ours["value"] == expected["value"], expected["label"]
        if expected["choices"] is not None:
            assert ours["choices"] == expected["choices"], expected["label"]
        if expected["range"] is not None:
            low, high, step = expected["range"]
            assert (ours["minimum"], ours["maximum"]) == (low, high), expected["label"]
            if step is not None:
                assert ours["step"] == pytest.approx(step), expected["label"]
    assert controls[7]["visible"] is False  # the custom format shows for "custom" only


def test_model_list_is_the_superset_plus_local_files(built):
    choices = built["txt2img"]["controls"][11]["choices"]
    assert choices[0] == "KBlueLeaf/TIPO-v2.1-1B-A200M | TIPO-v2.1-1B-A200M-f16.gguf"
    assert "my-tipo-Q8_0.gguf" in choices and DEFAULT_HOST_MODEL in choices


def test_every_control_pastes_from_an_infotext(built):
    report = built["txt2img"]
    assert report["infotext_fields"] == 16
    pasted = dict(zip(webui.ScriptArgs.__dataclass_fields__, report["pasted"], strict=True))
    assert pasted["enabled"] is True and pasted["seed"] == 5
    assert pasted["timing"] == webui.TIMING_BEFORE and pasted["tag_prompt"] == "1girl"
    assert pasted["model"] is None  # not in this infotext: the control keeps its value
