"""TIPO for SD-WebUI (AUTOMATIC1111 1.7+) and Forge: expand the prompt of every image with a
TIPO model before it is generated.

Install from Extensions > Install from URL with this repository's address (or clone it into
``extensions/``). Models go in ``models/kgen`` (or this extension's ``models`` folder, where
the reference extension kept them). Nothing is compiled or downloaded at start; ``install.py``
only adds the wheels the WebUI may lack (gguf, sentencepiece).

This file keeps the reference extension's name (``scripts/tipo.py``: saved ui-config keys
start with ``customscript/tipo.py/``), title, control labels and argument order; the logic is
``src/tipo/hosts/webui.py``. Hooks, in the WebUI's order: ``before_process`` (timing
"before": the prompt is expanded once, before styles and wildcards), then ``process`` (timing
"after": every image's prompt, after styles and wildcards, as one decoding batch).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(_ROOT, "src") not in sys.path:
    sys.path.insert(0, os.path.join(_ROOT, "src"))

from modules import devices, processing, script_callbacks, scripts  # noqa: E402
from modules.paths import models_path  # noqa: E402

from tipo.errors import TipoError  # noqa: E402
from tipo.hosts import webui  # noqa: E402
from tipo.hosts.models import DEFAULT_HOST_MODEL, HostRuntime  # noqa: E402


def model_folders() -> list[str]:
    return [os.path.join(models_path, "kgen"), os.path.join(_ROOT, "models")]


class TIPOScript(scripts.Script):
    # One runtime (where models live, the loaded model) for the txt2img and img2img scripts.
    runtime = HostRuntime(model_folders, host_device=lambda: str(devices.device))

    def __init__(self) -> None:
        super().__init__()
        self.main_prompt: dict[bool, Any] = {}  # is_img2img -> the WebUI's prompt box
        self.size: dict[bool, tuple[Any, Any]] = {}  # is_img2img -> width, height sliders
        self.last_seed = -1
        self.on_after_component_elem_id = [
            (f"{tab}_{part}", self._keep(tab == "img2img", part))
            for tab in ("txt2img", "img2img")
            for part in ("prompt", "width", "height")
        ]

    def _keep(self, is_img2img: bool, part: str) -> Any:
        def keep(component: Any) -> None:
            if part == "prompt":
                self.main_prompt[is_img2img] = component.component
                return
            width, height = self.size.get(is_img2img, (None, None))
            if part == "width":
                self.size[is_img2img] = (component.component, height)
            else:
                self.size[is_img2img] = (width, component.component)

        return keep

    def title(self) -> str:
        return webui.TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from tipo.hosts.webui_ui import build_controls  # imports gradio

        tab = "img2img" if is_img2img else "txt2img"
        controls, buttons = build_controls(self.runtime.choices(), DEFAULT_HOST_MODEL, tab)
        self._wire(is_img2img, controls, buttons)
        self.infotext_fields = [
            (component, lambda params, name=name: webui.pasted_values(params).get(name))
            for name, component in controls.items()
        ]
        return list(controls.values())

    def _wire(self, is_img2img: bool, controls: dict[str, Any], buttons: dict[str, Any]) -> None:
        seed = controls["seed"]
        buttons["random"].click(lambda: -1, outputs=[seed])
        buttons["reuse"].click(lambda: self.last_seed, outputs=[seed])
        buttons["shuffle"].click(lambda: random.randrange(webui.RANDOM_SEEDS), outputs=[seed])
        prompt_box = self.main_prompt.get(is_img2img)
        if prompt_box is not None:
            size = [c for c in self.size.get(is_img2img, ()) if c is not None]
            buttons["generate"].click(
                self.generate_prompt, inputs=[*controls.values(), *size], outputs=[prompt_box]
            )

    def generate_prompt(self, *values: Any) -> str:
        """The "Generate Prompt" button: the Tag Prompt and NL Prompt boxes, expanded, into
        the WebUI's prompt box."""
        settings = webui.ScriptArgs.from_args(values[:16])
        width, height = (list(values[16:18]) + [1024, 1024])[:2]
        seed = settings.base_seed()
        self.last_seed = seed
        try:
            [prompt] = webui.expand_prompts(
                self.runtime, settings, [settings.tag_prompt], [seed], (int(width), int(height))
            )
        except TipoError as error:
            import gradio

            raise gradio.Error(str(error)) from None
        return prompt

    def before_process(self, p: Any, *args: Any) -> None:
        settings = webui.ScriptArgs.from_args(args)
        if not settings.enabled or settings.timing != webui.TIMING_BEFORE:
            return
        processing.fix_seed(p)  # p.seed is still -1 here for a random seed (reference #105)
        seed = self.last_seed = settings.base_seed()
        old = p.prompt
        p.extra_generation_params.update(webui.infotext(settings, seed, "BEFORE", old))
        recorded = recorded_prompt(p)
        if recorded:
            p.prompt = recorded
        else:
            size = (p.width, p.height)
            [p.prompt] = webui.expand_prompts(
                self.runtime, settings, [old], [seed + int(p.seed)], size
            )
        if getattr(p, "hr_prompt", None) == old:
            p.hr_prompt = p.prompt

    def process(self, p: Any, *args: Any) -> None:
        settings = webui.ScriptArgs.from_args(args)
        if not settings.enabled or settings.timing != webui.TIMING_AFTER:
            return
        seed = self.last_seed = settings.base_seed()
        p.extra_generation_params.update(webui.infotext(settings, seed, "AFTER", p.prompt))
        recorded = recorded_prompt(p)
        if recorded:
            new = [recorded] * len(p.all_prompts)
        else:
            seeds = [seed + int(image_seed) for image_seed in p.all_seeds]
            size = (p.width, p.height)
            new = webui.expand_prompts(self.runtime, settings, p.all_prompts, seeds, size)
        if getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
            p.all_hr_prompts = webui.follow_main_prompts(p.all_prompts, new, p.all_hr_prompts)
        p.all_prompts = new


def recorded_prompt(p: Any) -> str | None:
    """For Forge's hires-on-current-image button (``p.txt2img_upscale``, reference #62): the
    TIPO prompt the first-pass image was made with, from its infotext."""
    image = getattr(p, "firstpass_image", None)
    if not getattr(p, "txt2img_upscale", False) or image is None:
        return None
    text = getattr(image, "info", {}).get("parameters")
    if not text:
        return None
    from modules.infotext_utils import parse_generation_parameters

    return webui.recorded_prompt(parse_generation_parameters(text))


script_callbacks.on_infotext_pasted(lambda _text, params: webui.parse_infotext_parameters(params))
