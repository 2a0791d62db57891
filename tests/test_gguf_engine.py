"""Our torch engine loading GGUF files (no llama.cpp), and the tokenizer rebuilt from a GGUF.

GGUF files are written here with the ``gguf`` package (metadata copied from a file ``tipo
convert`` wrote, tensors from the tiny checkpoint, q/k rows permuted as llama.cpp's converter
does), so every tensor type is testable without llama.cpp. The reference for a type is the
Hugging Face folder holding the same values: the original weights round-tripped through that
type by ``gguf.quants`` (quantising rows commutes with permuting them). Our engine must give
*identical* fp32 logits on both, which pins names, shapes, layout, tying and dequantisation
exactly; separately, each type's logits stay within a stated tolerance of the fp32 original.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from checkpoints import llama_tokenizer_model, make_tiny_checkpoint  # noqa: E402
from tipo import TIPO  # noqa: E402
from tipo.backends import auto_backend, load_backend  # noqa: E402
from tipo.backends.base import GenerationRequest  # noqa: E402
from tipo.checkpoints import resolve  # noqa: E402
from tipo.convert import convert, gguf_name, permute_rotary, unpermute_rotary  # noqa: E402
from tipo.engine.engine import Engine, sequence_logits  # noqa: E402
from tipo.engine.gguf_weights import dequantize_q8_0  # noqa: E402
from tipo.engine.weights import load_model, write_safetensors  # noqa: E402
from tipo.errors import CheckpointError, MissingDependencyError  # noqa: E402
from tipo.gguf_file import read_gguf  # noqa: E402
from tipo.gguf_tokenizer import LLAMA_NORMALIZER_SPEC, LLAMA_TRAINER_SPEC  # noqa: E402
from tipo.protocol import TIPO_TOKENS  # noqa: E402
from tipo.sampling import SamplingParams  # noqa: E402
from tipo.tokenizer import TipoTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0, max_new_tokens=32)
IDS = (1, 21700, 29901, 2498, 13, 294, 1103, 11959, 29901, 29871, 29896, 29889, 29900, 13,
       4039, 29901, 29871, 29896, 29887, 5168, 29892, 5763, 708, 32003, 32012)  # fmt: skip
Q = gguf.GGMLQuantizationType
# Relative rounding of one stored weight, by type: F16 keeps 11 significant bits, BF16 8; Q8_0
# rounds to steps of (block max) / 127, and the max of a block of 32 Gaussian weights is ~2.5
# of their standard deviation, so half a step is ~2.5 / 254 of a typical weight. Measured on
# the tiny model, the largest logit error is 0.8-1.1 times this figure times the largest logit
# (F16 3.3e-4, BF16 2.3e-3, Q8_0 8.2e-3 at logits up to 0.78): errors add up through the
# layers rather than cancel. The tests allow twice that.
ROUNDING = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8, "Q8_0": 2.5 / 254}


# --- writing GGUF files -------------------------------------------------------------------------


class Tiny:
    """A tiny checkpoint folder, its tensors (float32 numpy, Hugging Face names and layout)
    and the metadata ``tipo convert`` writes for it, to copy into new GGUF files."""

    def __init__(self, folder: Path) -> None:
        from safetensors.numpy import load_file

        self.folder = folder
        self.f16 = convert(folder, folder.parent / "model-F16.gguf")
        reader = gguf.GGUFReader(self.f16)
        self.fields = [
            (f.name, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
            for f in reader.fields.values()
            if not f.name.startswith("GGUF.") and f.name != "general.architecture"
        ]
        self.tensors = {k: v.astype(np.float32)
                        for k, v in load_file(folder / "model.safetensors").items()}  # fmt: skip
        config = json.loads((folder / "config.json").read_text())
        self.heads = config["num_attention_heads"], config["num_key_value_heads"]

    def write(self, target: Path, kind: str = "F32", *, arch: str = "llama",
              metadata: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
              kinds: dict[str, str] | None = None) -> Path:  # fmt: skip
        """A GGUF file of the tensors: matrices stored as ``kind`` (``kinds``: per GGUF name),
        norms as F32 (as llama.cpp writes them), q/k rows permuted like llama.cpp's converter."""
        writer = gguf.GGUFWriter(target, arch=arch)
        for key, value, vtype, sub_type in self.fields:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
        for key, value in (metadata or {}).items():
            writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
        for hf, array in self.tensors.items():
            name = gguf_name(hf)
            if name in drop:
                continue
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                array = permute_rotary(array, self.heads[0 if "attn_q" in name else 1])
            stored = (kinds or {}).get(name, kind if array.ndim > 1 else "F32")
            data = encode(np.ascontiguousarray(array), stored)
            writer.add_tensor(name, data, raw_dtype=Q[stored])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return target

    def copy(self, target: Path, tensors: dict[str, Any] | None = None, **config: Any) -> Path:
        """A copy of the folder holding ``tensors`` (default: its own), with config changes."""
        shutil.copytree(self.folder, target, ignore=shutil.ignore_patterns("*.safetensors"))
        values = self.tensors if tensors is None else tensors
        as_torch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()}
        write_safetensors(target / "model.safetensors", as_torch)
        if config:
            path = target / "config.json"
            path.write_text(json.dumps(json.loads(path.read_text()) | config))
        return target


def encode(array: Any, kind: str) -> Any:
    if kind == "I32":  # a type the engine cannot read
        return np.zeros(array.shape, dtype=np.int32)
    return gguf.quants.quantize(array, Q[kind])


def round_trip(array: Any, kind: str) -> Any:
    """The float32 values a tensor has after being stored as ``kind`` (1-D tensors stay F32)."""
    if array.ndim == 1:
        return array
    stored = gguf.quants.quantize(array, Q[kind])
    return gguf.quants.dequantize(stored, Q[kind]).reshape(array.shape).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
         tiny_gqa_checkpoint: Path) -> Any:  # fmt: skip
    """``tiny("mha")`` / ``tiny("gqa")``: a Tiny of that checkpoint, built once."""
    cache: dict[str, Tiny] = {}

    def get(name: str) -> Tiny:
        if name not in cache:
            source = {"mha": tiny_checkpoint, "gqa": tiny_gqa_checkpoint}[name]
            folder = tmp_path_factory.mktemp(name) / "tiny"
            shutil.copytree(source, folder)
            cache[name] = Tiny(folder)
        return cache[name]

    return get


def logits(path: Path) -> Any:
    return sequence_logits(load_model(path, "float32"), IDS)


def greedy(path: Path) -> list[list[int]]:
    engine = Engine.load(path, dtype="float32")
    requests = [GenerationRequest(IDS[:n], GREEDY, 0) for n in (14, 25)]
    return [g.token_ids for g in engine.generate(requests)]


# --- tensor types, names and layout -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_0"])
@pytest.mark.parametrize("model", ["mha", "gqa"])
def test_gguf_logits_equal_the_folder_holding_the_same_values(
    kind: str, model: str, tiny: Any, tmp_path: Path
) -> None:
    checkpoint = tiny(model)
    path = checkpoint.write(tmp_path / f"model-{kind}.gguf", kind)
    values = {name: round_trip(array, kind) for name, array in checkpoint.tensors.items()}
    reference = checkpoint.copy(tmp_path / "reference", values)
    torch.testing.assert_close(logits(path), logits(reference), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0"])
def test_gguf_logits_are_close_to_the_fp32_folder(kind: str, tiny: Any, tmp_path: Path) -> None:
    checkpoint = tiny("mha")
    path = checkpoint.write(tmp_path / f"model-{kind}.gguf", kind)
    ours, reference = logits(path), logits(checkpoint.folder)
    error, scale = float((ours - reference).abs().max()), float(reference.abs().max())
    print(f"\n{kind}: max |logit error| {error:.2e} (logits up to {scale:.2f})")
    assert error <= 2 * ROUNDING[kind] * scale
    # A random model has near-ties: 1 position of 25 flips in Q8_0.
    agreement = float((ours.argmax(-1) == reference.argmax(-1)).float().mean())
    assert agreement == 1.0 if kind in ("F32", "F16") else agreement >= 0.9


@pytest.mark.parametrize("model", ["mha", "gqa"])
def test_greedy_tokens_equal_the_fp32_folder_for_f32_and_f16(
    model: str, tiny: Any, tmp_path: Path
) -> None:
    checkpoint = tiny(model)
    expected = greedy(checkpoint.folder)
    assert greedy(checkpoint.write(tmp_path / "model-F32.gguf")) == expected
    assert greedy(checkpoint.f16) == expected  # the file tipo convert wrote


def test_a_gguf_without_output_weight_uses_token_embd(tiny: Any, tmp_path: Path) -> None:
    checkpoint = tiny("mha")
    path = checkpoint.write(tmp_path / "tied.gguf", drop=("output.weight",))
    tied = checkpoint.copy(tmp_path / "tied", tie_word_embeddings=True)
    assert load_model(path, "float32").config.tie_word_embeddings
    torch.testing.assert_close(logits(path), logits(tied), rtol=0, atol=0)
    assert not torch.equal(logits(path), logits(checkpoint.folder))  # the head did change


def test_the_header_reader_agrees_with_the_gguf_package(tiny: Any) -> None:
    path = tiny("gqa").f16
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    for tensor in theirs.tensors:
        entry = ours.tensors[tensor.name]
        shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists dims fastest-first
        assert (entry.type_name, entry.shape, entry.offset, entry.nbytes) == (
            tensor.tensor_type.name, shape, tensor.data_offset, tensor.n_bytes)  # fmt: skip
    assert len(ours.tensors) == len(theirs.tensors)
    for field in theirs.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value, mine = field.contents(), ours.metadata[field.name]
        if isinstance(value, float):  # ours: the shortest decimal of the same float32
            assert np.float32(mine) == np.float32(value), field.name
        else:
            assert mine == value, field.name


def test_q8_0_dequantisation_matches_the_gguf_package() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((8, 256)).astype(np.float32) * rng.uniform(1e-3, 30, (8, 1))
    values[0, :32] = 0  # an all-zero block has scale 0
    stored = gguf.quants.quantize(values.astype(np.float32), Q.Q8_0)
    ours = dequantize_q8_0(torch.from_numpy(stored.reshape(-1).copy())).numpy()
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(stored, Q.Q8_0).reshape(-1))


def test_unpermute_rotary_inverts_the_converter_permutation() -> None:
    rows = np.arange(24 * 3).reshape(24, 3)  # 3 heads of 8 rows
    assert np.array_equal(unpermute_rotary(permute_rotary(rows, 3), 3), rows)
    tensor = torch.arange(32.0).reshape(32, 1)
    assert torch.equal(unpermute_rotary(permute_rotary(tensor, 2), 2), tensor)


# --- loading through the backends ----------------------------------------------------------------


def bare_copy(path: Path, directory: Path) -> Path:
    """The GGUF file alone in a folder, as users of the reference extension have it."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(path, directory / "TIPO-200M-ft2_TIPO-200M-ft2-F16.gguf"))


def test_tipo_load_expands_with_a_bare_gguf_on_the_torch_backend(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were absent
    path = bare_copy(tiny("gqa").f16, tmp_path / "models" / "kgen")
    assert resolve(path).tokenizer_dir is None
    for backend in ("torch", "auto"):
        with TIPO.load(path, backend=backend) as tipo:
            assert tipo.backend.name == "torch"
            result = tipo.expand("1girl, scenery", nl="a girl on a hill", seed=1)
        assert result.prompt and result.steps


def test_auto_picks_llama_cpp_when_importable_and_torch_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    assert auto_backend("gguf") == "llamacpp"
    assert auto_backend("hf") == "torch"
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert auto_backend("gguf") == "torch"
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="no backend for gguf") as error:
        auto_backend("gguf")
    assert "tipo-prompt[engine]" in (error.value.hint or "")


def test_explicit_torch_backend_runs_a_gguf_in_any_weight_format(tiny: Any) -> None:
    checkpoint = resolve(tiny("mha").f16)
    backend = load_backend("torch", checkpoint, dtype="int8")
    request = GenerationRequest(IDS[:14], GREEDY.with_(max_new_tokens=4), 0)
    assert len(backend.generate([request])[0].token_ids) == 4
    backend.close()


# --- errors ---------------------------------------------------------------------------------------


def _error(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as error:
        load_model(path, "float32")
    assert error.value.hint, error.value
    return error.value


def test_other_architectures_and_mixture_of_experts_are_refused(tiny: Any, tmp_path: Path) -> None:
    checkpoint = tiny("mha")
    other = _error(checkpoint.write(tmp_path / "qwen.gguf", arch="qwen2moe"))
    assert "'qwen2moe'" in other.message and "TIPO v1 LLaMA" in other.message
    assert "mixture-of-experts" in (other.hint or "")
    moe = _error(checkpoint.write(tmp_path / "moe.gguf", metadata={"llama.expert_count": 8}))
    assert "mixture-of-experts" in moe.message and "8 experts" in moe.message


def test_an_unsupported_tensor_type_names_the_tensor(tiny: Any, tmp_path: Path) -> None:
    path = tiny("mha").write(tmp_path / "i32.gguf", kinds={"blk.1.ffn_norm.weight": "I32"})
    error = _error(path)
    assert "blk.1.ffn_norm.weight" in error.message and "I32" in error.message


def test_a_missing_tensor_is_named(tiny: Any, tmp_path: Path) -> None:
    error = _error(tiny("mha").write(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",)))
    assert "lacks 1 tensor" in error.message and "blk.1.ffn_up.weight" in error.message


@pytest.mark.parametrize("keep", [10, 50_000, 2_000_000, -1000])
def test_truncated_and_foreign_files_are_checkpoint_errors(
    keep: int, tiny: Any, tmp_path: Path
) -> None:
    """Cut in the magic, in the vocabulary, in the tensor data, just before the end."""
    data = tiny("mha").f16.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    message = _error(path).message
    assert any(text in message for text in ("truncated", "ends inside", "not a GGUF")), message
    path.write_bytes(b"PK\x03\x04" + data[4:])  # not a GGUF at all
    assert "not a GGUF file" in _error(path).message


def test_a_missing_gguf_package_names_the_extra(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="'gguf'") as error:
        load_model(tiny("mha").f16)
    assert "tipo-prompt[engine]" in (error.value.hint or "")


def test_metadata_that_contradicts_the_tensors_is_refused(tiny: Any, tmp_path: Path) -> None:
    path = tiny("mha").write(tmp_path / "bad.gguf", metadata={"llama.feed_forward_length": 96})
    assert "do not match its metadata" in _error(path).message


# --- the tokenizer rebuilt from a bare GGUF -------------------------------------------------------

FRAGMENTS = [
    "1girl", "solo", "long_hair", "looking at viewer", "spark \\(pokemon go\\)", "(blue sky:1.2)",
    "<lora:foo:0.7>", "BREAK", "rating: general", "aspect ratio: 0.8", "target:", "tag:",
    "A girl stands on a hill at sunset.", "The quick brown fox jumps over the lazy dog!",
    "日本語のテキスト", "中文字符", "한국어", "Привет, мир", "naïve café résumé", "Ærøskøbing",
    "😀", "👩‍👩‍👧‍👦", "🇯🇵", "𠀋𡈽", "✨🌸", "0", "42", "3.14159", "1920x1080", "2024-01-01",
    "▁", "▁▁x", "<unk>", "<s>", "</s>", "<0x0A>", "\u200b", "\x00", "\x7f", "é", "e\u0301",
    "...", "?!", "—", "“quoted”", "tab\tseparated", "CRLF\r\n", "#hashtag", "@user", "a_b-c.d",
    *TIPO_TOKENS,
]  # fmt: skip
SEPARATORS = ["", " ", "  ", ", ", ",", "\n", "\n\n", " \n ", "\t", "   "]


def varied_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    strings = ["", " ", "\n", *FRAGMENTS, *(f" {f} " for f in FRAGMENTS)]
    while len(strings) < count:
        parts = rng.choices(FRAGMENTS, k=rng.randint(1, 8))
        text = "".join(p + rng.choice(SEPARATORS) for p in parts)
        strings.append(rng.choice(["", " ", "  ", "\n"]) + text + rng.choice(["", " ", "\n"]))
    return strings


@pytest.fixture(scope="module")
def rebuilt(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> TipoTokenizer:
    """The tokenizer of the tiny checkpoint's F16 file alone in a folder (rebuilt from it)."""
    path = bare_copy(tiny("mha").f16, tmp_path_factory.mktemp("bare"))
    return resolve(path).load_tokenizer()


def test_rebuilt_tokenizer_gives_the_ids_and_text_of_the_folder(
    rebuilt: TipoTokenizer, tiny: Any
) -> None:
    original = TipoTokenizer.from_dir(tiny("mha").folder)
    assert rebuilt.settings == original.settings
    assert (rebuilt.vocab_size, rebuilt.bos_id, rebuilt.eos_id, rebuilt.pad_id) == (
        32013, 1, 2, 2)  # fmt: skip
    strings = varied_strings(3000)
    for text in strings:
        ids = original.encode(text)
        assert rebuilt.encode(text) == ids, text
        assert rebuilt.decode(ids) == original.decode(ids), text
        assert rebuilt.decode(ids, skip_special=True) == original.decode(ids, skip_special=True)
    rng = random.Random(1)
    for _ in range(300):  # any ids: byte pieces that split characters, control tokens
        ids = [rng.randrange(32013) for _ in range(rng.randint(1, 20))]
        assert rebuilt.decode(ids) == original.decode(ids)


def test_the_rebuilt_model_has_the_llama_pieces_and_settings(rebuilt: TipoTokenizer) -> None:
    import sentencepiece

    llama = sentencepiece.SentencePieceProcessor(model_file=str(llama_tokenizer_model()))
    ids = list(range(32000))
    for query in ("id_to_piece", "get_score", "is_byte", "is_control", "is_unknown"):
        assert getattr(rebuilt._sp, query)(ids) == getattr(llama, query)(ids), query
    model = _fields(llama_tokenizer_model().read_bytes())
    trainer, normalizer = _fields(model[2][0]), _fields(model[3][0])
    normalizer.setdefault(5, [1])  # escape_whitespaces: unset in the LLaMA file, default true
    for spec, ours in ((trainer, LLAMA_TRAINER_SPEC), (normalizer, LLAMA_NORMALIZER_SPEC)):
        for number, value in ours:
            stored = spec.get(number, [None])[0]
            expected = value.encode() if isinstance(value, str) else int(value) % 2**64
            assert stored == expected, (number, stored, value)


def _fields(message: bytes) -> dict[int, list[Any]]:
    """A protobuf message's fields by number (varints as ints, the rest as bytes)."""
    fields: dict[int, list[Any]] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = message[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        else:
            size = {1: 8, 5: 4}.get(wire) or varint()
            value, at = message[at : at + size], at + size
        fields.setdefault(number, []).append(value)
    return fields


def test_a_foreign_vocabulary_is_not_rebuilt(tiny: Any, tmp_path: Path) -> None:
    checkpoint = tiny("mha")
    fields = {key: value for key, value, *_ in checkpoint.fields}
    scores, tokens = fields["tokenizer.ggml.scores"], fields["tokenizer.ggml.tokens"]
    changes = [
        ("tokenizer.ggml.scores", [*scores[:500], scores[500] + 1.0, *scores[501:]],
         "pieces are not the LLaMA tokenizer's"),
        ("tokenizer.ggml.tokens", [*tokens[:-1], "<|other|>"], "not the 13 TIPO tokens"),
        ("tokenizer.ggml.model", "gpt2", "not 'llama'"),
    ]  # fmt: skip
    for index, (key, value, reason) in enumerate(changes):
        (tmp_path / str(index)).mkdir()  # alone in a folder: no tokenizer.model beside it
        target = checkpoint.write(tmp_path / str(index) / "x.gguf", metadata={key: value})
        with pytest.raises(CheckpointError, match=reason) as error:
            resolve(target).load_tokenizer()
        assert "tokenizer.model" in (error.value.hint or "")


# --- against llama.cpp on the same file (when llama-cpp-python is installed) ---------------------


def _llama_cpp_logits(path: Path) -> Any:
    pytest.importorskip("llama_cpp")
    backend = load_backend("llamacpp", resolve(path), n_threads=1)
    try:
        return torch.from_numpy(backend.sequence_logits(list(IDS)))
    finally:
        backend.close()


@pytest.mark.parametrize("model", ["mha", "gqa"])
def test_f16_logits_match_llama_cpp_on_the_same_file(model: str, tiny: Any) -> None:
    """llama.cpp rounds activations to F16 in its F16 matrix products (~3e-4 here, see
    test_llamacpp.py); our engine computes in fp32 from the same F16 weights."""
    path = tiny(model).f16
    theirs, ours = _llama_cpp_logits(path), logits(path)
    error = float((ours - theirs).abs().max())
    print(f"\nF16 file, ours fp32 vs llama.cpp: max |logit error| {error:.2e}")
    assert error < 2e-3
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_k_quants_written_by_llama_cpp_match_llama_cpp(tmp_path: Path) -> None:
    """A Q4_K_M file from llama.cpp's own quantizer (rows of 256, so Q4_K and Q6_K are used),
    read through gguf.quants, against llama.cpp on the same file. llama.cpp rounds activations
    to 8 bits for quantised products: on a Q8_0 file of this model (a type whose decoding is
    pinned exactly above) it differs from us by 0.013 in logits of up to 1.6; on the Q4_K_M
    file by 0.022, against 0.19 for the quantisation itself. A decoding bug would be of the
    size of the latter."""
    pytest.importorskip("llama_cpp")
    folder = make_tiny_checkpoint(tmp_path / "wide", hidden_size=256, num_heads=4,
                                  num_kv_heads=2, intermediate_size=256, num_layers=1)  # fmt: skip
    path = convert(folder, tmp_path / "model-Q4_K_M.gguf", "Q4_K_M")
    from tipo.convert import tensor_types

    assert {"Q4_K", "Q6_K"} <= set(tensor_types(path))
    theirs, ours, exact = _llama_cpp_logits(path), logits(path), logits(folder)
    error, quantisation = float((ours - theirs).abs().max()), float((ours - exact).abs().max())
    print(f"\nQ4_K_M: ours vs llama.cpp {error:.2e}, ours vs fp32 folder {quantisation:.2e}")
    assert error < 0.03 * float(theirs.abs().max())
    assert error < quantisation / 4
