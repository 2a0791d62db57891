"""Image generation for the evaluation (tipo.eval.images) on tiny random SD 1.5 and SDXL
pipelines saved as diffusers folders, loaded by path as real models are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from eval_tiny_diffusion import make_tiny_sd_pipeline, make_tiny_sdxl_pipeline
from tipo.errors import (
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
)
from tipo.eval import image_pipeline, images
from tipo.eval.image_pipeline import SCHEDULERS
from tipo.eval.images import (
    SDXL_PAPER,
    ImageGenerator,
    ImageJob,
    ImageSettings,
    read_image_metadata,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


def tiny_settings(model: Path | str, **changes) -> ImageSettings:
    options = {"width": 64, "height": 64, "steps": 2, "batch_size": 2, **changes}
    return ImageSettings(model=str(model), **options)


def make_jobs(folder: Path, count: int) -> list[ImageJob]:
    prompts = ["the cat", "a dog, scenery", "3 birds!", "the sea", "a tree"]
    return [
        ImageJob(folder / f"{i}.png", prompts[i % len(prompts)], seed=1000 + i)
        for i in range(count)
    ]


def pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def test_paper_preset() -> None:
    assert (SDXL_PAPER.model, SDXL_PAPER.width, SDXL_PAPER.height) == (
        "stabilityai/stable-diffusion-xl-base-1.0",
        1024,
        1024,
    )
    assert (SDXL_PAPER.steps, SDXL_PAPER.guidance, SDXL_PAPER.scheduler) == (16, 3.0, "euler")


def test_import_is_cheap() -> None:
    heavy = "{'torch', 'diffusers', 'PIL'}"
    code = f"import sys, tipo.eval.images; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdxl_writes_pngs_with_a1111_parameters_and_tipo_metadata(
    tiny_sdxl: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tiny_sdxl)
    long_prompt = "a " * 100  # 100 tokens + BOS/EOS: beyond CLIP's 77, diffusers truncates
    jobs = [
        ImageJob(tmp_path / "out" / "fox.png", "a red fox", 7, {"expander": "tipo", "id": "3"}),
        ImageJob(tmp_path / "out" / "long.png", long_prompt, 2**63 - 1),
    ]
    with ImageGenerator(settings) as generator:
        assert generator.generate(jobs, progress=False) == 2
    from PIL import Image

    with Image.open(jobs[0].path) as image:
        assert image.size == (64, 64)
        parameters = image.text["parameters"]
    assert parameters == (
        f"a red fox\nSteps: 2, Sampler: Euler, CFG scale: 3.0, Seed: 7, Size: 64x64, "
        f"Model: {tiny_sdxl.name}"
    )
    record = read_image_metadata(jobs[0].path)
    assert record["prompt"] == "a red fox"
    assert record["seed"] == 7
    assert record["metadata"] == {"expander": "tipo", "id": "3"}
    assert record["settings"] == settings.recorded()
    assert "batch_size" not in record["settings"]
    assert record["pipeline"] == "StableDiffusionXLPipeline"
    assert record["scheduler_class"] == "EulerDiscreteScheduler"
    assert (record["device"], record["dtype"]) == ("cpu", "float32")
    # a</w> r e d</w> f o x</w> between BOS and EOS
    assert (record["prompt_tokens"], record["prompt_token_limit"]) == (9, 77)
    truncated = read_image_metadata(jobs[1].path)
    assert (truncated["prompt_tokens"], truncated["prompt_token_limit"]) == (102, 77)
    assert truncated["seed"] == 2**63 - 1


def test_sd15_loads_by_its_folder_without_the_safety_checker(
    tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny SD 1.5 folder's safety checker flags every image: were it on, all would be black.
    generator = ImageGenerator(tiny_settings(tiny_sd))
    assert generator.generate(make_jobs(tmp_path, 2), progress=True) == 2
    progress = capsys.readouterr()
    assert "images: 100%" in progress.err and "2/2" in progress.err
    assert progress.out == ""
    assert type(generator.pipeline).__name__ == "StableDiffusionPipeline"
    assert generator.pipeline.safety_checker is None
    for path in tmp_path.glob("*.png"):
        assert any(pixels(path)), f"{path.name} is black"
        assert read_image_metadata(path)["pipeline"] == "StableDiffusionPipeline"
    generator.close()
    assert generator._pipeline is None


def test_vae_folder_replaces_the_models_vae(tiny_sd: Path, tiny_sdxl: Path, tmp_path: Path) -> None:
    import torch

    settings = tiny_settings(tiny_sdxl, vae=str(tiny_sd / "vae"))
    generator = ImageGenerator(settings)
    job = ImageJob(tmp_path / "a.png", "桜, scenery", 5, {"original": "桜"})
    assert generator.generate([job], progress=False) == 1
    vae = generator.pipeline.vae.state_dict()
    from diffusers import AutoencoderKL

    wanted = AutoencoderKL.from_pretrained(tiny_sd / "vae").state_dict()
    assert all(torch.equal(vae[key], wanted[key]) for key in wanted)
    record = read_image_metadata(job.path)  # UTF-8 text survives (iTXt chunks)
    assert (record["prompt"], record["metadata"], record["settings"]["vae"]) == (
        "桜, scenery",
        {"original": "桜"},
        str(tiny_sd / "vae"),
    )


def test_a1111_parameters_golden() -> None:
    settings = ImageSettings(
        model="/models/kohaku-xl-zeta.safetensors",
        width=1024,
        height=832,
        scheduler="dpmpp_2m_sde",
        negative_prompt="lowres, bad anatomy",
        vae="madebyollin/sdxl-vae-fp16-fix",
    )
    job = ImageJob(Path("x.png"), "1girl, scenery\nsecond line", 42)
    text = images._a1111_parameters(settings, job, SCHEDULERS["dpmpp_2m_sde"].sampler)
    assert text == (
        "1girl, scenery\nsecond line\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 16, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 3.0, "
        "Seed: 42, Size: 1024x832, Model: kohaku-xl-zeta, VAE: sdxl-vae-fp16-fix"
    )
    zero = ImageSettings(model="C:/models/a,b", guidance=0.0)
    assert images._a1111_parameters(zero, ImageJob(Path("x.png"), "p", 0), "Euler") == (
        'p\nSteps: 16, Sampler: Euler, CFG scale: 0.0, Seed: 0, Size: 1024x1024, Model: "a,b"'
    )


def test_resume_generates_only_missing_files(tiny_sd: Path, tmp_path: Path) -> None:
    generator = ImageGenerator(tiny_settings(tiny_sd))
    jobs = make_jobs(tmp_path, 3)
    assert generator.generate(jobs, progress=False) == 3
    before = {job.path: job.path.read_bytes() for job in jobs}
    mtimes = {job.path: job.path.stat().st_mtime_ns for job in jobs}
    jobs[1].path.unlink()
    assert generator.generate(jobs, progress=False) == 1
    assert generator.generate(jobs, progress=False) == 0
    for job in jobs:
        assert job.path.read_bytes() == before[job.path]  # the same seed: the same file
    assert [mtimes[j.path] == j.path.stat().st_mtime_ns for j in jobs] == [True, False, True]


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m_sde"])
def test_an_image_does_not_depend_on_its_batch(
    tiny_sd: Path, tmp_path: Path, scheduler: str
) -> None:
    """Each image's starting noise and (euler_a, SDE) step noise come from its own generator.
    Batched float32 kernels may still round differently: a pixel may move by one level."""
    import numpy as np

    made = {}
    for batch_size in (1, 3):
        jobs = make_jobs(tmp_path / str(batch_size), 3)
        settings = tiny_settings(tiny_sd, batch_size=batch_size, scheduler=scheduler)
        ImageGenerator(settings).generate(jobs, progress=False)
        made[batch_size] = [np.frombuffer(pixels(job.path), np.uint8).astype(int) for job in jobs]
    for alone, batched in zip(made[1], made[3], strict=True):
        assert np.abs(alone - batched).max() <= 1
        assert np.count_nonzero(alone - batched) <= 0.001 * alone.size
    # Other seeds and prompts: other images (a shared noise would make them close).
    assert np.abs(made[1][0] - made[1][1]).mean() > 10


def test_scheduler_names_map_to_diffusers_schedulers(tiny_sd: Path) -> None:
    import diffusers

    own = diffusers.EulerDiscreteScheduler.from_pretrained(tiny_sd / "scheduler")
    expected = {
        "default": ("EulerDiscreteScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
        "dpmpp_2m_sde": (
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True},
        ),
    }
    assert set(SCHEDULERS) == set(expected)
    for name, (cls, config) in expected.items():
        scheduler = image_pipeline._scheduler(SCHEDULERS[name], own, diffusers)
        assert type(scheduler).__name__ == cls, name
        assert {key: scheduler.config[key] for key in config} == config, name
        assert scheduler.config.beta_schedule == "scaled_linear"  # the model's noise schedule


def test_flow_matching_models_keep_their_euler(tiny_sd: Path) -> None:
    import diffusers

    flow = diffusers.FlowMatchEulerDiscreteScheduler()
    assert image_pipeline._scheduler(SCHEDULERS["euler"], flow, diffusers) is flow
    assert image_pipeline._scheduler(SCHEDULERS["default"], flow, diffusers) is flow
    with pytest.raises(InvalidRequestError, match="DPM"):
        image_pipeline._scheduler(SCHEDULERS["dpmpp_2m"], flow, diffusers)


def test_unknown_scheduler_lists_the_names() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ImageSettings(scheduler="dpm_fast")
    assert all(name in caught.value.hint for name in SCHEDULERS)


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 0},
        {"width": 100},
        {"height": -8},
        {"width": 64.0},
        {"steps": 0},
        {"steps": True},
        {"batch_size": 0},
        {"guidance": -1.0},
        {"guidance": float("nan")},
        {"dtype": "float8"},
        {"model": ""},
        {"device": ""},
    ],
)
def test_bad_settings_are_refused(changes: dict) -> None:
    with pytest.raises(InvalidRequestError):
        ImageSettings(**changes)


def test_bad_jobs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError):
        ImageJob(tmp_path / "a.png", "x", seed=-1)
    twice = [ImageJob(tmp_path / "a.png", "x", 1), ImageJob(tmp_path / "a.png", "y", 2)]
    with pytest.raises(InvalidRequestError, match="same file"):
        ImageGenerator(tiny_settings("unused/model")).generate(twice, progress=False)


@pytest.mark.parametrize("device", ["gpu0", "cuda:1"])
def test_bad_device_is_refused_at_load(tiny_sd: Path, tmp_path: Path, device: str) -> None:
    if device == "cuda:1":
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("a GPU is present")
    generator = ImageGenerator(tiny_settings(tiny_sd, device=device))
    with pytest.raises(InvalidRequestError, match="device"):
        generator.generate(make_jobs(tmp_path, 1), progress=False)


@pytest.mark.parametrize(
    "model", ["/nonexistent/sdxl", "./no/such/folder", "/nonexistent/model.safetensors"]
)
def test_missing_model_gives_model_not_found_with_hint(tmp_path: Path, model: str) -> None:
    generator = ImageGenerator(tiny_settings(model))
    with pytest.raises(ModelNotFoundError) as caught:
        generator.generate(make_jobs(tmp_path, 1), progress=False)
    assert caught.value.hint and "path" in caught.value.hint
    assert not list(tmp_path.iterdir())


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Hub: fail at once (the Hub client reads this flag on every call) on an empty cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.usefixtures("offline_hub")
def test_uncached_hub_model_offline_gives_download_hint(tmp_path: Path) -> None:
    generator = ImageGenerator(tiny_settings("someone/not-a-cached-model"))
    with pytest.raises(ModelNotFoundError) as caught:
        generator.generate(make_jobs(tmp_path / "out", 1), progress=False)
    assert "hf download someone/not-a-cached-model" in caught.value.hint


def test_folder_without_model_index_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    generator = ImageGenerator(tiny_settings(tmp_path / "model"))
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        generator.generate(make_jobs(tmp_path, 1), progress=False)


def test_missing_diffusers_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_sd: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(MissingDependencyError) as caught:
        ImageGenerator(tiny_settings(tiny_sd)).generate(make_jobs(tmp_path, 1), progress=False)
    assert "tipo-prompt[eval]" in caught.value.hint


def write_fake_checkpoint(path: Path, keys: list[str]) -> Path:
    import torch
    from safetensors.torch import save_file

    tensors = {key: torch.zeros(2) for key in keys}
    if path.suffix == ".ckpt":
        torch.save({"state_dict": tensors}, path)
    else:
        save_file(tensors, str(path))
    return path


SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
SD15_KEY = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
CONTROLNET_KEY = "control_model.time_embed.0.weight"


def test_single_file_kind_is_read_from_tensor_names(tmp_path: Path) -> None:
    sdxl = write_fake_checkpoint(tmp_path / "xl.safetensors", [SDXL_KEY])
    sd15 = write_fake_checkpoint(tmp_path / "v1.ckpt", [SD15_KEY])
    assert image_pipeline._single_file_kind(sdxl) == "xl_base"
    assert image_pipeline._single_file_kind(sd15) == "v1"
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        image_pipeline._single_file_kind(tmp_path / "junk.safetensors")


@pytest.mark.usefixtures("offline_hub")
def test_single_file_without_cached_configs_says_it_needs_them(tmp_path: Path) -> None:
    model = write_fake_checkpoint(tmp_path / "kohaku-xl.safetensors", [SDXL_KEY])
    generator = ImageGenerator(tiny_settings(model))
    with pytest.raises(ModelNotFoundError) as caught:
        generator.generate(make_jobs(tmp_path / "out", 1), progress=False)
    assert "config files" in caught.value.message
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in caught.value.hint


def test_single_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    model = write_fake_checkpoint(tmp_path / "control.safetensors", [CONTROLNET_KEY])
    generator = ImageGenerator(tiny_settings(model))
    with pytest.raises(CheckpointError, match="controlnet"):
        generator.generate(make_jobs(tmp_path / "out", 1), progress=False)


def test_interrupted_run_leaves_only_complete_pngs_and_resumes(
    monkeypatch: pytest.MonkeyPatch, tiny_sd: Path, tmp_path: Path
) -> None:
    generator = ImageGenerator(tiny_settings(tiny_sd, batch_size=2))
    jobs = make_jobs(tmp_path, 5)
    pipeline_class = type(generator.pipeline)
    real_call = pipeline_class.__call__
    calls = []

    def interrupted_after_first_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", interrupted_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        generator.generate(jobs, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png"]
    monkeypatch.setattr(pipeline_class, "__call__", real_call)
    assert generator.generate(jobs, progress=False) == 3
    assert all(read_image_metadata(job.path)["seed"] == job.seed for job in jobs)


def test_interrupted_write_leaves_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from PIL import Image

    def half_written(self, file, *args, **kwargs):
        file.write(b"\x89PNG\r\n\x1a\n partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", half_written)
    target = tmp_path / "deep" / "folder" / "image.png"
    with pytest.raises(KeyboardInterrupt):
        images._write_png(target, Image.new("RGB", (8, 8)), {"parameters": "x"})
    assert list(target.parent.iterdir()) == []  # no image, no temp file


def test_read_image_metadata_refuses_foreign_pngs(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(InvalidRequestError, match="no tipo_eval"):
        read_image_metadata(tmp_path / "plain.png")
    with pytest.raises(InvalidRequestError, match="cannot read"):
        read_image_metadata(tmp_path / "missing.png")
