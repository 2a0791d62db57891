"""The whole-request headline of ``tipo bench`` (the rest of the bench: tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tipo.bench.headline import KINDS, fit_pass_cost, headline_rows


def test_the_reference_pass_cost_model_recovers_a_linear_cost() -> None:
    passes = [
        (p, t, 0.05 + 0.002 * p + 0.04 * t) for p, t in [(20, 5), (80, 30), (150, 1), (300, 60)]
    ]
    cost = fit_pass_cost(passes)
    assert cost(100, 10) == pytest.approx(0.05 + 0.2 + 0.4)


def test_headline_times_every_common_request_on_every_engine(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    gguf = {}
    try:
        import llama_cpp  # noqa: F401

        from tipo.convert import convert

        gguf["Q8_0"] = convert(tiny_checkpoint, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    except ImportError:
        pass
    rows = headline_rows(tiny_checkpoint, gguf, lengths=("short",), variants=(1, 3))
    assert [(r["request"], r["variants"]) for r in rows] == [(k, n) for k in KINDS for n in (1, 3)]
    engines = list(rows[0]["seconds"])
    assert engines == ["ours int8", "ours int8, token by token",
                       *(f"llama.cpp {q}" for q in gguf), "reference path"]  # fmt: skip
    assert all(t > 0 for r in rows for t in r["seconds"].values())
    assert all(n > 0 for r in rows for n in r["tokens"].values())
    assert set(rows[0]["tokens"]) == set(engines)
