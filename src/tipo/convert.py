"""Hugging Face TIPO folder -> GGUF file for llama.cpp (``tipo convert``).

Reading order: ``convert`` at the bottom, then ``LlamaShape`` (config.json -> llama.* metadata),
``read_vocab`` (tokenizer files -> tokenizer.ggml.* metadata) and ``_write_gguf`` (tensors).

Conventions follow llama.cpp's own ``convert_hf_to_gguf.py`` for a LLaMA model with a
SentencePiece tokenizer, so llama.cpp loads our files exactly like the released
``TIPO-*-F16.gguf`` files:

* tensor names ``token_embd``, ``blk.N.attn_q`` ... ``output`` (``_HF_TO_GGUF``);
* the rows of ``q_proj``/``k_proj`` are permuted: Hugging Face rotates the two *halves* of each
  head (``rotate_half``), llama.cpp's LLaMA graph rotates interleaved *pairs*
  (``unpermute_rotary`` undoes it when our engine reads a GGUF: engine/gguf_weights.py);
* 1-D tensors (the RMSNorm gains) stay F32, matrices are F16 (or quantised from an F32 file by
  llama.cpp itself: ``llama_model_quantize``);
* the vocabulary is the SentencePiece pieces with their scores and types plus the added tokens
  (the 13 TIPO tokens: CONTROL when the tokenizer files mark them special, as they do for the
  released models, else USER_DEFINED). We feed token ids to llama.cpp, never text, so these types
  only matter to other programs that tokenise with the GGUF's vocabulary.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .checkpoints import read_config, weight_files
from .errors import CheckpointError, InvalidRequestError, MissingDependencyError

Quant = Literal["F16", "Q8_0", "Q4_K_M"]
Progress = Callable[[str], None]  # gets one human-readable line per step
# llama.cpp's ``enum llama_ftype`` values (``general.file_type``).
FILE_TYPES: dict[str, int] = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15}
QUANTS: tuple[Quant, ...] = ("F16", "Q8_0", "Q4_K_M")
# Row length (values per block) each quantisation needs; other rows get llama.cpp's fallback.
_BLOCK = {"F16": 1, "Q8_0": 32, "Q4_K_M": 256}
_FALLBACK = "Q4_K rows -> Q5_0 and Q6_K rows -> Q8_0 (F16 if not a multiple of 32)"
F16_MAX = 65504.0
GGML_QUANT_VERSION = 2
# Hugging Face name inside ``model.layers.N.`` -> GGUF name inside ``blk.N.``.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Buffers some older checkpoints saved; recomputed by every runtime.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# --- architecture ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaShape:
    """The numbers of a LLaMA config.json that llama.cpp needs (``llama.*`` metadata)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LlamaShape:
        _check_supported(config)
        try:
            shape = cls(
                hidden=int(config["hidden_size"]),
                layers=int(config["num_hidden_layers"]),
                heads=int(config["num_attention_heads"]),
                kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
                ffn=int(config["intermediate_size"]),
                vocab=int(config["vocab_size"]),
                context=int(config.get("max_position_embeddings", 2048)),
                rms_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=float(config.get("rope_theta", 10000.0)),
                tied=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"config.json lacks or garbles {error}") from None
        shape.check()
        return shape

    def check(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads or self.head_dim % 2:
            raise CheckpointError(
                f"config.json: hidden_size {self.hidden}, {self.heads} heads and "
                f"{self.kv_heads} key/value heads do not fit together",
                hint="hidden_size must divide by the heads into an even head size",
            )

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Hugging Face name -> shape of every tensor the checkpoint must hold, in GGUF order."""
        kv = self.kv_heads * self.head_dim
        layer: dict[str, tuple[int, ...]] = {
            "input_layernorm.weight": (self.hidden,),
            "self_attn.q_proj.weight": (self.hidden, self.hidden),
            "self_attn.k_proj.weight": (kv, self.hidden),
            "self_attn.v_proj.weight": (kv, self.hidden),
            "self_attn.o_proj.weight": (self.hidden, self.hidden),
            "post_attention_layernorm.weight": (self.hidden,),
            "mlp.gate_proj.weight": (self.ffn, self.hidden),
            "mlp.up_proj.weight": (self.ffn, self.hidden),
            "mlp.down_proj.weight": (self.hidden, self.ffn),
        }
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab, self.hidden)
        }
        for index in range(self.layers):
            shapes.update({f"model.layers.{index}.{k}": v for k, v in layer.items()})
        shapes["model.norm.weight"] = (self.hidden,)
        if not self.tied:  # llama.cpp reuses token_embd when output.weight is absent
            shapes["lm_head.weight"] = (self.vocab, self.hidden)
        return shapes


def _check_supported(config: dict[str, Any]) -> None:
    """Refuse what the plain llama.cpp LLaMA graph would silently compute differently."""
    problems = [
        (config.get("hidden_act", "silu") != "silu", f"hidden_act {config.get('hidden_act')!r}"),
        (bool(config.get("attention_bias")), "attention biases"),
        (bool(config.get("mlp_bias")), "MLP biases"),
        (bool(config.get("rope_scaling")), f"rope_scaling {config.get('rope_scaling')!r}"),
        (_explicit_head_dim(config), "a head_dim other than hidden_size / heads"),
    ]
    found = [text for bad, text in problems if bad]
    if found:
        raise CheckpointError(
            f"this converter writes plain LLaMA models; config.json asks for {', '.join(found)}",
            hint="TIPO v1 checkpoints have none of these; for other models use llama.cpp's "
            "convert_hf_to_gguf.py",
        )


def _explicit_head_dim(config: dict[str, Any]) -> bool:
    head_dim = config.get("head_dim")
    heads = config.get("num_attention_heads") or 1
    return head_dim is not None and head_dim != config.get("hidden_size", 0) // heads


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face LLaMA tensor name."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, index, rest = hf_name.split(".", 3)  # model.layers.N.rest
    return f"blk.{index}.{_LAYER_NAMES[rest]}"


def permute_rotary(weight: Any, n_heads: int) -> Any:
    """Reorder the rows of a q/k projection (``[n_heads * head_dim, hidden]``) from Hugging
    Face's rotate-half layout to llama.cpp's interleaved-pairs layout: within each head, rows
    ``(i, i + head_dim/2)`` become neighbours ``(2i, 2i + 1)``."""
    rows = weight.shape[0]
    split = weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def unpermute_rotary(weight: Any, n_heads: int) -> Any:
    """The inverse of ``permute_rotary``: llama.cpp's interleaved-pairs rows back to Hugging
    Face's rotate-half layout (rows ``(2i, 2i + 1)`` of each head go to ``(i, i + head_dim/2)``)."""
    rows = weight.shape[0]
    split = weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


# --- tokenizer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFVocab:
    """``tokenizer.ggml.*`` metadata: one entry per id, ``vocab`` entries."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos: int
    eos: int
    unk: int
    pad: int
    add_bos: bool
    add_eos: bool


def read_vocab(folder: Path, vocab_size: int) -> GGUFVocab:
    """The vocabulary of a checkpoint folder as llama.cpp's converter writes it."""
    from gguf import TokenType

    from .tokenizer import TipoTokenizer

    tokenizer = TipoTokenizer.from_dir(folder)  # transformers' reading of the tokenizer files
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(
            f"the tokenizer defines {tokenizer.vocab_size} tokens but config.json's vocab_size "
            f"is {vocab_size}",
            hint="the tokenizer files do not belong to this model",
        )
    tokens, scores, types, pieces = _sentencepiece_vocab(folder / "tokenizer.model", vocab_size)
    for token_id, token in tokenizer.settings.added_tokens.items():
        if token_id < pieces and tokens[token_id] == token.content:
            continue  # <unk>, <s>, </s>: keep SentencePiece's own type
        special = token.special
        tokens[token_id] = token.content if special else token.content.replace("▁", " ")
        types[token_id] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        scores[token_id] = -1000.0
    settings = tokenizer.settings
    return GGUFVocab(
        tokens, scores, types, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id,
        tokenizer.pad_id, settings.add_bos, settings.add_eos,
    )  # fmt: skip


def _sentencepiece_vocab(
    model_file: Path, vocab_size: int
) -> tuple[list[str], list[float], list[int], int]:
    """Pieces, scores and types of ``tokenizer.model`` and its size; ids past it are
    ``[PADn]`` (UNUSED) until the added tokens fill them."""
    import sentencepiece
    from gguf import TokenType

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores, types = [-10000.0] * vocab_size, [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(processor.get_piece_size(), vocab_size)):
        tokens[i], scores[i] = processor.id_to_piece(i), processor.get_score(i)
        types[i] = int(_piece_type(processor, i))
    return tokens, scores, types, processor.get_piece_size()


def _piece_type(processor: Any, i: int) -> Any:
    from gguf import TokenType

    checks = [
        (processor.is_unknown, TokenType.UNKNOWN),
        (processor.is_control, TokenType.CONTROL),
        (processor.is_unused, TokenType.UNUSED),
        (processor.is_byte, TokenType.BYTE),
    ]
    return next((kind for test, kind in checks if test(i)), TokenType.NORMAL)


# --- writing -----------------------------------------------------------------------------------


def _add_metadata(writer: Any, shape: LlamaShape, vocab: GGUFVocab, name: str, ftype: int) -> None:
    writer.add_name(name)
    writer.add_file_type(ftype)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_vocab_size(shape.vocab)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_freq_base(shape.rope_theta)
    _add_vocab(writer, vocab)


def _add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_unk_token_id(vocab.unk)
    writer.add_pad_token_id(vocab.pad)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)


def _stored_dtype(shape: tuple[int, ...], float16: bool) -> Any:
    import numpy as np

    return np.float16 if float16 and len(shape) > 1 else np.float32


def _write_gguf(
    output: Path,
    shape: LlamaShape,
    vocab: GGUFVocab,
    tensors: Iterator[tuple[str, Any]],
    *,
    name: str,
    float16: bool,
) -> None:
    """Stream the tensors into ``output``: header and tensor infos first (known from the
    config), then one tensor at a time, so memory stays at one tensor, not the model."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(output, arch="llama")
    _add_metadata(writer, shape, vocab, name, FILE_TYPES["F16" if float16 else "F32"])
    for hf_name, dims in shape.tensors().items():
        dtype = _stored_dtype(dims, float16)
        nbytes = int(np.prod(dims)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(gguf_name(hf_name), dims, np.dtype(dtype), nbytes)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, array in tensors:
            writer.write_tensor_data(array)
    finally:
        writer.close()


def _converted_tensors(
    files: list[Path], shape: LlamaShape, float16: bool, progress: Progress
) -> Iterator[tuple[str, Any]]:
    """(Hugging Face name, numpy array ready to store) in ``shape.tensors()`` order."""
    sources = _tensor_sources(files, shape)
    expected = shape.tensors()
    for done, (name, dims) in enumerate(expected.items(), 1):
        tensor = _load_tensor(sources[name], name)
        if tuple(tensor.shape) != dims:
            raise CheckpointError(
                f"{name} has shape {tuple(tensor.shape)}, config.json implies {dims}",
                hint="config.json does not describe these weights",
            )
        array = _prepare(name, tensor, shape, float16)
        progress(f"[{done}/{len(expected)}] {gguf_name(name)} {array.dtype} {dims}")
        yield name, array


def _tensor_sources(files: list[Path], shape: LlamaShape) -> dict[str, Path]:
    """Which file holds each expected tensor; unknown or missing tensors are errors."""
    from safetensors import safe_open

    sources: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            sources.update(dict.fromkeys(handle.keys(), file))
    names = {n for n in sources if not n.endswith(_IGNORED_SUFFIXES)}
    expected = set(shape.tensors())
    if shape.tied:
        names.discard("lm_head.weight")  # some tied checkpoints still save a copy
    missing, unknown = sorted(expected - names), sorted(names - expected)
    if missing or unknown:
        raise CheckpointError(
            f"the weights do not match config.json: missing {missing[:3]}, unexpected "
            f"{unknown[:3]}" + (" ..." if len(missing) > 3 or len(unknown) > 3 else ""),
            hint="convert a complete TIPO (LLaMA) checkpoint folder",
        )
    return sources


def _load_tensor(file: Path, name: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name)


def _prepare(name: str, tensor: Any, shape: LlamaShape, float16: bool) -> Any:
    """fp32 numpy array, q/k rows permuted, cast to the stored type (checked for overflow)."""
    import numpy as np

    array = tensor.float().numpy()
    if name.endswith("q_proj.weight"):
        array = permute_rotary(array, shape.heads)
    elif name.endswith("k_proj.weight"):
        array = permute_rotary(array, shape.kv_heads)
    if not np.isfinite(array).all():
        raise CheckpointError(f"{name} holds NaN or infinite values", hint="the weights are broken")
    dtype = _stored_dtype(array.shape, float16)
    if dtype == np.float16 and np.abs(array).max() > F16_MAX:
        raise CheckpointError(
            f"{name} has values beyond the F16 range (±{F16_MAX:g})",
            hint="convert with quant='Q8_0' (quantised from F32) instead of F16",
        )
    return np.ascontiguousarray(array.astype(dtype))


# --- quantising --------------------------------------------------------------------------------


def fallback_tensors(shape: LlamaShape, quant: Quant) -> list[str]:
    """GGUF names of the matrices whose rows do not fit ``quant``'s block size: llama.cpp stores
    them with a fallback type (for Q4_K_M: Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    block = _BLOCK[quant]
    return [
        gguf_name(name)
        for name, dims in shape.tensors().items()
        if len(dims) > 1 and dims[-1] % block
    ]


def tensor_types(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many tensors of a GGUF file are stored in each type (``{"Q4_K": 100, ...}``)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


# --- the entry point ---------------------------------------------------------------------------


def convert(
    hf_folder: str | os.PathLike[str],
    output: str | os.PathLike[str],
    quant: str = "F16",
    *,
    progress: Progress | None = None,
) -> Path:
    """Convert a Hugging Face TIPO checkpoint folder to a GGUF file for llama.cpp.

    HF_FOLDER holds config.json, model.safetensors and the tokenizer files (tokenizer.model,
    tokenizer_config.json). OUTPUT is the .gguf file to write (replaced if it exists).

    QUANT is F16 (written directly, what the released TIPO-*-F16.gguf files are), Q8_0
    (about half the size, nearly F16 quality) or Q4_K_M (about a quarter, lower quality).
    Q8_0 and Q4_K_M are quantised by llama.cpp from a temporary F32 file next to OUTPUT and
    need llama-cpp-python. K-quants need rows of a multiple of 256 values: llama.cpp stores
    narrower matrices with a fallback type (Q5_0/Q8_0), which the progress messages list.

    Progress messages (one line per step) go to ``progress``. Returns the written path.
    Raises CheckpointError for an unusable folder, InvalidRequestError for an unknown QUANT
    and MissingDependencyError when gguf, safetensors or llama-cpp-python is missing.
    """
    quant_name = _check_quant(quant)
    report: Progress = progress or (lambda _message: None)
    folder, target = Path(hf_folder), Path(output)
    _check_dependencies(quant_name)
    shape, vocab, files = _read_checkpoint(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    if quant_name == "F16":
        _write_atomically(folder, target, shape, vocab, files, report, float16=True)
        return target
    # llama.cpp quantises best from full precision: an F32 file, deleted afterwards.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tipo-convert-") as scratch:
        f32 = Path(scratch) / "model-F32.gguf"
        _write_atomically(folder, f32, shape, vocab, files, report, float16=False)
        _quantize_with_report(f32, target, quant_name, shape, report)
    return target


def _read_checkpoint(folder: Path) -> tuple[LlamaShape, GGUFVocab, list[Path]]:
    """Shape, vocabulary and weight files of a checkpoint folder, all checked before writing."""
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a folder",
            hint="pass the Hugging Face checkpoint folder (config.json, model.safetensors, "
            "tokenizer.model); a .gguf file needs no conversion",
        )
    shape = LlamaShape.from_config(read_config(folder))
    return shape, read_vocab(folder, shape.vocab), weight_files(folder)


def _write_atomically(
    folder: Path,
    target: Path,
    shape: LlamaShape,
    vocab: GGUFVocab,
    files: list[Path],
    report: Progress,
    *,
    float16: bool,
) -> None:
    """Write ``target`` through a temporary name, so a failed run leaves no broken file."""
    partial = target.with_name(target.name + ".part")
    report(f"writing {target.name} ({'F16' if float16 else 'F32'}) from {folder}")
    try:
        tensors = _converted_tensors(files, shape, float16, report)
        _write_gguf(partial, shape, vocab, tensors, name=folder.name, float16=float16)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _quantize_with_report(
    source: Path, target: Path, quant: Quant, shape: LlamaShape, report: Progress
) -> None:
    narrow = fallback_tensors(shape, quant)
    if narrow:
        report(
            f"note: {len(narrow)} matrices have rows not divisible by {_BLOCK[quant]} "
            f"(e.g. {narrow[0]}); llama.cpp stores them with fallback types: {_FALLBACK}"
        )
    report(f"quantising to {quant} with llama.cpp")
    partial = target.with_name(target.name + ".part")
    try:
        from .backends.llamacpp_lib import quantize_file

        quantize_file(source, partial, FILE_TYPES[quant])
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    types = ", ".join(f"{count} {kind}" for kind, count in tensor_types(target).items())
    report(f"wrote {target} (tensor types: {types})")


def _check_quant(quant: str) -> Quant:
    for name in QUANTS:
        if quant.upper() == name:
            return name
    raise InvalidRequestError(
        f"unknown quantisation {quant!r}", hint=f"use one of: {', '.join(QUANTS)}"
    )


def _check_dependencies(quant: Quant) -> None:
    """Fail before any work when a package is missing (the F32 file alone takes a while)."""
    for package in ("gguf", "safetensors", "torch", "sentencepiece"):
        try:
            __import__(package)
        except ImportError:
            raise MissingDependencyError.for_extra(
                package, "llamacpp", "Converting to GGUF"
            ) from None
    if quant != "F16":
        from .backends.llamacpp_lib import init_llama_cpp

        init_llama_cpp(f"Quantising to {quant}")


__all__ = [
    "FILE_TYPES",
    "QUANTS",
    "GGUFVocab",
    "LlamaShape",
    "convert",
    "fallback_tensors",
    "gguf_name",
    "permute_rotary",
    "read_vocab",
    "tensor_types",
    "unpermute_rotary",
]
