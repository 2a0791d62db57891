"""A tiny random GPT-2 folder shaped like ``microsoft/Promptist`` and
``Gustavosta/MagicPrompt-Stable-Diffusion``: ``config.json`` and weights of a
``GPT2LMHeadModel`` plus a byte-level BPE tokenizer (``<|endoftext|>`` as BOS, EOS and UNK, as
GPT-2's), all written by ``save_pretrained`` so ``AutoModelForCausalLM`` and ``AutoTokenizer``
load it like the real ones. Only the sizes are tiny; the tokenizer is trained here on a few
sentences, so any text encodes (byte fallback) and ``Rephrase:`` is a few tokens."""

from __future__ import annotations

import os
from pathlib import Path

EOS = "<|endoftext|>"
CORPUS = [
    "A rabbit is wearing a space suit Rephrase: a rabbit in a space suit, digital art",
    "Several railroad tracks with one train passing by, highly detailed, artstation",
    "The roof is wet from the rain, cinematic lighting, 8k, trending on artstation",
    "Cats dancing in a space club, by greg rutkowski, concept art, sharp focus",
    "1girl, scenery, masterpiece, blue sky, cloud, mountain, river, sunset",
    "a beautiful scenery of a lake at dawn, mist over the water, soft light\n",
    "a portrait of an old man, oil painting, dramatic, intricate, elegant\n",
]


def make_tiny_gpt2(
    directory: str | os.PathLike[str],
    *,
    vocab_size: int = 400,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    seed: int = 0,
    initializer_range: float = 0.2,
) -> Path:
    """Write the folder and return its path. A wider ``initializer_range`` than GPT-2's 0.02
    gives peaked next-token distributions, so beam and sampling choices are not near-ties."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS,
        model_max_length=256,
    )  # fmt: skip
    tokenizer.save_pretrained(path)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=eos_id, eos_token_id=eos_id,
        initializer_range=initializer_range,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path
