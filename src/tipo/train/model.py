"""The model a run trains: transformers' ``LlamaForCausalLM`` (what the released checkpoints are),
from a checkpoint or from a preset shape, optionally wrapped with LoRA adapters by peft.

Training uses transformers' module rather than our decoding engine: its forward is the exact
computation the released weights were trained with, it saves the Hugging Face folder every TIPO
front end loads, and peft's LoRA wraps it unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import resolve
from ..errors import CheckpointError, MissingDependencyError
from .config import TrainConfig
from .hf_folder import llama_config

if TYPE_CHECKING:
    from torch import nn

# hidden, layers, heads, FFN (docs/tipo-training.md §3.1); all: full multi-head attention,
# vocab 32013, untied embeddings, RoPE 1e4, max position 2048.
PRESET_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "tipo-25m": (256, 8, 4, 1024),
    "tipo-200m": (768, 20, 12, 2304),
    "tipo-500m": (1280, 20, 20, 3840),
}


def require_training_packages(lora: bool) -> None:
    """Fail early, with the extra to install, when transformers (or peft for LoRA) is missing."""
    needed = ["transformers"] + (["peft"] if lora else [])
    for package in needed:
        try:
            __import__(package)
        except ImportError:
            raise MissingDependencyError.for_extra(package, "train", "tipo train") from None
    from transformers.utils import logging

    logging.disable_progress_bar()  # per-file load/save bars; the run logs its own progress


def preset_config(name: str) -> dict[str, Any]:
    hidden, layers, heads, ffn = PRESET_SHAPES[name]
    return llama_config(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        intermediate_size=ffn,
    )


def base_folder(spec: str, *, offline: bool = False) -> Path:
    """The Hugging Face folder of the checkpoint to fine-tune (a folder, Hub id or name)."""
    checkpoint = resolve(spec, offline=offline)
    if checkpoint.format != "hf":
        raise CheckpointError(
            f"{spec} is a GGUF file: training starts from a Hugging Face folder",
            hint="fine-tune the Hub model the GGUF was made from (e.g. KBlueLeaf/TIPO-200M-ft)",
        )
    return checkpoint.path


def new_model(config: dict[str, Any], seed: int) -> nn.Module:
    """A randomly initialised LlamaForCausalLM of ``config`` (transformers' initialisation)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    return LlamaForCausalLM(LlamaConfig(**settings)).float()


def load_model(folder: Path) -> nn.Module:
    """The checkpoint in ``folder``, in float32 (master weights; autocast handles bf16)."""
    import torch
    from transformers import LlamaForCausalLM

    try:
        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load {folder} for training: {error}") from None


def add_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap ``model`` with trainable LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or 2 * config.lora_rank,
        target_modules=[name.strip() for name in config.lora_targets.split(",") if name.strip()],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as error:  # no module matched lora_targets
        raise CheckpointError(
            f"LoRA: {error}", hint="lora_targets names Linear layers, e.g. q_proj,v_proj"
        ) from None


def load_adapter(model: nn.Module, adapter: Path) -> nn.Module:
    """``model`` with the trainable LoRA adapter saved in ``adapter``."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads an attribute transformers 5 deprecated; the warning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        yield


def merged(model: nn.Module) -> nn.Module:
    """A plain LlamaForCausalLM: LoRA adapters merged into the base weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


__all__ = [
    "PRESET_SHAPES",
    "add_lora",
    "base_folder",
    "load_adapter",
    "load_model",
    "merged",
    "new_model",
    "preset_config",
    "require_training_packages",
]
