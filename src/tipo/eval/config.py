"""An evaluation, as one TOML (or YAML/JSON) file: tests, expanders, images, metrics.

```toml
[run]
output = "runs/paper"        # the run folder, relative to this file
seed = 0

[tests.scenery]               # a name; kind is one of prompts.TEST_KINDS
kind = "scenery"
data = "danbooru-scenery.parquet"   # a .jsonl/.parquet file, datasets folder or Hub dataset id
size = 1000
reference_images = "dan-scenery/"   # real images: FDD against them (optional)
image_model = "KBlueLeaf/Kohaku-XL-Zeta"   # this test's image model (else [images] model)

[expanders.tipo]              # a name; kind is one of expanders.EXPANDER_KINDS
kind = "tipo"
model = "KBlueLeaf/TIPO-200M-ft"

[images]                      # omit to evaluate the text only; keys of images.ImageSettings
model = "stabilityai/stable-diffusion-xl-base-1.0"

[metrics]                     # the models and options of the metrics (MetricsConfig)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from ..protocol import Length
from ..train.config import read_config_file
from .prompts import TEST_KINDS

TEXT_METRICS = (
    "tags",
    "tag_length_hit",
    "known_tags",
    "duplicate_tags",
    "faithfulness",
    "text_diversity",
)
IMAGE_METRICS = ("fdd", "aesthetic", "corrupt", "clip", "vendi")  # the paper's column order


@dataclass(frozen=True)
class TestConfig:
    """One prompt set and what its images are compared with."""

    __test__ = False  # not a pytest test class despite the name
    name: str
    kind: str
    data: str
    size: int = 100
    seed: int = 0
    scan: int | None = None
    reference_images: Path | None = None
    image_model: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TEST_KINDS:
            raise InvalidRequestError(
                f"test {self.name!r}: unknown kind {self.kind!r}", hint=f"use one of {TEST_KINDS}"
            )
        if self.size < 1:
            raise InvalidRequestError(f"test {self.name!r}: size must be >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    """Which metrics, with which models (Hub ids or local paths; the paper's by default)."""

    text: tuple[str, ...] = TEXT_METRICS
    image: tuple[str, ...] = IMAGE_METRICS
    dinov2: str = "facebook/dinov2-base"
    clip: str = "openai/clip-vit-large-patch14-336"
    aesthetic_encoder: str = "google/siglip-so400m-patch14-384"
    aesthetic_head: str | None = None
    corrupt: str = "caformer_s36_v0_focal"
    corrupt_folder: str | None = None
    text_embedding: str = "sentence-transformers/all-mpnet-base-v2"
    tag_length: str = "long"  # the target whose hit rate tag_length_hit counts
    bootstrap: int = 1000  # resamples for the confidence intervals of means
    set_bootstrap: int = 100  # resamples for FDD's interval (each one a matrix square root)
    confidence: float = 0.95
    grid_prompts: int = 4  # prompts shown in each test's image grid

    def __post_init__(self) -> None:
        for kind, names, valid in (
            ("text", self.text, TEXT_METRICS),
            ("image", self.image, IMAGE_METRICS),
        ):
            unknown = sorted(set(names) - set(valid))
            if unknown:
                raise InvalidRequestError(
                    f"unknown {kind} metric(s) {unknown}", hint=f"use some of {valid}"
                )
        Length.parse(self.tag_length)
        if not 0.5 <= self.confidence < 1:
            raise InvalidRequestError("metrics.confidence must be in [0.5, 1)")
        if self.bootstrap < 0 or self.set_bootstrap < 0:
            raise InvalidRequestError("bootstrap counts must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    output: Path
    tests: tuple[TestConfig, ...]
    expanders: Mapping[str, Mapping[str, Any]]
    images: Mapping[str, Any] | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 0
    device: str = "auto"
    source: dict[str, Any] = field(default_factory=dict)  # the file's values, for the report


def load_config(path: str | Path) -> EvalConfig:
    """Read and check an evaluation config; paths in it are relative to its folder."""
    file = Path(path)
    values = read_config_file(file)
    base = file.resolve().parent
    unknown = sorted(set(values) - {"run", "tests", "expanders", "images", "metrics"})
    if unknown:
        raise InvalidRequestError(
            f"{file}: unknown section(s) {unknown}",
            hint="sections: run, tests, expanders, images, metrics",
        )
    run = _table(values, "run")
    _only(run, {"output", "seed", "device"}, "run")
    tests = tuple(_test(name, table, base) for name, table in _table(values, "tests").items())
    expanders = {
        name: dict(_table({"t": t}, "t")) for name, t in _table(values, "expanders").items()
    }
    if not tests or not expanders:
        raise InvalidRequestError(f"{file}: needs at least one [tests.NAME] and [expanders.NAME]")
    images = values.get("images")
    if images is not None:
        images = _localised(dict(_table(values, "images")), base, ("model", "vae"))
        _check_images(images)
    metrics = _localised(dict(_table(values, "metrics")), base, _METRIC_PATHS)
    _only(metrics, {f.name for f in fields(MetricsConfig)}, "metrics")
    for key in ("text", "image"):
        if key in metrics:
            metrics[key] = tuple(metrics[key])
    return EvalConfig(
        output=base / str(run.get("output", "eval-run")),
        tests=tests,
        expanders=expanders,
        images=images,
        metrics=MetricsConfig(**metrics),
        seed=int(run.get("seed", 0)),
        device=str(run.get("device", "auto")),
        source=values,
    )


_METRIC_PATHS = (
    "dinov2",
    "clip",
    "aesthetic_encoder",
    "aesthetic_head",
    "corrupt_folder",
    "text_embedding",
)


def _check_images(table: Mapping[str, Any]) -> None:
    """[images] checked now, not after hours of expansion: its keys are ImageSettings'."""
    from .images import ImageSettings

    _only(table, {f.name for f in fields(ImageSettings)}, "images")
    ImageSettings(**table)


def _test(name: str, table: Any, base: Path) -> TestConfig:
    table = dict(_table({name: table}, name))
    _only(table, {f.name for f in fields(TestConfig)} - {"name"}, f"tests.{name}")
    if "data" not in table:
        raise InvalidRequestError(f"test {name!r} needs data = a file, folder or dataset id")
    table = _localised(table, base, ("data", "image_model"))
    if table.get("reference_images"):
        table["reference_images"] = base / str(table["reference_images"])
    kind = table.pop("kind", name)
    return TestConfig(name=name, kind=kind, **table)


def _localised(table: dict[str, Any], base: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Relative paths that exist next to the config file become absolute; anything else
    (a Hub id) stays as written."""
    for key in keys:
        value = table.get(key)
        if isinstance(value, str) and value and (base / value).exists():
            table[key] = str(base / value)
    return table


def _table(values: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    table = values.get(key, {})
    if not isinstance(table, Mapping):
        raise InvalidRequestError(f"[{key}] must be a table, got {type(table).__name__}")
    return table


def _only(table: Mapping[str, Any], valid: set[str], where: str) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        raise InvalidRequestError(
            f"[{where}]: unknown key(s) {unknown}", hint=f"valid: {', '.join(sorted(valid))}"
        )


__all__ = [
    "IMAGE_METRICS",
    "TEXT_METRICS",
    "EvalConfig",
    "MetricsConfig",
    "TestConfig",
    "load_config",
]
