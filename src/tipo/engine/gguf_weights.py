"""Load a GGUF file (llama.cpp's format) into our model: no llama.cpp, nothing to compile.

``open_gguf_model(path)`` reads the architecture from the file's metadata (never its name) and
returns a ``GGUFTensorReader``: the same ``read(names)`` as weights.TensorReader, so the same
``_Builder`` makes the model. The reader hides every way GGUF differs from a Hugging Face
folder:

* names: Hugging Face names in, llama.cpp names looked up (``convert.gguf_name``, one mapping
  for both directions); a file without ``output.weight`` has tied embeddings;
* shapes: ggml lists dimensions fastest-first; ``gguf_file`` turns them to rows-first;
* layout: llama.cpp's converters permute the q/k rows of each head from the rotate-half
  layout to interleaved pairs (``convert.permute_rotary``); we undo it here, and the builder
  then applies our own RoPE row order exactly as for a Hugging Face folder;
* types: F32, F16 and BF16 are read as they are; Q8_0 (blocks of one fp16 scale and 32 int8
  values) is dequantised here in torch; every other type the ``gguf`` package can dequantise
  (Q4_0, Q5_0, Q4_K, Q6_K, ... as llama.cpp's quantizer writes them) goes through
  ``gguf.quants.dequantize`` in numpy. The result goes through the same weight-format path as
  a Hugging Face tensor (int8 by default on CPU, or the ``dtype`` asked for).

Memory: one tensor at a time, read with ordinary file reads (no mmap, so the page cache never
counts towards our RSS), dequantised, handed to the builder and dropped: the peak is the
finished model plus one layer's source tensors, as for a Hugging Face folder.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from ..convert import gguf_name, unpermute_rotary
from ..errors import CheckpointError
from ..gguf_file import GGUFFile, GGUFTensor, import_gguf, read_gguf
from .config import EngineConfig, expected_shapes

_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
Q8_0_BLOCK = 32  # values per block; a block is 2 bytes of fp16 scale + 32 int8 values
_REDOWNLOAD = "the file is damaged or incomplete: download or convert it again"


def open_gguf_model(path: str | Path) -> tuple[EngineConfig, GGUFTensorReader]:
    """The architecture of a GGUF file and a reader of its tensors, all checked before any
    tensor data is read."""
    file = read_gguf(path)
    tied = "output.weight" not in file.tensors  # llama.cpp then multiplies by token_embd
    config = EngineConfig.from_gguf_metadata(file.metadata, tied=tied)
    reader = GGUFTensorReader(file, config)
    reader.check()
    return config, reader


class GGUFTensorReader:
    """Reads the tensors of a GGUF file under their Hugging Face names, in Hugging Face layout
    (q/k rows un-permuted), dequantised."""

    def __init__(self, file: GGUFFile, config: EngineConfig) -> None:
        self.path, self.config = file.path, config
        self.expected = expected_shapes(config)  # Hugging Face name -> shape
        self.tensors = file.tensors  # llama.cpp name -> entry
        self._names = {hf: gguf_name(hf) for hf in self.expected}
        self._file: BinaryIO | None = None

    def __enter__(self) -> GGUFTensorReader:
        self._file = self.path.open("rb", buffering=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def check(self) -> None:
        """Every tensor the architecture needs, with its shape and a type we can read; no
        tensor besides."""
        missing = [g for g in self._names.values() if g not in self.tensors]
        if missing:
            raise CheckpointError(
                f"{self.path.name} lacks {len(missing)} tensor(s) of a LLaMA model, e.g. "
                f"{', '.join(missing[:3])}",
                hint="the file is incomplete, or its metadata describes another model: "
                "download or convert it again",
            )
        wrong = []
        for hf, shape in self.expected.items():
            entry = self.tensors[self._names[hf]]
            if entry.shape != shape:
                wrong.append(f"{entry.name} is {list(entry.shape)}, the metadata implies "
                             f"{list(shape)}")  # fmt: skip
        if wrong:
            raise CheckpointError(
                f"tensor shapes of {self.path.name} do not match its metadata: "
                f"{'; '.join(wrong[:3])}",
                hint=_REDOWNLOAD,
            )
        unknown = sorted(set(self.tensors) - set(self._names.values()))
        if unknown:
            raise CheckpointError(
                f"{self.path.name} has tensors a LLaMA model does not: {', '.join(unknown[:3])}",
                hint="this is not a plain LLaMA (TIPO v1) file; try --backend llamacpp",
            )
        _check_types(self.tensors.values())

    def read(self, names: list[str]) -> Tensor:
        """The named tensors (Hugging Face names) concatenated along dim 0: in their stored
        dtype when all are F32, F16 or BF16 alike, else dequantised to float32."""
        entries = [self.tensors[self._names[n]] for n in names]
        if len(entries) == 1:  # no concatenation: no second buffer (the embedding is 98 MB)
            return self._hf_layout(names[0], self._tensor(entries[0]))
        kinds = {e.type_name for e in entries}
        dtype = _FLOATS.get(kinds.pop(), torch.float32) if len(kinds) == 1 else torch.float32
        rows = sum(e.shape[0] for e in entries)
        out = torch.empty((rows, *entries[0].shape[1:]), dtype=dtype)
        start = 0
        for name, entry in zip(names, entries, strict=True):
            part = out[start : start + entry.shape[0]]
            part.copy_(self._hf_layout(name, self._tensor(entry)))
            start += entry.shape[0]
        return out

    def _tensor(self, entry: GGUFTensor) -> Tensor:
        if self._file is None:
            raise RuntimeError("GGUFTensorReader used outside its `with` block")
        raw = torch.empty(entry.nbytes, dtype=torch.uint8)
        self._file.seek(entry.offset)
        buffer = (ctypes.c_char * entry.nbytes).from_address(raw.data_ptr())
        if self._file.readinto(buffer) != entry.nbytes:  # type: ignore[attr-defined]
            raise CheckpointError(f"{self.path} ended early", hint=_REDOWNLOAD)
        return dequantize(raw, entry.type_name, entry.shape)

    def _hf_layout(self, name: str, tensor: Tensor) -> Tensor:
        """q/k projection rows from llama.cpp's interleaved pairs back to rotate-half."""
        if name.endswith("self_attn.q_proj.weight"):
            return unpermute_rotary(tensor, self.config.num_heads)
        if name.endswith("self_attn.k_proj.weight"):
            return unpermute_rotary(tensor, self.config.num_kv_heads)
        return tensor


def dequantize(raw: Tensor, type_name: str, shape: tuple[int, ...]) -> Tensor:
    """A tensor of ``shape`` from its stored bytes (uint8 ``raw``): F32/F16/BF16 as stored,
    anything else as float32."""
    if type_name in _FLOATS:
        return raw.view(_FLOATS[type_name]).reshape(shape)
    if type_name == "Q8_0":
        return dequantize_q8_0(raw).reshape(shape)
    gguf = import_gguf()
    rows = raw.numpy().reshape(math.prod(shape[:-1]), -1)  # [rows, bytes per row]
    values = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[type_name])
    return torch.from_numpy(values).reshape(shape)


def dequantize_q8_0(raw: Tensor) -> Tensor:
    """Q8_0 bytes -> float32 values: each 34-byte block is an fp16 scale ``d`` and 32 int8
    values ``q``; the values are ``d * q``, computed in float32 as ggml does."""
    blocks = raw.view(-1, 2 + Q8_0_BLOCK)  # [n_blocks, 34]
    scale = blocks[:, :2].contiguous().view(torch.float16).float()  # [n_blocks, 1]
    values = blocks[:, 2:].view(torch.int8).float()  # [n_blocks, 32]
    return values.mul_(scale).reshape(-1)


def readable(type_name: str) -> bool:
    """Whether tensors stored as ``type_name`` can be turned into floats here."""
    if type_name in _FLOATS or type_name == "Q8_0":
        return True
    gguf = import_gguf()
    kind = getattr(gguf.GGMLQuantizationType, type_name, None)  # None: "unknown type N"
    if kind is None:
        return False
    # The gguf package has no public list of the types it dequantises: try one block of zeros.
    _, type_size = gguf.GGML_QUANT_SIZES[kind]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), kind)
    except NotImplementedError:
        return False
    return True


def _check_types(entries: Iterable[GGUFTensor]) -> None:
    """Refuse, before any data is read, a tensor type we cannot read (naming a tensor)."""
    entries = list(entries)
    bad_types = {t for t in {e.type_name for e in entries} if not readable(t)}
    bad = next((e for e in entries if e.type_name in bad_types), None)
    if bad is not None:
        raise CheckpointError(
            f"tensor {bad.name} is stored as {bad.type_name}, which this engine cannot read "
            "(it reads F32, F16, BF16, Q8_0 and the types gguf.quants.dequantize handles, "
            "such as Q4_0, Q5_0, Q4_K, Q5_K, Q6_K)",
            hint="convert the model again (tipo convert writes F16, Q8_0 or Q4_K_M), or run "
            "this file with --backend llamacpp",
        )


__all__ = [
    "Q8_0_BLOCK",
    "GGUFTensorReader",
    "dequantize",
    "dequantize_q8_0",
    "open_gguf_model",
    "readable",
]
