"""Every metric of a run, computed once: per-item values cached by content (cache.py).

An image's scores are keyed by its pixels' hash and the metric's settings, a text embedding by
the text and the model, so rerunning after adding an expander, or after an interrupt, only
computes what is new. Models load on first use and stay loaded for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..tags import TagDatabase
from .cache import JsonlStore, cache_key, file_digest
from .config import MetricsConfig
from .prompts import EvalPrompt
from .runner import progress_bar
from .text_metrics import TextEmbedder, faithfulness, tag_metrics

CHUNK = 64  # items per model call between cache writes: an interrupt loses at most this many


def _score(scorer: Any, with_text: bool, items: list[tuple[Path, str]]) -> Any:
    paths = [path for path, _ in items]
    if with_text:
        return scorer.score(paths, [text for _, text in items], progress=False)
    return scorer.score(paths, progress=False)


class Scorer:
    """The metrics of ``config`` for a run whose caches live in ``cache_dir``."""

    def __init__(
        self,
        config: MetricsConfig,
        cache_dir: Path,
        *,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        self.config, self.device, self.progress = config, device, progress
        self.scores = JsonlStore(cache_dir / "scores.jsonl")
        self.vectors = JsonlStore(cache_dir / "vectors.jsonl")
        self.tag_db = TagDatabase.bundled()
        self._models: dict[str, Any] = {}
        self._digests: dict[tuple[str, int, int], str] = {}

    # --- text ---------------------------------------------------------------------------

    def text_values(
        self, prompts: Sequence[EvalPrompt], outputs: Sequence[str], tag_length: str | None = None
    ) -> dict[str, list[float]]:
        """Per-prompt text metrics of one expander's outputs; ``tag_length`` is the target
        whose hits are counted (default: the config's)."""
        wanted = set(self.config.text)
        target = tag_length or self.config.tag_length
        values = {k: v for k, v in tag_metrics(outputs, self.tag_db, target).items() if k in wanted}
        if "faithfulness" in wanted:
            given = self.text_vectors([p.text for p in prompts])
            values["faithfulness"] = faithfulness(self.text_vectors(outputs), given)
        return values

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        model = self.config.text_embedding
        embedder = self._model("text", lambda: TextEmbedder(model, device=self.device))
        keys = [cache_key("text", model, text) for text in texts]
        return self._vectors(keys, list(texts), embedder.embed, "text embeddings")

    # --- images -------------------------------------------------------------------------

    def image_values(self, paths: Sequence[Path], texts: Sequence[str]) -> dict[str, list[float]]:
        """Per-image metrics: CLIP against ``texts`` (the original prompts), aesthetic, corrupt."""
        from . import image_metrics as im

        cfg, device = self.config, self.device
        scorers: dict[str, tuple[Callable[[], Any], tuple[Any, ...]]] = {
            "clip": (lambda: im.ClipScorer(cfg.clip, device=device), (cfg.clip,)),
            "aesthetic": (
                lambda: im.AestheticScorer(
                    cfg.aesthetic_encoder, cfg.aesthetic_head, device=device
                ),
                (cfg.aesthetic_encoder, cfg.aesthetic_head),
            ),
            "corrupt": (
                lambda: im.CorruptScorer(cfg.corrupt, folder=cfg.corrupt_folder),
                (cfg.corrupt, cfg.corrupt_folder),
            ),
        }
        items = list(zip(paths, texts, strict=True))
        digests = [self._digest(p) for p in paths]
        values = {}
        for metric in (m for m in scorers if m in cfg.image):
            make, settings = scorers[metric]
            scorer, with_text = self._model(metric, make), metric == "clip"
            keys = [
                cache_key(metric, settings, digest, text if with_text else None)
                for digest, (_, text) in zip(digests, items, strict=True)
            ]
            values[metric] = self._scores(keys, items, partial(_score, scorer, with_text), metric)
        return values

    def image_features(self, paths: Sequence[Path]) -> np.ndarray:
        """L2-normalised DINOv2 features [n, d] (FDD and image Vendi)."""
        from .image_metrics import DinoFeatures

        model = self.config.dinov2
        dino = self._model("dino", lambda: DinoFeatures(model, device=self.device))
        keys = [cache_key("dinov2", model, self._digest(p)) for p in paths]
        return self._vectors(
            keys, list(paths), lambda ps: dino.features(ps, progress=False), "DINOv2"
        )

    # --- caching ------------------------------------------------------------------------

    def _scores(
        self, keys: list[str], items: list[Any], compute: Callable[[list[Any]], Any], desc: str
    ) -> list[float]:
        self._fill(self.scores, keys, items, lambda chunk: [float(v) for v in compute(chunk)], desc)
        return [float(self.scores.get(k)) for k in keys]

    def _vectors(
        self, keys: list[str], items: list[Any], compute: Callable[[list[Any]], Any], desc: str
    ) -> np.ndarray:
        self._fill(
            self.vectors, keys, items, lambda chunk: np.asarray(compute(chunk)).tolist(), desc
        )
        return np.asarray([self.vectors.get(k) for k in keys], dtype=np.float64)

    def _fill(
        self,
        store: JsonlStore,
        keys: list[str],
        items: list[Any],
        compute: Callable[[list[Any]], list[Any]],
        desc: str,
    ) -> None:
        """Compute and store the values of the keys not in ``store``, a chunk at a time."""
        missing = list(dict.fromkeys(k for k in keys if k not in store))
        first = {k: items[i] for i, k in reversed(list(enumerate(keys)))}
        with progress_bar(len(missing), desc, self.progress, unit="item") as bar:
            for start in range(0, len(missing), CHUNK):
                chunk = missing[start : start + CHUNK]
                store.put_many(zip(chunk, compute([first[k] for k in chunk]), strict=True))
                bar.update(len(chunk))

    def _digest(self, path: Path) -> str:
        """An image's content hash, read once per run (the per-image scores and the DINOv2
        features both key on it); a file rewritten since (size, mtime) is read again."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def _model(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._models:
            self._models[name] = make()
        return self._models[name]

    def close(self) -> None:
        self._models.clear()


__all__ = ["Scorer"]
