"""The files of a Hugging Face TIPO folder, as the released checkpoints have them.

``config.json`` (a ``LlamaForCausalLM`` with TIPO's vocabulary of 32013 ids and special ids),
``generation_config.json``, and the tokenizer files transformers 4.44 ``save_pretrained`` writes for
``LlamaTokenizer(legacy=False)`` plus the 13 TIPO tokens at ids 32000-32012 (pad = EOS). Our
engine, transformers, the reference library and ``tipo convert`` all read such a folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from ..protocol import FIRST_TIPO_TOKEN_ID, LLAMA_CONTROL_TOKENS, TIPO_TOKENS

VOCAB_SIZE = FIRST_TIPO_TOKEN_ID + len(TIPO_TOKENS)  # 32013
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2
TRANSFORMERS_VERSION = "4.44.2"  # what the released TIPO files were written with
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def llama_config(
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    dtype: str = "float32",
    max_position_embeddings: int = 2048,
) -> dict[str, Any]:
    """config.json in the shape of the released TIPO-200M one, with the given sizes."""
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


def sentencepiece_model(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the tokenizer.model inside the folder ``path``."""
    location = Path(path).expanduser()
    model = location / "tokenizer.model" if location.is_dir() else location
    if not model.is_file():
        raise ModelNotFoundError(
            f"no LLaMA tokenizer at {location}",
            hint="give the tokenizer.model of LLaMA/LLaMA 2 (every TIPO checkpoint folder has "
            "one), or a folder that holds it",
        )
    return model


def write_tokenizer_files(folder: Path, tokenizer_model: str | Path) -> None:
    """tokenizer.model (copied from ``tokenizer_model``, a file or a folder holding one) plus
    the JSON files that register the 13 TIPO tokens."""
    source = sentencepiece_model(tokenizer_model)
    target = folder / "tokenizer.model"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    write_json(folder / "tokenizer_config.json", tokenizer_config())
    write_json(folder / "special_tokens_map.json", special_tokens_map())
    added = {t: FIRST_TIPO_TOKEN_ID + i for i, t in enumerate(TIPO_TOKENS)}
    write_json(folder / "added_tokens.json", added)


def copy_tokenizer_files(source: Path, target: Path) -> None:
    """The tokenizer files of the TIPO folder ``source`` into ``target``; a folder without the
    JSON files (a bare tokenizer.model) gets the TIPO ones written."""
    if all((source / name).is_file() for name in TOKENIZER_FILES):
        for name in TOKENIZER_FILES:
            shutil.copyfile(source / name, target / name)
    else:
        write_tokenizer_files(target, source)


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


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "TOKENIZER_FILES",
    "VOCAB_SIZE",
    "copy_tokenizer_files",
    "generation_config",
    "llama_config",
    "sentencepiece_model",
    "write_tokenizer_files",
]
