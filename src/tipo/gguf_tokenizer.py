"""The training-time tokenizer of a bare TIPO GGUF file, rebuilt from the file's own vocabulary.

Users of the reference ComfyUI/WebUI extension have lone ``.gguf`` files with no tokenizer.model
beside them. We never tokenise with a GGUF's vocabulary the way llama.cpp would (protocol doc
§3), but a TIPO file's ``tokenizer.ggml.*`` metadata holds everything of the LLaMA
SentencePiece model that encoding reads: its 32000 pieces with their scores and types. So
``tokenizer_from_gguf`` serialises them into a SentencePiece ``ModelProto`` by hand (protobuf
wire format, no protobuf package needed) with the LLaMA-2 tokenizer's trainer and normalizer
settings, and adds the 13 TIPO tokens exactly as a released folder's tokenizer_config.json does.
The result encodes and decodes like ``TipoTokenizer.from_dir`` on the released folder
(tests/test_gguf_engine.py compares thousands of strings).

It is accepted only for the TIPO vocabulary: the LLaMA tokenizer's 32000 pieces, scores and
types (a SHA-256 over them; ids 0-2 by text only, since llama.cpp's converter may rewrite the
scores and types of ``<unk> <s> </s>``) followed by the 13 TIPO tokens in order. Anything else
is a CheckpointError asking for tokenizer.model beside the file. Nothing is logged.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .gguf_file import read_gguf
from .protocol import FIRST_TIPO_TOKEN_ID, LLAMA_CONTROL_TOKENS, TIPO_TOKENS
from .tokenizer import TipoTokenizer, settings_from_config

LLAMA_PIECES = FIRST_TIPO_TOKEN_ID  # 32000
# SHA-256 of the LLaMA tokenizer's pieces joined by NUL, then the float32 scores and int32 types
# of ids 3..31999 (see _vocabulary_digest), from ../shared/llama-tokenizer/tokenizer.model.
LLAMA_VOCAB_SHA256 = "7540d5467178b43a178745fa05563b1ca52be3de7c8589a42ceaea40f6b43b3e"
# SentencePiece piece types (the same numbers as gguf.TokenType).
_UNKNOWN, _CONTROL = 2, 3
_CONTROL_TYPES = (_UNKNOWN, _CONTROL, _CONTROL)  # <unk> <s> </s>
# ModelProto (sentencepiece_model.proto) field numbers: pieces, trainer_spec, normalizer_spec;
# inside a piece: piece, score, type.
_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC = 1, 2, 3
_PIECE, _SCORE, _TYPE = 1, 2, 3
# The LLaMA-2 tokenizer.model's TrainerSpec fields that encoding may read (the others describe
# its training run: corpus, sizes, seeds, threads). tests/test_gguf_engine.py checks them
# against the real file.
LLAMA_TRAINER_SPEC: tuple[tuple[int, bool | int | str], ...] = (
    (3, 2),  # model_type: BPE
    (4, LLAMA_PIECES),  # vocab_size
    (20, 16),  # max_sentencepiece_length
    (21, True),  # split_by_unicode_script
    (22, True),  # split_by_whitespace
    (23, True),  # split_by_number
    (24, False),  # treat_whitespace_as_suffix
    (25, True),  # split_digits
    (26, True),  # allow_whitespace_only_pieces
    (35, True),  # byte_fallback
    (40, 0),  # unk_id
    (41, 1),  # bos_id
    (42, 2),  # eos_id
    (43, -1),  # pad_id: none
    (44, " \u2047 "),  # unk_surface
    (45, "<unk>"),  # unk_piece
    (46, "<s>"),  # bos_piece
    (47, "</s>"),  # eos_piece
    (48, "<pad>"),  # pad_piece
)
LLAMA_NORMALIZER_SPEC: tuple[tuple[int, bool | int | str], ...] = (
    (1, "identity"),  # name: no Unicode normalisation
    (3, True),  # add_dummy_prefix (TipoTokenizer switches it off, as for any tokenizer.model)
    (4, False),  # remove_extra_whitespaces
    (5, True),  # escape_whitespaces: " " -> "▁"
)
_NO_TOKENIZER_HINT = (
    "copy tokenizer.model, tokenizer_config.json, special_tokens_map.json and added_tokens.json "
    "from the model's Hugging Face folder next to the .gguf file"
)


def tokenizer_from_gguf(path: str | Path) -> TipoTokenizer:
    """The TIPO tokenizer of a GGUF file without tokenizer.model: SentencePiece model rebuilt
    from the file's LLaMA pieces, the 13 TIPO tokens added as in the released folders, the
    special token ids and add_bos/add_eos from the file's ``tokenizer.ggml.*`` metadata.
    Raises CheckpointError when the vocabulary is not TIPO's."""
    path = Path(path)
    metadata = read_gguf(path).metadata
    tokens, scores, types = _tipo_vocabulary(path, metadata)
    proto = sentencepiece_model(tokens, scores, types)
    return TipoTokenizer.from_model_proto(proto, settings_from_config(_released_config(metadata)))


def sentencepiece_model(
    pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> bytes:
    """A serialized SentencePiece ``ModelProto``: these pieces (with scores and types) and the
    LLaMA-2 tokenizer's trainer and normalizer settings."""
    parts = [
        _message(_PIECES, _field(_PIECE, p) + _field(_SCORE, float(s)) + _field(_TYPE, int(t)))
        for p, s, t in zip(pieces, scores, types, strict=True)
    ]
    parts.append(_message(_TRAINER_SPEC, _fields(LLAMA_TRAINER_SPEC)))
    parts.append(_message(_NORMALIZER_SPEC, _fields(LLAMA_NORMALIZER_SPEC)))
    return b"".join(parts)


# --- the TIPO vocabulary -----------------------------------------------------------------------


def _tipo_vocabulary(
    path: Path, metadata: Mapping[str, Any]
) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of the LLaMA pieces of the file (ids 0-2 as in the LLaMA
    tokenizer), or a CheckpointError saying why the vocabulary is not TIPO's."""
    tokens, scores, types = (_list(metadata, f"tokenizer.ggml.{key}")
                             for key in ("tokens", "scores", "token_type"))  # fmt: skip
    reason = _not_tipo(metadata.get("tokenizer.ggml.model"), tokens, scores, types)
    if reason:
        raise CheckpointError(
            f"no tokenizer for {path}: there is no tokenizer.model beside it, and the file's "
            f"vocabulary is not TIPO's ({reason}), so the tokenizer cannot be rebuilt from it",
            hint=_NO_TOKENIZER_HINT,
        )
    n = LLAMA_PIECES
    return tokens[:n], [0.0, 0.0, 0.0, *scores[3:n]], [*_CONTROL_TYPES, *types[3:n]]


def _list(metadata: Mapping[str, Any], key: str) -> list[Any]:
    value = metadata.get(key)
    return value if isinstance(value, list) else []


def _not_tipo(model: Any, tokens: list[Any], scores: list[Any], types: list[Any]) -> str:
    """Why these ``tokenizer.ggml.*`` values are not the TIPO vocabulary ("" if they are)."""
    size = LLAMA_PIECES + len(TIPO_TOKENS)
    if model != "llama":
        return f"tokenizer model {model!r}, not 'llama'"
    if not len(tokens) == len(scores) == len(types) == size:
        return f"{len(tokens)} tokens, {len(scores)} scores, {len(types)} types, not {size}"
    if tuple(tokens[LLAMA_PIECES:]) != TIPO_TOKENS:
        return f"ids {LLAMA_PIECES}-{size - 1} are not the 13 TIPO tokens"
    if tuple(tokens[:3]) != LLAMA_CONTROL_TOKENS:
        return "ids 0-2 are not <unk> <s> </s>"
    try:
        digest = _vocabulary_digest(tokens[:LLAMA_PIECES], scores, types)
    except (struct.error, TypeError, UnicodeEncodeError):
        return "malformed tokens, scores or types"
    if digest != LLAMA_VOCAB_SHA256:
        return f"its first {LLAMA_PIECES} pieces are not the LLaMA tokenizer's"
    return ""


def _vocabulary_digest(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> str:
    n = len(pieces)
    digest = hashlib.sha256("\0".join(pieces).encode())
    digest.update(struct.pack(f"<{n - 3}f", *scores[3:n]))
    digest.update(struct.pack(f"<{n - 3}i", *types[3:n]))
    return digest.hexdigest()


# tokenizer_config.json key -> tokenizer.ggml key and its default.
_NAMED_TOKENS = (
    ("bos_token", "bos_token_id", 1),
    ("eos_token", "eos_token_id", 2),
    ("unk_token", "unknown_token_id", 0),
    ("pad_token", "padding_token_id", None),
)


def _released_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json as transformers 4.44 wrote it for the released TIPO models (all
    added tokens special, no stripping), with the file's special tokens and BOS/EOS flags."""
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
             "special": True}  # fmt: skip
    added = [*enumerate(LLAMA_CONTROL_TOKENS),
             *enumerate(TIPO_TOKENS, start=FIRST_TIPO_TOKEN_ID)]  # fmt: skip
    config: dict[str, Any] = {
        "added_tokens_decoder": {str(i): {"content": t, **flags} for i, t in added},
        "additional_special_tokens": list(TIPO_TOKENS),
        "legacy": False,
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
    }
    tokens = metadata["tokenizer.ggml.tokens"]
    for name, key, default in _NAMED_TOKENS:
        token_id = metadata.get(f"tokenizer.ggml.{key}", default)
        if token_id is None:
            continue  # no pad token: the tokenizer pads with EOS, as the released models do
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokens):
            raise CheckpointError(f"the GGUF metadata has an invalid tokenizer.ggml.{key}")
        config[name] = tokens[token_id]
    return config


# --- protobuf wire format ----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 values: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, value: bool | int | float | str) -> bytes:
    """One field: varint (wire type 0) for bool/int/enum, fixed32 (5) for float, length-
    delimited (2) for a string."""
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, str):
        return _message(number, value.encode("utf-8"))
    return _varint(number << 3) + _varint(int(value))


def _fields(fields: Iterable[tuple[int, bool | int | str]]) -> bytes:
    return b"".join(_field(number, value) for number, value in fields)


def _message(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


__all__ = [
    "LLAMA_NORMALIZER_SPEC",
    "LLAMA_PIECES",
    "LLAMA_TRAINER_SPEC",
    "LLAMA_VOCAB_SHA256",
    "sentencepiece_model",
    "tokenizer_from_gguf",
]
