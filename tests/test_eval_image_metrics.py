"""Image metrics: the formulas against independent computations, each scorer against a manual
run of the same tiny model (built to disk by eval_tiny_vision and loaded by path), and the
typed errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from eval_tiny_vision import (
    make_tiny_aesthetic,
    make_tiny_clip,
    make_tiny_corrupt_classifier,
    make_tiny_dinov2,
)
from tipo.errors import (
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
)
from tipo.eval import image_metrics
from tipo.eval.image_features import require
from tipo.eval.image_metrics import (
    AestheticScorer,
    ClipScorer,
    CorruptScorer,
    DinoFeatures,
    frechet_distance,
    load_rgb,
    vendi_score,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vision")
    encoder, head = make_tiny_aesthetic(root)
    return {
        "dinov2": make_tiny_dinov2(root),
        "clip": make_tiny_clip(root),
        "siglip": encoder,
        "head": head,
        "corrupt": make_tiny_corrupt_classifier(root),
    }


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Random RGB images of different sizes and aspect ratios."""
    rng = np.random.default_rng(1)
    shapes = [(64, 64), (80, 120), (300, 200), (57, 33)]
    return [Image.fromarray(rng.integers(0, 256, (*s, 3), dtype=np.uint8)) for s in shapes]


@pytest.fixture(scope="module")
def rgba() -> Image.Image:
    """Half transparent, half opaque, with a soft band in between."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (96, 96, 4), dtype=np.uint8)
    pixels[:, :40, 3] = 0
    pixels[:, 40:56, 3] = 128
    pixels[:, 56:, 3] = 255
    return Image.fromarray(pixels, "RGBA")


def over_white(image: Image.Image) -> Image.Image:
    """Alpha blending written out in numpy: rgb * a + 255 * (1 - a)."""
    pixels = np.asarray(image, dtype=np.float64)
    alpha = pixels[..., 3:] / 255
    blended = pixels[..., :3] * alpha + 255 * (1 - alpha)
    return Image.fromarray(np.rint(blended).astype(np.uint8), "RGB")


# --- Fréchet distance -----------------------------------------------------------------------


def closed_form_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_the_closed_form_of_two_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.7
    expected = closed_form_frechet(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_scaled_and_shifted_set_by_hand():
    # a: mean 0, covariance diag(2/3, 8/3) (ddof 1). b = 2a + (3, 4): mean (3, 4), covariance
    # 4x. Per axis var_a + 4 var_a - 2 * 2 var_a = var_a, so FD = 3^2 + 4^2 + 2/3 + 8/3.
    a = np.asarray([[1, 0], [-1, 0], [0, 2], [0, -2]], dtype=np.float64)
    b = 2 * a + np.asarray([3, 4])
    assert frechet_distance(a, b) == pytest.approx(25 + 10 / 3, rel=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(3).standard_normal((50, 8))
    assert abs(frechet_distance(features, features)) < 1e-9


@pytest.mark.parametrize(
    ("features", "reference"),
    [
        (np.ones((1, 4)), np.ones((5, 4))),  # one sample: no covariance
        (np.ones((5, 4)), np.ones((1, 4))),
        (np.ones((5, 4)), np.ones((5, 3))),  # dimension mismatch
        (np.ones(5), np.ones((5, 1))),  # not 2-D
        (np.full((3, 2), np.nan), np.ones((3, 2))),
        ([["a", "b"], ["c", "d"]], np.ones((2, 2))),
    ],
)
def test_frechet_distance_rejects_bad_arrays(features, reference):
    with pytest.raises(InvalidRequestError):
        frechet_distance(features, reference)


# --- Vendi score ----------------------------------------------------------------------------


def entropy_exp(probabilities: list[float]) -> float:
    return math.exp(-sum(p * math.log(p) for p in probabilities))


def test_vendi_of_identical_items_is_one():
    assert vendi_score(np.tile([[0.3, -1.0, 2.0]], (7, 1))) == pytest.approx(1.0, abs=1e-9)


def test_vendi_of_orthogonal_items():
    # cos 0 maps to 1/2: K = (I + J) / 2, eigenvalues (n + 1) / 2 once and 1/2 (n - 1) times;
    # K / n has (n + 1) / 2n and 1 / 2n, so n = 4 gives exp(H(5/8, 1/8, 1/8, 1/8)), not 4.
    expected = (8 / 5) ** (5 / 8) * 8 ** (3 / 8)
    assert vendi_score(np.eye(4) * 3.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(entropy_exp([5 / 8, 1 / 8, 1 / 8, 1 / 8]))


def test_vendi_of_opposite_items_is_their_count():
    # cos -1 maps to 0: K = I, so each of the n eigenvalues of K / n is 1/n.
    assert vendi_score(np.asarray([[1.0, 2.0], [-1.0, -2.0]])) == pytest.approx(2.0, rel=1e-12)


def test_vendi_of_two_items_by_hand():
    # cos 60° = 1/2 maps to s = 3/4; K = [[1, s], [s, 1]] has eigenvalues 1 ± s, so K / 2 has
    # 7/8 and 1/8.
    features = np.asarray([[2.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert vendi_score(features) == pytest.approx(entropy_exp([7 / 8, 1 / 8]), rel=1e-12)


def test_vendi_rejects_bad_arrays():
    for bad in (np.zeros((0, 3)), np.ones(3), np.asarray([[1.0, 0.0], [0.0, 0.0]])):
        with pytest.raises(InvalidRequestError):
            vendi_score(bad)


# --- Image loading --------------------------------------------------------------------------


def test_load_rgb_composites_transparency_over_white(rgba, tmp_path):
    expected = np.asarray(over_white(rgba), dtype=np.int16)
    loaded = load_rgb(rgba)
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded, dtype=np.int16) - expected).max() <= 1
    assert (np.asarray(loaded)[:, :40] == 255).all()
    rgba.save(tmp_path / "image.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "image.png")), np.asarray(loaded))
    assert np.array_equal(np.asarray(load_rgb(str(tmp_path / "image.png"))), np.asarray(loaded))


def test_load_rgb_palette_transparency_and_gray_alpha():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 1)
    pixels = np.asarray(load_rgb(palette))
    assert (pixels[1:, :] == 255).all()
    assert tuple(pixels[0, 0]) == (200, 100, 50)
    gray = Image.new("LA", (2, 2), (40, 0))
    assert (np.asarray(load_rgb(gray)) == 255).all()


def test_load_rgb_rejects_missing_files_and_other_objects(tmp_path):
    with pytest.raises(InvalidRequestError, match="no image file"):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_rgb(tmp_path / "bad.png")
    with pytest.raises(InvalidRequestError, match="not an image"):
        load_rgb(np.zeros((4, 4, 3)))


# --- DINOv2 features ------------------------------------------------------------------------


def manual_dino(folder: Path, image: Image.Image) -> np.ndarray:
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    resized = torch.from_numpy(np.asarray(image.resize((224, 224), Image.BICUBIC)).copy())
    pixels = resized.permute(2, 0, 1).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        cls = model(pixel_values=((pixels - mean) / std)[None]).pooler_output[0]
    return torch.nn.functional.normalize(cls, dim=0).numpy()


def test_dino_features_are_unit_cls_tokens_of_the_paper_preprocessing(
    models, images, one_torch_thread
):
    dino = DinoFeatures(str(models["dinov2"]), device="cpu", batch_size=3)
    features = dino.features(images, progress=False)
    assert features.shape == (len(images), 32)
    assert features.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(dino.features(images, progress=False), features)
    one_by_one = DinoFeatures(models["dinov2"], device="cpu", batch_size=1)
    np.testing.assert_allclose(one_by_one.features(images, progress=False), features, atol=1e-6)
    for image, row in zip(images, features, strict=True):
        np.testing.assert_allclose(row, manual_dino(models["dinov2"], image), atol=1e-5)
    assert dino.features([], progress=False).shape == (0, 32)


def test_dino_features_of_rgba_and_files(models, rgba, tmp_path, one_torch_thread):
    dino = DinoFeatures(str(models["dinov2"]), device="cpu")
    rgba.save(tmp_path / "a.png")
    from_file, from_image = dino.features([tmp_path / "a.png", rgba], progress=False)
    np.testing.assert_array_equal(from_file, from_image)
    np.testing.assert_allclose(
        from_image, manual_dino(models["dinov2"], over_white(rgba)), atol=2e-3
    )


# --- CLIP score -----------------------------------------------------------------------------


def test_clip_score_is_the_paper_cosine(models, images, one_torch_thread):
    from transformers import AutoProcessor, CLIPModel

    texts = ["a red cat on a sofa, " * 10, "scenery", "", "mountains at dusk"]
    scores = ClipScorer(str(models["clip"]), device="cpu", batch_size=3).score(
        images, texts, progress=False
    )
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    processor = AutoProcessor.from_pretrained(models["clip"])
    inputs = processor(
        text=texts, images=images, return_tensors="pt", padding=True, truncation=True
    )
    assert inputs["input_ids"].shape[1] == 24  # the long text was truncated
    with torch.no_grad():
        out = model(**inputs)
        # the paper's clip.py: logits_per_image / logit_scale.exp(), the diagonal
        expected = (out.logits_per_image / model.logit_scale.exp()).diagonal().numpy()
    assert scores.shape == (4,)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_clip_score_pairs_images_with_texts(models, images):
    scorer = ClipScorer(str(models["clip"]), device="cpu")
    with pytest.raises(InvalidRequestError, match="pairs"):
        scorer.score(images, ["one text"], progress=False)


# --- Aesthetic score ------------------------------------------------------------------------


def test_aesthetic_score_matches_the_package_model(models, images, rgba, one_torch_thread):
    from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

    scorer = AestheticScorer(str(models["siglip"]), str(models["head"]), device="cpu", batch_size=2)
    scores = scorer.score([*images, rgba], progress=False)
    model, processor = convert_v2_5_from_siglip(str(models["head"]), str(models["siglip"]))
    pixels = processor(images=[*images, over_white(rgba)], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model(pixels).logits.reshape(-1).numpy()
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert np.all((scores > 1) & (scores < 10))


def test_aesthetic_errors(models, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError) as missing_head:
        AestheticScorer(str(models["siglip"]), str(tmp_path / "head.pth"), device="cpu")
    assert "aesthetic_predictor_v2_5.pth" in missing_head.value.hint
    with pytest.raises(ModelNotFoundError) as missing_encoder:
        AestheticScorer(str(tmp_path / "siglip"), str(models["head"]), device="cpu")
    assert missing_encoder.value.hint
    (tmp_path / "bad.pth").write_text("not a state dict")
    with pytest.raises(CheckpointError, match="cannot read"):
        AestheticScorer(str(models["siglip"]), str(tmp_path / "bad.pth"), device="cpu")
    monkeypatch.setitem(__import__("sys").modules, "aesthetic_predictor_v2_5", None)
    with pytest.raises(MissingDependencyError) as no_package:
        AestheticScorer(str(models["siglip"]), str(models["head"]), device="cpu")
    assert "pip install --no-deps aesthetic-predictor-v2-5" in no_package.value.hint
    assert "torchvision" in no_package.value.hint


# --- AI-corrupt score -----------------------------------------------------------------------


def manual_corrupt(folder: Path, image: Image.Image) -> float:
    import onnxruntime

    labels = json.loads((folder / "meta.json").read_text())["labels"]
    pixels = np.asarray(image.resize((384, 384), Image.BILINEAR), dtype=np.float64)
    pixels = (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    (probs,) = session.run(["output"], {"input": pixels[None].astype(np.float32)})
    return 1.0 - float(probs[0, labels.index("corrupted")])


def test_corrupt_score_matches_a_manual_onnx_run(models, images, rgba):
    scorer = CorruptScorer(folder=str(models["corrupt"]))
    scores = scorer.score([*images, rgba], progress=False)
    expected = [manual_corrupt(models["corrupt"], i) for i in [*images, over_white(rgba)]]
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.ptp(scores) > 0.01  # the tiny classifier does tell the images apart


def test_corrupt_errors(models, tmp_path):
    with pytest.raises(ModelNotFoundError) as missing:
        CorruptScorer(folder=str(tmp_path / "nothing"))
    assert "model.onnx" in str(missing.value) and missing.value.hint
    folder = tmp_path / "other-labels"
    shutil.copytree(models["corrupt"], folder)
    (folder / "meta.json").write_text(json.dumps({"labels": ["bad", "good"]}))
    with pytest.raises(CheckpointError, match="corrupted"):
        CorruptScorer(folder=str(folder))
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a model meta"):
        CorruptScorer(folder=str(folder))


# --- Typed errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", [DinoFeatures, ClipScorer])
def test_a_missing_model_folder_is_model_not_found(scorer, tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        scorer(str(tmp_path / "no-such-model"), device="cpu")
    assert str(tmp_path / "no-such-model") in str(error.value)
    assert error.value.hint


def test_a_folder_without_a_model_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        DinoFeatures(str(tmp_path), device="cpu")


def test_cuda_without_a_gpu_is_refused(models):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidRequestError, match="CUDA"):
        DinoFeatures(str(models["dinov2"]), device="cuda")


def test_a_missing_package_names_the_eval_extra():
    with pytest.raises(MissingDependencyError) as error:
        require("no_such_package_xyz", "no-such-package", "Some metric")
    assert "tipo-prompt[eval]" in error.value.hint


def test_public_names():
    assert set(image_metrics.__all__) >= {
        "AestheticScorer",
        "ClipScorer",
        "CorruptScorer",
        "DinoFeatures",
        "ImageInput",
        "frechet_distance",
        "load_rgb",
        "vendi_score",
    }
