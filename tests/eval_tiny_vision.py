"""Tiny random vision models saved to folders, for the image-metric tests (no Hub access).

Each builder writes the same layout as the real model it stands for, so the scorers load it
by path exactly as they load a downloaded copy:

* ``make_tiny_dinov2`` — a ``Dinov2Model`` folder (facebook/dinov2-base).
* ``make_tiny_clip`` — a ``CLIPModel`` plus ``CLIPProcessor`` (openai/clip-vit-large-patch14-336);
  the tokenizer is a byte-level BPE with no merges, so every byte is a token.
* ``make_tiny_aesthetic`` — a ``SiglipModel`` plus image processor
  (google/siglip-so400m-patch14-384) and a head ``.pth`` in the layout of
  aesthetic_predictor_v2_5.pth.
* ``make_tiny_corrupt_classifier`` — ``model.onnx`` + ``meta.json`` as in
  deepghs/ai_image_corrupted (input ``input`` [N, 3, 384, 384], output ``output``
  probabilities over ``["corrupted", "normal"]``); needs the ``onnx`` package.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

WIDTH = 32  # hidden size of every tiny transformer
IMAGE = 56  # tiny image side (4x4 patches of 14)
CORRUPT_LABELS = ["corrupted", "normal"]


def _tiny_layers() -> dict[str, int]:
    return {
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }


def make_tiny_dinov2(directory: Path) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(directory) / "tiny-dinov2"
    layers = {k: v for k, v in _tiny_layers().items() if k != "intermediate_size"}
    config = Dinov2Config(**layers, mlp_ratio=2, image_size=IMAGE, patch_size=14)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    return folder


def _byte_vocab() -> dict[str, int]:
    """Every byte-level symbol, alone and word-final, then CLIP's two special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def make_tiny_clip(directory: Path, *, max_positions: int = 24) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip import CLIPImageProcessorPil

    folder = Path(directory) / "tiny-clip"
    vocab = _byte_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_positions)
    special = {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    text = {**_tiny_layers(), **special, "vocab_size": len(vocab)}
    config = CLIPConfig(
        text_config={**text, "max_position_embeddings": max_positions},
        vision_config={**_tiny_layers(), "image_size": IMAGE, "patch_size": 14},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_tiny_aesthetic(directory: Path) -> tuple[Path, Path]:
    """(SigLIP encoder folder, head .pth). The head's last bias is 5.5 so scores sit mid-scale."""
    import torch
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip import SiglipImageProcessorPil

    folder = Path(directory) / "tiny-siglip"
    text = {**_tiny_layers(), "vocab_size": 64, "max_position_embeddings": 16}
    text.update(bos_token_id=1, eos_token_id=2, pad_token_id=1)
    config = SiglipConfig(
        text_config=text,
        vision_config={**_tiny_layers(), "image_size": IMAGE, "patch_size": 14},
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(folder)
    head = Path(directory) / "tiny_aesthetic_head.pth"
    torch.save(_aesthetic_head_state(WIDTH), head)
    return folder, head


def _aesthetic_head_state(width: int) -> Mapping[str, object]:
    """The state dict of the V2.5 head (``scoring_head`` = 5 linears with dropouts between)."""
    import torch

    sizes = [width, 1024, 128, 64, 16, 1]
    layers: list[torch.nn.Module] = []
    for inputs, outputs in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(inputs, outputs), torch.nn.Dropout(0.5)]
    head = torch.nn.Module()
    head.scoring_head = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        head.scoring_head[-1].bias.fill_(5.5)
    return head.state_dict()  # an OrderedDict, which the package's loader asserts


def make_tiny_corrupt_classifier(directory: Path) -> Path:
    """A 384x384 classifier: 32x32 average pooling, a linear layer, softmax over 2 labels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(directory) / "tiny-corrupt"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cells = 3 * (384 // 32) ** 2
    weight = (rng.standard_normal((cells, 2)) * 0.3).astype(np.float32)
    bias = np.asarray([0.2, -0.2], dtype=np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_corrupt",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 384, 384])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    (folder / "meta.json").write_text(json.dumps({"labels": CORRUPT_LABELS}), encoding="utf-8")
    return folder
