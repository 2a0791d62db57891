"""The SD-WebUI script's controls, built with gradio (3.41 in AUTOMATIC1111, 4.x in Forge).

Labels, choices, defaults and order are the reference extension's: the WebUI keys saved
ui-config values by label (``customscript/tipo.py/txt2img/Top-k/value``) and API callers pass
the values positionally, in :class:`tipo.hosts.webui.ScriptArgs` order. Only the seed box has
no maximum any more (reference #104). Imported by ``scripts/tipo.py`` inside the WebUI only.
"""

from __future__ import annotations

from typing import Any

from . import webui

SEED_INFO = "-1: a new random seed each time; the image's seed is added to it"
BAN_PLACEHOLDER = "umbrella, official.*, .*text, ..."


def build_controls(models: list[str], default_model: str, tab: str) -> tuple[dict, dict]:
    """(controls by ScriptArgs field, in order; buttons by name) inside the caller's Blocks."""
    import gradio as gr

    controls: dict[str, Any] = {}
    with _accordion(gr, tab) as accordion:
        controls["enabled"] = (
            accordion if _has_input_accordion() else gr.Checkbox(label="Enabled", value=False)
        )
        with gr.Row():
            with gr.Column():
                controls.update(_left_column(gr))
                buttons = _seed_buttons(gr)
            with gr.Column():
                controls.update(_right_column(gr, models, default_model))
        controls["tag_prompt"] = gr.Textbox(
            label="Tag Prompt",
            value="",
            lines=3,
            placeholder="Tags for TIPO (the prompt box is used first)",
        )
        controls["nl_prompt"] = gr.Textbox(
            label="Natural Language Prompt",
            value="",
            lines=3,
            placeholder="A sentence for TIPO to extend",
        )
        buttons["generate"] = gr.Button(value="Generate Prompt")
    _show_custom_format(controls["format_selected"], controls["format_text"])
    order = [name for name in webui.ScriptArgs.__dataclass_fields__]
    return {name: controls[name] for name in order}, buttons


def _has_input_accordion() -> bool:
    try:
        from modules.ui_components import InputAccordion  # noqa: F401  (WebUI >= 1.7, Forge)
    except ImportError:
        return False
    return True


def _accordion(gr: Any, tab: str) -> Any:
    """A1111's InputAccordion (a checkbox in the accordion's label), else a plain one."""
    if _has_input_accordion():
        from modules.ui_components import InputAccordion

        return InputAccordion(False, label=webui.TITLE, elem_id=f"{tab}_tipo_accordion")
    return gr.Accordion(label=webui.TITLE, open=False)


def _left_column(gr: Any) -> dict[str, Any]:
    lengths = list(webui.LENGTHS)
    return {
        "timing": gr.Dropdown(label="Upsampling timing", value=webui.TIMING_AFTER,
                              choices=list(webui.TIMINGS.values())),
        "seed": gr.Number(label="Seed for upsampling tags", value=-1, minimum=-1, precision=0,
                          info=SEED_INFO),
        "tag_length": gr.Radio(label="Tags Length target", choices=lengths, value="long"),
        "nl_length": gr.Radio(label="NL Length target", choices=lengths, value="long"),
        "ban_tags": gr.Textbox(label="Ban tags", value="", placeholder=BAN_PLACEHOLDER,
                               info="Separate with comma. Regex supported."),
        "format_selected": gr.Dropdown(label="Prompt Format", value=webui.DEFAULT_FORMAT,
                                       choices=[*webui.FORMATS, webui.CUSTOM_FORMAT],
                                       info="The format you want to apply to final prompt"),
        "format_text": gr.TextArea(label="Custom Prompt Format", visible=False,
                                   value=webui.ScriptArgs().format_text,
                                   placeholder="<|extended|>. <|general|>"),
    }  # fmt: skip


def _seed_buttons(gr: Any) -> dict[str, Any]:
    with gr.Row():
        return {
            "random": gr.Button(value="\U0001f3b2", size="sm"),  # a new random seed (-1)
            "reuse": gr.Button(value="\u267b", size="sm"),  # the seed used last
            "shuffle": gr.Button(value="Shuffle", size="sm"),  # a fixed random seed
        }


def _right_column(gr: Any, models: list[str], default_model: str) -> dict[str, Any]:
    return {
        "temperature": gr.Slider(label="Temperature", minimum=0.1, maximum=1.5, step=0.05,
                                 value=0.5),
        "top_p": gr.Slider(label="Top-p", minimum=0, maximum=1, step=0.05, value=0.95),
        "top_k": gr.Slider(label="Top-k", minimum=0, maximum=150, step=1, value=80),
        "model": gr.Dropdown(label="Model", choices=models, value=default_model),
        "gguf_cpu": gr.Checkbox(label="Use CPU (GGUF)", value=False),
        "no_formatting": gr.Checkbox(label="No formatting", value=False),
    }  # fmt: skip


def _show_custom_format(dropdown: Any, text: Any) -> None:
    """The text box shows the chosen preset's text, and is editable for "custom"."""
    import gradio as gr

    from ..templates import TEMPLATES

    def update(choice: str) -> Any:
        preset = TEMPLATES.get(choice)
        if preset is None:  # "custom": edit the text shown last
            return gr.update(visible=True)
        return gr.update(visible=False, value=preset.text)

    dropdown.change(update, inputs=[dropdown], outputs=[text])
