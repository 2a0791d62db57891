"""PNG plots of a run (matplotlib, no display): how each per-prompt metric is distributed per
expander, and each test's image grid (the same prompts, a column per expander)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError
from .report import METRICS


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window, work without a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError.for_extra("matplotlib", "eval", "The plots") from None
    return plt


def distribution_plot(
    test: str, values: Mapping[str, Mapping[str, Sequence[float]]], path: Path
) -> Path | None:
    """One box plot per per-prompt metric, a box per expander: ``values[expander][metric]``."""
    metrics = [
        m for m in METRICS if METRICS[m].per == "prompt" and any(m in v for v in values.values())
    ]
    if not metrics:
        return None
    plt = _pyplot()
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    names = list(values)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        data = [[v for v in values[n].get(metric, []) if math.isfinite(v)] for n in names]
        axis.boxplot(data, showmeans=True)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
        better = METRICS[metric].better
        axis.set_title(
            f"{METRICS[metric].label}" + (f" ({better} is better)" if better else ""), fontsize=9
        )
    for axis in list(axes.flat)[len(metrics) :]:
        axis.axis("off")
    return _save(plt, figure, f"{test}: per-prompt metrics", path)


def image_grid(
    test: str,
    images: Mapping[str, Sequence[Path]],
    captions: Sequence[str],
    path: Path,
    *,
    prompts: int = 4,
) -> Path | None:
    """Rows: the first ``prompts`` prompts (their original text on the left); columns: the
    expanders' images of that prompt."""
    names = [n for n in images if images[n]]
    count = min(prompts, *(len(images[n]) for n in names)) if names else 0
    if count == 0:
        return None
    plt = _pyplot()
    from PIL import Image

    figure, axes = plt.subplots(
        count, len(names), figsize=(2.6 * len(names), 2.8 * count), squeeze=False
    )
    for row in range(count):
        for column, name in enumerate(names):
            axis = axes[row][column]
            with Image.open(images[name][row]) as image:
                axis.imshow(image.convert("RGB"))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=9)
            if column == 0:
                axis.set_ylabel(textwrap.fill(captions[row][:120], 28), fontsize=6)
    return _save(plt, figure, f"{test}: the same prompts across expanders", path)


def _save(plt: Any, figure: Any, title: str, path: Path) -> Path:
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["distribution_plot", "image_grid"]
