"""``p`` and ``process_images``: the fields a script reads and writes, and the order in which
the WebUI calls the hooks (AUTOMATIC1111 1.10, as documented for script authors)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from . import infotext_utils

# Prompt styles: "{prompt}" marks where the prompt goes, else the style text is appended.
STYLES = {"quality": "{prompt}, masterpiece, best quality", "signature": "signed"}


def apply_styles(prompt: str, styles: list[str]) -> str:
    for name in styles:
        style = STYLES[name]
        prompt = style.replace("{prompt}", prompt) if "{prompt}" in style else f"{prompt}, {style}"
    return prompt


def fix_seed(p: Any) -> None:
    """A seed of -1 becomes a random one (the WebUI does this in process_images too)."""
    if p.seed is None or p.seed == "" or int(p.seed) == -1:
        p.seed = random.randrange(4294967294)


@dataclass
class StableDiffusionProcessingTxt2Img:
    prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    width: int = 1024
    height: int = 1024
    enable_hr: bool = False
    hr_prompt: str = ""
    scripts: list[tuple[Any, tuple]] = field(default_factory=list)  # (script, its args)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    all_prompts: list[str] | None = None
    all_hr_prompts: list[str] | None = None
    all_seeds: list[int] | None = None
    # Forge's "hires fix on the current image" button sets these two.
    txt2img_upscale: bool = False
    firstpass_image: Any = None

    def setup_prompts(self) -> None:
        """Styles go into every image's prompt; an empty hires prompt is the prompt."""
        count = self.batch_size * self.n_iter
        self.all_prompts = [apply_styles(self.prompt, self.styles)] * count
        if self.enable_hr:
            if self.hr_prompt == "":
                self.hr_prompt = self.prompt
            self.all_hr_prompts = [apply_styles(self.hr_prompt, self.styles)] * count


@dataclass
class Processed:
    prompts: list[str]
    hr_prompts: list[str] | None
    seeds: list[int]
    infotexts: list[str]
    batches: list[list[str]]


def process_images(p: StableDiffusionProcessingTxt2Img) -> Processed:
    for script, args in p.scripts:
        script.before_process(p, *args)
    fix_seed(p)
    p.setup_prompts()
    count = p.batch_size * p.n_iter
    p.all_seeds = [int(p.seed) + i for i in range(count)]
    for script, args in p.scripts:
        script.process(p, *args)
    batches = []
    for n in range(p.n_iter):
        prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
        seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
        for script, args in p.scripts:
            script.before_process_batch(p, *args, batch_number=n, prompts=prompts, seeds=seeds)
            script.process_batch(p, *args, batch_number=n, prompts=prompts, seeds=seeds)
        batches.append(prompts)
    infotexts = [infotext_utils.create_infotext(p, i) for i in range(count)]
    return Processed(p.all_prompts, p.all_hr_prompts, p.all_seeds, infotexts, batches)
