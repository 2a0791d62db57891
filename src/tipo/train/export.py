"""``tipo export``: a training checkpoint as a Hugging Face folder every TIPO front end loads.

The folder has ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer files with the 13 TIPO tokens at 32000-32012 (hf_folder.py); LoRA adapters are merged
into the base weights first. Our engine, transformers and the reference library load it, and
``tipo convert`` turns it into a GGUF file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import CheckpointError, InvalidRequestError
from .hf_folder import copy_tokenizer_files
from .model import base_folder, load_adapter, load_model, merged, require_training_packages
from .run_folder import find_checkpoint, read_state

DTYPES = ("float32", "bfloat16", "float16")


def export_checkpoint(
    source: str | Path, output: str | Path, dtype: str = "float32", *, overwrite: bool = False
) -> Path:
    """Write the checkpoint ``source`` (a run folder: its newest checkpoint) to ``output``."""
    import torch

    if dtype not in DTYPES:
        raise InvalidRequestError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    checkpoint = find_checkpoint(Path(source))
    target = Path(output)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise InvalidRequestError(
            f"{target} exists and is not empty", hint="choose a new folder, or pass --overwrite"
        )
    state = read_state(checkpoint)
    require_training_packages(lora=bool(state.get("lora")))
    if state.get("lora"):
        if not state.get("base"):
            raise CheckpointError(f"{checkpoint}: a LoRA checkpoint without its base model")
        model = merged(load_adapter(load_model(base_folder(state["base"])), checkpoint / "adapter"))
    else:
        model = load_model(checkpoint / "model")
    model = model.to(getattr(torch, dtype))
    tokenizer = checkpoint.parents[1] / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        raise CheckpointError(
            f"no tokenizer beside {checkpoint} (expected {tokenizer})",
            hint="export from inside the run folder `tipo train` wrote",
        )
    staged = target.with_name(target.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    model.save_pretrained(staged, safe_serialization=True)
    copy_tokenizer_files(tokenizer, staged)
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
    return target


__all__ = ["DTYPES", "export_checkpoint"]
