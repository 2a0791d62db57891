"""Tiny random TIPO checkpoints for tests.

``make_tiny_checkpoint`` writes a complete Hugging Face LLaMA folder (config, safetensors weights,
generation config, the real LLaMA tokenizer plus the 13 TIPO tokens) that both our engine and
transformers' ``LlamaForCausalLM.from_pretrained`` load. Only the sizes are tiny: the vocabulary,
token ids and tokenizer files are those of the released TIPO models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tipo.train import hf_folder
from tipo.train.hf_folder import generation_config, llama_config


def shared_dir() -> Path:
    """``../shared`` next to the repository, or ``$TIPO_SHARED_DIR``."""
    override = os.environ.get("TIPO_SHARED_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared"


def llama_tokenizer_model() -> Path:
    path = shared_dir() / "llama-tokenizer" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(
            f"the LLaMA tokenizer is missing at {path}; set TIPO_SHARED_DIR to the folder "
            "that holds llama-tokenizer/tokenizer.model"
        )
    return path


def make_tiny_checkpoint(
    directory: str | os.PathLike[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: str = "float32",
    weight_std: float = 0.02,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a random LLaMA checkpoint with the TIPO vocabulary into ``directory``."""
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config = llama_config(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        dtype=dtype,
        max_position_embeddings=max_position_embeddings,
    )
    hf_folder.write_json(path / "config.json", config)
    hf_folder.write_json(path / "generation_config.json", generation_config())
    _write_weights(path / "model.safetensors", config, seed=seed, std=weight_std)
    write_tokenizer_files(path)
    return path


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor names and shapes of a LlamaForCausalLM, in a fixed order."""
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    layer = {
        "input_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (hidden, hidden),
        "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden),
        "self_attn.o_proj.weight": (hidden, hidden),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
    }
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for index in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{index}.{name}": s for name, s in layer.items()})
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    return shapes


def _write_weights(path: Path, config: dict[str, Any], *, seed: int, std: float) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, config["torch_dtype"])
    tensors = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape)  # RMSNorm gains start at 1, as in a fresh model
        else:
            tensor = torch.randn(shape, generator=generator) * std
        tensors[name] = tensor.to(dtype).contiguous()
    # transformers refuses safetensors files without the "format" metadata.
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_tokenizer_files(path: Path) -> None:
    """The TIPO tokenizer files, with the shared LLaMA tokenizer.model."""
    hf_folder.write_tokenizer_files(path, llama_tokenizer_model())
