"""Token ids exactly as the TIPO models saw them in training.

The released TIPO checkpoints were trained on ids from transformers 4.44's *slow* SentencePiece
``LlamaTokenizer`` with ``legacy=False`` and ``add_bos_token=True``, plus 13 added special tokens
(``<|empty|>`` ... ``<|gen_meta|>``, ids 32000..32012). Other ways of tokenising the same text give
other ids, and the model then reads sequences it never saw (protocol doc §3):

* ``legacy=True`` gives every text segment after a special token its own dummy "▁" prefix, so
  ``target: <|long|> <|tag_to_long|>`` gets ``259`` ("▁▁") between the two tokens;
* transformers 5 loading a folder with only ``tokenizer.model`` adds no BOS;
* llama.cpp may or may not treat the 13 tokens as special when it tokenises text.

So we tokenise ourselves, on every backend, with the ``sentencepiece`` package alone and the
rules of that slow tokenizer:

1. ``legacy=False``: every "▁" in the text becomes a space and one "▁" is put in front of the
   whole text; the SentencePiece model is loaded with ``add_dummy_prefix`` off.
2. The text is cut around added tokens (leftmost, longest match first), honouring each token's
   ``lstrip``/``rstrip``/``single_word``.
3. Each piece of plain text is encoded by SentencePiece. With ``legacy=False`` a piece that starts
   with a space is encoded as ``"<unk>" + piece`` and the ids of ``"<unk>"`` are dropped, so the
   leading space is kept as "▁" whatever the SentencePiece version; with ``legacy=True`` every
   piece gets the dummy prefix.
4. ``legacy=False``: a lone leading "▁" before a special token is dropped. BOS/EOS are added.

Decoding is the exact concatenation of the pieces (no space is dropped at the start), because
the pipeline appends the decoded continuation to the prompt text.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import CheckpointError, InvalidRequestError, MissingDependencyError, ModelNotFoundError
from .protocol import TIPO_TOKENS

SPIECE_UNDERLINE = "▁"
# Serialized protobuf: top-level field 3 (normalizer_spec) holding field 3 (add_dummy_prefix) = 0.
# Protobuf merges a repeated message field, so appending it to a ModelProto only switches the
# dummy prefix off: the same model transformers builds with protobuf, without needing protobuf.
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# What the released TIPO tokenizer_config.json says (protocol doc §3).
TIPO_TRAINING_CONFIG: Mapping[str, Any] = MappingProxyType(
    {"legacy": False, "add_bos_token": True, "add_eos_token": False}
)
# transformers' SPECIAL_TOKENS_ATTRIBUTES order (it decides the ids of special tokens not in the
# vocabulary), without ``additional_special_tokens``.
NAMED_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


@dataclass(frozen=True)
class AddedToken:
    """A token cut out of the text before SentencePiece runs (transformers' ``AddedToken``).

    ``lstrip``/``rstrip`` make the token eat the whitespace on its left/right; ``single_word``
    only matches it between spaces.
    """

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    special: bool = True


@dataclass(frozen=True)
class TokenizerSettings:
    """Everything besides ``tokenizer.model`` that decides the ids (``tokenizer_config.json``).

    ``added_tokens`` maps ids to added tokens; the special tokens not in it are resolved against
    the vocabulary when the tokenizer is built, as transformers does.
    """

    legacy: bool = False
    add_bos: bool = True
    add_eos: bool = False
    add_prefix_space: bool = True
    split_special_tokens: bool = False
    keep_dummy_prefix: bool = False  # transformers' ``from_slow``
    # ``bos_token`` ... ``mask_token``; LlamaTokenizer's defaults unless the files say otherwise.
    named_tokens: Mapping[str, AddedToken] = field(
        default_factory=lambda: {
            "bos_token": AddedToken("<s>"),
            "eos_token": AddedToken("</s>"),
            "unk_token": AddedToken("<unk>"),
        }
    )
    additional_special_tokens: tuple[AddedToken, ...] = ()
    added_tokens: Mapping[int, AddedToken] = field(default_factory=dict)

    @property
    def special_tokens(self) -> tuple[AddedToken, ...]:
        """transformers' ``all_special_tokens_extended``: unique by text, in attribute order."""
        named = (self.named_tokens.get(key) for key in NAMED_TOKEN_KEYS)
        unique: dict[str, AddedToken] = {}
        for token in (*named, *self.additional_special_tokens):
            if token is not None and token.content:
                unique.setdefault(token.content, token)
        return tuple(unique.values())


class TipoTokenizer:
    """The TIPO tokenizer: LLaMA SentencePiece + added tokens, ids identical to training."""

    def __init__(self, processor: Any, settings: TokenizerSettings) -> None:
        """Use :meth:`from_dir` or :meth:`from_sentencepiece`; ``processor`` is a loaded
        ``sentencepiece.SentencePieceProcessor`` matching ``settings`` (dummy prefix off unless
        legacy), and every special token of ``settings`` is in ``settings.added_tokens``."""
        self._sp = processor
        self.settings = settings
        self._sp_size: int = processor.get_piece_size()
        self._added: dict[str, int] = {t.content: i for i, t in settings.added_tokens.items()}
        self._specials = frozenset(t.content for t in settings.special_tokens)
        self._splitter = _added_token_pattern(settings)
        self._has_strip_rules = any(
            t.lstrip or t.rstrip or t.single_word for t in settings.added_tokens.values()
        )
        self._remap = _piece_collisions(processor, self._added)
        self._unk_text = self._named("unk_token").content
        self._unk_len = len(processor.encode(self._unk_text))
        hidden = _control_ids(processor)
        self._special_ids = frozenset(hidden) | frozenset(settings.added_tokens)
        self._tables = _decode_tables(processor, settings.added_tokens, hidden, self.vocab_size)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_sentencepiece(
        cls,
        model_file: str | Path,
        added_tokens: Sequence[str] = TIPO_TOKENS,
        legacy: bool = False,
        add_bos: bool = True,
        add_eos: bool = False,
    ) -> TipoTokenizer:
        """Like ``LlamaTokenizer(model_file, legacy=..., add_bos_token=...)`` followed by
        ``add_tokens(added_tokens, special_tokens=True)``: new tokens get ids 32000, 32001, ..."""
        proto = _read_model(Path(model_file))
        settings = TokenizerSettings(legacy=legacy, add_bos=add_bos, add_eos=add_eos)
        processor = _load_processor(proto, keep_dummy_prefix=legacy)
        settings = _add_new_tokens(_resolve_specials(settings, processor), added_tokens, processor)
        return cls(processor, settings)

    @classmethod
    def from_dir(cls, path: str | Path) -> TipoTokenizer:
        """Load a Hugging Face checkpoint folder the way transformers 4.44 loads a slow
        ``LlamaTokenizer`` from it. A folder without added tokens gets the 13 TIPO tokens."""
        directory = Path(path)
        if not directory.is_dir():
            raise ModelNotFoundError(f"no checkpoint folder at {directory}")
        proto = _read_model(directory / "tokenizer.model")
        return cls.from_model_proto(proto, read_settings(directory))

    @classmethod
    def from_model_proto(cls, proto: bytes, settings: TokenizerSettings) -> TipoTokenizer:
        """From a serialized SentencePiece ``ModelProto`` (the bytes of a tokenizer.model) and
        the settings of the files beside it (:func:`read_settings`, :func:`settings_from_config`),
        exactly as :meth:`from_dir` loads a folder."""
        processor = _load_processor(proto, settings.legacy or settings.keep_dummy_prefix)
        settings = _resolve_specials(settings, processor)
        if max(settings.added_tokens, default=-1) < processor.get_piece_size():
            settings = _add_new_tokens(settings, TIPO_TOKENS, processor)
        return cls(processor, settings)

    # --- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces plus added tokens (32013 for TIPO)."""
        return max(self._sp_size, max(self.settings.added_tokens, default=-1) + 1)

    @property
    def bos_id(self) -> int:
        return self.token_to_id(self._named("bos_token").content)

    @property
    def eos_id(self) -> int:
        return self.token_to_id(self._named("eos_token").content)

    @property
    def unk_id(self) -> int:
        return self.token_to_id(self._named("unk_token").content)

    @property
    def pad_id(self) -> int:
        """The pad token if the files name one, else EOS (the released TIPO models pad with 2)."""
        pad = self.settings.named_tokens.get("pad_token")
        return self.token_to_id(pad.content) if pad is not None else self.eos_id

    @property
    def special_ids(self) -> frozenset[int]:
        """SentencePiece control and unknown pieces, plus every added token."""
        return self._special_ids

    def _named(self, key: str) -> AddedToken:
        token = self.settings.named_tokens.get(key)
        if token is None:
            raise CheckpointError(f"the tokenizer files define no {key}")
        return token

    def token_to_id(self, token: str) -> int:
        """Id of an added token or a SentencePiece piece (``"▁scenery"``, ``"<0x0A>"``)."""
        if token in self._added:
            return self._added[token]
        piece_id: int = self._sp.piece_to_id(token)
        if piece_id == self._sp.unk_id() and token != self._sp.id_to_piece(piece_id):
            raise InvalidRequestError(f"{token!r} is not in the vocabulary")
        return piece_id

    def id_to_piece(self, token_id: int) -> str:
        """The added token's text or the SentencePiece piece (with "▁", not spaces)."""
        self._check_ids([token_id])
        added = self.settings.added_tokens.get(token_id)
        return added.content if added is not None else self._sp.id_to_piece(token_id)

    # --- encoding -------------------------------------------------------------------------

    def encode(
        self, text: str, add_bos: bool | None = None, add_eos: bool | None = None
    ) -> list[int]:
        """Token ids of ``text``; BOS/EOS as the tokenizer files say unless overridden."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"can only tokenize str, not {type(text).__name__}")
        ids = self._tokenize(text)
        if self.settings.add_bos if add_bos is None else add_bos:
            ids.insert(0, self.bos_id)
        if self.settings.add_eos if add_eos is None else add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_fragment(self, text: str) -> list[int]:
        """Ids of ``text`` as it appears inside a longer text: no BOS and no prefix "▁"; a
        leading space stays "▁" (`` long hair`` after a comma). Decode-time constraints use it
        to force field keys and to build the tag vocabulary's token paths."""
        return _flatten(self._encode_segments(self._split(text.replace(SPIECE_UNDERLINE, " "))))

    def _tokenize(self, text: str) -> list[int]:
        """transformers' ``tokenize`` + ``convert_tokens_to_ids``, without BOS/EOS."""
        if self.settings.legacy or not text:
            return _flatten(self._encode_segments(self._split(text)))
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.settings.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        segments = self._split(text)
        parts = self._encode_segments(segments)
        ids = _flatten(parts)
        # The prefix "▁" would stand alone in front of a special token: transformers drops it.
        if len(ids) > 1 and self._lone_prefix(segments, parts):
            del ids[0]
        return ids

    def _split(self, text: str) -> list[str]:
        """Cut ``text`` into plain-text pieces and added tokens (no empty strings)."""
        if self._splitter is None:
            return [text] if text else []
        segments = [s for s in self._splitter.split(text) if s]
        if self._has_strip_rules:
            segments = _apply_strip_rules(segments, self._added, self.settings.added_tokens)
        return [s for s in segments if s]

    def _encode_segments(self, segments: Iterable[str]) -> list[list[int]]:
        return [[self._added[s]] if s in self._added else self._encode_text(s) for s in segments]

    def _encode_text(self, text: str) -> list[int]:
        """SentencePiece ids of one piece of plain text (transformers' ``_tokenize``)."""
        if self.settings.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            ids = self._sp_encode(text)
        else:
            # Some SentencePiece versions drop a leading space when the dummy prefix is off;
            # after "<unk>" it is always kept as "▁". The ids of "<unk>" are cut off again.
            ids = self._sp_encode(self._unk_text + text)
            ids = ids[self._unk_len :] if len(ids) >= self._unk_len else ids
        return [self._remap.get(i, i) for i in ids] if self._remap else ids

    def _sp_encode(self, text: str) -> list[int]:
        try:
            return self._sp.encode(text)  # type: ignore[no-any-return]
        except RuntimeError as error:  # pybind11 cannot pass lone surrogates to C++
            raise InvalidRequestError(
                "text cannot be tokenized (not valid Unicode?)",
                hint="pass text that encodes as UTF-8 (no lone surrogates)",
            ) from error

    def _lone_prefix(self, segments: Sequence[str], parts: Sequence[list[int]]) -> bool:
        first, second = self._first_token_texts(segments, parts)
        return first == SPIECE_UNDERLINE and second in self._specials

    def _first_token_texts(
        self, segments: Sequence[str], parts: Sequence[list[int]]
    ) -> list[str | None]:
        """Texts of the first two tokens as transformers sees them (None: unknown piece)."""
        texts: list[str | None] = []
        for segment, ids in zip(segments, parts, strict=True):
            if segment in self._added:
                texts.append(segment)
            else:
                texts.extend(self._piece_text(i) for i in ids[:2])
            if len(texts) >= 2:
                break
        return texts[:2]

    def _piece_text(self, token_id: int) -> str | None:
        added = self.settings.added_tokens.get(token_id)
        if added is not None:
            return added.content
        return None if self._sp.is_unknown(token_id) else self._sp.id_to_piece(token_id)

    # --- decoding -------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Exact text of ``ids``: "▁" is a space (a leading one too), byte pieces are merged
        into UTF-8, BOS/EOS/UNK vanish, added tokens appear as their text unless
        ``skip_special``. Broken UTF-8 becomes U+FFFD."""
        ids = list(ids)
        self._check_ids(ids)
        table = self._tables[1 if skip_special else 0]
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        """An incremental decoder: feed ids one at a time, get the new text."""
        return StreamDecoder(self, skip_special=skip_special)

    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """The UTF-8 bytes a token adds to the text (part of a character for byte pieces)."""
        self._check_ids([token_id])
        return self._tables[1 if skip_special else 0][token_id]

    def _check_ids(self, ids: Sequence[int]) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise InvalidRequestError(
                f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})"
            )

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"TipoTokenizer(vocab_size={self.vocab_size}, legacy={s.legacy}, "
            f"add_bos={s.add_bos}, add_eos={s.add_eos})"
        )


class StreamDecoder:
    """Text of a growing token sequence, piece by piece.

    ``push(id)`` returns only the new text; bytes of a character split over several byte-fallback
    tokens are held back until the character is complete. The concatenation of all returned
    strings plus ``finish()`` equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: TipoTokenizer, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id, self._skip_special))

    def extend(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def finish(self) -> str:
        """Flush held-back bytes (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


# --- helpers: SentencePiece ---------------------------------------------------------------------


def _read_model(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(
            f"no tokenizer.model at {path}",
            hint="a TIPO checkpoint folder needs the LLaMA SentencePiece file tokenizer.model; "
            "download the whole model repository",
        )
    return path.read_bytes()


def _load_processor(proto: bytes, keep_dummy_prefix: bool) -> Any:
    try:
        import sentencepiece
    except ImportError:
        raise MissingDependencyError.for_extra("sentencepiece", "engine", "Tokenization") from None
    data = proto if keep_dummy_prefix else proto + _NO_DUMMY_PREFIX
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(
            f"tokenizer.model is not a SentencePiece model: {error}",
            hint="re-download tokenizer.model",
        ) from error


def _piece_collisions(processor: Any, added: Mapping[str, int]) -> dict[int, int]:
    """SentencePiece ids whose piece text is an added token with another id: transformers maps
    piece texts through the added tokens first (never the case for TIPO)."""
    remap = {}
    for content, token_id in added.items():
        piece_id = processor.piece_to_id(content)
        is_piece = processor.id_to_piece(piece_id) == content
        if is_piece and piece_id != token_id:
            remap[piece_id] = token_id
    return remap


def _control_ids(processor: Any) -> set[int]:
    """Ids of ``<s>``, ``</s>``, ``<unk>``: pieces that never stand for text."""
    ids = list(range(processor.get_piece_size()))
    flags = zip(ids, processor.is_control(ids), processor.is_unknown(ids), strict=True)
    return {i for i, control, unknown in flags if control or unknown}


def _decode_tables(
    processor: Any, added: Mapping[int, AddedToken], hidden: set[int], size: int
) -> tuple[list[bytes], list[bytes]]:
    """Bytes of every id: (added tokens as text, added tokens as nothing)."""
    ids = list(range(processor.get_piece_size()))
    pieces = zip(ids, processor.id_to_piece(ids), processor.is_byte(ids), strict=True)
    plain = [b""] * size
    for i, piece, is_byte in pieces:
        if i not in hidden:
            plain[i] = _piece_bytes(piece, is_byte)
    skipping = list(plain)
    for token_id, token in added.items():
        if token_id not in hidden:
            plain[token_id] = token.content.encode()
            skipping[token_id] = b""
    return plain, skipping


def _piece_bytes(piece: str, is_byte: bool) -> bytes:
    match = _BYTE_PIECE.fullmatch(piece) if is_byte else None
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(SPIECE_UNDERLINE, " ").encode()


def _flatten(parts: Iterable[list[int]]) -> list[int]:
    return [i for part in parts for i in part]


# --- helpers: added tokens ----------------------------------------------------------------------


def _added_token_pattern(settings: TokenizerSettings) -> re.Pattern[str] | None:
    """A regex that finds added tokens leftmost-first, longest-first.

    transformers cuts with a trie; for tokens in which no token's first character appears past
    the first position (``<s>``, ``<|long|>``, ...), at most one partial match is alive at a time
    and the trie's result is exactly this leftmost-longest match. Other token sets hit corner
    cases of that trie, so we refuse them instead of guessing.
    """
    contents = sorted({t.content for t in settings.added_tokens.values() if t.content}, key=len)
    if settings.split_special_tokens or not contents:
        return None
    starts = {c[0] for c in contents}
    clash = next((c for c in contents if starts.intersection(c[1:])), None)
    if clash is not None:
        raise CheckpointError(
            f"added token {clash!r} contains the first character of an added token",
            hint="such overlapping added tokens are not supported by this tokenizer",
        )
    alternatives = "|".join(re.escape(c) for c in reversed(contents))
    return re.compile(f"({alternatives})")


def _apply_strip_rules(
    segments: list[str], added: Mapping[str, int], tokens: Mapping[int, AddedToken]
) -> list[str]:
    """``lstrip``/``rstrip`` eat whitespace next to a token; ``single_word`` glues a token that
    touches a word back onto it. Same order and quirks as transformers' loop."""
    for i, segment in enumerate(segments):
        if segment not in added:
            continue
        token = tokens[added[segment]]
        left = segments[i - 1] if i > 0 else None
        right = segments[i + 1] if i < len(segments) - 1 else None
        if token.rstrip and right:
            segments[i + 1] = right.lstrip()
        if token.lstrip and left:
            segments[i - 1] = left.rstrip()
        if token.single_word and left and left[-1] != " ":
            segments[i - 1] += segment
            segments[i] = ""
        elif token.single_word and right and right[0] != " ":
            segments[i + 1] = segment + segments[i + 1]
            segments[i] = ""
    return segments


def _vocab(processor: Any, added: Mapping[int, AddedToken]) -> dict[str, int]:
    """transformers' ``get_vocab()``: pieces by id (added tokens win), then added tokens."""
    pieces = processor.id_to_piece(list(range(processor.get_piece_size())))
    vocab = {added[i].content if i in added else p: i for i, p in enumerate(pieces)}
    vocab.update({t.content: i for i, t in sorted(added.items())})
    return vocab


def _register(
    tokens: Iterable[AddedToken],
    added: Mapping[int, AddedToken],
    processor: Any,
    keep_existing: bool,
) -> dict[int, AddedToken]:
    """transformers' ``_add_tokens``: a known text keeps its id, a new one goes at the end.

    transformers skips a token given as a string if it is already added (``keep_existing``) but
    re-registers token objects (the named special tokens), which replaces the entry's flags.
    """
    result = dict(added)
    vocab = _vocab(processor, result)
    next_id = len(vocab)
    texts = {t.content for t in result.values()}
    for token in tokens:
        if not token.content or (keep_existing and token.content in texts):
            continue
        token_id = vocab.get(token.content)
        if token_id is None:
            token_id = vocab[token.content] = next_id
            next_id += 1
        result[token_id] = token
        texts.add(token.content)
    return result


def _resolve_specials(settings: TokenizerSettings, processor: Any) -> TokenizerSettings:
    """Special tokens become added tokens (what ``PreTrainedTokenizer.__init__`` does)."""
    specials = [replace(t, special=True) for t in settings.special_tokens]
    added = _register(specials, settings.added_tokens, processor, keep_existing=False)
    return replace(settings, added_tokens=added)


def _add_new_tokens(
    settings: TokenizerSettings, contents: Sequence[str], processor: Any
) -> TokenizerSettings:
    """``tokenizer.add_tokens(contents, special_tokens=True)``."""
    tokens = [AddedToken(c) for c in contents]
    added = _register(tokens, settings.added_tokens, processor, keep_existing=True)
    known = {t.content for t in settings.special_tokens}
    extra = tuple(t for t in tokens if t.content not in known)
    return replace(
        settings,
        added_tokens=added,
        additional_special_tokens=settings.additional_special_tokens + extra,
    )


# --- helpers: reading a checkpoint folder ------------------------------------------------------


def read_settings(directory: Path) -> TokenizerSettings:
    """Tokenizer settings from ``tokenizer_config.json`` and, when that has no
    ``added_tokens_decoder``, ``special_tokens_map.json``, ``added_tokens.json`` and the added
    tokens of ``tokenizer.json`` (the order transformers 4.44 reads them in)."""
    config_file = directory / "tokenizer_config.json"
    # No config at all: TIPO's training settings (transformers would fall back to legacy=True).
    config = _read_json(config_file) if config_file.is_file() else dict(TIPO_TRAINING_CONFIG)
    return settings_from_config(config, directory)


def settings_from_config(
    config: Mapping[str, Any], directory: Path | None = None
) -> TokenizerSettings:
    """Tokenizer settings from the contents of a ``tokenizer_config.json``. Without an
    ``added_tokens_decoder`` in it, the other files of ``directory`` list the added tokens
    (:func:`read_settings`); with one, ``directory`` is not needed."""
    try:
        return _settings_from_config(directory, dict(config))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"cannot understand the tokenizer files in {directory or 'the checkpoint'}: {error!r}",
            hint="re-download tokenizer_config.json and the other tokenizer files",
        ) from error


def _settings_from_config(directory: Path | None, config: dict[str, Any]) -> TokenizerSettings:
    if "added_tokens_decoder" in config:
        added = {int(i): _token(spec) for i, spec in config["added_tokens_decoder"].items()}
    elif directory is None:
        raise ValueError("the tokenizer config has no added_tokens_decoder")
    else:
        config = _merge_special_map(config, _read_json(directory / "special_tokens_map.json"))
        added = _legacy_added_tokens(directory, config)
    legacy = config.get("legacy")
    return TokenizerSettings(
        legacy=True if legacy is None else bool(legacy),  # transformers: unset means legacy
        add_bos=bool(config.get("add_bos_token", True)),
        add_eos=bool(config.get("add_eos_token", False)),
        add_prefix_space=bool(config.get("add_prefix_space", True)),
        split_special_tokens=bool(config.get("split_special_tokens", False)),
        keep_dummy_prefix=bool(config.get("from_slow", False)),
        named_tokens=_named_tokens(config, added),
        additional_special_tokens=_additional_tokens(config, added),
        added_tokens=added,
    )


def _named_tokens(
    config: Mapping[str, Any], added: Mapping[int, AddedToken]
) -> dict[str, AddedToken]:
    """bos/eos/unk/... tokens; one that is an added token takes that token's flags."""
    by_text = {t.content: t for t in added.values()}
    defaults = TokenizerSettings().named_tokens
    named = {}
    for key in NAMED_TOKEN_KEYS:
        spec = config.get(key, defaults[key].content if key in defaults else None)
        if spec:
            token = _token(spec, special=True)
            named[key] = by_text.get(token.content, token)
    return named


def _additional_tokens(
    config: Mapping[str, Any], added: Mapping[int, AddedToken]
) -> tuple[AddedToken, ...]:
    """``additional_special_tokens``: a plain string keeps an added token's flags."""
    by_text = {t.content: t for t in added.values()}
    specs = config.get("additional_special_tokens") or ()
    return tuple(
        by_text.get(spec, AddedToken(spec)) if isinstance(spec, str) else _token(spec, True)
        for spec in specs
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; an absent file reads as ``{}``."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}", hint="re-download the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", hint="re-download the file")
    return data


def _token(spec: str | Mapping[str, Any], special: bool | None = None) -> AddedToken:
    """An ``AddedToken`` from its JSON form: a string or a dict with ``content`` and flags."""
    if isinstance(spec, str):
        return AddedToken(spec, special=True if special is None else special)
    if not isinstance(spec, Mapping) or not isinstance(spec.get("content"), str):
        raise CheckpointError(f"bad added token {spec!r} in the tokenizer files")
    return AddedToken(
        spec["content"],
        lstrip=bool(spec.get("lstrip", False)),
        rstrip=bool(spec.get("rstrip", False)),
        single_word=bool(spec.get("single_word", False)),
        special=bool(spec.get("special", False)) if special is None else special,
    )


def _merge_special_map(config: dict[str, Any], special_map: Mapping[str, Any]) -> dict[str, Any]:
    """``special_tokens_map.json`` overrides the config; its additional tokens are appended."""
    merged = dict(config)
    for key, value in special_map.items():
        if key == "additional_special_tokens" and isinstance(value, list):
            tokens = list(merged.get("additional_special_tokens") or [])
            texts = {_token(t).content for t in tokens}
            tokens += [t for t in value if _token(t).content not in texts]
            value = tokens
        merged[key] = value
    return merged


def _legacy_added_tokens(directory: Path, config: Mapping[str, Any]) -> dict[int, AddedToken]:
    """Added tokens of ``added_tokens.json`` then ``tokenizer.json`` (later ids win)."""
    specials = {_token(config[k]).content for k in NAMED_TOKEN_KEYS if config.get(k)}
    specials |= {_token(t).content for t in config.get("additional_special_tokens") or ()}
    added = {
        int(i): AddedToken(text, special=text in specials)
        for text, i in _read_json(directory / "added_tokens.json").items()
    }
    fast = _read_json(directory / "tokenizer.json")
    for spec in fast.get("added_tokens") or ():
        added[int(spec["id"])] = _token(spec)
    return added


__all__ = [
    "AddedToken",
    "StreamDecoder",
    "TipoTokenizer",
    "TokenizerSettings",
    "read_settings",
    "settings_from_config",
]
