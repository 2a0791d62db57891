"""ComfyUI nodes. TIPO, TIPO Single Operation and TIPO Format are drop-in for the reference
extension's nodes: same node ids, display names, category, input names, order, types, widget
kinds and defaults, and outputs, so workflows saved with the reference load and run unchanged.
TIPO Variants (N prompts decoded as one batch, one per image), TIPO Control (length control,
only real tags, planning switches) and TIPO Unload Model are new.

ComfyUI imports this module through the repository's root ``__init__.py`` (clone the
repository into ``custom_nodes/``). Importing it loads no model, runs no pip and touches no
network: a node locates and loads its model on its first run (tipo.hosts.models), and the
model stays loaded, one at a time, until another is asked for or TIPO Unload Model runs.
Models live in ``models/kgen``; the folder name ``kgen`` is registered with ComfyUI, so
``extra_model_paths.yaml`` can add others.

Differences from the reference's inputs, all deliberate: ``tipo_model`` lists every name the
reference ever offered plus local files, and defaults to a model this version runs; ``seed``
declares its range, so the frontend no longer clamps it (reference #87) and any saved value,
-1 included, validates.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from ..request import ExpandRequest
from ..result import ExpandResult
from ..tags import TagDatabase
from .models import DEFAULT_HOST_MODEL, HostRuntime

if TYPE_CHECKING:
    from ..pipeline import TIPO as TipoModel  # the model; TIPO below is the node
from .reference import (
    LENGTHS,
    OPERATIONS,
    REFERENCE_FORMAT,
    format_outputs,
    operation_outputs,
    reference_outputs,
    reference_request,
)

CATEGORY = "utils/promptgen"
MODEL_FOLDER = "kgen"
OUTPUT_NAMES = ("prompt", "user_prompt", "unformatted_prompt", "unformatted_user_prompt")
TEXT_INPUT = ("STRING", {"defaultInput": True, "multiline": True})
FORMAT_INPUT = ("STRING", {"default": REFERENCE_FORMAT, "multiline": True})
LENGTH_INPUT = (list(LENGTHS), {"default": "long"})
# The reference declares no range; the old frontend then clamped seeds to 0..2048 (#87).
SEED_INPUT = ("INT", {"default": 1234, "min": -1, "max": 0xFFFFFFFFFFFFFFFF})
MAX_VARIANTS = 64


def reference_inputs(models: list[str], fifth: tuple[str, Any]) -> dict[str, Any]:
    """The reference's 15 inputs in its order; the fifth is ``format`` or ``operation``."""
    return {
        "tags": TEXT_INPUT,
        "nl_prompt": TEXT_INPUT,
        "ban_tags": TEXT_INPUT,
        "tipo_model": (models, {"default": DEFAULT_HOST_MODEL}),
        fifth[0]: fifth[1],
        "width": ("INT", {"default": 1024, "max": 16384}),
        "height": ("INT", {"default": 1024, "max": 16384}),
        "temperature": ("FLOAT", {"default": 0.5, "step": 0.01}),
        "top_p": ("FLOAT", {"default": 0.95, "step": 0.01}),
        "min_p": ("FLOAT", {"default": 0.05, "step": 0.01}),
        "top_k": ("INT", {"default": 80}),
        "tag_length": LENGTH_INPUT,
        "nl_length": LENGTH_INPUT,
        "seed": SEED_INPUT,
        "device": (["cpu", "cuda"], {"default": "cuda"}),
    }


class _Node:
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    runtime: ClassVar[HostRuntime]  # set by node_mappings()

    def _expand(
        self, tipo_model: str, device: str, request: ExpandRequest, variants: int = 1
    ) -> tuple[TipoModel, list[ExpandResult]]:
        """``variants`` results of ``request`` (seeds seed, seed+1, ...) as one batch, with
        the node's progress bar and ComfyUI's cancel button."""
        tipo = self.runtime.model(tipo_model, device)
        progress = Progress(request, variants)
        results = tipo.variants(request, variants, on_token=progress)
        progress.finish()
        return tipo, results


class TIPO(_Node):
    DESCRIPTION = "Expand tags and/or a sentence into a full prompt with a TIPO model."
    RETURN_TYPES = ("STRING",) * 4
    RETURN_NAMES = OUTPUT_NAMES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": reference_inputs(cls.runtime.choices(), ("format", FORMAT_INPUT))}

    def execute(self, tipo_model: str, device: str, **inputs: Any) -> tuple[str, ...]:
        request = reference_request(**inputs)
        tipo, [result] = self._expand(tipo_model, device, request)
        return reference_outputs(result, request, tipo.tag_db).as_tuple()


class TIPOOperation(_Node):
    DESCRIPTION = (
        "Run one TIPO operation; format its outputs with TIPO Format. tag_to_short and "
        "tag_to_long_to_short, which no released model was trained on, run tag_to_long."
    )
    RETURN_TYPES = ("LIST", "LIST")
    RETURN_NAMES = ("full_output", "addon_output")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        operation = (list(OPERATIONS), {"default": OPERATIONS[0]})
        return {"required": reference_inputs(cls.runtime.choices(), ("operation", operation))}

    def execute(self, tipo_model: str, device: str, **inputs: Any) -> tuple[dict, dict]:
        request = reference_request(format="", **inputs)
        tipo, [result] = self._expand(tipo_model, device, request)
        return operation_outputs(result, request, tipo.tag_db)


class TIPOFormat(_Node):
    DESCRIPTION = "Format the outputs of TIPO Single Operation into prompts."
    RETURN_TYPES = ("STRING",) * 4
    RETURN_NAMES = OUTPUT_NAMES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "full_output": ("LIST", {"default": []}),
                "addon_output": ("LIST", {"default": []}),
                "format": FORMAT_INPUT,
            }
        }

    def execute(self, full_output: Any, addon_output: Any, format: str) -> tuple[str, ...]:
        db = TagDatabase.bundled()
        return format_outputs(full_output, addon_output, format, db).as_tuple()


class TIPOVariants(_Node):
    DESCRIPTION = (
        "N different expansions of one prompt (seeds seed, seed+1, ...), decoded as one batch: "
        "one prompt per image. Outputs are lists, so the nodes after it run once per prompt."
    )
    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING", "INT")
    RETURN_NAMES = (*OUTPUT_NAMES, "seed")
    OUTPUT_IS_LIST = (True, False, True, False, True)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        required = reference_inputs(cls.runtime.choices(), ("format", FORMAT_INPUT))
        required["variants"] = ("INT", {"default": 4, "min": 1, "max": MAX_VARIANTS})
        return {"required": required, "optional": {"control": ("TIPO_CONTROL",)}}

    def execute(
        self,
        tipo_model: str,
        device: str,
        variants: int,
        control: dict[str, Any] | None = None,
        **inputs: Any,
    ) -> tuple[list[str], str, list[str], str, list[int]]:
        request = reference_request(**inputs, **(control or {}))
        tipo, results = self._expand(tipo_model, device, request, variants)
        outputs = [reference_outputs(r, request, tipo.tag_db) for r in results]
        return (
            [o.prompt for o in outputs],
            outputs[0].user_prompt,
            [o.unformatted_prompt for o in outputs],
            outputs[0].unformatted_user_prompt,
            [r.seed for r in results],
        )


class TIPOControl(_Node):
    DESCRIPTION = "Decoding and planning options for TIPO Variants."
    RETURN_TYPES = ("TIPO_CONTROL",)
    RETURN_NAMES = ("control",)
    # widget -> ExpandRequest option
    OPTIONS: ClassVar[dict[str, str]] = {
        "length_control": "control",
        "only_real_tags": "vocabulary",
        "expand_tags": "expand_tags",
        "expand_nl": "expand_nl",
        "tag_first": "tag_first",
        "gen_meta": "gen_meta",
        "shuffle_tags": "shuffle",
        "retries": "retries",
        "repetition_penalty": "repetition_penalty",
        "max_new_tokens": "max_new_tokens",
    }

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def switch(default: bool, tooltip: str) -> tuple[str, dict[str, Any]]:
            return ("BOOLEAN", {"default": default, "tooltip": tooltip})

        retries = {"default": 0, "min": 0, "max": 20,
                   "tooltip": "re-run short steps (the reference's loop)"}  # fmt: skip
        penalty = {"default": 1.17, "min": 1.0, "max": 2.0, "step": 0.01}
        return {
            "required": {
                "length_control": switch(True, "meet each length target in one pass"),
                "only_real_tags": switch(True, "tag fields hold only known tags"),
                "expand_tags": switch(True, "add tags (with a sentence given too)"),
                "expand_nl": switch(True, "extend the sentence (with tags given too)"),
                "tag_first": switch(True, "with both: expand the tags first"),
                "gen_meta": switch(False, "let the model add metadata (artist, ...)"),
                "shuffle_tags": switch(True, "new tags in random order"),
                "retries": ("INT", retries),
                "repetition_penalty": ("FLOAT", penalty),
                "max_new_tokens": ("INT", {"default": 512, "min": 16, "max": 2048}),
            }
        }

    def execute(self, **values: Any) -> tuple[dict[str, Any]]:
        options = {self.OPTIONS[name]: value for name, value in values.items()}
        ExpandRequest.create(**options)  # report a bad value here, not in the node after
        return (options,)


class TIPOUnloadModel(_Node):
    DESCRIPTION = "Pass the text through and unload the TIPO model (to free memory)."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    def execute(self, text: str) -> tuple[str]:
        self.runtime.unload()
        return (text,)


NODES: dict[str, tuple[type[_Node], str]] = {
    "TIPO": (TIPO, "TIPO"),
    "TIPOOperation": (TIPOOperation, "TIPO Single Operation"),
    "TIPOFormat": (TIPOFormat, "TIPO Format"),
    "TIPOVariants": (TIPOVariants, "TIPO Variants"),
    "TIPOControl": (TIPOControl, "TIPO Control"),
    "TIPOUnloadModel": (TIPOUnloadModel, "TIPO Unload Model"),
}


def node_mappings(runtime: HostRuntime) -> tuple[dict[str, type], dict[str, str]]:
    """``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` for nodes that share
    ``runtime`` (where models live and which are loaded)."""
    classes = {key: type(cls.__name__, (cls,), {"runtime": runtime}) for key, (cls, _) in
               NODES.items()}  # fmt: skip
    return classes, {key: display for key, (_, display) in NODES.items()}


def comfyui_runtime() -> HostRuntime:
    """The runtime inside a running ComfyUI: models in every ``kgen`` folder, on the device
    ComfyUI uses (``--cpu``, ``--cuda-device``)."""
    import folder_paths
    from comfy import model_management

    folder_paths.add_model_folder_path(
        MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    )
    return HostRuntime(
        lambda: folder_paths.get_folder_paths(MODEL_FOLDER),
        host_device=lambda: str(model_management.get_torch_device()),
    )


class Progress:
    """A token callback that moves the node's progress bar and stops at ComfyUI's interrupt
    button (it does nothing outside ComfyUI). The total is a guess, as the length of a
    generation is not known in advance: :meth:`finish` fills the bar."""

    def __init__(self, request: ExpandRequest, variants: int = 1) -> None:
        try:
            import comfy.utils
            from comfy import model_management
        except ImportError:
            self._bar, self._interrupted = None, None
            return
        steps = 3 if request.operation is None else 1  # a plan has up to three steps
        self._bar = comfy.utils.ProgressBar(steps * variants * request.sampling.max_new_tokens)
        self._interrupted = model_management.throw_exception_if_processing_interrupted

    def __call__(self, _index: int, _token: int) -> None:
        if self._bar is not None and self._interrupted is not None:
            self._interrupted()
            self._bar.update(1)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.update_absolute(self._bar.total)


__all__ = [
    "CATEGORY",
    "NODES",
    "OUTPUT_NAMES",
    "TIPO",
    "Progress",
    "TIPOControl",
    "TIPOFormat",
    "TIPOOperation",
    "TIPOUnloadModel",
    "TIPOVariants",
    "comfyui_runtime",
    "node_mappings",
    "reference_inputs",
]
