"""``run_eval``: the stages of runner.py, the metrics of scoring.py, the report and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import EvalConfig, TestConfig
from .plots import distribution_plot, image_grid
from .prompts import EvalPrompt
from .report import results_document, write_report
from .runner import (
    RunData,
    build_prompts,
    expand_all,
    generate_all,
    reference_images,
    write_jsonl,
)
from .scoring import Scorer
from .stats import Estimate, mean_estimate, set_estimate

Values = dict[str, list[float]]


def run_eval(config: EvalConfig, *, progress: bool = True, images: bool = True) -> dict[str, Any]:
    """Run what is missing of ``config`` and write its report into ``config.output``; returns
    the results document. ``images=False`` stops after the text metrics."""
    folder = config.output
    folder.mkdir(parents=True, exist_ok=True)
    data = RunData(prompts=build_prompts(config, folder))
    expand_all(config, data, folder, progress=progress)
    with_images = images and config.images is not None
    if with_images:
        generate_all(config, data, folder, progress=progress)
    scorer = Scorer(config.metrics, folder / "cache", device=config.device, progress=progress)
    estimates: dict[str, dict[str, dict[str, Estimate]]] = {}
    try:
        for test in config.tests:
            estimates[test.name] = _score_test(config, test, data, scorer, folder, with_images)
    finally:
        scorer.close()
    document = results_document(
        config.source, estimates, data.settings, {t: len(p) for t, p in data.prompts.items()}
    )
    write_report(document, folder)
    return document


def _score_test(
    config: EvalConfig,
    test: TestConfig,
    data: RunData,
    scorer: Scorer,
    folder: Path,
    with_images: bool,
) -> dict[str, dict[str, Estimate]]:
    metrics, prompts = config.metrics, data.prompts[test.name]
    reference = (
        _reference_features(test, scorer) if with_images and "fdd" in metrics.image else None
    )
    per_prompt: dict[str, Values] = {}
    estimates: dict[str, dict[str, Estimate]] = {}
    for expander, outputs in data.outputs[test.name].items():
        options = data.settings.get(expander, {}).get("options") or {}
        values = scorer.text_values(prompts, outputs, options.get("tag_length"))
        sets: dict[str, Estimate] = {}
        if "text_diversity" in metrics.text:
            sets["text_diversity"] = _diversity(scorer.text_vectors(outputs))
        if with_images:
            paths = data.images[test.name][expander]
            values.update(scorer.image_values(paths, [p.text for p in prompts]))
            sets.update(_image_sets(config, scorer, paths, reference))
        per_prompt[expander] = values
        estimates[expander] = {
            **{
                m: mean_estimate(
                    v, resamples=metrics.bootstrap, confidence=metrics.confidence, seed=config.seed
                )
                for m, v in values.items()
            },
            **sets,
        }
    write_jsonl(folder / "values" / f"{test.name}.jsonl", _value_rows(prompts, per_prompt))
    distribution_plot(test.name, per_prompt, folder / "plots" / f"{test.name}-metrics.png")
    if with_images:
        image_grid(
            test.name,
            data.images[test.name],
            [p.text for p in prompts],
            folder / "plots" / f"{test.name}-grid.png",
            prompts=metrics.grid_prompts,
        )
    return estimates


def _value_rows(
    prompts: Sequence[EvalPrompt], per_prompt: dict[str, Values]
) -> list[dict[str, Any]]:
    """One row per expander and prompt with its metric values (None: does not apply)."""
    return [
        {
            "expander": name,
            "id": prompt.id,
            **{m: v[i] if math.isfinite(v[i]) else None for m, v in values.items()},
        }
        for name, values in per_prompt.items()
        for i, prompt in enumerate(prompts)
    ]


def _reference_features(test: TestConfig, scorer: Scorer) -> np.ndarray | None:
    paths = reference_images(test)
    return scorer.image_features(paths) if paths else None


def _image_sets(
    config: EvalConfig, scorer: Scorer, paths: Sequence[Path], reference: np.ndarray | None
) -> dict[str, Estimate]:
    from .image_metrics import frechet_distance

    metrics = config.metrics
    if not {"fdd", "vendi"} & set(metrics.image):
        return {}
    features = scorer.image_features(paths)
    sets: dict[str, Estimate] = {}
    if "vendi" in metrics.image:
        sets["vendi"] = _diversity(features)
    if "fdd" in metrics.image and reference is not None and len(paths) >= 2:
        sets["fdd"] = set_estimate(
            lambda rows: frechet_distance(features[rows], reference),
            len(paths),
            resamples=metrics.set_bootstrap,
            confidence=metrics.confidence,
            seed=config.seed,
        )
    return sets


def _diversity(vectors: np.ndarray) -> Estimate:
    from .image_metrics import vendi_score

    return Estimate(float(vendi_score(vectors)), n=len(vectors))


__all__ = ["run_eval"]
