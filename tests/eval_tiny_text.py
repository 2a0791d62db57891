"""A tiny random sentence-transformers model saved to a folder (BERT, 2 layers, 32 wide, a
WordPiece vocabulary of the words the tests use), loaded by path like a Hub model."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "a",
    "the",
    "girl",
    "boy",
    "hill",
    "sky",
    "blue",
    "red",
    "tree",
    "trees",
    "house",
    "city",
    "street",
    "night",
    "day",
    "sun",
    "moon",
    "stands",
    "sits",
    "looking",
    "at",
    "on",
    "in",
    "with",
    "of",
    "and",
    "scenery",
    "1girl",
    "solo",
    "long",
    "hair",
    "smile",
    "outdoors",
    "cloud",
    "clouds",
    "water",
    "river",
    "mountain",
    "mountains",
    "field",
    "flowers",
    "grass",
    "wind",
    "light",
    "dark",
    "beautiful",
    "detailed",
    "painting",
    "castle",
    "highly",
    "trending",
    "artstation",
]


def make_tiny_sentence_transformer(directory: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bert = directory / "bert"
    bert.mkdir(exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ",", "."]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(bert / "vocab.txt")).save_pretrained(bert)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(bert)
    transformer = Transformer(str(bert), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model_dir = directory / "sentence"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(model_dir))
    return model_dir
