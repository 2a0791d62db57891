"""The tokenizer must give the ids TIPO was trained with (protocol doc §3).

Golden ids below were produced by the oracle, transformers 4.44.2's slow ``LlamaTokenizer``
(``legacy=False``, ``add_bos_token=True``) + ``add_tokens(TIPO_TOKENS, special_tokens=True)``.
The oracle test at the end compares thousands of generated texts against that oracle, run in its
own interpreter (``TIPO_TOKENIZER_ORACLE_PYTHON``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from checkpoints import llama_tokenizer_model, shared_dir
from tipo.errors import (
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
)
from tipo.protocol import (
    FIRST_TIPO_TOKEN_ID,
    META_KEYS,
    TIPO_TOKENS,
    Length,
    ModelRequest,
    Task,
    build_prompt,
)
from tipo.tokenizer import TipoTokenizer
from tipo.train.hf_folder import tokenizer_config

REPO = Path(__file__).resolve().parents[1]
GOLDEN_TEXT = (
    "rating: general\naspect ratio: 1.0\ntarget: <|long|> <|tag_to_long|>\ntag: 1girl, scenery"
)
GOLDEN_IDS = [1, 21700, 29901, 2498, 13, 294, 1103, 11959, 29901, 29871, 29896, 29889, 29900, 13,
              5182, 29901, 29871, 32003, 29871, 32005, 13, 4039, 29901, 29871, 29896, 29887, 5168,
              29892, 5763, 708]  # fmt: skip
# legacy=True: "▁▁" (259) between the special tokens and "▁" (29871) before the newline.
GOLDEN_LEGACY_IDS = [*GOLDEN_IDS[:18], 259, 32005, 29871, *GOLDEN_IDS[20:]]


@pytest.fixture(scope="module")
def tok() -> TipoTokenizer:
    return TipoTokenizer.from_sentencepiece(llama_tokenizer_model())


@pytest.fixture(scope="module")
def legacy_tok() -> TipoTokenizer:
    return TipoTokenizer.from_sentencepiece(llama_tokenizer_model(), legacy=True)


def _copy_tokenizer(directory: Path, config: dict[str, Any] | None) -> Path:
    """A folder with the LLaMA tokenizer.model and, unless None, this tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(llama_tokenizer_model().read_bytes())
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


# --- golden ids -------------------------------------------------------------------------------


def test_golden_example_of_protocol_doc(tok: TipoTokenizer) -> None:
    assert tok.encode(GOLDEN_TEXT) == GOLDEN_IDS


def test_golden_example_legacy_mode_differs_as_documented(legacy_tok: TipoTokenizer) -> None:
    assert legacy_tok.encode(GOLDEN_TEXT) == GOLDEN_LEGACY_IDS


def test_golden_example_from_checkpoint_folder(tiny_checkpoint: Path) -> None:
    assert TipoTokenizer.from_dir(tiny_checkpoint).encode(GOLDEN_TEXT) == GOLDEN_IDS


def test_golden_example_from_prompt_builder(tok: TipoTokenizer) -> None:
    request = ModelRequest.create(
        tags=["scenery", "1girl"],
        task="tag_to_long",
        length="long",
        meta={"rating": "general", "aspect_ratio": 1.0},
    )
    assert build_prompt(request) == GOLDEN_TEXT
    assert tok.encode(build_prompt(request)) == GOLDEN_IDS


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("", [1]),
        (" ", [1, 259]),
        ("x  ", [1, 921, 259]),
        ("  two", [1, 259, 1023]),
        ("a ▁b", [1, 263, 29871, 289]),  # a literal "▁" is a space
        ("café", [1, 274, 28059]),
        ("\u00a0x", [1, 20246, 29916]),
        ("日本", [1, 29871, 30325, 30346]),
        ("🐱", [1, 29871, 243, 162, 147, 180]),  # byte fallback
        ("<unk>", [1, 0]),
    ],
)
def test_plain_text_golden(tok: TipoTokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("<|long|> x", [1, 32003, 921]),  # no lone "▁" before a leading special token
        ("<|long|><|short|>", [1, 32003, 32002]),
        ("x<|long|>y", [1, 921, 32003, 29891]),
        (" <|long|>", [1, 259, 32003]),
        ("▁<|long|>", [1, 259, 32003]),
        ("\n<|long|>", [1, 29871, 13, 32003]),
        ("<|long|>\n", [1, 32003, 13]),
        ("<s>hello</s>", [1, 1, 12199, 2]),
        ("<|gen<|empty|>_meta|>", [1, 529, 29989, 1885, 32000, 29918, 7299, 29989, 29958]),
        ("<|long", [1, 529, 29989, 5426]),
        ("<|LONG|>", [1, 529, 29989, 29931, 20614, 29989, 29958]),
    ],
)
def test_special_token_text_is_split_like_the_slow_tokenizer(
    tok: TipoTokenizer, text: str, ids: list[int]
) -> None:
    assert tok.encode(text) == ids


# --- vocabulary and BOS/EOS ----------------------------------------------------------------------


def test_tipo_tokens_have_ids_32000_to_32012(tok: TipoTokenizer) -> None:
    for offset, token in enumerate(TIPO_TOKENS):
        token_id = FIRST_TIPO_TOKEN_ID + offset
        assert tok.token_to_id(token) == token_id
        assert tok.id_to_piece(token_id) == token
        assert tok.encode(token, add_bos=False) == [token_id]
    assert tok.vocab_size == 32013


def test_control_ids_and_comma(tok: TipoTokenizer) -> None:
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 2)
    assert tok.token_to_id(",") == 29892
    assert tok.special_ids == frozenset({0, 1, 2, *range(32000, 32013)})


def test_unknown_token_text_raises(tok: TipoTokenizer) -> None:
    with pytest.raises(InvalidRequestError):
        tok.token_to_id("no such piece")
    with pytest.raises(InvalidRequestError):
        tok.id_to_piece(32013)


def test_bos_is_added_once_and_eos_only_on_request(tok: TipoTokenizer) -> None:
    ids = tok.encode("1girl")
    assert ids[0] == 1 and ids.count(1) == 1
    assert tok.encode("1girl", add_bos=False) == ids[1:]
    assert tok.encode("1girl", add_eos=True) == [*ids, 2]


def test_config_without_bos_is_trusted(tmp_path: Path) -> None:
    config = {**tokenizer_config(), "add_bos_token": False, "add_eos_token": True}
    folder = _copy_tokenizer(tmp_path / "no-bos", config)
    assert TipoTokenizer.from_dir(folder).encode(GOLDEN_TEXT) == [*GOLDEN_IDS[1:], 2]


def test_config_with_legacy_true_is_trusted(tmp_path: Path) -> None:
    folder = _copy_tokenizer(tmp_path / "legacy", {**tokenizer_config(), "legacy": True})
    assert TipoTokenizer.from_dir(folder).encode(GOLDEN_TEXT) == GOLDEN_LEGACY_IDS


def test_config_without_legacy_key_means_legacy_as_in_transformers(tmp_path: Path) -> None:
    config = {k: v for k, v in tokenizer_config().items() if k != "legacy"}
    folder = _copy_tokenizer(tmp_path / "unset", config)
    assert TipoTokenizer.from_dir(folder).settings.legacy is True


def test_folder_with_only_tokenizer_model_gets_tipo_defaults(tmp_path: Path) -> None:
    tokenizer = TipoTokenizer.from_dir(_copy_tokenizer(tmp_path / "bare", None))
    assert tokenizer.encode(GOLDEN_TEXT) == GOLDEN_IDS
    assert tokenizer.vocab_size == 32013


def test_config_without_added_tokens_gets_tipo_tokens(tmp_path: Path) -> None:
    config = {k: v for k, v in tokenizer_config().items() if k != "additional_special_tokens"}
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if int(k) < 3
    }
    tokenizer = TipoTokenizer.from_dir(_copy_tokenizer(tmp_path / "tinyllama", config))
    assert tokenizer.encode(GOLDEN_TEXT) == GOLDEN_IDS


def test_added_tokens_json_without_decoder(tmp_path: Path) -> None:
    """Folders written before transformers 4.34 list added tokens in added_tokens.json."""
    folder = _copy_tokenizer(tmp_path / "old", {"legacy": False, "add_bos_token": True})
    added = {t: FIRST_TIPO_TOKEN_ID + i for i, t in enumerate(TIPO_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    assert TipoTokenizer.from_dir(folder).encode(GOLDEN_TEXT) == GOLDEN_IDS


def test_rstrip_and_lstrip_flags_of_added_tokens(tmp_path: Path) -> None:
    config = tokenizer_config()
    config["added_tokens_decoder"]["32003"].update(lstrip=True, rstrip=True)  # <|long|>
    config["added_tokens_decoder"]["32002"].update(rstrip=True)  # <|short|>
    tokenizer = TipoTokenizer.from_dir(_copy_tokenizer(tmp_path / "strip", config))
    assert tokenizer.encode("target: <|long|>   x") == [1, 3646, 29901, 32003, 29916]
    assert tokenizer.encode("a  <|short|>  b") == [1, 263, 259, 32002, 29890]


def test_missing_tokenizer_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"tokenizer\.model") as caught:
        TipoTokenizer.from_dir(tmp_path)
    assert caught.value.hint


def test_missing_folder_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        TipoTokenizer.from_dir(tmp_path / "nowhere")


def test_corrupt_tokenizer_files_are_checkpoint_errors(tmp_path: Path) -> None:
    folder = _copy_tokenizer(tmp_path / "bad-json", None)
    (folder / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError):
        TipoTokenizer.from_dir(folder)
    (folder / "tokenizer_config.json").write_text('{"added_tokens_decoder": {"x": 1}}')
    with pytest.raises(CheckpointError):
        TipoTokenizer.from_dir(folder)
    broken = tmp_path / "bad-model"
    broken.mkdir()
    (broken / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError):
        TipoTokenizer.from_dir(broken)


def test_overlapping_added_tokens_are_refused(tmp_path: Path) -> None:
    config = tokenizer_config()
    config["added_tokens_decoder"]["32013"] = {"content": "a<b>", "special": True}
    with pytest.raises(CheckpointError, match="overlapping"):
        TipoTokenizer.from_dir(_copy_tokenizer(tmp_path / "overlap", config))


def test_lone_surrogate_is_a_request_error(tok: TipoTokenizer) -> None:
    with pytest.raises(InvalidRequestError):
        tok.encode("bad \ud800 text")


def test_missing_sentencepiece_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes the import fail
    with pytest.raises(MissingDependencyError) as caught:
        TipoTokenizer.from_sentencepiece(llama_tokenizer_model())
    assert "tipo-prompt[engine]" in str(caught.value)


def test_import_does_not_load_sentencepiece() -> None:
    code = "import sys, tipo.tokenizer; print('sentencepiece' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- decoding ----------------------------------------------------------------------------------


def test_continuation_keeps_its_leading_space(tok: TipoTokenizer) -> None:
    assert tok.id_to_piece(5763) == "▁scen"
    assert tok.decode([5763, 708]) == " scenery"
    assert tok.decode([29892, 5763, 708, 2]) == ", scenery"


def test_prompt_plus_decoded_continuation_is_the_full_text(tok: TipoTokenizer) -> None:
    full = tok.encode(GOLDEN_TEXT, add_bos=False)
    for cut in range(1, len(full)):
        prompt, continuation = full[:cut], full[cut:]
        assert tok.decode(prompt) + tok.decode(continuation) == tok.decode(full)
    # legacy=False puts one "▁" in front of the whole text; that is all decode adds.
    assert tok.decode(full) == " " + GOLDEN_TEXT


def test_decode_renders_or_skips_special_tokens(tok: TipoTokenizer) -> None:
    ids = tok.encode("target: <|long|> <|tag_to_long|>", add_eos=True)
    assert tok.decode(ids) == " target: <|long|> <|tag_to_long|>"
    assert tok.decode(ids, skip_special=True) == " target:  "


def test_decode_drops_bos_eos_unk(tok: TipoTokenizer) -> None:
    assert tok.decode([1, 0, 921, 2, 2]) == " x"


@pytest.mark.parametrize(
    "text", ["🐱‍👤 cat", "𝔘𝔫𝔦", "日本語のテキスト", "naïve café", "ÅΩж", "\x00\x1b"]
)
def test_byte_fallback_round_trip(tok: TipoTokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == " " + text


def test_broken_utf8_becomes_replacement_character(tok: TipoTokenizer) -> None:
    cat = tok.encode("🐱", add_bos=False)[1:]  # four byte pieces
    assert tok.decode(cat[:2]) == "\ufffd"
    assert tok.decode([*cat[:2], 921]) == "\ufffd x"


def test_decode_rejects_ids_outside_the_vocabulary(tok: TipoTokenizer) -> None:
    for bad in (-1, 32013):
        with pytest.raises(InvalidRequestError):
            tok.decode([921, bad])


def test_stream_decoder_holds_back_incomplete_characters(tok: TipoTokenizer) -> None:
    cat = tok.encode("🐱", add_bos=False)[1:]
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in cat] == ["", "", "", "🐱"]
    assert stream.finish() == ""


def test_stream_decoder_flushes_an_unfinished_character(tok: TipoTokenizer) -> None:
    stream = tok.stream_decoder()
    assert stream.extend(tok.encode("🐱", add_bos=False)[1:3]) == ""
    assert stream.finish() == "\ufffd"


def test_stream_decode_equals_full_decode(tok: TipoTokenizer) -> None:
    rng = random.Random(7)
    for text in [*_odd_texts(rng, 200), *_prompts(rng, 50)]:
        ids = tok.encode(text, add_eos=True)
        for skip in (False, True):
            stream = tok.stream_decoder(skip_special=skip)
            pieces = [stream.push(i) for i in ids]
            assert "".join(pieces) + stream.finish() == tok.decode(ids, skip_special=skip)


def test_stream_decode_of_random_ids_equals_full_decode(tok: TipoTokenizer) -> None:
    """Random byte pieces make invalid UTF-8 of every kind; both paths must agree."""
    rng = random.Random(11)
    for _ in range(300):
        ids = [rng.choice([rng.randrange(3, 259), rng.randrange(32013)]) for _ in range(20)]
        stream = tok.stream_decoder()
        assert stream.extend(ids) + stream.finish() == tok.decode(ids)


# --- generated texts (shared by the oracle test) -----------------------------------------------

FRAGMENTS = [
    "東方", "初音ミク", "夕焼けの空", "한국어", "中文字符", "🌸", "🐱‍👤", "👍🏽", "🇯🇵", "❤️",
    "café", "naïve", "e\u0301", "Ümlaut", "ß", "ΑΩ", "жёлтый", "𝔘𝔫𝔦", "ཀ", "\u0e01\u0e34",
    " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u200b", "\u2028", "▁", "▁▁",
    "<s>", "</s>", "<unk>", "<|", "|>", "<|long", "<<|long|>>", "<|LONG|>", "<|gen<|empty|>_meta|>",
    "1girl", "scenery", ",", ", ", ":", "tag:", "(artist)", "^_^", ":d", "100%", "3.5", "\x00",
    "\x1b", "\x7f", "a", "The", "quick", "brown fox", "x" * 40,
]  # fmt: skip
WORDS = [
    "a", "girl", "standing", "on", "the", "hill", "under", "starry", "sky", "with", "long",
    "hair", "smiling", "at", "camera", "in", "rain", "city", "lights", "and", "blue", "eyes",
]  # fmt: skip
BUILTIN_TAGS = [
    "1girl", "2boys", "solo", "long hair", "blue eyes", "smile", "scenery", "sky", "hatsune miku",
    "vocaloid", "kirisame marisa (touhou)", "absurdres", "highres", "masterpiece", "newest",
    "safe", "honkai: star rail", "^_^", ":d", "東方",
]  # fmt: skip


def _danbooru_tags() -> list[str]:
    """Real tag names from ../shared/data/danbooru.csv when present."""
    path = shared_dir() / "data" / "danbooru.csv"
    if not path.is_file():
        return BUILTIN_TAGS
    lines = path.read_text(encoding="utf-8").splitlines()[:20000]
    return [line.split(",", 1)[0] for line in lines if line] + BUILTIN_TAGS


def _odd_texts(rng: random.Random, count: int) -> list[str]:
    """Unicode, odd whitespace and special-token text, glued at random."""
    special = [*TIPO_TOKENS, "<s>", "</s>", "<unk>"]
    texts = []
    for _ in range(count):
        parts = [
            rng.choice(special) if rng.random() < 0.2 else rng.choice(FRAGMENTS)
            for _ in range(rng.randint(1, 12))
        ]
        glue = rng.choice(["", "", " ", "  ", "\n", "\t"])
        texts.append(glue.join(parts))
    return texts


def _meta(rng: random.Random, tags: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in META_KEYS:
        if rng.random() < 0.4:
            meta[key] = rng.sample(tags, rng.randint(1, 3)) if rng.random() < 0.7 else ""
    if rng.random() < 0.5:
        meta["aspect ratio"] = rng.choice([0.5, 0.7, 1.0, 1.33, 1.777, 2.4])
    return meta


def _nl(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return ""
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 60))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(FRAGMENTS))
    return " ".join(words).capitalize() + rng.choice([".", "!", "", " ", ". "])


def _prompts(rng: random.Random, count: int) -> list[str]:
    """Model-facing prompts over random tags, NL, tasks, lengths, metadata and flags."""
    pool = _danbooru_tags()
    prompts = []
    for _ in range(count):
        tags = [rng.choice(pool) for _ in range(rng.choice([0, 1, 3, 10, 30, 80]))]
        tags = [t.replace("_", " ") if rng.random() < 0.8 else t for t in tags]
        request = ModelRequest.create(
            tags=tags,
            nl=_nl(rng),
            task=rng.choice([None, *Task]),
            length=rng.choice([None, *Length]),
            meta=_meta(rng, pool),
            gen_meta=rng.random() < 0.3,
            expand=rng.random() < 0.5,
        )
        prompts.append(build_prompt(request))
    return prompts


def _edge_texts() -> list[str]:
    tokens = [*TIPO_TOKENS, "<s>", "</s>", "<unk>"]
    spaces = ["", " ", "  ", "\n", "\t", "▁", "\u00a0"]
    texts = [a + t + b for t in tokens for a in spaces for b in spaces]
    return [*texts, "", "a", " a", "a ", "▁a", "a▁", "▁", " ▁ ", "<|long|>" * 5]


# --- the oracle ---------------------------------------------------------------------------------

ORACLE_SCRIPT = r"""
import json, sys
import transformers
from transformers import AddedToken, LlamaTokenizer

job = json.load(sys.stdin)
result = {"version": transformers.__version__, "cases": {}}
for case in job["cases"]:
    tokenizer = LlamaTokenizer(job["model"], legacy=case["legacy"], add_bos_token=True)
    tokens = [AddedToken(**t) if isinstance(t, dict) else t for t in case["tokens"]]
    tokenizer.add_tokens(tokens, special_tokens=True)
    tokenizer.save_pretrained(job["out_dir"] + "/" + case["name"])
    result["cases"][case["name"]] = [tokenizer.encode(t) for t in case["texts"]]
json.dump(result, sys.stdout)
"""
ORACLE_HELP = (
    "The tokenizer oracle needs a Python interpreter with transformers==4.44.2 (no torch):\n"
    "    python -m venv .oracle && .oracle/bin/pip install transformers==4.44.2 sentencepiece "
    "protobuf\n"
    "then point TIPO_TOKENIZER_ORACLE_PYTHON at .oracle/bin/python."
)
MAIN_PROMPTS, MAIN_ODD, LEGACY_TEXTS, STRIP_TEXTS = 5000, 3000, 1000, 1000


def _oracle_python() -> str:
    configured = os.environ.get("TIPO_TOKENIZER_ORACLE_PYTHON")
    if configured:
        if not Path(configured).exists():
            pytest.fail(f"TIPO_TOKENIZER_ORACLE_PYTHON={configured} does not exist.\n{ORACLE_HELP}")
        return configured
    for candidate in (
        REPO / ".oracle" / "bin" / "python",
        REPO.parent / "oracle-venv" / "bin" / "python",
    ):
        if candidate.exists():
            return str(candidate)
    pytest.fail(
        "TIPO_TOKENIZER_ORACLE_PYTHON is not set and no oracle venv exists.\n" + ORACLE_HELP
    )


def _oracle_cases() -> list[dict[str, Any]]:
    rng = random.Random(20241125)
    main = [*_edge_texts(), *_prompts(rng, MAIN_PROMPTS), *_odd_texts(rng, MAIN_ODD)]
    mixed = [*_prompts(rng, LEGACY_TEXTS // 2), *_odd_texts(rng, LEGACY_TEXTS // 2)]
    strip_tokens = [
        {"content": t, "lstrip": i % 3 == 1, "rstrip": i % 2 == 1, "single_word": i == 4}
        for i, t in enumerate(TIPO_TOKENS)
    ]
    return [
        {"name": "main", "legacy": False, "tokens": list(TIPO_TOKENS), "texts": main},
        {"name": "legacy", "legacy": True, "tokens": list(TIPO_TOKENS), "texts": mixed},
        {"name": "strip", "legacy": False, "tokens": strip_tokens,
         "texts": _odd_texts(rng, STRIP_TEXTS)},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the oracle once: ids per case, plus the folders it saved with save_pretrained."""
    out_dir = tmp_path_factory.mktemp("oracle-tokenizers")
    cases = _oracle_cases()
    job = {"model": str(llama_tokenizer_model()), "out_dir": str(out_dir), "cases": cases}
    env = {
        **os.environ,
        "TRANSFORMERS_VERBOSITY": "error",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    run = subprocess.run(
        [_oracle_python(), "-c", ORACLE_SCRIPT],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if run.returncode != 0:
        pytest.fail(f"the tokenizer oracle failed:\n{run.stderr[-3000:]}\n{ORACLE_HELP}")
    result = json.loads(run.stdout)
    assert result["version"] == "4.44.2", "the oracle must be transformers 4.44.2"
    texts = {case["name"]: case["texts"] for case in cases}
    return {"ids": result["cases"], "texts": texts, "dir": out_dir}


def _mismatches(tokenizer: TipoTokenizer, texts: list[str], expected: list[list[int]]) -> list[str]:
    bad = []
    for text, ids in zip(texts, expected, strict=True):
        ours = tokenizer.encode(text)
        if ours != ids:
            bad.append(f"{text!r}\n  ours:   {ours}\n  oracle: {ids}")
    return bad


@pytest.mark.oracle
def test_oracle_same_ids_on_thousands_of_prompts(
    oracle: dict[str, Any], tok: TipoTokenizer
) -> None:
    texts = oracle["texts"]["main"]
    assert len(texts) >= 3000
    bad = _mismatches(tok, texts, oracle["ids"]["main"])
    assert not bad, f"{len(bad)} of {len(texts)} texts differ:\n" + "\n".join(bad[:10])


@pytest.mark.oracle
def test_oracle_same_ids_from_its_saved_folder(oracle: dict[str, Any]) -> None:
    tokenizer = TipoTokenizer.from_dir(oracle["dir"] / "main")
    bad = _mismatches(tokenizer, oracle["texts"]["main"], oracle["ids"]["main"])
    assert not bad, f"{len(bad)} texts differ:\n" + "\n".join(bad[:10])


@pytest.mark.oracle
def test_oracle_same_ids_in_legacy_mode(oracle: dict[str, Any], legacy_tok: TipoTokenizer) -> None:
    texts, expected = oracle["texts"]["legacy"], oracle["ids"]["legacy"]
    for tokenizer in (legacy_tok, TipoTokenizer.from_dir(oracle["dir"] / "legacy")):
        bad = _mismatches(tokenizer, texts, expected)
        assert not bad, f"{len(bad)} texts differ:\n" + "\n".join(bad[:10])


@pytest.mark.oracle
def test_oracle_same_ids_with_strip_flags(oracle: dict[str, Any]) -> None:
    tokenizer = TipoTokenizer.from_dir(oracle["dir"] / "strip")
    bad = _mismatches(tokenizer, oracle["texts"]["strip"], oracle["ids"]["strip"])
    assert not bad, f"{len(bad)} texts differ:\n" + "\n".join(bad[:10])
