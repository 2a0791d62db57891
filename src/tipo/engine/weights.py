"""Load a checkpoint into our model: a Hugging Face LLaMA folder (config.json + safetensors, single
or sharded) read here, or a GGUF file read by gguf_weights.py; one ``_Builder`` for both.

Memory: tensors are read one at a time straight from the file into their final buffer
(``readinto``, no mmap, so the page cache never counts towards our RSS), converted or quantised,
and the source buffer dropped before the next tensor; the q/k/v and gate/up matrices are read
into one fused buffer each. Peak memory is the finished model plus one layer's source tensors.
"""

from __future__ import annotations

import ctypes
import json
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch
from torch import Tensor, nn

from ..checkpoints import read_config, weight_files
from ..errors import BackendError, CheckpointError
from .compiled_attention import COMPILED_KV_DTYPE, CompiledDecodeAttention
from .config import EngineConfig, expected_shapes
from .model import Attention, Block, FeedForward, RMSNorm, Transformer, interleave_rope_rows
from .quant import (
    WEIGHT_FORMATS,
    activation_dtype,
    head_format,
    kv_cache_dtype,
    make_linear,
    weight_only_format,
)

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exporters save; recomputed here
_REDOWNLOAD = "the file is damaged or incomplete: download the checkpoint again"


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensor table of one .safetensors file (8-byte length + JSON header + data)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        raw = file.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is too short for a safetensors file", hint=_REDOWNLOAD)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path} has a corrupt safetensors header", hint=_REDOWNLOAD)
        try:
            header = json.loads(file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: unreadable safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return {name: _entry(path, name, info, 8 + header_len, size) for name, info in header.items()}


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    try:
        if not isinstance(info, dict):
            raise TypeError(name)
        dtype = _DTYPES[info["dtype"]]
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(n) for n in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        kind = info.get("dtype") if isinstance(info, dict) else None
        raise CheckpointError(
            f"{path}: tensor {name!r} has an unsupported or malformed entry (dtype {kind!r})",
            hint="the engine reads F32, F16 and BF16 safetensors; " + _REDOWNLOAD,
        ) from None
    numel = 1
    for n in shape:
        numel *= n
    if end - begin != numel * dtype.itemsize or data_start + end > size or begin < 0:
        raise CheckpointError(f"{path}: tensor {name!r} lies outside the file", hint=_REDOWNLOAD)
    return TensorEntry(path, dtype, shape, data_start + begin, end - begin)


class TensorReader:
    """Reads named tensors of a checkpoint folder from its safetensors files."""

    def __init__(self, folder: Path) -> None:
        self.entries: dict[str, TensorEntry] = {}
        for path in weight_files(folder):
            self.entries.update(read_header(path))
        self._stack = ExitStack()
        self._files: dict[Path, BinaryIO] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def check(self, expected: dict[str, tuple[int, ...]], optional: set[str]) -> None:
        """Every expected tensor present with its shape; nothing unknown besides."""
        missing = [n for n in expected if n not in self.entries]
        if missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} weight(s), e.g. {', '.join(missing[:3])}",
                hint="config.json does not match the weights, or a shard is incomplete",
            )
        wrong = [f"{n} is {list(self.entries[n].shape)}, config says {list(s)}"
                 for n, s in expected.items() if self.entries[n].shape != s]  # fmt: skip
        if wrong:
            raise CheckpointError(
                f"weight shapes do not match config.json: {'; '.join(wrong[:3])}",
                hint="config.json belongs to another model size; use the checkpoint's own",
            )
        unknown = [n for n in self.entries
                   if n not in expected and n not in optional
                   and not n.endswith(_IGNORED_SUFFIXES)]  # fmt: skip
        if unknown:
            raise CheckpointError(
                f"the checkpoint has tensors a LLaMA model does not: {', '.join(unknown[:3])}",
                hint="this is not a plain LLaMA checkpoint; try --backend transformers",
            )

    def read(self, names: list[str]) -> Tensor:
        """The named tensors concatenated along dim 0, read straight into one buffer, in the
        checkpoint's dtype (all parts must share it)."""
        entries = [self.entries[n] for n in names]
        dtype = entries[0].dtype
        if any(e.dtype != dtype for e in entries):
            raise CheckpointError(f"tensors {names} mix dtypes", hint=_REDOWNLOAD)
        rows = sum(e.shape[0] for e in entries)
        out = torch.empty((rows, *entries[0].shape[1:]), dtype=dtype)
        start = 0
        for entry in entries:
            part = out[start : start + entry.shape[0]]
            self._read_into(entry, part)
            start += entry.shape[0]
        return out

    def _read_into(self, entry: TensorEntry, out: Tensor) -> None:
        file = self._files.get(entry.file)
        if file is None:
            file = self._stack.enter_context(entry.file.open("rb", buffering=0))
            self._files[entry.file] = file
        file.seek(entry.offset)
        buffer = (ctypes.c_char * entry.nbytes).from_address(out.data_ptr())
        if file.readinto(buffer) != entry.nbytes:  # type: ignore[attr-defined]
            raise CheckpointError(f"{entry.file} ended early", hint=_REDOWNLOAD)


class WeightReader(Protocol):
    """What ``_Builder`` reads from: TensorReader (safetensors) or gguf_weights.GGUFTensorReader.
    Names and layout are Hugging Face's whatever the file format."""

    def read(self, names: list[str]) -> Tensor: ...

    def __enter__(self) -> WeightReader: ...

    def __exit__(self, *exc: object) -> None: ...


class _Builder:
    """Turns checkpoint tensors into model parts on ``device`` in weight format ``fmt``."""

    def __init__(
        self, reader: WeightReader, config: EngineConfig, fmt: str, device: str, int8_copy: bool,
        compile_attention: bool = False,
    ) -> None:  # fmt: skip
        self.reader, self.config, self.fmt, self.int8_copy = reader, config, fmt, int8_copy
        self.compile_attention = compile_attention
        self.device = torch.device(device)
        self.act_dtype = activation_dtype(fmt)

    def tensor(self, name: str) -> Tensor:
        return self.reader.read([name]).to(self.device, self.act_dtype)

    def linear(
        self, prefix: str, parts: list[str], bias: bool, rope: bool = False, fmt: str = ""
    ) -> nn.Module:
        """``parts`` read into one layer (format ``fmt``, default the model's); ``rope``: the
        parts are q, k, v, whose q and k rows go into the model's RoPE pair order."""
        weight = self.reader.read([f"{prefix}{p}.weight" for p in parts])
        b = self.reader.read([f"{prefix}{p}.bias" for p in parts]) if bias else None
        if rope:
            weight, b = self._rope_rows(weight), None if b is None else self._rope_rows(b)
        b = None if b is None else b.to(self.device)
        fmt = fmt or self.fmt
        return make_linear(weight.to(self.device), b, fmt, int8_copy=self.int8_copy)

    def _rope_rows(self, qkv: Tensor) -> Tensor:
        """Fused q, k, v rows [(H + 2 KVH) D, ...] with the q and k rows of each head
        interleaved (model.apply_rope), in place."""
        c = self.config
        q, k = qkv[: c.q_size], qkv[c.q_size : c.q_size + c.kv_size]
        q.copy_(interleave_rope_rows(q, c.num_heads, c.head_dim))
        k.copy_(interleave_rope_rows(k, c.num_kv_heads, c.head_dim))
        return qkv

    def norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.tensor(name), self.config.rms_norm_eps)

    def block(self, index: int) -> Block:
        p, config = f"model.layers.{index}.", self.config
        exact = weight_only_format(self.fmt)
        qkv = self.linear(f"{p}self_attn.", ["q_proj", "k_proj", "v_proj"],
                          config.attention_bias, rope=True, fmt=exact)  # fmt: skip
        out = self.linear(f"{p}self_attn.", ["o_proj"], config.attention_bias, fmt=exact)
        gate_up = self.linear(f"{p}mlp.", ["gate_proj", "up_proj"], config.mlp_bias)
        down = self.linear(f"{p}mlp.", ["down_proj"], config.mlp_bias, fmt=exact)
        return Block(
            self.norm(f"{p}input_layernorm.weight"),
            Attention(config, qkv, out),
            self.norm(f"{p}post_attention_layernorm.weight"),
            FeedForward(gate_up, down, config.intermediate_size),
        )

    def model(self) -> Transformer:
        blocks = [self.block(i) for i in range(self.config.num_layers)]
        head_name = "model.embed_tokens" if self.config.tie_word_embeddings else "lm_head"
        lm_head = self.linear("", [head_name], bias=False, fmt=head_format(self.fmt))
        # The embedding is only gathered from (B rows per step), so its format does not
        # matter for speed: keep it in the activation dtype.
        embed = self.tensor("model.embed_tokens.weight")
        norm = self.norm("model.norm.weight")
        if self.compile_attention:
            decode_attention, kv_dtype = CompiledDecodeAttention(), COMPILED_KV_DTYPE
        else:
            decode_attention, kv_dtype = None, kv_cache_dtype(self.fmt, self.device)
        return Transformer(self.config, embed, blocks, norm, lm_head, self.act_dtype, kv_dtype,
                           decode_attention)  # fmt: skip


def load_model(
    path: str | Path, fmt: str = "bfloat16", device: str = "cpu", *, int8_copy: bool = True,
    compile_attention: bool = False,
) -> Transformer:  # fmt: skip
    """Read a checkpoint into a Transformer in weight format ``fmt`` (``int8_copy``: see
    quant.Int4Linear; ``compile_attention``: a bf16 KV cache and compiled_attention.py's
    decode attention, CPU only): a Hugging Face folder (config.json + safetensors), or a GGUF
    file (a file path; see gguf_weights.py)."""
    if fmt not in WEIGHT_FORMATS:
        raise BackendError(
            f"unknown dtype {fmt!r} for the torch engine",
            hint=f"use one of: {', '.join(WEIGHT_FORMATS)}",
        )
    if compile_attention and torch.device(device).type != "cpu":
        raise BackendError(
            "compile_attention is for the CPU",
            hint=f"on {device} the cache is already bf16 and attention native: leave it off",
        )
    path = Path(path)
    config, reader = _open_gguf(path) if path.is_file() else _open_folder(path)
    with reader, torch.inference_mode(False), torch.no_grad():
        builder = _Builder(reader, config, fmt, device, int8_copy, compile_attention)
        return builder.model().eval()


def _open_folder(folder: Path) -> tuple[EngineConfig, WeightReader]:
    config = EngineConfig.from_hf_config(read_config(folder))
    reader = TensorReader(folder)
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    reader.check(expected_shapes(config), optional)
    return config, reader


def _open_gguf(path: Path) -> tuple[EngineConfig, WeightReader]:
    from .gguf_weights import open_gguf_model

    return open_gguf_model(path)


def write_safetensors(path: str | Path, tensors: dict[str, Tensor]) -> None:
    """Write ``tensors`` as a .safetensors file (for test and benchmark checkpoints)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}  # fmt: skip
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the safetensors writer does
    with Path(path).open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        for tensor in tensors.values():
            data = tensor.contiguous()
            file.write((ctypes.c_char * (data.numel() * data.element_size())).from_address(
                data.data_ptr()))  # fmt: skip


__all__ = [
    "TensorEntry",
    "TensorReader",
    "WeightReader",
    "load_model",
    "read_header",
    "write_safetensors",
]
