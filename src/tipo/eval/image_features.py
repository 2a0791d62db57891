"""DINOv2 image features and the two distribution metrics over them (docs/tipo-evaluation.md
§4.2): FDD, the Fréchet distance between generated and reference features, and the Vendi score
of one set. Also the shared plumbing of every image metric: image loading, device choice,
batches with a progress bar and model loading with typed errors.

The paper's FDD and Vendi both read DINOv2 ViT-B/14 through ``torch.hub``; here the same
weights come through transformers' ``Dinov2Model`` (``facebook/dinov2-base``), whose final-norm
CLS token (``pooler_output``) is the hub model's output. One known difference: the hub model
resizes its position embeddings to the 16x16 patch grid with a scale factor and a 0.1 offset,
transformers with the target size, so features differ in the last digits.

Heavy libraries (torch, transformers, torchmetrics, vendi-score, PIL, tqdm) are imported in the
functions that need them; a missing one raises :class:`MissingDependencyError` naming the
``eval`` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, Union

import numpy as np

from ..errors import (
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    first_line,
)

if TYPE_CHECKING:
    from PIL import Image

ImageInput = Union[Path, str, "Image.Image"]

# DINOv2's preprocessing in the paper's FDD and Vendi scripts: bicubic 224x224, ImageNet stats.
DINO_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

T = TypeVar("T")


def require(module: str, package: str, feature: str) -> ModuleType:
    """``module`` imported, or :class:`MissingDependencyError` naming the eval extra. Only a
    missing ``module`` itself is translated; an import error inside it stays as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingDependencyError.for_extra(package, "eval", feature) from None


def load_rgb(image: ImageInput) -> Image.Image:
    """An image file or PIL image as RGB; transparent pixels are composited over white, as
    deepghs' image loading does (a plain ``convert("RGB")`` would turn them black)."""
    pil = require("PIL.Image", "pillow", "Image metrics")
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise InvalidRequestError(f"no image file at {path}", hint="check the image path")
        try:
            with pil.open(path) as opened:
                return _to_rgb(opened, pil)
        except OSError as error:  # PIL's UnidentifiedImageError is an OSError
            raise InvalidRequestError(
                f"cannot read the image {path} ({error})",
                hint="give a PNG, JPEG or WebP file",
            ) from None
    if isinstance(image, pil.Image):
        return _to_rgb(image, pil)
    raise InvalidRequestError(
        f"not an image: {type(image).__name__}", hint="give a file path or a PIL image"
    )


def _to_rgb(image: Image.Image, pil: ModuleType) -> Image.Image:
    bands = set(image.getbands())
    if not ({"A", "a", "P"} & bands or "transparency" in image.info):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = pil.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    torch = require("torch", "torch", "Image metrics")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequestError(
            f"device {device!r} asked for, but torch sees no CUDA GPU",
            hint="use --device cpu, or auto to take a GPU when there is one",
        )
    return device


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """fp16 autocast on CUDA, as the paper's metric scripts; fp32 on the CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    torch = require("torch", "torch", "Image metrics")
    return torch.autocast("cuda", dtype=torch.float16)


def batches(items: Sequence[T], size: int, *, progress: bool, desc: str) -> Iterator[Sequence[T]]:
    """``items`` in chunks of ``size``, with a tqdm bar on stderr counting items."""
    tqdm = require("tqdm", "tqdm", desc).tqdm
    if size < 1:
        raise InvalidRequestError(f"batch size must be at least 1, got {size}")
    with tqdm(
        total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress
    ) as bar:
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            yield chunk
            bar.update(len(chunk))


def from_pretrained(load: Callable[..., T], model: str | Path, what: str, **options: Any) -> T:
    """``load(model, **options)`` (a transformers ``from_pretrained``) with typed errors: a
    missing local folder or an unreachable Hub id is :class:`ModelNotFoundError`, a folder that
    does not load is :class:`CheckpointError`."""
    path = Path(model).expanduser()
    if path.exists():
        try:
            return load(str(path), **options)
        except OSError as error:
            raise CheckpointError(
                f"the {what} folder {path} does not load ({first_line(error)})",
                hint="the folder needs the config.json and weights of a Hugging Face model",
            ) from None
    if _looks_local(str(model)):
        raise ModelNotFoundError(
            f"no {what} folder at {path}",
            hint="check the path, or give a Hugging Face Hub id",
        )
    try:
        return load(str(model), **options)
    except OSError as error:
        raise ModelNotFoundError(
            f"the {what} {model!r} is not a local folder and could not be loaded from the "
            f"Hugging Face Hub ({first_line(error)})",
            hint=f"where the Hub is reachable run `huggingface-cli download {model}` and copy "
            "the Hugging Face cache here, or pass the downloaded folder",
        ) from None


def _looks_local(model: str) -> bool:
    """A path rather than a Hub id (``org/name``): absolute, ``./``, ``~`` or deeper."""
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


class DinoFeatures:
    """DINOv2 image features as the paper's FDD and Vendi computed them: each image resized
    bicubic to 224x224, ImageNet-normalised, the CLS token after the final norm, L2-normalised
    (the paper's comment: unit length keeps FDD comparable across model sizes)."""

    def __init__(
        self, model: str = "facebook/dinov2-base", *, device: str = "auto", batch_size: int = 32
    ) -> None:
        torch = require("torch", "torch", "DINOv2 features")
        transformers = require("transformers", "transformers", "DINOv2 features")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        loaded = from_pretrained(
            transformers.Dinov2Model.from_pretrained, model, "DINOv2 model", dtype=torch.float32
        )
        self.model = loaded.to(self.device).eval().requires_grad_(False)

    def features(self, images: Sequence[ImageInput], *, progress: bool = True) -> np.ndarray:
        """``[n, d]`` float64 unit vectors, one per image, in order."""
        torch = require("torch", "torch", "DINOv2 features")
        parts = [np.zeros((0, self.model.config.hidden_size))]
        for chunk in batches(images, self.batch_size, progress=progress, desc="DINOv2"):
            pixels = np.stack([dino_pixels(load_rgb(image)) for image in chunk])  # [b, 3, 224, 224]
            with torch.inference_mode(), autocast(self.device):
                cls = self.model(pixel_values=torch.from_numpy(pixels).to(self.device))
            parts.append(cls.pooler_output.float().cpu().numpy().astype(np.float64))
        features = np.concatenate(parts)  # [n, d]
        return features / np.linalg.norm(features, axis=1, keepdims=True)


def dino_pixels(image: Image.Image) -> np.ndarray:
    """``[3, 224, 224]`` float32: PIL bicubic resize, /255, ImageNet mean and std (the paper's
    torchvision ``to_tensor`` + ``Normalize``, in numpy)."""
    pil = require("PIL.Image", "pillow", "DINOv2 features")
    resized = image.resize((DINO_SIZE, DINO_SIZE), pil.Resampling.BICUBIC)
    scaled = np.asarray(resized, dtype=np.float32) / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return ((scaled - mean) / std).transpose(2, 0, 1)


def frechet_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets,
    ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2))``, by torchmetrics'
    ``FrechetInceptionDistance`` (the paper's FDD) fed the features through an identity
    extractor, in float64. Both sets need at least 2 rows of the same width."""
    generated = _feature_matrix(features, "features", minimum=2)
    real = _feature_matrix(reference, "reference", minimum=2)
    if generated.shape[1] != real.shape[1]:
        raise InvalidRequestError(
            f"features have {generated.shape[1]} dimensions, the reference {real.shape[1]}",
            hint="compute both with the same feature model",
        )
    torch = require("torch", "torch", "Fréchet distance")
    fid = require("torchmetrics.image.fid", "torchmetrics", "Fréchet distance")
    # torchmetrics' documented custom extractor: a module with `num_features`. The states
    # accumulate in float64 and the result keeps the features' dtype (float64 here).
    identity = torch.nn.Identity()
    identity.num_features = real.shape[1]
    metric = fid.FrechetInceptionDistance(feature=identity)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(generated), real=False)
    return float(metric.compute())


def vendi_score(features: np.ndarray) -> float:
    """The Vendi score (q = 1) of one feature set: the exponential of the entropy of the
    eigenvalues of K/n, where K is the cosine similarity mapped to [0, 1] by (cos + 1) / 2 as
    in the paper's vendi.py, scored by ``vendi_score.vendi.score_K`` (normalize=True, as the
    paper). Between 1 (all items alike) and n; orthogonal features give less than n, since
    they still have similarity 1/2."""
    matrix = _feature_matrix(features, "features", minimum=1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidRequestError("a feature vector is zero, so it has no cosine similarity")
    unit = matrix / norms
    similarity = unit @ unit.T * 0.5 + 0.5  # [n, n]
    vendi = require("vendi_score.vendi", "vendi-score", "Vendi score")
    with warnings.catch_warnings():
        # vendi-score 0.0.3 reads scipy.sparse.csr, deprecated in SciPy 1.14+
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(vendi.score_K(similarity, q=1, normalize=True))


def _feature_matrix(values: np.ndarray, name: str, *, minimum: int) -> np.ndarray:
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidRequestError(f"{name} is not a numeric array ({error})") from None
    if matrix.ndim != 2:
        raise InvalidRequestError(
            f"{name} must be a 2-D array [samples, dimensions], got shape {matrix.shape}"
        )
    if matrix.shape[0] < minimum or matrix.shape[1] < 1:
        raise InvalidRequestError(
            f"{name} has {matrix.shape[0]} samples; at least {minimum} are needed",
            hint="score more images" if minimum > 1 else None,
        )
    if not np.all(np.isfinite(matrix)):
        raise InvalidRequestError(f"{name} holds NaN or infinite values")
    return np.ascontiguousarray(matrix)


__all__ = [
    "DinoFeatures",
    "ImageInput",
    "dino_pixels",
    "frechet_distance",
    "load_rgb",
    "vendi_score",
]
