"""``tipo eval``: the TIPO paper's evaluation (docs/tipo-evaluation.md) as one command.

Reading order: ``prompts.py`` (the prompt sets), ``expanders.py`` and ``baselines.py`` (who
rewrites the prompts), ``config.py`` (the TOML file), ``runner.py`` (the stages and the run
folder), ``images.py`` (diffusers), ``text_metrics.py`` and ``image_metrics.py`` (the metrics),
``scoring.py`` (computing them once, cached), ``stats.py`` (bootstrap intervals),
``evaluate.py`` (``run_eval``), ``report.py`` and ``plots.py`` (the output), ``cli.py``.

Importing this package is cheap: torch, diffusers and the metric libraries load when a stage
needs them.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "EvalConfig": "config",
    "MetricsConfig": "config",
    "TestConfig": "config",
    "load_config": "config",
    "run_eval": "evaluate",
    "Expander": "expanders",
    "OriginalPrompt": "expanders",
    "TipoExpander": "expanders",
    "make_expander": "expanders",
    "EvalPrompt": "prompts",
    "build_prompt_set": "prompts",
    "load_prompt_set": "prompts",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
