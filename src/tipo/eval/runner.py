"""``tipo eval run``: every stage of an evaluation, each skipping what an earlier run did.

prompts (prompt sets from the data) -> expansions (every expander on every prompt, cached per
expander settings and prompt) -> images (one PNG per test, expander and prompt, the prompt's
seed shared by all expanders) -> metrics (cached per item) -> report (report.py).

Run folder layout::

    prompts/<test>.jsonl              the inputs (id, tags, caption, seed)
    expansions/<test>/<expander>.jsonl  inputs and outputs, for reading
    images/<test>/<expander>/<id>.png   with prompt and settings in the PNG metadata
    cache/                            expansions, scores and feature vectors by content hash
    values/<test>.jsonl               every per-prompt metric value, per expander
    results.json, report.md, plots/   the report
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError, TipoError
from .cache import JsonlStore, cache_key
from .config import EvalConfig, TestConfig
from .expanders import Expander, make_expander
from .prompts import EvalPrompt, load_prompt_set

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXPAND_CHUNK = 32  # prompts per expander call between cache writes


@dataclass
class RunData:
    """What the stages produced, keyed by test name, then expander name."""

    prompts: dict[str, list[EvalPrompt]] = field(default_factory=dict)
    outputs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, dict[str, list[Path]]] = field(default_factory=dict)


def build_prompts(config: EvalConfig, folder: Path) -> dict[str, list[EvalPrompt]]:
    """Each test's prompt set, written to ``prompts/<test>.jsonl`` (read back when the test's
    settings are unchanged, so a rerun does not read the dataset again)."""
    prompts = {}
    for test in config.tests:
        path = folder / "prompts" / f"{test.name}.jsonl"
        key = cache_key("prompts", asdict(test))
        cached = _read_prompts(path, key)
        if cached is None:
            cached = load_prompt_set(
                test.data,
                test.kind,
                size=test.size,
                seed=test.seed,  # type: ignore[arg-type]
                scan=test.scan,
                name=test.name,
            )
            write_jsonl(path, [{"key": key}, *(asdict(p) for p in cached)])
        prompts[test.name] = cached
    return prompts


def _read_prompts(path: Path, key: str) -> list[EvalPrompt] | None:
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not lines or lines[0] != {"key": key}:
        return None
    return [EvalPrompt(**{**row, "tags": tuple(row["tags"])}) for row in lines[1:]]


def expand_all(config: EvalConfig, data: RunData, folder: Path, *, progress: bool) -> None:
    """Every expander on every test's prompts; only prompts missing from the cache are run."""
    store = JsonlStore(folder / "cache" / "expansions.jsonl")
    # All built first (models load on first use): a bad option fails before any work is done.
    expanders = [make_expander(name, table) for name, table in config.expanders.items()]
    for expander in expanders:
        name = expander.name
        data.settings[name] = expander.settings()
        try:
            for test, prompts in data.prompts.items():
                outputs = _expand_cached(expander, prompts, store, progress=progress)
                data.outputs.setdefault(test, {})[name] = outputs
                rows = [
                    {"id": p.id, "input": p.text, "output": o}
                    for p, o in zip(prompts, outputs, strict=True)
                ]
                write_jsonl(folder / "expansions" / test / f"{name}.jsonl", rows)
        finally:
            expander.close()


def _expand_cached(
    expander: Expander, prompts: Sequence[EvalPrompt], store: JsonlStore, *, progress: bool
) -> list[str]:
    settings = expander.settings()
    keys = [cache_key("expand", settings, p.tags, p.caption, p.seed) for p in prompts]
    missing = [i for i, k in enumerate(keys) if k not in store]
    with progress_bar(len(missing), f"expand {expander.name}", progress) as bar:
        for start in range(0, len(missing), EXPAND_CHUNK):
            chunk = missing[start : start + EXPAND_CHUNK]
            outputs = expander.expand([prompts[i] for i in chunk])
            if len(outputs) != len(chunk):
                raise TipoError(
                    f"expander {expander.name!r} returned {len(outputs)} outputs "
                    f"for {len(chunk)} prompts"
                )
            store.put_many((keys[i], out) for i, out in zip(chunk, outputs, strict=True))
            bar.update(len(chunk))
    return [str(store.get(k)) for k in keys]


def generate_all(config: EvalConfig, data: RunData, folder: Path, *, progress: bool) -> None:
    """One image per test, expander and prompt; tests may name their own image model."""
    from .images import ImageGenerator, ImageJob, ImageSettings

    assert config.images is not None
    by_model: dict[str, list[tuple[TestConfig, list[ImageJob]]]] = {}
    for test in config.tests:
        jobs = []
        for expander, outputs in data.outputs[test.name].items():
            paths = [
                folder / "images" / test.name / expander / f"{p.id}.png"
                for p in data.prompts[test.name]
            ]
            data.images.setdefault(test.name, {})[expander] = paths
            jobs += [
                ImageJob(
                    path,
                    out,
                    p.seed,
                    {
                        "test": test.name,
                        "expander": expander,
                        "prompt_id": p.id,
                        "original": p.text,
                    },
                )
                for path, out, p in zip(paths, outputs, data.prompts[test.name], strict=True)
            ]
        model = test.image_model or str(config.images.get("model", ImageSettings.model))
        by_model.setdefault(model, []).append((test, jobs))
    for model, groups in by_model.items():
        settings = _image_settings(config, model)
        generator = ImageGenerator(settings)
        try:
            generator.generate([job for _, jobs in groups for job in jobs], progress=progress)
        finally:
            generator.close()


def _image_settings(config: EvalConfig, model: str) -> Any:
    from .images import ImageSettings

    table = {**(config.images or {}), "model": model}
    table.setdefault("device", config.device)
    try:
        return ImageSettings(**table)
    except TypeError as error:
        raise InvalidRequestError(f"[images]: {error}") from None


def reference_images(test: TestConfig) -> list[Path]:
    """The real images a test's FDD compares with (sorted, so features align between runs)."""
    folder = test.reference_images
    if folder is None:
        return []
    if not folder.is_dir():
        raise InvalidRequestError(f"test {test.name!r}: reference_images {folder} is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(found) < 2:
        raise InvalidRequestError(f"test {test.name!r}: fewer than 2 images in {folder}")
    return found


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def progress_bar(total: int, description: str, enabled: bool, unit: str = "prompt") -> Any:
    """A tqdm bar on stderr (off when disabled or when there is nothing to do)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        disable=not enabled or total == 0,
        file=sys.stderr,
        unit=unit,
    )


__all__ = [
    "RunData",
    "build_prompts",
    "expand_all",
    "generate_all",
    "progress_bar",
    "reference_images",
    "write_jsonl",
]
