"""How much a weight format changes the model: ``quality_report(checkpoint, dtype)``.

Compared with the fp32 weights on the same prompts: logit error (max / mean absolute, and
relative to the logits' spread), mean KL divergence, teacher-forced top-1 agreement (along the
fp32 greedy continuation, the fraction of positions where both models pick the same next token)
and free-running greedy agreement (the fraction of the continuation identical position by
position, and the length of the identical prefix).

A random model's next-token distribution is nearly uniform, so any perturbation flips its
argmax and agreement measures nothing. ``make_trained_checkpoint`` therefore trains a small
model (minutes on 2 CPU cores) on a synthetic tag language shaped like TIPO's tag lines: the
prompt line ``tag: a, b, c`` with real LLaMA ids for "tag", ":" and ",", each tag a fixed 1-3
token piece sequence, and tag order a sparse Markov chain (each tag has four likely
successors). The trained model's distributions are peaked where the language is deterministic
(inside a tag) and spread where it branches (the next tag), as a real tag model's are. Its
weights are only briefly trained, so they are closer to Gaussian than a real model's: the report
on a released checkpoint is the authoritative one; this one is the check we can run here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends.base import GenerationRequest
from ..engine.config import EngineConfig, expected_shapes
from ..engine.engine import Engine, sequence_logits
from ..engine.weights import write_safetensors
from ..sampling import SamplingParams

# "rating: general\naspect ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, scenery"
# as the training-time tokenizer encodes it (protocol doc §3): a real TIPO prompt.
PROTOCOL_PROMPT = (1, 21700, 29901, 2498, 13, 294, 1103, 11959, 29901, 29871, 29896, 29889,
                   29900, 13, 5182, 29901, 29871, 32003, 29871, 32005, 13, 4039, 29901, 29871,
                   29896, 29887, 5168, 29892, 5763, 708)  # fmt: skip
TAG_PREFIX, COMMA = (4039, 29901), 29892  # "tag", ":" and ","
PROMPTS_FILE = "quality_prompts.json"  # prompts from the synthetic language, beside its weights
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0)
QUALITY_NEW_TOKENS = 256  # greedy tokens each prompt is continued by


def quality_report(
    checkpoint: str | Path,
    dtype: str,
    *,
    new_tokens: int = QUALITY_NEW_TOKENS,
    prompts: list[list[int]] | None = None,
    reference: str = "float32",
) -> dict[str, Any]:
    """Compare format ``dtype`` with ``reference`` weights on greedy continuations."""
    prompts = prompts or quality_prompts(Path(checkpoint))
    ref = Engine.load(checkpoint, dtype=reference, max_batch=len(prompts))
    # int4 without its int8 copy, which would otherwise serve the teacher-forced pass (many
    # rows): the report is about the 4-bit weights, the worst case of that format.
    test = Engine.load(checkpoint, dtype=dtype, max_batch=len(prompts), int8_copy=False)
    params = GREEDY.with_(max_new_tokens=new_tokens)
    requests = [GenerationRequest(tuple(p), params, seed=0) for p in prompts]
    ref_out = [g.token_ids for g in ref.generate(requests)]
    test_out = [g.token_ids for g in test.generate(requests)]
    stats = [_teacher_forced(ref, test, p, r) for p, r in zip(prompts, ref_out, strict=True)]
    positions = sum(s["positions"] for s in stats)
    return {
        "dtype": dtype,
        "reference": reference,
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "max_abs_logit_error": max(s["max_abs"] for s in stats),
        "mean_abs_logit_error": sum(s["sum_abs"] for s in stats) / positions,
        "relative_logit_error": sum(s["sum_rel"] for s in stats) / positions,
        "mean_kl": sum(s["sum_kl"] for s in stats) / positions,
        "teacher_forced_agreement": sum(s["agree"] for s in stats) / positions,
        "greedy_agreement": _free_running(ref_out, test_out),
        "greedy_common_prefix": min(_prefix(a, b) for a, b in zip(ref_out, test_out, strict=True)),
        "reference_top1_probability": sum(s["sum_top1"] for s in stats) / positions,
    }


def quality_prompts(folder: Path) -> list[list[int]]:
    """The prompts a quality report reads: the trained model's own (``PROMPTS_FILE``), else
    one real TIPO prompt."""
    file = folder / PROMPTS_FILE
    if file.is_file():
        return [list(p) for p in json.loads(file.read_text())]
    return [list(PROTOCOL_PROMPT)]


def _teacher_forced(ref: Engine, test: Engine, prompt: list[int], out: list[int]) -> dict:
    ids = prompt + out
    a = sequence_logits(ref.model, ids)[len(prompt) - 1 : -1]  # [N, V] predicting ``out``
    b = sequence_logits(test.model, ids)[len(prompt) - 1 : -1]
    error = (a - b).abs()
    kl = kl_per_position(a, b)
    return {
        "positions": a.shape[0],
        "max_abs": float(error.max()) if a.numel() else 0.0,
        "sum_abs": float(error.mean(-1).sum()),
        "sum_rel": float((error.mean(-1) / a.std(-1).clamp(min=1e-9)).sum()),
        "sum_kl": float(kl.sum()),
        "agree": int((a.argmax(-1) == b.argmax(-1)).sum()),
        "sum_top1": float(a.softmax(-1).amax(-1).sum()),
    }


def kl_per_position(ref: Tensor, cand: Tensor) -> Tensor:
    """KL(ref || cand) of the next-token distributions, per row of two logit tensors [N, V]."""
    log_ref, log_cand = ref.log_softmax(-1), cand.log_softmax(-1)
    return (log_ref.exp() * (log_ref - log_cand)).sum(-1)


def _free_running(ref: list[list[int]], test: list[list[int]]) -> float:
    pairs = list(zip(ref, test, strict=True))
    same = sum(sum(x == y for x, y in zip(a, b, strict=False)) for a, b in pairs)
    return same / max(1, sum(max(len(a), len(b)) for a, b in pairs))


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- a small trained model -----------------------------------------------------------------------

TRAINED_CONFIG = EngineConfig(
    vocab_size=32013, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
    intermediate_size=384, max_position_embeddings=512,
)  # fmt: skip


class TagLanguage:
    """The synthetic tag language (see the module docstring), from a seed."""

    def __init__(self, seed: int = 0, tags: int = 400) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, 4, (tags,), generator=g).tolist()
        self.pieces = [torch.randint(300, 29000, (n,), generator=g).tolist() for n in lengths]
        self.successors = torch.randint(0, tags, (tags, 4), generator=g)
        self.weights = torch.tensor([0.55, 0.25, 0.15, 0.05])
        self.generator = g

    def sample(self, length: int) -> list[int]:
        ids = [1, *TAG_PREFIX]
        tag = int(torch.randint(0, len(self.pieces), (1,), generator=self.generator))
        while len(ids) < length:
            ids += self.pieces[tag] + [COMMA]
            pick = int(torch.multinomial(self.weights, 1, generator=self.generator))
            tag = int(self.successors[tag, pick])
        return ids[:length]

    def output_ids(self, vocab: int, seed: int, others: int = 1024) -> tuple[Tensor, Tensor]:
        """(ids [n] the training softmax covers, position [vocab]: id -> index in ids)."""
        used = {1, 2, *TAG_PREFIX, COMMA} | {i for piece in self.pieces for i in piece}
        extra = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:others]
        ids = torch.tensor(sorted(used | set(extra.tolist())))
        position = torch.zeros(vocab, dtype=torch.long)
        position[ids] = torch.arange(len(ids))
        return ids, position


def make_trained_checkpoint(
    directory: str | Path, *, steps: int = 1200, seed: int = 0, config: EngineConfig | None = None,
    batch: int = 32, length: int = 64,
) -> Path:  # fmt: skip
    """Train a small LLaMA on the synthetic tag language and save it as a Hugging Face folder
    (config.json, model.safetensors, quality_prompts.json). Returns the folder.

    1,200 steps take about 3 minutes on 2 cores and reach a loss of 0.44 (fp32 greedy top-1
    probability 0.73). At 300 steps (loss 1.6, top-1 probability 0.49) the distributions were
    so flat that near-ties decided the greedy agreement: fp16 matched fp32 on 89% of the greedy
    tokens in one run (100% at 1,200 steps)."""
    config = config or TRAINED_CONFIG
    language = TagLanguage(seed)
    weights = _init_weights(config, seed)
    optimizer = torch.optim.AdamW(list(weights.values()), lr=3e-3, weight_decay=0.01,
                                  betas=(0.9, 0.98))  # fmt: skip
    # The softmax runs over the language's ids plus 1024 others (a fixed sampled softmax):
    # a full 32k-way output layer would cost most of the training time on a CPU. The other
    # ids' output rows keep their random init and so get low logits, as unused ids do.
    subset, position = language.output_ids(config.vocab_size, seed)
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(steps):
            ids = torch.tensor([language.sample(length + 1) for _ in range(batch)])
            logits = _train_forward(weights, config, ids[:, :-1], subset)
            loss = F.cross_entropy(logits.flatten(0, 1), position[ids[:, 1:]].flatten())
            optimizer.zero_grad()
            loss.backward()
            for group in optimizer.param_groups:  # cosine decay
                group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
            optimizer.step()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    loss_value = float(loss.detach())
    hf = config.to_hf_config() | {"torch_dtype": "float32", "final_train_loss": loss_value}
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    write_safetensors(path / "model.safetensors", {k: v.detach() for k, v in weights.items()})
    prompts = [language.sample(24) for _ in range(4)]
    (path / PROMPTS_FILE).write_text(json.dumps(prompts) + "\n")
    return path


def _init_weights(config: EngineConfig, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):  # GPT-2 style residual scale
            weights[name] = (
                torch.randn(shape, generator=g) * 0.02 / math.sqrt(2 * config.num_layers)
            )
        else:
            weights[name] = torch.randn(shape, generator=g) * 0.02
    return {k: v.requires_grad_() for k, v in weights.items()}


def _train_forward(w: dict[str, Tensor], config: EngineConfig, ids: Tensor, out: Tensor) -> Tensor:
    """A plain differentiable LLaMA forward over HF-named weights: ids [B, T] -> logits
    [B, T, len(out)] for the output ids ``out``."""
    b, t = ids.shape
    h, kvh, d = config.num_heads, config.num_kv_heads, config.head_dim
    positions = torch.arange(t, dtype=torch.float32)
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2).float() / d)
    angles = torch.cat([positions[:, None] * inv_freq] * 2, dim=-1)  # [T, D]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [T, 1, D]

    def norm(x: Tensor, name: str) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), w[name], config.rms_norm_eps)

    def rope(x: Tensor) -> Tensor:
        return x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        y = norm(x, p + "input_layernorm.weight")
        q = rope((y @ w[p + "self_attn.q_proj.weight"].T).view(b, t, h, d)).transpose(1, 2)
        k = rope((y @ w[p + "self_attn.k_proj.weight"].T).view(b, t, kvh, d)).transpose(1, 2)
        v = (y @ w[p + "self_attn.v_proj.weight"].T).view(b, t, kvh, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != h)
        x = x + a.transpose(1, 2).reshape(b, t, h * d) @ w[p + "self_attn.o_proj.weight"].T
        y = norm(x, p + "post_attention_layernorm.weight")
        gate, up = y @ w[p + "mlp.gate_proj.weight"].T, y @ w[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return norm(x, "model.norm.weight") @ w["lm_head.weight"][out].T


__all__ = ["PROTOCOL_PROMPT", "TagLanguage", "make_trained_checkpoint", "quality_report"]
