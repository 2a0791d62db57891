"""The GGUF converter and GGUF checkpoint resolution (no llama.cpp needed except to quantise).

The converted files are read back with the ``gguf`` package's own reader: the metadata llama.cpp
reads, the tensor layout (q/k rows permuted like llama.cpp's convert_hf_to_gguf.py) and the
vocabulary with the 13 TIPO tokens. tests/test_llamacpp.py runs the files in llama.cpp.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from checkpoints import make_tiny_checkpoint
from tipo.checkpoints import KNOWN_MODELS, resolve
from tipo.errors import CheckpointError, InvalidRequestError, MissingDependencyError, TipoError
from tipo.protocol import FIRST_TIPO_TOKEN_ID, TIPO_TOKENS

gguf = pytest.importorskip("gguf")

from tipo.convert import LlamaShape, convert, fallback_tensors, permute_rotary  # noqa: E402

TIPO_200M = {"hidden_size": 768, "num_hidden_layers": 20, "num_attention_heads": 12,
             "num_key_value_heads": 12, "intermediate_size": 2304, "vocab_size": 32013,
             "max_position_embeddings": 2048}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GQA checkpoint (4 heads, 2 key/value heads) converted to F16 inside it."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("gguf") / "tiny", num_kv_heads=2)
    convert(path, path / "model-F16.gguf")
    return path


@pytest.fixture(scope="module")
def reader(folder: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(folder / "model-F16.gguf")


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_metadata_round_trips(reader: gguf.GGUFReader) -> None:
    expected = {
        "general.architecture": "llama",
        "general.file_type": 1,  # MOSTLY_F16
        "llama.vocab_size": 32013,
        "llama.context_length": 2048,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)


def test_vocabulary_has_the_13_tipo_tokens_as_control_tokens(reader: gguf.GGUFReader) -> None:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 32013
    assert tokens[FIRST_TIPO_TOKEN_ID:] == list(TIPO_TOKENS)
    assert set(types[FIRST_TIPO_TOKEN_ID:]) == {gguf.TokenType.CONTROL}
    # SentencePiece's own types below 32000: <unk> unknown, <s> </s> control, <0x0A> a byte.
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert types[:4] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
                         gguf.TokenType.BYTE]  # fmt: skip
    assert tokens[29892] == "," and types[29892] == gguf.TokenType.NORMAL


def test_tensors_are_named_shaped_and_typed_like_llama_cpp(reader: gguf.GGUFReader) -> None:
    tensors = {t.name: t for t in reader.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                 "ffn_up", "ffn_down"]  # fmt: skip
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    names += [f"blk.{i}.{n}.weight" for i in range(2) for n in per_block]
    assert sorted(tensors) == sorted(names)
    F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_norm.weight"].tensor_type == F32
    assert tensors["blk.0.attn_k.weight"].tensor_type == F16
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]  # ggml order: [in, out]
    assert list(tensors["token_embd.weight"].shape) == [64, 32013]


def test_q_and_k_rows_are_permuted_per_head(folder: Path, reader: gguf.GGUFReader) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    hf = load_file(folder / "model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    for name, heads in (("q_proj", 4), ("k_proj", 2)):
        original = hf[f"model.layers.1.self_attn.{name}.weight"]
        stored = np.asarray(tensors[f"blk.1.attn_{name[0]}.weight"].data)
        expected = permute_rotary(original, heads).astype(np.float16)
        np.testing.assert_array_equal(stored.reshape(original.shape), expected)
    v = np.asarray(tensors["blk.1.attn_v.weight"].data).reshape(32, 64)
    np.testing.assert_array_equal(v, hf["model.layers.1.self_attn.v_proj.weight"].astype("f2"))


def test_permutation_interleaves_the_two_halves_of_each_head() -> None:
    import numpy as np

    rows = np.arange(8).reshape(8, 1)  # 2 heads of size 4: halves (0,1 | 2,3), (4,5 | 6,7)
    assert permute_rotary(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_k_quant_fallbacks_are_reported_for_narrow_rows() -> None:
    tipo_200m = LlamaShape.from_config({**TIPO_200M, "model_type": "llama"})
    assert fallback_tensors(tipo_200m, "Q4_K_M") == []  # 768 and 2304 are multiples of 256
    tiny = LlamaShape.from_config({**TIPO_200M, "hidden_size": 64, "intermediate_size": 128,
                                   "num_hidden_layers": 1, "num_attention_heads": 4,
                                   "num_key_value_heads": 4})  # fmt: skip
    assert len(fallback_tensors(tiny, "Q4_K_M")) == 9  # every matrix (64/128-wide rows)
    assert fallback_tensors(tiny, "Q8_0") == []


def test_failed_conversion_leaves_no_file(tmp_path: Path, folder: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("*.gguf"))
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match="shape"):
        convert(broken, tmp_path / "out.gguf")
    assert list(tmp_path.glob("out.gguf*")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "'mistral' model"),
        ({"attention_bias": True}, "attention biases"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"num_key_value_heads": 3}, "do not fit together"),
        ({"num_hidden_layers": 3}, "missing"),
    ],
)
def test_unsupported_or_inconsistent_configs_are_refused(
    tmp_path: Path, folder: Path, change: dict[str, object], message: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.gguf"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message) as error:
        convert(copy, tmp_path / "out.gguf")
    assert error.value.hint


def test_bad_inputs_raise_typed_errors_with_hints(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(CheckpointError, match="not a folder") as error:
        convert(tmp_path / "nothing", tmp_path / "out.gguf")
    assert "folder" in (error.value.hint or "")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        convert(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(InvalidRequestError, match="Q4_0") as error:
        convert(folder, tmp_path / "out.gguf", "Q4_0")
    assert "F16, Q8_0, Q4_K_M" in (error.value.hint or "")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(folder, no_tokenizer, ignore=shutil.ignore_patterns("*.gguf", "tokenizer.*"))
    with pytest.raises(CheckpointError, match=r"tokenizer\.model"):
        convert(no_tokenizer, tmp_path / "out.gguf")


def test_missing_gguf_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes the import fail
    with pytest.raises(MissingDependencyError) as error:
        convert(folder, tmp_path / "out.gguf")
    assert 'pip install "tipo-prompt[llamacpp]"' in str(error.value)


def test_quantising_without_llama_cpp_names_the_extra_before_any_work(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingDependencyError, match="llama-cpp-python") as error:
        convert(folder, tmp_path / "q8.gguf", "Q8_0")
    assert "tipo-prompt[llamacpp]" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_q8_0_is_quantised_by_llama_cpp(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tipo.convert import tensor_types

    messages: list[str] = []
    out = convert(folder, tmp_path / "q8.gguf", "q8_0", progress=messages.append)
    assert tensor_types(out) == {"F32": 5, "Q8_0": 16}
    assert _field(gguf.GGUFReader(out), "general.file_type") == 7
    assert messages[-1].startswith(f"wrote {out}")
    assert list(tmp_path.iterdir()) == [out]  # the F32 intermediate is gone


def test_q4_k_m_says_which_tensors_fall_back(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    messages: list[str] = []
    convert(folder, tmp_path / "q4.gguf", "Q4_K_M", progress=messages.append)
    note = next(m for m in messages if m.startswith("note:"))
    assert "not divisible by 256" in note and "Q5_0" in note
    assert "Q5_0" in messages[-1]  # the summary of the stored types


# --- resolving GGUF checkpoints --------------------------------------------------------------


def test_a_gguf_file_resolves_with_the_tokenizer_beside_it(folder: Path) -> None:
    checkpoint = resolve(folder / "model-F16.gguf")
    assert checkpoint.format == "gguf"
    assert checkpoint.path == folder / "model-F16.gguf"
    assert checkpoint.tokenizer_dir == folder


def test_a_gguf_file_without_tokenizer_resolves_to_the_rebuilt_one(
    folder: Path, tmp_path: Path
) -> None:
    """No tokenizer.model beside it: load_tokenizer rebuilds it from the file's vocabulary
    (tests/test_gguf_engine.py checks the ids and the refusal of a foreign vocabulary)."""
    lonely = tmp_path / "model.gguf"
    shutil.copyfile(folder / "model-F16.gguf", lonely)
    checkpoint = resolve(lonely)
    assert checkpoint.tokenizer_dir is None
    assert checkpoint.load_tokenizer().encode("1girl") == [1, 29871, 29896, 29887, 5168]


def _fake_hub_cache(
    monkeypatch: pytest.MonkeyPatch, root: Path, repo_id: str, files: dict[str, Path]
) -> Path:
    """A Hugging Face cache holding one snapshot of ``repo_id`` with ``files``."""
    import huggingface_hub.constants

    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return snapshot


def test_a_released_gguf_file_finds_the_tokenizer_in_the_hub_cache(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    model = KNOWN_MODELS[0]
    snapshot = _fake_hub_cache(
        monkeypatch,
        tmp_path / "hub",
        model.repo_id,
        {"tokenizer.model": folder / "tokenizer.model"},
    )
    released = tmp_path / "downloads" / model.gguf[0]
    released.parent.mkdir()
    shutil.copyfile(folder / "model-F16.gguf", released)
    assert resolve(released).tokenizer_dir == snapshot


def test_a_hub_gguf_spec_resolves_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    files = {"TIPO-200M-ft-F16.gguf": folder / "model-F16.gguf"}
    files.update({n: folder / n for n in ("tokenizer.model", "tokenizer_config.json")})
    snapshot = _fake_hub_cache(monkeypatch, tmp_path / "hub", "KBlueLeaf/TIPO-200M-ft", files)
    for spec in (
        "KBlueLeaf/TIPO-200M-ft:TIPO-200M-ft-F16.gguf",
        "tipo-200m-ft:TIPO-200M-ft-F16.gguf",
    ):
        checkpoint = resolve(spec, offline=True)
        assert checkpoint.format == "gguf"
        assert checkpoint.path == snapshot / "TIPO-200M-ft-F16.gguf"
        assert checkpoint.tokenizer_dir == snapshot
        assert checkpoint.source == "KBlueLeaf/TIPO-200M-ft:TIPO-200M-ft-F16.gguf"


def test_hub_gguf_spec_errors_say_how_to_fix_them(
    monkeypatch: pytest.MonkeyPatch, folder: Path, tmp_path: Path
) -> None:
    from tipo.errors import ModelNotFoundError

    _fake_hub_cache(monkeypatch, tmp_path / "hub", "KBlueLeaf/TIPO-200M", {})
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache") as error:
        resolve("KBlueLeaf/TIPO-200M:TIPO-200M-40Btok-F16.gguf", offline=True)
    assert "tipo download" in (error.value.hint or "")
    with pytest.raises(ModelNotFoundError, match="no GGUF file at"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(TipoError, match="mixture-of-experts"):
        resolve("TIPOv2-1B-A200M:model.gguf", offline=True)
