"""Images for the evaluation: every prompt through a diffusers text-to-image pipeline, one PNG per
job, with the settings written into the file (docs/tipo-evaluation.md §4.1).

:data:`SDXL_PAPER` is the paper's setting: SDXL base 1.0, 1024x1024, 16 steps, CFG 3.0, Euler
(the 2025 code; the 2024 runs used ``dpmpp_2m_sde``). Each image has its own seeded generator,
so it does not depend on its batch mates, and :meth:`ImageGenerator.generate` skips the files
that exist, so an interrupted run resumes where it stopped. Writes are atomic.

Prompts longer than the CLIP text encoders' 77 tokens are truncated by diffusers (we keep that:
no prompt chunking). Every PNG records the prompt's token count and the limit of the pipeline's
first tokenizer (``prompt_tokens``, ``prompt_token_limit``: CLIP's for SD, SDXL, SD3 and Flux;
SD3 and Flux also give the prompt to a T5 encoder that reads further).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .image_pipeline import DTYPES, SCHEDULERS, SINGLE_FILE_SUFFIXES, load_pipeline

_SEED_MASK = 2**63 - 1


def _require(condition: bool, message: str, hint: str | None = None) -> None:
    if not condition:
        raise InvalidRequestError(message, hint=hint)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ImageSettings:
    """How images are made. ``model`` is a Hub id, a diffusers folder, or a single-file
    checkpoint (.safetensors/.ckpt); ``vae`` optionally replaces the model's VAE (e.g.
    madebyollin/sdxl-vae-fp16-fix). ``device``/``dtype`` "auto": cuda and float16 when
    available, else cpu and float32."""

    model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    width: int = 1024
    height: int = 1024
    steps: int = 16
    guidance: float = 3.0
    scheduler: str = "euler"
    negative_prompt: str = ""
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    vae: str | None = None

    def __post_init__(self) -> None:
        for name, step in (("width", 8), ("height", 8), ("steps", 1), ("batch_size", 1)):
            value, what = getattr(self, name), "a multiple of 8" if step == 8 else "an integer"
            _require(_is_int(value) and value > 0 and value % step == 0,
                     f"{name} must be {what} >= {step}, got {value!r}")  # fmt: skip
        guidance = self.guidance
        _require(isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance >= 0,
                 f"guidance must be a number >= 0, got {guidance!r}")  # fmt: skip
        for name, choices in (("scheduler", SCHEDULERS), ("dtype", DTYPES)):
            _require(getattr(self, name) in choices, f"unknown {name} {getattr(self, name)!r}",
                     hint=f"use one of: {', '.join(choices)}")  # fmt: skip
        for name in ("model", "device"):
            _require(bool(getattr(self, name)), f"no image {name} given")

    def recorded(self) -> dict[str, Any]:
        """The settings that can change the pixels, JSON-able. ``batch_size`` cannot (every
        image has its own generator), so it is left out."""
        return {key: value for key, value in asdict(self).items() if key != "batch_size"}


SDXL_PAPER = ImageSettings()


@dataclass(frozen=True)
class ImageJob:
    """One image: its file, prompt and seed (0..2**63-1; larger seeds are masked into that
    range), plus extra text to record (expander, test, prompt id, original prompt ...)."""

    path: Path
    prompt: str
    seed: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        _require(
            _is_int(self.seed) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}"
        )


class ImageGenerator:
    """Generates :class:`ImageJob` images with one diffusers pipeline, loaded on first use."""

    def __init__(self, settings: ImageSettings = SDXL_PAPER) -> None:
        self.settings = settings
        self._pipeline: Any = None
        self._about: dict[str, Any] = {}

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline (loads it on first use)."""
        if self._pipeline is None:
            self._pipeline, self._about = load_pipeline(self.settings)
        return self._pipeline

    def generate(self, jobs: Sequence[ImageJob], *, progress: bool = True) -> int:
        """Write the PNG of every job whose file does not exist yet; return how many."""
        paths = [job.path for job in jobs]
        _require(
            len(set(paths)) == len(paths),
            "two image jobs write the same file",
            hint="give every job its own path",
        )
        todo = [job for job in jobs if not job.path.exists()]
        if not todo:
            return 0
        from tqdm import tqdm

        pipeline, size = self.pipeline, self.settings.batch_size
        with tqdm(
            total=len(todo), desc="images", unit="image", file=sys.stderr, disable=not progress
        ) as bar:
            for start in range(0, len(todo), size):
                batch = todo[start : start + size]
                for job, image in zip(batch, self._images(pipeline, batch), strict=True):
                    _write_png(job.path, image, self._text_chunks(job))
                bar.update(len(batch))
        return len(todo)

    def close(self) -> None:
        """Free the pipeline (and the GPU memory it holds)."""
        if self._pipeline is not None:
            self._pipeline = None
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()  # a no-op without CUDA

    def __enter__(self) -> ImageGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _images(self, pipeline: Any, batch: Sequence[ImageJob]) -> list[Any]:
        import torch

        settings = self.settings
        # CPU generators: the same starting noise on every device.
        seeded = [torch.Generator("cpu").manual_seed(job.seed & _SEED_MASK) for job in batch]
        options: dict[str, Any] = {}
        if settings.negative_prompt:  # else each pipeline's default (SDXL: zero embeddings)
            options["negative_prompt"] = [settings.negative_prompt] * len(batch)
        result = pipeline(
            prompt=[job.prompt for job in batch],
            width=settings.width,
            height=settings.height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=seeded,
            **options,
        )
        return list(result.images)

    def _text_chunks(self, job: ImageJob) -> dict[str, str]:
        tokenizer = getattr(self._pipeline, "tokenizer", None)
        record = {
            "prompt": job.prompt,
            "seed": job.seed,
            "metadata": dict(job.metadata),
            "settings": self.settings.recorded(),
            **self._about,
            # diffusers truncates the prompt to the CLIP limit (tokens counted with BOS/EOS).
            "prompt_tokens": len(tokenizer(job.prompt).input_ids) if tokenizer else None,
            "prompt_token_limit": tokenizer.model_max_length if tokenizer else None,
        }
        return {
            "parameters": _a1111_parameters(self.settings, job, self._about["sampler"]),
            "tipo_eval": json.dumps(record, ensure_ascii=False),
        }


def read_image_metadata(path: Path) -> dict[str, Any]:
    """What :class:`ImageGenerator` recorded in a PNG: prompt, seed, job metadata, settings
    and the pipeline, scheduler and diffusers version that made it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", None) or image.info)
    except OSError as error:
        raise InvalidRequestError(f"cannot read the image {path}: {error}") from None
    try:
        return json.loads(text["tipo_eval"])
    except (KeyError, ValueError):
        raise InvalidRequestError(
            f"{path} has no tipo_eval metadata (not made by tipo eval)"
        ) from None


def _write_png(path: Path, image: Any, chunks: Mapping[str, str]) -> None:
    """Write through a temp file in the same folder and rename it, so an interrupt never
    leaves a partial PNG under the final name (a resume takes existing files as done)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)  # tEXt, or UTF-8 iTXt when the text is not Latin-1
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(temp, "xb") as file:
            image.save(file, format="PNG", pnginfo=info)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _a1111_parameters(settings: ImageSettings, job: ImageJob, sampler: str) -> str:
    """AUTOMATIC1111's "parameters" text, which its PNG Info tab and image viewers read."""
    model = Path(settings.model)
    fields = {
        "Steps": settings.steps,
        "Sampler": sampler,  # may carry its own "Schedule type: ..." field
        "CFG scale": settings.guidance,
        "Seed": job.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model": model.stem if model.suffix.lower() in SINGLE_FILE_SUFFIXES else model.name,
        "VAE": Path(settings.vae).name if settings.vae else None,
    }
    quoted = {
        k: v if k == "Sampler" else _quote(str(v)) for k, v in fields.items() if v is not None
    }
    negative = [f"Negative prompt: {settings.negative_prompt}"] if settings.negative_prompt else []
    return "\n".join([job.prompt, *negative, ", ".join(f"{k}: {v}" for k, v in quoted.items())])


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if re.search(r'[,:"\n]', value) else value


__all__ = [
    "SCHEDULERS",
    "SDXL_PAPER",
    "ImageGenerator",
    "ImageJob",
    "ImageSettings",
    "read_image_metadata",
]
