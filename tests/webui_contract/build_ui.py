"""Run with a WebUI's gradio: build the TIPO script's controls inside ``gr.Blocks`` as the
WebUI does (its prompt box and size sliders first, handed to ``on_after_component``
callbacks), then print them as JSON, in argument order, for tests/test_webui_gradio.py.

    python build_ui.py MODELS_DIR [--no-input-accordion]

``--no-input-accordion`` hides ``modules.ui_components``, as in a WebUI before 1.7.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "src")]

import gradio as gr  # noqa: E402
from harness import load_script  # noqa: E402


def describe(component: Any) -> dict[str, Any]:
    """What a user sees of a control: its kind, label, default, choices, range, visibility."""
    choices = getattr(component, "choices", None)
    if choices is not None:  # gradio 4 keeps (label, value) pairs
        choices = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
    return {
        "type": type(component).__name__,
        "label": component.label,
        "value": component.value,
        "choices": choices,
        "minimum": getattr(component, "minimum", None),
        "maximum": getattr(component, "maximum", None),
        "step": getattr(component, "step", None),
        "visible": component.visible,
    }


def build(module: Any, is_img2img: bool) -> dict[str, Any]:
    from modules.scripts import OnComponent

    script = module.TIPOScript()
    tab = "img2img" if is_img2img else "txt2img"
    with gr.Blocks():
        host = {f"{tab}_prompt": gr.Textbox(label="Prompt"),
                f"{tab}_width": gr.Slider(label="Width", value=832),
                f"{tab}_height": gr.Slider(label="Height", value=1216)}  # fmt: skip
        for elem_id, callback in script.on_after_component_elem_id:
            if elem_id in host:
                callback(OnComponent(host[elem_id]))
        controls = script.ui(is_img2img)
    pasted = {"Prompt": "1girl", "TIPO Parameters": {"seed": 5, "timing": "BEFORE"}}
    return {
        "controls": [describe(c) for c in controls],
        "infotext_fields": len(script.infotext_fields),
        "pasted": [function(pasted) for _, function in script.infotext_fields],
    }


def main() -> None:
    models = Path(sys.argv[1])
    module = load_script(models)
    if "--no-input-accordion" in sys.argv:
        sys.modules["modules.ui_components"] = None  # type: ignore[assignment]
    report = {"gradio": gr.__version__}
    report.update({tab: build(module, tab == "img2img") for tab in ("txt2img", "img2img")})
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
