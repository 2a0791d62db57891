"""Where a host's model names are found (tipo.hosts.models), the cache of loaded models, and
the device a saved ``cuda`` runs on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reference_nodes import REFERENCE_MODEL_LIST
from tipo.errors import CheckpointError, ModelNotFoundError
from tipo.hosts.models import (
    DEFAULT_HOST_MODEL,
    REFERENCE_MODEL_NAMES,
    ModelCache,
    ModelLocator,
    ModelName,
    pick_device,
)


def test_names_are_a_superset_of_every_reference_list():
    assert REFERENCE_MODEL_NAMES[:16] == tuple(REFERENCE_MODEL_LIST)  # the reference's order
    assert "KBlueLeaf/TIPO-200M-dev" in REFERENCE_MODEL_NAMES  # its first versions' model
    assert DEFAULT_HOST_MODEL in REFERENCE_MODEL_NAMES


@pytest.mark.parametrize(
    ("name", "repo", "file"),
    [("KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf", "KBlueLeaf/TIPO-200M-ft2",
      "TIPO-200M-ft2-F16.gguf"),
     ("KBlueLeaf/TIPO-500M", "KBlueLeaf/TIPO-500M", None),
     ("my-tipo.gguf", None, "my-tipo.gguf"),
     ("sub/my-tipo.gguf", None, "sub/my-tipo.gguf"),
     ("my-finetune", None, "my-finetune")],
)  # fmt: skip
def test_model_names_parse(name, repo, file):
    assert ModelName.parse(name) == ModelName(repo, file)


def _gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")  # located, not loaded: the content does not matter here
    return path


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "tokenizer.model").write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "stored",
    ["TIPO-200M-ft2_TIPO-200M-ft2-F16.gguf",  # how the reference saved downloads (#115)
     "TIPO-200M-ft2-F16.gguf",
     "TIPO-200M-ft2/TIPO-200M-ft2-F16.gguf"],
)  # fmt: skip
def test_a_gguf_name_finds_the_file_however_it_was_stored(tmp_path, stored):
    path = _gguf(tmp_path / "kgen" / stored)
    (path.parent / "tokenizer.model").write_bytes(b"")
    locator = ModelLocator([tmp_path / "other", tmp_path / "kgen"], offline=True)
    checkpoint = locator.locate("KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf")
    assert checkpoint.format == "gguf" and checkpoint.path == path


def test_a_repo_id_finds_a_checkpoint_folder(tmp_path):
    folder = _folder(tmp_path / "kgen" / "TIPO-200M-ft")
    checkpoint = ModelLocator([tmp_path / "kgen"], offline=True).locate("KBlueLeaf/TIPO-200M-ft")
    assert checkpoint.format == "hf" and checkpoint.path == folder


def test_local_files_are_offered_once(tmp_path):
    kgen = tmp_path / "kgen"
    _gguf(kgen / "TIPO-200M-ft2_TIPO-200M-ft2-F16.gguf")  # named by a reference entry
    _gguf(kgen / "my-tipo-Q8_0.gguf")
    _gguf(kgen / "converted" / "model-F16.gguf")
    _folder(kgen / "my-finetune")
    choices = ModelLocator([kgen]).choices()
    assert choices[: len(REFERENCE_MODEL_NAMES)] == list(REFERENCE_MODEL_NAMES)
    assert choices[len(REFERENCE_MODEL_NAMES) :] == [
        "converted/model-F16.gguf", "my-finetune", "my-tipo-Q8_0.gguf"]  # fmt: skip


def test_a_missing_model_says_where_to_put_it(tmp_path):
    locator = ModelLocator([tmp_path / "models" / "kgen"], offline=True)
    with pytest.raises(ModelNotFoundError) as error:
        locator.locate("KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf")
    hint = error.value.hint
    assert "TIPO-200M-ft2-F16.gguf" in hint and str(tmp_path / "models" / "kgen") in hint
    assert "https://huggingface.co/KBlueLeaf/TIPO-200M-ft2" in hint
    with pytest.raises(ModelNotFoundError, match=r"no model 'nothing\.gguf'"):
        locator.locate("nothing.gguf")


def test_v2_models_are_refused_clearly(tmp_path):
    _gguf(tmp_path / "TIPO-v2.1-1B-A200M_TIPO-v2.1-1B-A200M-f16.gguf")
    with pytest.raises(CheckpointError, match="mixture-of-experts") as error:
        ModelLocator([tmp_path]).locate(REFERENCE_MODEL_NAMES[0])
    assert DEFAULT_HOST_MODEL in error.value.hint


class FakeModel:
    def __init__(self, key):
        self.key, self.closed = key, False

    def close(self):
        self.closed = True


def _checkpoint(tmp_path: Path, name: str):
    from tipo.checkpoints import Checkpoint

    return Checkpoint(tmp_path / name, "hf", name, tmp_path / name)


def test_cache_keeps_one_model_and_closes_the_one_it_replaces(tmp_path):
    loads = []

    def loader(checkpoint, device, dtype):
        loads.append((checkpoint.source, device))
        return FakeModel(checkpoint.source)

    cache = ModelCache(loader)
    a = cache.get(_checkpoint(tmp_path, "a"), "cpu")
    assert cache.get(_checkpoint(tmp_path, "a"), "cpu") is a
    b = cache.get(_checkpoint(tmp_path, "b"), "cpu")
    assert a.closed and not b.closed and len(cache) == 1
    cache.get(_checkpoint(tmp_path, "b"), "cuda")  # another device is another model
    assert loads == [("a", "cpu"), ("b", "cpu"), ("b", "cuda")]
    assert cache.unload() == 1 and len(cache) == 0


def test_cache_can_hold_several(tmp_path):
    cache = ModelCache(lambda checkpoint, **_: FakeModel(checkpoint.source), capacity=2)
    a = cache.get(_checkpoint(tmp_path, "a"), "cpu")
    cache.get(_checkpoint(tmp_path, "b"), "cpu")
    assert not a.closed
    cache.get(_checkpoint(tmp_path, "a"), "cpu")  # a is now the most recent
    cache.get(_checkpoint(tmp_path, "c"), "cpu")
    assert [key[0] for key in cache.loaded()] == [str(tmp_path / "a"), str(tmp_path / "c")]


def test_saved_cuda_runs_where_the_host_runs(caplog):
    assert pick_device("cpu", "cuda:0") == "cpu"
    assert pick_device("cuda", "cuda:1") == "cuda:1"  # ComfyUI --cuda-device 1
    with caplog.at_level(logging.WARNING, logger="tipo"):
        assert pick_device("cuda", "cpu") == "cpu"  # ComfyUI --cpu, or no GPU
    assert "CUDA is not available" in caplog.text
