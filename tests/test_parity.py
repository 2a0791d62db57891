"""The same checkpoint gives the same greedy tokens on every backend (issue: parity)."""

from __future__ import annotations

import pytest

from tipo.backends import load_backend
from tipo.backends.base import GenerationRequest
from tipo.checkpoints import resolve
from tipo.protocol import ModelRequest, build_prompt
from tipo.sampling import SamplingParams
from tipo.tokenizer import TipoTokenizer


def gguf_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:  # CI installs the llamacpp extra; a bare checkout compares two
        return False
    return True


GREEDY = SamplingParams(temperature=0, repetition_penalty=1.17, max_new_tokens=64)


def _prompts(folder):
    tokenizer = TipoTokenizer.from_dir(folder)
    requests = [
        ModelRequest.create(tags=["1girl", "scenery"], task="tag_to_long", length="long"),
        ModelRequest.create(
            nl="A girl on a hill.",
            task="long_to_tag",
            length="short",
            meta={"rating": "general", "aspect_ratio": 0.75},
            expand=False,
        ),
    ]
    return [tuple(tokenizer.encode(build_prompt(r))) for r in requests]


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_gqa_checkpoint"])
def test_greedy_tokens_agree_across_engine_transformers_and_llamacpp(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    requests = [GenerationRequest(p, GREEDY, seed=0) for p in _prompts(folder)]
    checkpoint = resolve(folder)
    outputs = {}
    for name in ("torch", "transformers"):
        backend = load_backend(name, checkpoint, dtype="float32")
        outputs[name] = [g.token_ids for g in backend.generate(requests)]
    if gguf_available():
        from tipo.convert import convert

        gguf = convert(folder, tmp_path / "model-F16.gguf", "F16")
        (tmp_path / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
        backend = load_backend("llamacpp", resolve(gguf), n_threads=1)
        outputs["llama.cpp F16"] = [g.token_ids for g in backend.generate(requests)]
        backend.close()
    reference = outputs["transformers"]
    assert all(len(tokens) > 10 for tokens in reference)
    for name, tokens in outputs.items():
        assert tokens == reference, name
