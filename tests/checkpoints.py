"""Tiny random TIPO checkpoints for tests.

``make_tiny_checkpoint`` writes a complete Hugging Face LLaMA folder (config, safetensors weights,
generation config, the real LLaMA tokenizer plus the 13 TIPO tokens) that both our engine and
transformers' ``LlamaForCausalLM.from_pretrained`` load. Only the sizes are tiny: the vocabulary,
token ids and tokenizer files are those of the released TIPO models.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tipo.protocol import FIRST_TIPO_TOKEN_ID, LLAMA_CONTROL_TOKENS, TIPO_TOKENS

VOCAB_SIZE = FIRST_TIPO_TOKEN_ID + len(TIPO_TOKENS)  # 32013
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2
TRANSFORMERS_VERSION = "4.44.2"  # what the released TIPO files were written with


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
    _write_json(path / "config.json", config)
    _write_json(path / "generation_config.json", generation_config())
    _write_weights(path / "model.safetensors", config, seed=seed, std=weight_std)
    write_tokenizer_files(path)
    return path


def llama_config(
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    dtype: str,
    max_position_embeddings: int,
) -> dict[str, Any]:
    """config.json in the shape of the released TIPO-200M one, with our sizes."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def generation_config() -> dict[str, Any]:
    return {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "transformers_version": TRANSFORMERS_VERSION,
    }


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
    """tokenizer.model plus the JSON files transformers 4.44 ``save_pretrained`` writes for
    ``LlamaTokenizer(legacy=False)`` + the 13 TIPO tokens (pad = EOS, as released)."""
    shutil.copyfile(llama_tokenizer_model(), path / "tokenizer.model")
    _write_json(path / "tokenizer_config.json", tokenizer_config())
    _write_json(path / "special_tokens_map.json", special_tokens_map())
    added = {t: FIRST_TIPO_TOKEN_ID + i for i, t in enumerate(TIPO_TOKENS)}
    _write_json(path / "added_tokens.json", added)


def _added_token(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}  # fmt: skip


def tokenizer_config() -> dict[str, Any]:
    decoder = {str(i): _added_token(t) for i, t in enumerate(LLAMA_CONTROL_TOKENS)}
    for index, token in enumerate(TIPO_TOKENS):
        decoder[str(FIRST_TIPO_TOKEN_ID + index)] = _added_token(token)
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": True,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(TIPO_TOKENS),
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": "</s>",
        "padding_side": "right",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict[str, Any]:
    def entry(content: str) -> dict[str, Any]:
        token = _added_token(content)
        del token["special"]
        return token

    return {
        "additional_special_tokens": [entry(t) for t in TIPO_TOKENS],
        "bos_token": entry("<s>"),
        "eos_token": entry("</s>"),
        "pad_token": entry("</s>"),
        "unk_token": entry("<unk>"),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
