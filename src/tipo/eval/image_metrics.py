"""The paper's image metrics (docs/tipo-evaluation.md §4.2), each through the library or model
that defines it. Distribution metrics over DINOv2 features (FDD, Vendi) live in
image_features.py and are re-exported here; this module holds the per-image scores:

* :class:`ClipScorer` — cosine similarity of each image with its original prompt (CLIP).
* :class:`AestheticScorer` — Aesthetic Predictor V2.5 (SigLIP), 1..10.
* :class:`CorruptScorer` — deepghs' AI-corrupt ONNX classifier, 1 - P(corrupted).

Every model argument takes a Hugging Face Hub id or a local folder. Each scorer holds its own
model; nothing is cached at module level.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    BackendError,
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    first_line,
)
from .image_features import (
    DinoFeatures,
    ImageInput,
    autocast,
    batches,
    frechet_distance,
    from_pretrained,
    load_rgb,
    require,
    resolve_device,
    vendi_score,
)

if TYPE_CHECKING:
    from PIL import Image

CORRUPT_SIZE = 384  # sdeval's input size for the AI-corrupt classifiers


class ClipScorer:
    """CLIP score as the paper's clip.py: the cosine similarity between each image and its
    text (give the ORIGINAL prompt, not the expanded one), unscaled. The paper divided
    ``logits_per_image`` by ``logit_scale.exp()``, so it did not multiply by 100 or clip at 0
    as torchmetrics' ``CLIPScore`` does; values are about 0.2-0.35 for matching pairs. Texts
    longer than the text model's positions are truncated."""

    def __init__(
        self,
        model: str = "openai/clip-vit-large-patch14-336",
        *,
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        torch = require("torch", "torch", "CLIP score")
        transformers = require("transformers", "transformers", "CLIP score")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        loaded = from_pretrained(
            transformers.CLIPModel.from_pretrained, model, "CLIP model", dtype=torch.float32
        )
        self.model = loaded.to(self.device).eval().requires_grad_(False)
        self.processor = from_pretrained(
            transformers.AutoProcessor.from_pretrained, model, "CLIP processor"
        )
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def score(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, progress: bool = True
    ) -> np.ndarray:
        """``[n]`` float64, the similarity of ``images[i]`` with ``texts[i]``."""
        if len(images) != len(texts):
            raise InvalidRequestError(
                f"{len(images)} images but {len(texts)} texts; CLIP score pairs them one to one"
            )
        torch = require("torch", "torch", "CLIP score")
        pairs = list(zip(images, texts, strict=True))
        scores = [np.zeros(0)]
        for chunk in batches(pairs, self.batch_size, progress=progress, desc="CLIP score"):
            inputs = self.processor(
                text=[text for _, text in chunk],
                images=[load_rgb(image) for image, _ in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            with torch.inference_mode(), autocast(self.device):
                out = self.model(**inputs)
            # image_embeds and text_embeds come out L2-normalised: [b, projection_dim] each
            cosine = (out.image_embeds.float() * out.text_embeds.float()).sum(dim=-1)
            scores.append(cosine.cpu().numpy())
        return np.concatenate(scores).astype(np.float64)


AESTHETIC_HINT = (
    "pip install --no-deps aesthetic-predictor-v2-5 (it is not in the eval extra: the package "
    "declares torchvision, and pip would then replace torch with the build that torchvision "
    "wants; its code needs only torch and transformers)"
)


class AestheticScorer:
    """Aesthetic Predictor V2.5 (discus0434), the paper's aesthetic score: a SigLIP
    so400m-patch14-384 image embedding, L2-normalised, into the package's MLP head. Scores are
    on a 1..10 scale (5.5+ is good). Runs through the package's own model and processor
    classes; ``head`` is a local ``aesthetic_predictor_v2_5.pth``, or None to download the
    package's published head."""

    def __init__(
        self,
        encoder: str = "google/siglip-so400m-patch14-384",
        head: str | None = None,
        *,
        device: str = "auto",
        batch_size: int = 16,
    ) -> None:
        torch = require("torch", "torch", "Aesthetic score")
        package = _aesthetic_package()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model = from_pretrained(
            package.AestheticPredictorV2_5Model.from_pretrained,
            encoder,
            "SigLIP encoder",
            dtype=torch.float32,
        )
        self.processor = from_pretrained(
            package.AestheticPredictorV2_5Processor.from_pretrained, encoder, "SigLIP processor"
        )
        state = _aesthetic_head(head, torch)
        try:
            model.layers.load_state_dict(state)
        except (RuntimeError, TypeError) as error:
            raise CheckpointError(
                f"the aesthetic head does not fit the encoder {encoder!r} ({error})",
                hint="the V2.5 head expects google/siglip-so400m-patch14-384",
            ) from None
        self.model = model.to(self.device).eval().requires_grad_(False)

    def score(self, images: Sequence[ImageInput], *, progress: bool = True) -> np.ndarray:
        """``[n]`` float64 aesthetic scores, in order."""
        torch = require("torch", "torch", "Aesthetic score")
        scores = [np.zeros(0)]
        for chunk in batches(images, self.batch_size, progress=progress, desc="Aesthetic"):
            pixels = self.processor(
                images=[load_rgb(image) for image in chunk], return_tensors="pt"
            )
            with torch.inference_mode(), autocast(self.device):
                logits = self.model(pixel_values=pixels.pixel_values.to(self.device)).logits
            scores.append(logits.float().reshape(-1).cpu().numpy())  # logits: [b, 1]
        result = np.concatenate(scores).astype(np.float64)
        if np.isnan(result).any():
            raise BackendError(
                "the aesthetic predictor returned NaN",
                hint="fp16 can overflow on some GPUs; run with --device cpu",
            )
        return result


def _aesthetic_package() -> Any:
    try:
        import aesthetic_predictor_v2_5
    except ModuleNotFoundError as error:
        if error.name != "aesthetic_predictor_v2_5":
            raise
        raise MissingDependencyError(
            "Aesthetic score needs the Python package 'aesthetic-predictor-v2-5', which is not "
            "installed.",
            hint=AESTHETIC_HINT,
        ) from None
    return aesthetic_predictor_v2_5


def _aesthetic_head(head: str | None, torch: Any) -> Any:
    """The head's state dict: the local file, or the package's download."""
    if head is not None:
        path = Path(head).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"no aesthetic head file at {path}",
                hint="give the path of aesthetic_predictor_v2_5.pth (discus0434's models/ folder)",
            )
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises pickle, zip and runtime errors
            raise CheckpointError(
                f"cannot read the aesthetic head {path} ({first_line(error)})",
                hint="give the aesthetic_predictor_v2_5.pth state dict",
            ) from None
    from aesthetic_predictor_v2_5.siglip_v2_5 import URL

    try:
        return torch.hub.load_state_dict_from_url(URL, map_location="cpu", weights_only=True)
    except OSError as error:  # URLError and HTTPError included
        raise ModelNotFoundError(
            f"could not download the aesthetic head from {URL} ({error})",
            hint="download aesthetic_predictor_v2_5.pth where the network allows and pass its "
            "path as the head",
        ) from None


class CorruptScorer:
    """deepghs' AI-corrupt classifier (HF deepghs/ai_image_corrupted) through onnxruntime, with
    sdeval's preprocessing: RGB over white, 384x384 bilinear, CHW in [0, 1], then
    (x - 0.5) / 0.5. The score is 1 - P("corrupted"): higher is better. sdeval averages it over
    the images; this returns one score per image."""

    def __init__(
        self,
        model: str = "caformer_s36_v0_focal",
        *,
        folder: str | None = None,
        repo: str = "deepghs/ai_image_corrupted",
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "AI-corrupt score")
        onnx_file, meta_file = _corrupt_files(model, folder, repo)
        labels = _labels(meta_file)
        if "corrupted" not in labels:
            raise CheckpointError(
                f"{meta_file} has no 'corrupted' label (labels: {labels})",
                hint="use a model of deepghs/ai_image_corrupted",
            )
        self.corrupted = labels.index("corrupted")
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(onnx_file), providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise CheckpointError(f"{onnx_file} does not load ({error})") from None
        self.input_name = self.session.get_inputs()[0].name
        outputs = [output.name for output in self.session.get_outputs()]
        self.output_name = "output" if "output" in outputs else outputs[0]

    def score(self, images: Sequence[ImageInput], *, progress: bool = True) -> np.ndarray:
        """``[n]`` float64 in [0, 1], in order; one image per run, as sdeval."""
        scores = []
        for chunk in batches(images, 1, progress=progress, desc="AI corrupt"):
            pixels = corrupt_pixels(load_rgb(chunk[0]))[None]  # [1, 3, 384, 384]
            (probs,) = self.session.run([self.output_name], {self.input_name: pixels})
            scores.append(1.0 - float(probs[0, self.corrupted]))
        return np.asarray(scores, dtype=np.float64)


def corrupt_pixels(image: Image.Image) -> np.ndarray:
    """``[3, 384, 384]`` float32 as sdeval's ``_img_encode``."""
    pil = require("PIL.Image", "pillow", "AI-corrupt score")
    resized = image.resize((CORRUPT_SIZE, CORRUPT_SIZE), pil.Resampling.BILINEAR)
    scaled = (np.asarray(resized).transpose(2, 0, 1) / 255.0).astype(np.float32)
    return ((scaled - 0.5) / 0.5).astype(np.float32)


def _labels(meta_file: Path) -> list[str]:
    try:
        labels = json.loads(meta_file.read_text(encoding="utf-8")).get("labels", [])
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{meta_file} is not a model meta.json ({error})") from None
    return labels if isinstance(labels, list) else []


def _corrupt_files(model: str, folder: str | None, repo: str) -> tuple[Path, Path]:
    """model.onnx and meta.json: from ``folder``, else from the Hub repo's ``model/`` folder."""
    names = ("model.onnx", "meta.json")
    if folder is not None:
        root = Path(folder).expanduser()
        files = tuple(root / name for name in names)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelNotFoundError(
                f"no AI-corrupt model in {root} (missing {', '.join(missing)})",
                hint=f"download {model}/model.onnx and {model}/meta.json of {repo} into it",
            )
        return files[0], files[1]
    hub = require("huggingface_hub", "huggingface_hub", "AI-corrupt score")
    try:
        onnx_file, meta_file = (hub.hf_hub_download(repo, f"{model}/{n}") for n in names)
    except (OSError, ValueError, hub.errors.HfHubHTTPError) as error:
        raise ModelNotFoundError(
            f"could not get the AI-corrupt model {model} of {repo} ({error})",
            hint=f"where the Hub is reachable run `huggingface-cli download {repo} "
            f"--include '{model}/*'` and copy the files, then pass that folder",
        ) from None
    return Path(onnx_file), Path(meta_file)


__all__ = [
    "AestheticScorer",
    "ClipScorer",
    "CorruptScorer",
    "DinoFeatures",
    "ImageInput",
    "corrupt_pixels",
    "frechet_distance",
    "load_rgb",
    "vendi_score",
]
