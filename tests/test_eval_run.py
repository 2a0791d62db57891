"""A whole ``tipo eval run`` with images, as CI runs it: two tests (one with reference
images for FDD), three expanders (the original, TIPO on the noise model, Promptist), a tiny
SDXL pipeline, tiny DINOv2/CLIP/SigLIP/corrupt/text models: every stage and metric, the report
and plots; then a rerun that does nothing new."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from checkpoints import llama_tokenizer_model
from eval_data import coyo_rows, danbooru_rows, write_jsonl
from eval_tiny_diffusion import make_tiny_sdxl_pipeline
from eval_tiny_lm import make_tiny_gpt2
from eval_tiny_text import make_tiny_sentence_transformer
from eval_tiny_vision import (
    make_tiny_aesthetic,
    make_tiny_clip,
    make_tiny_corrupt_classifier,
    make_tiny_dinov2,
)
from tipo.cli import main
from tipo.eval.cache import JsonlStore
from tipo.eval.images import read_image_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_folder(folder: Path, count: int = 6) -> Path:
    """Stand-ins for the real Danbooru scenery images FDD compares with."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval-run")
    models = folder / "models"
    write_jsonl(folder / "danbooru.jsonl", danbooru_rows(24))
    write_jsonl(folder / "coyo.jsonl", coyo_rows(16))
    encoder, head = make_tiny_aesthetic(models / "aesthetic")
    paths = {
        "sdxl": make_tiny_sdxl_pipeline(models / "sdxl"),
        "dinov2": make_tiny_dinov2(models / "dinov2"),
        "clip": make_tiny_clip(models / "clip"),
        "encoder": encoder,
        "head": head,
        "corrupt": make_tiny_corrupt_classifier(models / "corrupt"),
        "text": make_tiny_sentence_transformer(models / "text"),
        "gpt2": make_tiny_gpt2(models / "gpt2"),
        "reference": reference_folder(folder / "dan-scenery"),
    }
    text = f"""
[run]
output = "run"
device = "cpu"

[tests.scenery]
data = "danbooru.jsonl"
size = 4
reference_images = "{paths["reference"].name}"

[tests.short]
data = "coyo.jsonl"
size = 3

[expanders.original]

[expanders.tipo]
kind = "tipo"
backend = "noise"
model = "{llama_tokenizer_model()}"
options = {{ tag_length = "short", nl_length = "very_short" }}

[expanders.promptist]
kind = "promptist"
model = "{paths["gpt2"]}"
num_beams = 2
max_new_tokens = 12

[images]
model = "{paths["sdxl"]}"
width = 64
height = 64
steps = 2
batch_size = 3

[metrics]
dinov2 = "{paths["dinov2"]}"
clip = "{paths["clip"]}"
aesthetic_encoder = "{paths["encoder"]}"
aesthetic_head = "{paths["head"]}"
corrupt_folder = "{paths["corrupt"]}"
text_embedding = "{paths["text"]}"
bootstrap = 100
set_bootstrap = 10
grid_prompts = 2
"""
    path = folder / "eval.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_run_reports_every_metric_and_a_rerun_does_nothing_new(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "run", str(config), "--quiet"]) == 0
    report = capsys.readouterr().out
    run = config.parent / "run"
    document = json.loads((run / "results.json").read_text())
    for test, count in (("scenery", 4), ("short", 3)):
        assert document["tests"][test]["prompts"] == count
        for expander in ("original", "tipo", "promptist"):
            metrics = document["tests"][test]["expanders"][expander]["metrics"]
            assert {"clip", "aesthetic", "corrupt", "vendi"} <= set(metrics)
            assert 0 <= metrics["corrupt"]["value"] <= 1 and 1 <= metrics["vendi"]["value"] <= count
            assert metrics["aesthetic"]["low"] <= metrics["aesthetic"]["value"]
    scenery = document["tests"]["scenery"]["expanders"]
    assert all(scenery[e]["metrics"]["fdd"]["value"] > 0 for e in ("original", "tipo"))
    assert "fdd" not in document["tests"]["short"]["expanders"]["tipo"]["metrics"]  # no reference
    assert "## Images" in report and "scenery FDD ↓" in report and "## Text" in report

    image = run / "images/scenery/tipo/" / f"{_first_id(run)}.png"
    recorded = read_image_metadata(image)
    output = json.loads((run / "expansions/scenery/tipo.jsonl").read_text().splitlines()[0])
    assert recorded["prompt"] == output["output"] and recorded["metadata"]["expander"] == "tipo"
    original = read_image_metadata(run / "images/scenery/original" / image.name)
    assert original["seed"] == recorded["seed"]  # one seed per prompt, shared by the expanders
    for plot in ("scenery-grid.png", "scenery-metrics.png", "short-grid.png"):
        assert (run / "plots" / plot).stat().st_size > 1000

    times = {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")}
    sizes = [len(JsonlStore(run / "cache" / n)) for n in ("scores.jsonl", "vectors.jsonl")]
    assert main(["eval", "run", str(config), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "images").rglob("*.png")} == times
    assert [len(JsonlStore(run / "cache" / n)) for n in ("scores.jsonl", "vectors.jsonl")] == sizes
    again = json.loads((run / "results.json").read_text())
    assert again["tests"] == document["tests"]


def _first_id(run: Path) -> str:
    return json.loads((run / "prompts/scenery.jsonl").read_text().splitlines()[1])["id"]
