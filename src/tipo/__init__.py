"""TIPO: Text to Image with text Presampling for Prompt Optimization.

Expand a few Danbooru tags and/or a sentence into a rich prompt for an image model with a small
LLaMA-architecture model (``KBlueLeaf/TIPO-*``). The pure core (tags, prompt syntax, protocol,
planning, templates) imports in milliseconds; model code is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports as _lazy_exports

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first access so `import tipo` stays light.
_EXPORTS: dict[str, str] = {
    "TIPO": "pipeline",
    "ExpandRequest": "request",
    "ExpandResult": "result",
    "StepRecord": "result",
    "SamplingParams": "sampling",
    "Category": "tags",
    "TagDatabase": "tags",
    "Tags": "tags",
    "Template": "templates",
    "TEMPLATES": "templates",
    "get_template": "templates",
    "Length": "protocol",
    "Task": "protocol",
    "ModelRequest": "protocol",
    "ModelOutput": "protocol",
    "build_prompt": "protocol",
    "parse_output": "protocol",
    "PlanOptions": "planning",
    "Step": "planning",
    "plan": "planning",
    "BanList": "bans",
    "TipoTokenizer": "tokenizer",
    "Checkpoint": "checkpoints",
    "KNOWN_MODELS": "checkpoints",
    "DEFAULT_MODEL": "checkpoints",
    "resolve": "checkpoints",
    "TipoError": "errors",
    "InvalidRequestError": "errors",
    "ModelNotFoundError": "errors",
    "CheckpointError": "errors",
    "MissingDependencyError": "errors",
    "BackendError": "errors",
}
__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "TEMPLATES",
    "TIPO",
    "BackendError",
    "BanList",
    "Category",
    "Checkpoint",
    "CheckpointError",
    "ExpandRequest",
    "ExpandResult",
    "InvalidRequestError",
    "Length",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ModelOutput",
    "ModelRequest",
    "PlanOptions",
    "SamplingParams",
    "Step",
    "StepRecord",
    "TagDatabase",
    "Tags",
    "Task",
    "Template",
    "TipoError",
    "TipoTokenizer",
    "__version__",
    "build_prompt",
    "get_template",
    "parse_output",
    "plan",
    "resolve",
]


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .bans import BanList
    from .checkpoints import DEFAULT_MODEL, KNOWN_MODELS, Checkpoint, resolve
    from .errors import (
        BackendError,
        CheckpointError,
        InvalidRequestError,
        MissingDependencyError,
        ModelNotFoundError,
        TipoError,
    )
    from .pipeline import TIPO
    from .planning import PlanOptions, Step, plan
    from .protocol import Length, ModelOutput, ModelRequest, Task, build_prompt, parse_output
    from .request import ExpandRequest
    from .result import ExpandResult, StepRecord
    from .sampling import SamplingParams
    from .tags import Category, TagDatabase, Tags
    from .templates import TEMPLATES, Template, get_template
    from .tokenizer import TipoTokenizer
