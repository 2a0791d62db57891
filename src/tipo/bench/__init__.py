"""``tipo bench``: every engine side by side in one run, and the quality of each weight format.

Reading order: sections.py (the sections, their rows, what is skipped and why) -> headline.py
(the first table: time to a finished prompt for the common requests on every engine, the
reference path included) -> workload.py (the requests and sampling every speed row decodes) ->
decode.py (our engine and the transformers reference, timed; the share of a step outside the
weight GEMMs) -> llamacpp.py (GGUF files in llama.cpp, timed and compared) -> quality.py (each
weight format against fp32 on a small trained model) -> requests.py (whole requests through the
pipeline: forward passes per token, the retry loop) -> system.py (peak RSS, bandwidth, the
machine, fresh processes) -> report.py.

Nothing here is imported by the engine or the backends; names load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "BenchOptions": "sections",
    "run": "sections",
    "format_report": "report",
    "write_random_checkpoint": "decode",
    "time_decode": "decode",
    "quality_report": "quality",
    "make_trained_checkpoint": "quality",
    "peak_rss_mb": "system",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
