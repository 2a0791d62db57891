"""Text-side metrics: what an expanded prompt is, measured without an image model.

Per prompt: ``tags`` (tag-like parts), ``tag_length_hit`` (1 when that count is inside a length
target's range, protocol §5), ``known_tags`` (the share of those parts that exist in the tag
database), ``duplicate_tags`` (parts written more than once), ``faithfulness`` (cosine
similarity of the output's and the input's sentence embeddings). Per prompt set:
``text_diversity`` (the Vendi score of the outputs' embeddings).

A prompt is split into tags and prose line by line: a line of comma-separated parts, at least
half of them short (at most ``MAX_TAG_WORDS`` words) and none ending a sentence, is a tag list;
anything else is prose. That
reads TIPO's templates, Promptist's and MagicPrompt's comma lists and a chat model's paragraphs
alike, and it is the rule a user would apply by eye.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MissingDependencyError, ModelNotFoundError
from ..protocol import Length
from ..syntax import parse_attention
from ..tags import TagDatabase

MAX_TAG_WORDS = 5
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
_EXTRA_NETWORK = re.compile(r"<[^<>]+>")


@dataclass(frozen=True)
class PromptParts:
    tags: tuple[str, ...]
    prose: tuple[str, ...]  # lines of prose, as written


def split_prompt(text: str) -> PromptParts:
    """Tags (attention syntax and extra networks removed, lower-cased) and prose lines."""
    tags: list[str] = []
    prose: list[str] = []
    for line in text.splitlines():
        line = _EXTRA_NETWORK.sub("", line).strip()
        if not line or line.upper() == "BREAK":
            continue
        parts = [_plain(part) for part in line.split(",")]
        parts = [p for p in parts if p]
        if parts and _tag_list(parts):
            tags += parts
        else:
            prose.append(line)
    return PromptParts(tuple(tags), tuple(prose))


def _plain(part: str) -> str:
    text = "".join(piece for piece, _ in parse_attention(part.replace("BREAK", "")))
    return " ".join(text.split()).strip().lower()


def _tag_list(parts: list[str]) -> bool:
    """No sentence ends, and at least half the parts short: "a painting of a castle, trending
    on artstation, highly detailed" is a (bad) tag list, "A girl stands. She smiles." prose."""
    if any(_SENTENCE_END.search(part) for part in parts):
        return False
    return 2 * sum(len(part.split()) <= MAX_TAG_WORDS for part in parts) >= len(parts)


def tag_metrics(
    outputs: Sequence[str], db: TagDatabase, target: str | Length = Length.LONG
) -> dict[str, list[float]]:
    """``tags``, ``tag_length_hit``, ``known_tags`` (NaN without tags) and ``duplicate_tags``
    per output."""
    low, high = Length.parse(target).tag_range
    values: dict[str, list[float]] = {
        k: [] for k in ("tags", "tag_length_hit", "known_tags", "duplicate_tags")
    }
    for text in outputs:
        tags = [t.replace("_", " ") if len(t) >= 4 else t for t in split_prompt(text).tags]
        counts = Counter(tags)
        values["tags"].append(float(len(counts)))
        values["tag_length_hit"].append(float(low <= len(counts) <= high))
        known = [db.is_known(tag) for tag in counts]
        values["known_tags"].append(float(np.mean(known)) if known else float("nan"))
        values["duplicate_tags"].append(float(sum(n - 1 for n in counts.values())))
    return values


class TextEmbedder:
    """Sentence embeddings through sentence-transformers (a Hub id or a local folder)."""

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 32) -> None:
        self.model_name, self.batch_size = model, batch_size
        self.device = None if device == "auto" else device
        self._model = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[n, d] float64, L2-normalised."""
        if self._model is None:
            self._model = self._load()
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float64)

    def _load(self):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependencyError.for_extra(
                "sentence-transformers", "eval", "The text metrics"
            ) from None
        try:
            return SentenceTransformer(self.model_name, device=self.device)
        except OSError as error:
            raise ModelNotFoundError(
                f"cannot load the text embedding model {self.model_name!r}: {error}",
                hint="on a machine with network run `huggingface-cli download "
                f"{self.model_name}`, or set metrics.text_embedding to a local folder",
            ) from None


def faithfulness(outputs: np.ndarray, inputs: np.ndarray) -> list[float]:
    """Row-wise cosine similarity of L2-normalised embeddings [n, d]."""
    return [float(x) for x in np.sum(outputs * inputs, axis=1)]


__all__ = [
    "MAX_TAG_WORDS",
    "PromptParts",
    "TextEmbedder",
    "faithfulness",
    "split_prompt",
    "tag_metrics",
]
