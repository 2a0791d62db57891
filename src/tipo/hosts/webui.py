"""The SD-WebUI (AUTOMATIC1111) and Forge script's logic, without the WebUI.

``scripts/tipo.py`` at the repository root is the script: it builds the controls and calls
these functions from the WebUI's hooks. Everything here works on plain values (the script's
arguments, the prompts and seeds of a batch, an infotext's fields), so it is tested without a
WebUI (tests/test_webui_contract.py drives the script itself through a contract harness).

The script keeps the reference extension's title, control labels and argument order
(:class:`ScriptArgs`), so saved ui-config values and API calls through
``alwayson_scripts["TIPO"]`` keep working, and its infotext keys, so images made with either
paste back into the other. Deliberate differences: every image of a batch is expanded in one
decoding batch; hires prompts that equal their image's prompt follow it (the reference gave
them the unexpanded prompt when the hires prompt was set); extra networks stay after the tag
they followed (the reference moved them to a last line); "TIPO format" holds the custom format
text (the reference wrote the dropdown's name there, and pasted it into the text box); the
seed is not reduced modulo 2**31-1 (#103).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import TipoError
from ..request import ExpandRequest
from ..templates import TEMPLATES
from .models import DEFAULT_HOST_MODEL, HostRuntime
from .reference import host_seed, reference_outputs, reference_request

TITLE = "TIPO"
TIMING_BEFORE = "Before applying other prompt processings"
TIMING_AFTER = "After applying other prompt processings"
TIMINGS = {"BEFORE": TIMING_BEFORE, "AFTER": TIMING_AFTER}
LENGTHS = ("very short", "short", "long", "very long")
# The reference's format names (kgen's TIPO_DEFAULT_FORMAT keys), which our presets accept.
FORMATS = (
    "tag only (DTG mode)",
    "NL only (Tag to NL)",
    "Both, tag first (recommend)",
    "Both, NL first (recommend)",
    "Both + generated NL",
)
CUSTOM_FORMAT = "custom"
DEFAULT_FORMAT = "Both, tag first (recommend)"
INFOTEXT_PARAMETERS = "TIPO Parameters"
INFOTEXT_PROMPT = "TIPO prompt"
INFOTEXT_NL_PROMPT = "TIPO nl prompt"
INFOTEXT_FORMAT = "TIPO format"
# The parameters are JSON with ' and " swapped, so the infotext does not escape every quote.
QUOTESWAP = str.maketrans("'\"", "\"'")
RANDOM_SEEDS = 2**31 - 1  # a seed of -1 draws from this range, as the reference did
MIN_P = 0.05  # the WebUI has no min_p control; llama.cpp's default, which the reference used


@dataclass(frozen=True)
class ScriptArgs:
    """The script's arguments in the reference's order: what ``ui()`` returns, what the
    WebUI passes to every hook, and what ``alwayson_scripts["TIPO"]["args"]`` holds."""

    enabled: bool = False
    timing: str = TIMING_AFTER
    seed: float = -1
    tag_length: str = "long"
    nl_length: str = "long"
    ban_tags: str = ""
    format_selected: str = DEFAULT_FORMAT
    format_text: str = TEMPLATES[DEFAULT_FORMAT].text
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: float = 80
    model: str = DEFAULT_HOST_MODEL
    gguf_cpu: bool = False
    no_formatting: bool = False
    tag_prompt: str = ""
    nl_prompt: str = ""

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> ScriptArgs:
        """From positional hook arguments; an API call may send fewer (the rest default)."""
        names = [f.name for f in fields(cls)][: len(args)]
        given = zip(names, args[: len(names)], strict=True)
        return cls(**{name: value for name, value in given if value is not None})

    @property
    def format(self) -> str:
        """The template: a preset by the reference's name, or the custom text."""
        if self.format_selected == CUSTOM_FORMAT or self.format_selected not in TEMPLATES:
            return self.format_text
        return self.format_selected

    @property
    def device(self) -> str:
        return "cpu" if self.gguf_cpu else "cuda"

    def base_seed(self, rng: random.Random | None = None) -> int:
        """The TIPO seed of one generation: the seed box, or a random one for -1."""
        if int(self.seed) < 0:
            return (rng or random.SystemRandom()).randrange(RANDOM_SEEDS)
        return int(self.seed)


def request_for(args: ScriptArgs, prompt: str, seed: int, width: int, height: int) -> ExpandRequest:
    """The request for one image's prompt; an empty prompt falls back to the Tag Prompt box."""
    return reference_request(
        tags=prompt.strip() or args.tag_prompt,
        nl_prompt=args.nl_prompt,
        ban_tags=args.ban_tags,
        format=args.format,
        width=width,
        height=height,
        temperature=args.temperature,
        top_p=args.top_p,
        min_p=MIN_P,
        top_k=int(args.top_k),
        tag_length=args.tag_length,
        nl_length=args.nl_length,
        seed=host_seed(seed),
    )


def expand_prompts(
    runtime: HostRuntime,
    args: ScriptArgs,
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: tuple[int, int],
) -> list[str]:
    """The final prompt of every image (``prompts[i]`` with seed ``seeds[i]``), decoded as one
    batch. The first failure is raised: a WebUI shows it and stops the generation."""
    requests = [request_for(args, p, s, *size) for p, s in zip(prompts, seeds, strict=True)]
    tipo = runtime.model(args.model, args.device)
    results = tipo.run_many(requests)
    final = []
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, TipoError):
            raise result
        outputs = reference_outputs(result, request, tipo.tag_db)
        final.append(outputs.unformatted_prompt if args.no_formatting else outputs.prompt)
    return final


def follow_main_prompts(
    old_prompts: Sequence[str], new_prompts: Sequence[str], hr_prompts: Sequence[str]
) -> list[str]:
    """Hires prompts after an expansion: one that equalled its image's prompt follows it, one
    the user set apart is kept."""
    return [new if hr == old else hr
            for old, new, hr in zip(old_prompts, new_prompts, hr_prompts, strict=True)]  # fmt: skip


def infotext(args: ScriptArgs, seed: int, timing: str, prompt: str) -> dict[str, str]:
    """The ``extra_generation_params`` a generation records, in the reference's keys."""
    parameters = {
        "seed": seed,
        "timing": timing,
        "tag_length": args.tag_length,
        "nl_length": args.nl_length,
        "ban_tags": args.ban_tags,
        "format_selected": args.format_selected,
        "format": TEMPLATES[args.format].text if args.format in TEMPLATES else args.format,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "model": args.model,
        "gguf_cpu": args.gguf_cpu,
        "no_formatting": args.no_formatting,
    }
    params = {
        INFOTEXT_PARAMETERS: json.dumps(parameters, ensure_ascii=False).translate(QUOTESWAP),
        INFOTEXT_PROMPT: prompt.strip() or args.tag_prompt,
        INFOTEXT_NL_PROMPT: args.nl_prompt,
    }
    if args.format_selected == CUSTOM_FORMAT:
        params[INFOTEXT_FORMAT] = args.format_text
    return params


def parse_infotext_parameters(params: dict[str, Any]) -> None:
    """The WebUI's ``on_infotext_pasted`` callback: turn "TIPO Parameters" back into a dict
    (in place; a value that does not parse is left as it is)."""
    raw = params.get(INFOTEXT_PARAMETERS)
    if not isinstance(raw, str):
        return
    try:
        parsed = json.loads(raw.translate(QUOTESWAP))
    except json.JSONDecodeError:
        return
    if isinstance(parsed, dict):
        params[INFOTEXT_PARAMETERS] = parsed


def pasted_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """What each control gets from a pasted infotext (ours or the reference's), by
    ScriptArgs field; fields the infotext does not set are left out."""
    saved = params.get(INFOTEXT_PARAMETERS)
    if not isinstance(saved, Mapping):  # an image made without TIPO: reproduce it without
        return {"enabled": False} if INFOTEXT_PARAMETERS not in params else {}
    values: dict[str, Any] = {"enabled": True}
    for key in ("seed", "tag_length", "nl_length", "ban_tags", "temperature", "top_p",
                "top_k", "model", "no_formatting"):  # fmt: skip
        if key in saved:
            values[key] = saved[key]
    if "gguf_cpu" in saved:
        values["gguf_cpu"] = saved["gguf_cpu"]
    if saved.get("timing") in TIMINGS:
        values["timing"] = TIMINGS[saved["timing"]]
    values.update(_pasted_format(saved, params))
    values["tag_prompt"] = params.get(INFOTEXT_PROMPT, params.get("Prompt", ""))
    values["nl_prompt"] = params.get(INFOTEXT_NL_PROMPT, "")
    return values


def _pasted_format(saved: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, str]:
    """The format dropdown and text: "format_selected" names the choice (the reference pasted
    the text into the dropdown instead); the text is "format", or our "TIPO format"."""
    selected = saved.get("format_selected")
    if selected not in (*FORMATS, CUSTOM_FORMAT):
        return {}
    text = params.get(INFOTEXT_FORMAT) if selected == CUSTOM_FORMAT else None
    if not isinstance(text, str) or "<|" not in text:
        text = saved.get("format") if isinstance(saved.get("format"), str) else None
    return {"format_selected": selected, **({"format_text": text} if text else {})}


def recorded_prompt(params: Mapping[str, Any]) -> str | None:
    """The TIPO prompt an image was made with, from its infotext: its "Prompt" when the
    infotext says TIPO made it. Forge's hires-on-current-image button (reference #62) reuses
    it instead of expanding the prompt box again."""
    if INFOTEXT_PARAMETERS not in params:
        return None
    prompt = params.get("Prompt")
    return prompt if isinstance(prompt, str) and prompt.strip() else None


__all__ = [
    "CUSTOM_FORMAT",
    "DEFAULT_FORMAT",
    "FORMATS",
    "INFOTEXT_FORMAT",
    "INFOTEXT_NL_PROMPT",
    "INFOTEXT_PARAMETERS",
    "INFOTEXT_PROMPT",
    "LENGTHS",
    "TIMINGS",
    "TIMING_AFTER",
    "TIMING_BEFORE",
    "TITLE",
    "ScriptArgs",
    "expand_prompts",
    "follow_main_prompts",
    "infotext",
    "parse_infotext_parameters",
    "pasted_values",
    "recorded_prompt",
    "request_for",
]
