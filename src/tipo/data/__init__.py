"""Training data for TIPO: raw dataset rows → the exact text samples TIPO was trained on.

Read in order: ``records`` (a raw row routed and parsed into a :class:`TrainingRecord`),
``samples`` (the recipe of docs/tipo-training.md §1 turning a record into a ``(user, output)``
pair), ``stats`` (how often each task, bucket and drop occurs, against the recipe).

This folder also holds package data (``tags.zlib``, ``NOTICE``) read through
``importlib.resources.files("tipo") / "data"``; making it a package does not change that path.
"""

from __future__ import annotations

from .batches import Example, count_tokens, encode_sample, pad_batch
from .records import TrainingRecord, parse_tag_list
from .samples import Sample, build_sample, sample_for
from .stats import EXPECTED, Frequency, distribution, format_table

__all__ = [
    "EXPECTED",
    "Example",
    "Frequency",
    "Sample",
    "TrainingRecord",
    "build_sample",
    "count_tokens",
    "distribution",
    "encode_sample",
    "format_table",
    "pad_batch",
    "parse_tag_list",
    "sample_for",
]
