"""Tiny random diffusers pipelines for tests.

``make_tiny_sd_pipeline`` and ``make_tiny_sdxl_pipeline`` write complete diffusers folders
(``model_index.json`` and one subfolder per component, saved by ``save_pretrained``), so they
load by path exactly as a downloaded Stable Diffusion 1.5 or SDXL model does. Only the sizes are
tiny: a 2-block UNet 32/64 wide, a VAE that still downsamples 8x (so 64x64 images have 8x8
latents, as 1024x1024 ones have 128x128), 2-layer CLIP text encoders, and a CLIP BPE tokenizer
over a 70-token vocabulary. The SD 1.5 folder includes a safety checker that flags every image,
so a test sees at once whether it is still on.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

import torch

TEXT_WIDTH = 32  # hidden size of every tiny CLIP text encoder
MAX_TOKENS = 77  # CLIP's context, as in the real models: longer prompts are truncated


def make_tiny_sd_pipeline(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a random Stable Diffusion 1.5-style pipeline folder into ``directory``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    path = Path(directory)
    tokenizer = _tokenizer(path / "_tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer), projection=False),
        tokenizer=tokenizer,
        unet=_unet(cross_attention_dim=TEXT_WIDTH),
        scheduler=EulerDiscreteScheduler(**_SCHEDULER),
        safety_checker=_flag_everything_safety_checker(),
        feature_extractor=_feature_extractor(),
        requires_safety_checker=True,
    )
    pipeline.save_pretrained(path)
    return path


def make_tiny_sdxl_pipeline(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a random SDXL-style pipeline folder (two text encoders, size conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    path = Path(directory)
    tokenizer = _tokenizer(path / "_tokenizer")
    time_embed_dim = 8  # SDXL conditions on 6 size numbers, each embedded this wide
    pipeline = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer), projection=False),
        text_encoder_2=_text_encoder(len(tokenizer), projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(
            cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * time_embed_dim,
            use_linear_projection=True,
        ),
        scheduler=EulerDiscreteScheduler(**_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(path)
    return path


# The real SD 1.5 / SDXL noise schedule, so the schedulers behave as on the real models.
_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _unet(**options):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=16,
        **options,
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four blocks downsample 2**3 = 8x, the factor of the real SD VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )


def _text_encoder(vocab_size: int, *, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_WIDTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tokenizer(scratch: Path):
    """A CLIP BPE tokenizer over lowercase letters, digits and some punctuation, each alone or
    ending a word (CLIP marks a word's last symbol with ``</w>``), with two merges."""
    from transformers import CLIPTokenizer

    symbols = [*string.ascii_lowercase, *string.digits, *",.!?()"]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(f"{s}</w>" for s in symbols)]
    merges = [("t", "h"), ("th", "e</w>")]
    tokens += ["".join(pair) for pair in merges]
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (scratch / "merges.txt").write_text("\n".join(lines) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=MAX_TOKENS)
    shutil.rmtree(scratch)
    return tokenizer


def _flag_everything_safety_checker():
    """SD 1.5's safety checker with thresholds below any cosine similarity: it blacks out every
    image, as the real one does for the images it flags."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 100, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)
        checker.special_care_embeds_weights.fill_(-2.0)
    return checker


def _feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
