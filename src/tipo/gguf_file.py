"""A GGUF file's metadata and tensor table as plain Python values (no llama.cpp needed).

Shared by our engine (``engine/gguf_weights.py``: tensors -> model) and the tokenizer fallback
(``gguf_tokenizer.py``: vocabulary -> SentencePiece model). ``read_gguf`` reads the header once
and closes the file; the tensor data are read later, one tensor at a time.

Why not ``gguf.GGUFReader``: it builds a numpy view for every element of every metadata array,
and a TIPO file holds three arrays of 32013 entries (the vocabulary): parsing took 1.3-1.8 s
on our CI machine, longer than loading the weights. Reading the header ourselves takes tens of
milliseconds. The ``gguf`` package still provides the tensor types (``GGMLQuantizationType``,
``GGML_QUANT_SIZES``) and the dequantisation of the quantised types.

Format (GGUF v2/v3, little-endian): magic ``GGUF``, version u32, tensor count u64, metadata
count u64; metadata as (key string, value type u32, value); tensor infos as (name string,
n_dims u32, ne[n_dims] u64, type u32, offset u64); then the data, aligned to
``general.alignment`` (default 32). ``ne`` is ggml's order, fastest-moving first: a PyTorch
``[rows, cols]`` matrix is stored as ne ``[cols, rows]``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError, MissingDependencyError

GGUF_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32
_FLOAT32, _STRING, _ARRAY = 6, 8, 9
# GGUF value type -> struct format of one scalar (8 is a string, 9 an array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip
_REDOWNLOAD = "the file is damaged or incomplete: download or convert it again"


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's entry: where its data lie and how they are stored."""

    name: str  # llama.cpp's name, e.g. ``blk.0.attn_q.weight``
    type_name: str  # GGMLQuantizationType name (F32, F16, BF16, Q8_0, Q4_K, ...)
    shape: tuple[int, ...]  # PyTorch order, rows first: ggml's ne[] reversed
    offset: int  # absolute byte offset of the data in the file
    nbytes: int  # -1 for a type the gguf package does not know

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count


@dataclass(frozen=True)
class GGUFFile:
    """The parsed header of a GGUF file. ``metadata`` maps keys to Python values (arrays as
    lists; a float32 value as the shortest decimal that reads back as the same float32)."""

    path: Path
    metadata: Mapping[str, Any]
    tensors: Mapping[str, GGUFTensor]


class _Cursor:
    """Sequential reads that fail with a CheckpointError, never past the end of the file."""

    def __init__(self, file: BinaryIO, path: Path, size: int) -> None:
        self.file, self.path, self.size = file, path, size

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.size - self.file.tell():
            raise CheckpointError(f"{self.path} ends inside its GGUF header", hint=_REDOWNLOAD)
        return self.file.read(n)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path} holds a string that is not UTF-8") from None

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        if kind not in _SCALARS:
            raise CheckpointError(f"{self.path} holds an unknown metadata type {kind}")
        value = self.unpack(_SCALARS[kind])
        return _shortest_float32(value) if kind == _FLOAT32 else value

    def array(self) -> list[Any]:
        kind, count = self.unpack("I"), self.unpack("Q")
        if kind in _SCALARS:  # one read for the whole array (scores, token types, ...)
            # float32 arrays keep their exact values (scores), unlike float32 scalars
            size = struct.calcsize(_SCALARS[kind])
            return list(struct.unpack(f"<{count}{_SCALARS[kind]}", self.take(count * size)))
        if count > self.size:  # each element takes at least one byte
            raise CheckpointError(f"{self.path} has a corrupt metadata array", hint=_REDOWNLOAD)
        return [self.value(kind) for _ in range(count)]


def _shortest_float32(value: float) -> float:
    """GGUF stores rms_norm_eps 1e-5 as the float32 9.99999975e-06; give back 1e-05."""
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == struct.pack("<f", value):
            return short
    return value


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of the GGUF file at ``path``; every problem is a CheckpointError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            cursor = _Cursor(file, path, size)
            n_tensors, n_keys = _preamble(cursor)
            metadata = {cursor.string(): cursor.value(cursor.unpack("I")) for _ in range(n_keys)}
            infos = [_tensor_info(cursor) for _ in range(n_tensors)]
            header_end = file.tell()
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path} has an invalid general.alignment {alignment!r}")
    data_start = -(-header_end // alignment) * alignment
    tensors = _tensor_table(path, infos, data_start, size)
    return GGUFFile(path, metadata, tensors)


def _preamble(cursor: _Cursor) -> tuple[int, int]:
    """Check magic and version; the tensor and metadata counts."""
    if cursor.size < 24 or cursor.take(4) != GGUF_MAGIC:
        raise CheckpointError(
            f"{cursor.path} is not a GGUF file (it does not start with 'GGUF')",
            hint="pass a .gguf file written by llama.cpp or `tipo convert`, or a model folder",
        )
    version = cursor.unpack("I")
    if version not in _VERSIONS:
        raise CheckpointError(
            f"{cursor.path} is GGUF version {version}; this reader handles versions 2 and 3 "
            "(little-endian)",
            hint="convert the model again with a current llama.cpp or `tipo convert`",
        )
    n_tensors, n_keys = cursor.unpack("Q"), cursor.unpack("Q")
    if n_tensors > cursor.size or n_keys > cursor.size:
        raise CheckpointError(f"{cursor.path} has a corrupt GGUF header", hint=_REDOWNLOAD)
    return n_tensors, n_keys


def _tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string()
    n_dims = cursor.unpack("I")
    if n_dims > 8:
        raise CheckpointError(f"{cursor.path}: tensor {name!r} has {n_dims} dimensions")
    ne = tuple(cursor.unpack("Q") for _ in range(n_dims))
    return name, tuple(reversed(ne)), cursor.unpack("I"), cursor.unpack("Q")


def _tensor_table(
    path: Path, infos: list[tuple[str, tuple[int, ...], int, int]], data_start: int, size: int
) -> dict[str, GGUFTensor]:
    """Entries with absolute offsets and sizes; a tensor past the end means a truncated file."""
    gguf = import_gguf()
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, type_id, offset in infos:
        type_name, block, type_size = _storage(gguf, type_id)
        if block and shape and shape[-1] % block:
            raise CheckpointError(
                f"{path}: tensor {name} has rows of {shape[-1]} values, not a multiple of "
                f"the {type_name} block ({block})",
                hint=_REDOWNLOAD,
            )
        tensor = GGUFTensor(name, type_name, shape, data_start + offset, -1)
        if block:
            nbytes = tensor.numel // block * type_size
            tensor = GGUFTensor(name, type_name, shape, tensor.offset, nbytes)
            if tensor.offset + nbytes > size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name} ends past the end of the file",
                    hint=_REDOWNLOAD,
                )
        if name in tensors:
            raise CheckpointError(f"{path} holds tensor {name} twice", hint=_REDOWNLOAD)
        tensors[name] = tensor
    return tensors


def _storage(gguf: Any, type_id: int) -> tuple[str, int, int]:
    """(type name, values per block, bytes per block); block 0 for a type gguf does not know."""
    try:
        kind = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError):
        return f"unknown type {type_id}", 0, 0
    return kind.name, block, type_size


def import_gguf() -> Any:
    """The ``gguf`` package, or a MissingDependencyError naming the extra that installs it."""
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError.for_extra("gguf", "engine", "Reading GGUF files") from None
    return gguf


__all__ = ["GGUF_MAGIC", "GGUFFile", "GGUFTensor", "import_gguf", "read_gguf"]
