"""The report of a run: ``results.json``, ``report.md`` (the paper's layout: tests x expanders
x metrics, with bootstrap intervals) and PNG plots (per-prompt metric distributions per
expander; each test's image grid, the same prompts across expanders)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import IMAGE_METRICS, TEXT_METRICS
from .stats import Estimate

SCHEMA = "tipo-eval/1"


@dataclass(frozen=True)
class MetricInfo:
    label: str
    better: str | None  # "higher", "lower" or None (a count to read, not to rank)
    per: str  # "prompt": a mean over prompts; "set": one value for the whole prompt set
    meaning: str


METRICS: dict[str, MetricInfo] = {
    "fdd": MetricInfo(
        "FDD",
        "lower",
        "set",
        "Frechet distance of L2-normalised DINOv2 features to the test's real images",
    ),
    "aesthetic": MetricInfo("Aesthetic", "higher", "prompt", "Aesthetic Predictor v2.5, 1-10"),
    "corrupt": MetricInfo("AI corrupt", "higher", "prompt", "1 - P(corrupted), deepghs classifier"),
    "clip": MetricInfo("CLIP", "higher", "prompt", "cosine of image and ORIGINAL prompt"),
    "vendi": MetricInfo("Vendi img", "higher", "set", "diversity of the images (DINOv2)"),
    "tags": MetricInfo("tags", None, "prompt", "tag-like parts per prompt"),
    "tag_length_hit": MetricInfo("length hit", "higher", "prompt", "tag count inside the target"),
    "known_tags": MetricInfo("known tags", "higher", "prompt", "share of tags in the tag database"),
    "duplicate_tags": MetricInfo("duplicates", "lower", "prompt", "repeated tags per prompt"),
    "faithfulness": MetricInfo("faithful", "higher", "prompt", "embedding cosine to the input"),
    "text_diversity": MetricInfo("Vendi text", "higher", "set", "diversity of the prompts"),
}


def results_document(
    config_source: Mapping[str, Any],
    estimates: Mapping[str, Mapping[str, Mapping[str, Estimate]]],
    settings: Mapping[str, Any],
    prompt_counts: Mapping[str, int],
) -> dict[str, Any]:
    """The JSON report: ``tests[test]["expanders"][expander]["metrics"][metric]``."""
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config_source,
        "metrics": {name: info.__dict__ for name, info in METRICS.items()},
        "tests": {
            test: {
                "prompts": prompt_counts[test],
                "expanders": {
                    name: {
                        "settings": settings.get(name, {}),
                        "metrics": {m: e.to_dict() for m, e in metrics.items()},
                    }
                    for name, metrics in by_expander.items()
                },
            }
            for test, by_expander in estimates.items()
        },
    }


def markdown(document: Mapping[str, Any]) -> str:
    """Two tables (image metrics, text metrics): a row per expander, columns per test and
    metric; the best value of a column in bold; intervals in brackets."""
    tests = document["tests"]
    lines = [
        "# TIPO evaluation",
        "",
        f"Created {document['created']}; "
        + ", ".join(f"{t}: {v['prompts']} prompts" for t, v in tests.items())
        + ".",
        "",
    ]
    for title, order in (("Images", IMAGE_METRICS), ("Text", TEXT_METRICS)):
        table = _table(tests, order)
        if table:
            lines += [f"## {title}", "", *table, ""]
    lines += ["## Metrics", ""]
    lines += [
        f"- **{info.label}** ({'higher' if info.better == 'higher' else 'lower'} is better; "
        f"{'per prompt, mean' if info.per == 'prompt' else 'whole set'}): {info.meaning}"
        if info.better
        else f"- **{info.label}**: {info.meaning}"
        for info in METRICS.values()
    ]
    lines += [
        "",
        "Intervals: percentile bootstrap over the prompts; set diversities have none "
        "(resampling with replacement duplicates items).",
    ]
    return "\n".join(lines) + "\n"


def _table(tests: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    columns = [
        (t, m)
        for t, v in tests.items()
        for m in order
        if any(m in e["metrics"] for e in v["expanders"].values())
    ]
    if not columns:
        return []
    expanders = list(dict.fromkeys(e for v in tests.values() for e in v["expanders"]))
    arrow = {"higher": " ↑", "lower": " ↓", None: ""}
    header = [
        "expander",
        *(f"{t} {METRICS[m].label}{arrow[METRICS[m].better]}" for t, m in columns),
    ]
    rows = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    best = {c: _best(tests, *c) for c in columns}
    for name in expanders:
        cells = [name]
        for test, metric in columns:
            estimate = tests[test]["expanders"].get(name, {}).get("metrics", {}).get(metric)
            cells.append(
                _cell(
                    estimate,
                    bold=estimate is not None and estimate["value"] == best[(test, metric)],
                )
            )
        rows.append(f"| {' | '.join(cells)} |")
    return rows


def _best(tests: Mapping[str, Any], test: str, metric: str) -> float | None:
    better = METRICS[metric].better
    values = [
        e["metrics"][metric]["value"]
        for e in tests[test]["expanders"].values()
        if e["metrics"].get(metric, {}).get("value") is not None
    ]
    if better is None or len(set(values)) < 2:  # nothing to rank, or a tie of all
        return None
    return max(values) if better == "higher" else min(values)


def _cell(estimate: Mapping[str, Any] | None, *, bold: bool) -> str:
    if estimate is None or estimate["value"] is None:
        return "–"
    text = _number(estimate["value"])
    if bold:
        text = f"**{text}**"
    if estimate.get("low") is not None:
        text += f" [{_number(estimate['low'])}, {_number(estimate['high'])}]"
    return text


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def write_report(document: Mapping[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (folder / "report.md").write_text(markdown(document), encoding="utf-8")


__all__ = ["METRICS", "SCHEMA", "MetricInfo", "markdown", "results_document", "write_report"]
