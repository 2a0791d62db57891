"""Loading a diffusers text-to-image pipeline for the evaluation's images: a Hub id (the cache
first), a diffusers folder or a single-file checkpoint; the sampler by name; no safety checker;
diffusers' errors turned into ours with the command that fixes them."""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..errors import (
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    first_line,
)


class PipelineSpec(Protocol):
    """What loading needs of images.ImageSettings (a protocol, so this module does not import
    the one that imports it)."""

    model: str
    vae: str | None
    scheduler: str
    device: str
    dtype: str


class _Scheduler(NamedTuple):
    cls: str  # a diffusers scheduler class, built from the model's own scheduler config
    options: dict[str, Any]  # over the model's config (DPM++: solver_order 2 by default)
    sampler: str  # AUTOMATIC1111's name, for the PNG's "parameters"


_PLAIN_SIGMAS = dict.fromkeys(
    ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"), False
)
SCHEDULERS: dict[str, _Scheduler | None] = {
    "default": None,  # the model's own scheduler, as its folder configures it
    "euler": _Scheduler("EulerDiscreteScheduler", _PLAIN_SIGMAS, "Euler"),
    "euler_a": _Scheduler("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": _Scheduler(
        "DPMSolverMultistepScheduler",
        {**_PLAIN_SIGMAS, "algorithm_type": "dpmsolver++"},
        "DPM++ 2M",
    ),
    # The 2024 paper runs: k-diffusion's DPM++ 2M SDE with exponential sigmas. diffusers' SDE
    # variant has no eta parameter (it is 1; the paper used 0.35), so the noise differs.
    "dpmpp_2m_sde": _Scheduler(
        "DPMSolverMultistepScheduler",
        {**_PLAIN_SIGMAS, "algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True},
        "DPM++ 2M SDE, Schedule type: Exponential",
    ),
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# diffusers' names for the models in single-file checkpoints -> the pipeline that runs them.
_SINGLE_FILE_PIPELINES = {
    **dict.fromkeys(("v1", "v2"), "StableDiffusionPipeline"),
    **dict.fromkeys(("xl_base", "playground-v2-5"), "StableDiffusionXLPipeline"),
    **dict.fromkeys(("sd3", "sd35_medium", "sd35_large"), "StableDiffusion3Pipeline"),
    **dict.fromkeys(("flux-dev", "flux-schnell"), "FluxPipeline"),
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_pipeline(settings: PipelineSpec) -> tuple[Any, dict[str, Any]]:
    """The pipeline on its device, with the chosen scheduler and no safety checker, and what
    to record about it."""
    try:
        import diffusers
        import torch
    except ImportError:
        raise MissingDependencyError.for_extra("diffusers", "eval", "Generating images") from None
    device, dtype = _device_and_dtype(settings, torch)
    options: dict[str, Any] = {"torch_dtype": dtype}
    with warnings.catch_warnings():
        # Recent diffusers renamed torch_dtype to dtype; older ones know only torch_dtype,
        # which all accept (with this warning) until 1.0.
        warnings.filterwarnings("ignore", "`torch_dtype` is deprecated", FutureWarning)
        if settings.vae:
            options["vae"] = _load(diffusers.AutoencoderKL, settings.vae, options, "config.json")
        pipeline = _load(
            diffusers.AutoPipelineForText2Image, settings.model, options, "model_index.json"
        )
    # Evaluation images must not be blacked out: SD 1.x/2.x ship an NSFW checker that replaces
    # flagged images with black ones, which would corrupt every image metric.
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    choice = SCHEDULERS[settings.scheduler]
    pipeline.scheduler = _scheduler(choice, pipeline.scheduler, diffusers)
    pipeline.set_progress_bar_config(disable=True)  # one bar over images, in generate()
    about = {
        "pipeline": type(pipeline).__name__,
        "scheduler_class": type(pipeline.scheduler).__name__,
        "sampler": choice.sampler if choice else type(pipeline.scheduler).__name__,
        "diffusers": diffusers.__version__,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return pipeline.to(device), about


def _device_and_dtype(settings: PipelineSpec, torch: Any) -> tuple[str, Any]:
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InvalidRequestError(
            f"unknown device {device!r}", hint="use auto, cpu or cuda:N"
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            f"device {device!r}: CUDA is not available", hint="use auto or cpu"
        )
    if settings.dtype == "auto":
        return device, torch.float16 if kind == "cuda" else torch.float32
    return device, getattr(torch, settings.dtype)


def _scheduler(choice: _Scheduler | None, current: Any, diffusers: Any) -> Any:
    if choice is None:
        return current
    cls = getattr(diffusers, choice.cls)
    if cls in current.compatibles:
        return cls.from_config(current.config, **choice.options)
    if choice.cls == "EulerDiscreteScheduler" and "FlowMatchEuler" in type(current).__name__:
        return current  # flow-matching models (SD3, Flux): their scheduler is Euler already
    raise InvalidRequestError(
        f"the sampler {choice.sampler!r} does not work with this model's {type(current).__name__}",
        hint="use scheduler 'default' (the model's own) or 'euler'",
    )


def _load(cls: Any, spec: str, options: Mapping[str, Any], marker: str) -> Any:
    """``cls`` from a single file, a local folder (holding ``marker``) or a Hub id."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return _from_single_file(cls, path, options)
    if path.is_dir():
        if not (path / marker).is_file():
            raise CheckpointError(
                f"{spec} has no {marker}: not a diffusers folder",
                hint="give the folder that holds it, or a .safetensors/.ckpt file",
            )
        return _checked(lambda: cls.from_pretrained(path, **options), spec)
    if path.exists():
        raise CheckpointError(f"{spec} is not a diffusers folder or a .safetensors/.ckpt file")
    if not _HUB_ID.match(spec):
        raise ModelNotFoundError(
            f"no diffusers folder or checkpoint file at {spec!r}",
            hint="check the path, or give a Hub id like owner/name",
        )
    missing = f"no folder {spec}, and no Hub model {spec} in the cache or downloadable"
    hint = (
        f"where the Hub is reachable run `hf download {spec}` and copy the cache here, "
        "or download the model and give its folder"
    )
    with contextlib.suppress(ModelNotFoundError):  # the cache first: no network if it is there
        cached = functools.partial(cls.from_pretrained, spec, local_files_only=True, **options)
        return _checked(cached, spec, missing, hint)
    return _checked(functools.partial(cls.from_pretrained, spec, **options), spec, missing, hint)


def _from_single_file(cls: Any, path: Path, options: Mapping[str, Any]) -> Any:
    """A pipeline (or VAE) from one checkpoint file. diffusers builds it from the config files
    of the matching Hub model (SDXL base for an SDXL file), which must be cached or reachable."""
    if not path.is_file():
        raise ModelNotFoundError(f"no checkpoint file at {path}", hint="check the path")
    import diffusers
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    hint = "use a diffusers folder instead (config.json and weights)"
    if cls is diffusers.AutoPipelineForText2Image:  # else AutoencoderKL, as given
        kind = _single_file_kind(path)
        if kind not in _SINGLE_FILE_PIPELINES:
            raise CheckpointError(
                f"{path.name} holds a {kind!r} model, not a text-to-image model this runs",
                hint=f"known kinds: {', '.join(_SINGLE_FILE_PIPELINES)}",
            )
        cls = getattr(diffusers, _SINGLE_FILE_PIPELINES[kind])
        repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
        hint = (
            f'where the Hub is reachable run `hf download {repo} --include "*.json" "*.txt" '
            f'"*.model"` (configs only) and copy the cache here, or use a diffusers folder'
        )
    return _checked(
        lambda: cls.from_single_file(str(path), **options),
        str(path),
        missing=f"loading the single file {path} needs diffusers config files from the Hugging "
        "Face Hub, which are not in its cache and could not be downloaded",
        hint=hint,
    )


def _single_file_kind(path: Path) -> str:
    """diffusers' name for the model in a single-file checkpoint ("xl_base", "v1", ...), from
    its tensor names and shapes, without reading the weights."""
    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}  # noqa: SIM118
            tensors: Any = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        else:
            tensors = torch.load(path, map_location="meta", mmap=True, weights_only=True)
            while isinstance(tensors, dict) and "state_dict" in tensors:
                tensors = tensors["state_dict"]
    except Exception as error:  # any reader failure (header, pickle, zip) means the same
        raise CheckpointError(f"cannot read the checkpoint {path}: {error}") from None
    return infer_diffusers_model_type(tensors)


def _checked(load: Callable[[], Any], spec: str, missing: str = "", hint: str = "") -> Any:
    """``load()``, with diffusers' errors turned into ours: an OSError is a missing model
    (``missing``: the files are not there) or else a broken one; a ValueError a model that is
    not text-to-image."""
    try:
        return load()
    except OSError as error:
        reason = first_line(error)
        if missing:
            raise ModelNotFoundError(f"{missing} ({reason})", hint=hint) from None
        raise CheckpointError(f"cannot load {spec}: {reason}") from None
    except ValueError as error:  # e.g. a pipeline with no text-to-image variant
        raise CheckpointError(
            f"cannot load {spec} for text-to-image: {first_line(error)}"
        ) from None


__all__ = ["DTYPES", "SCHEDULERS", "SINGLE_FILE_SUFFIXES", "PipelineSpec", "load_pipeline"]
