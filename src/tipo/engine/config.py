"""The model's architecture as a small validated dataclass (pure: no torch).

A checkpoint describes itself: ``EngineConfig.from_hf_config(config_json)`` reads the
architecture from a folder's ``config.json``, ``EngineConfig.from_gguf_metadata(metadata)`` from
a GGUF file's ``llama.*`` metadata; nothing is ever inferred from file names. The named presets
are the released TIPO v1 architectures (protocol doc §2), used to build random checkpoints for
benchmarks and as documentation of what "TIPO-200M" means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import CheckpointError

# Hugging Face config keys that must hold these values: anything else is another architecture.
_REQUIRED_VALUES = {"hidden_act": "silu", "pretraining_tp": 1}
_SUPPORTED_ROPE_TYPES = ("default",)


@dataclass(frozen=True)
class EngineConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    head_dim: int = 0  # 0: hidden_size // num_heads (the LLaMA default)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if self.head_dim == 0 and self.num_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for message in self._problems():
            raise CheckpointError(
                f"invalid model config: {message}",
                hint="config.json must describe a LLaMA model; re-download the checkpoint",
            )

    def _problems(self) -> list[str]:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads")
        problems = [f"{k} must be > 0 (got {getattr(self, k)})" for k in positive
                    if getattr(self, k) <= 0]  # fmt: skip
        if problems:
            return problems
        checks = [
            (self.intermediate_size > 0, "intermediate_size must be > 0"),
            (self.max_position_embeddings > 1, "max_position_embeddings must be > 1"),
            (self.num_heads % self.num_kv_heads == 0, "num_heads must divide by num_kv_heads"),
            (self.head_dim > 0 and self.head_dim % 2 == 0, "head_dim must be even and > 0"),
            (self.rms_norm_eps > 0, "rms_norm_eps must be > 0"),
            (self.rope_theta > 0, "rope_theta must be > 0"),
            (0 <= self.eos_token_id < self.vocab_size, "eos_token_id must be a vocabulary id"),
        ]
        return [f"{message} ({self})" for ok, message in checks if not ok]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_params(self) -> int:
        """Parameters, counting a tied embedding once."""
        h, f = self.hidden_size, self.intermediate_size
        layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * f + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * layer + h + head

    @classmethod
    def from_name(cls, name: str) -> EngineConfig:
        """A released architecture by exact name (``tipo-200m``, ``tipo-500m``)."""
        if name not in PRESETS:
            raise CheckpointError(
                f"unknown model preset {name!r}", hint=f"use one of: {', '.join(PRESETS)}"
            )
        return PRESETS[name]

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> EngineConfig:
        """Read a Hugging Face ``LlamaForCausalLM`` config.json (as a dict)."""
        if config.get("model_type", "llama") != "llama":
            raise CheckpointError(
                f"config.json describes a {config.get('model_type')!r} model, not 'llama'",
                hint="the torch engine runs TIPO v1 (LLaMA) checkpoints",
            )
        for key, value in _REQUIRED_VALUES.items():
            if config.get(key, value) != value:
                raise CheckpointError(
                    f"config.json has {key}={config.get(key)!r}; the engine supports {value!r}",
                    hint="this is not a standard LLaMA checkpoint; try --backend transformers",
                )
        try:
            return cls(**_hf_fields(config))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"config.json lacks or mistypes a LLaMA field: {error!r}",
                hint="the file may be incomplete: download the checkpoint again",
            ) from None

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], *, tied: bool) -> EngineConfig:
        """Read a GGUF file's metadata (``gguf_file.GGUFFile.metadata``); ``tied``: the file
        has no ``output.weight``, so the output head is ``token_embd`` (as llama.cpp does)."""
        _check_gguf_architecture(metadata)
        try:
            return cls(**_gguf_fields(metadata, tied))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"the GGUF metadata lacks or mistypes a LLaMA field: {error!r}",
                hint="the file is incomplete or not a LLaMA model: download or convert it again",
            ) from None

    def to_hf_config(self) -> dict[str, Any]:
        """The fields of a Hugging Face config.json that describe this architecture."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.eos_token_id,
        }

    def with_(self, **changes: Any) -> EngineConfig:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hf_fields(config: dict[str, Any]) -> dict[str, Any]:
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return {
        "vocab_size": int(config["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": int(config["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(config.get("num_key_value_heads") or heads),
        "intermediate_size": int(config["intermediate_size"]),
        "max_position_embeddings": int(config.get("max_position_embeddings", 2048)),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "rope_theta": _rope_theta(config),
        "head_dim": int(config.get("head_dim") or hidden // heads),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attention_bias": bool(config.get("attention_bias", False)),
        "mlp_bias": bool(config.get("mlp_bias", False)),
        "bos_token_id": _single_id(config.get("bos_token_id", 1)),
        "eos_token_id": _single_id(config.get("eos_token_id", 2)),
    }


def _check_gguf_architecture(metadata: Mapping[str, Any]) -> None:
    """Refuse what the plain LLaMA graph would compute differently: other architectures,
    mixture-of-experts files, scaled or partial RoPE."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"the GGUF file holds a {arch!r} model; this engine runs TIPO v1 LLaMA models",
            hint="TIPO v2 (mixture-of-experts) files are not supported; use a TIPO v1 file "
            "(tipo models lists them)",
        )
    experts = metadata.get("llama.expert_count") or 0
    if not isinstance(experts, int) or experts > 0:
        raise CheckpointError(
            f"the GGUF file is a mixture-of-experts model ({experts} experts); this engine runs "
            "TIPO v1 LLaMA models",
            hint="TIPO v2 (mixture-of-experts) files are not supported; use a TIPO v1 file",
        )
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(
            f"the GGUF file asks for RoPE scaling {scaling!r}, which the torch engine does not "
            "implement (TIPO checkpoints use plain RoPE)",
            hint="run this file with --backend llamacpp",
        )


def _gguf_fields(metadata: Mapping[str, Any], tied: bool) -> dict[str, Any]:
    def llama(key: str, default: Any = None) -> Any:
        value = metadata.get(f"llama.{key}", default)
        if value is None:
            raise KeyError(f"llama.{key}")
        if isinstance(value, list):  # per-layer values (other architectures)
            raise TypeError(f"llama.{key} is a list")
        return value

    hidden, heads = int(llama("embedding_length")), int(llama("attention.head_count"))
    head_dim = int(llama("attention.key_length", hidden // heads if heads else 0))
    if int(llama("attention.value_length", head_dim)) != head_dim:
        raise ValueError("llama.attention.value_length differs from key_length")
    if int(llama("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("llama.rope.dimension_count differs from the head size (partial RoPE)")
    vocab = metadata.get("llama.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    return {
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "num_layers": int(llama("block_count")),
        "num_heads": heads,
        "num_kv_heads": int(llama("attention.head_count_kv", heads)),
        "intermediate_size": int(llama("feed_forward_length")),
        "max_position_embeddings": int(llama("context_length", 2048)),
        "rms_norm_eps": float(llama("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(llama("rope.freq_base", 10000.0)),
        "head_dim": head_dim,
        "tie_word_embeddings": tied,
        "bos_token_id": int(metadata.get("tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(metadata.get("tokenizer.ggml.eos_token_id", 2)),
    }


def _rope_theta(config: dict[str, Any]) -> float:
    """rope_theta, refusing the scaled variants: transformers 4 writes ``rope_scaling`` (null
    for TIPO), transformers 5 may write ``rope_parameters`` with ``rope_type`` "default"."""
    theta = float(config.get("rope_theta", 10000.0))
    for key in ("rope_scaling", "rope_parameters"):
        scaling = config.get(key)
        if scaling is None:
            continue
        if not isinstance(scaling, dict):
            raise CheckpointError(f"config.json {key} must be an object or null")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in _SUPPORTED_ROPE_TYPES:
            raise CheckpointError(
                f"config.json asks for RoPE scaling {kind!r}, which the torch engine does not "
                "implement (TIPO checkpoints use plain RoPE)",
                hint="use --backend transformers for checkpoints with scaled RoPE",
            )
        theta = float(scaling.get("rope_theta", theta))
    return theta


def _single_id(value: Any) -> int:
    """transformers allows a list of EOS ids; TIPO has one. Use the first."""
    if isinstance(value, list):
        if not value:
            raise ValueError("empty token id list")
        value = value[0]
    return int(value)


def expected_shapes(config: EngineConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor names and shapes for this architecture."""
    c, f, q, kv = config.hidden_size, config.intermediate_size, config.q_size, config.kv_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, c)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        attn = {"q_proj": (q, c), "k_proj": (kv, c), "v_proj": (kv, c), "o_proj": (c, q)}
        mlp = {"gate_proj": (f, c), "up_proj": (f, c), "down_proj": (c, f)}
        for name, shape in attn.items():
            shapes[f"{p}self_attn.{name}.weight"] = shape
            if config.attention_bias:
                shapes[f"{p}self_attn.{name}.bias"] = shape[:1]
        for name, shape in mlp.items():
            shapes[f"{p}mlp.{name}.weight"] = shape
            if config.mlp_bias:
                shapes[f"{p}mlp.{name}.bias"] = shape[:1]
        shapes[f"{p}input_layernorm.weight"] = (c,)
        shapes[f"{p}post_attention_layernorm.weight"] = (c,)
    shapes["model.norm.weight"] = (c,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, c)
    return shapes


PRESETS: dict[str, EngineConfig] = {
    # Protocol doc §2. TIPO-100M's config was not published in a form we could read: no preset.
    "tipo-200m": EngineConfig(
        vocab_size=32013,
        hidden_size=768,
        num_layers=20,
        num_heads=12,
        num_kv_heads=12,
        intermediate_size=2304,
        max_position_embeddings=2048,
    ),
    "tipo-500m": EngineConfig(
        vocab_size=32013,
        hidden_size=1280,
        num_layers=20,
        num_heads=20,
        num_kv_heads=20,
        intermediate_size=3840,
        max_position_embeddings=2048,
    ),
}

__all__ = ["PRESETS", "EngineConfig", "expected_shapes"]
