"""Finding a checkpoint: a local Hugging Face folder, a GGUF file, or a Hub id.

Hub ids are resolved from the local Hugging Face cache first, so a model downloaded once works
offline; otherwise it is downloaded (with huggingface_hub's progress bar on stderr). A model that
is neither here nor downloadable is a ModelNotFoundError whose hint says how to get it.

A GGUF file runs on llama.cpp when llama-cpp-python is installed, else on our torch engine
(backends/__init__.py). Either way we encode prompts with the training-time tokenizer
(protocol doc §3), never with llama.cpp's reading of the GGUF vocabulary. Its
``tokenizer.model`` is looked for in the GGUF's own folder, then in the cached Hub snapshot of
the model a released file name belongs to; a bare TIPO GGUF without either (as users of the
reference extension have) gets the tokenizer rebuilt from the file's own vocabulary
(gguf_tokenizer.py), which gives the same ids. ``Checkpoint.load_tokenizer`` is the one place
that decides. A Hub GGUF is named ``repo:file.gguf``
(``KBlueLeaf/TIPO-200M-ft:TIPO-200M-ft-F16.gguf``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import CheckpointError, MissingDependencyError, ModelNotFoundError, first_line

if TYPE_CHECKING:
    from .tokenizer import TipoTokenizer

DEFAULT_MODEL = "KBlueLeaf/TIPO-200M-ft"
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]
# What our tokenizer reads (TipoTokenizer.from_dir); tokenizer.model is the one required file.
TOKENIZER_FILES = [
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    size: str
    description: str
    gguf: tuple[str, ...] = ()
    supported: bool = True


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        "KBlueLeaf/TIPO-200M-ft", "200M", "fine-tuned 200M (default)", ("TIPO-200M-ft-F16.gguf",)
    ),
    KnownModel(
        "KBlueLeaf/TIPO-200M-ft2", "200M", "second fine-tune of 200M", ("TIPO-200M-ft2-F16.gguf",)
    ),
    KnownModel(
        "KBlueLeaf/TIPO-200M", "200M", "base model, 40B tokens", ("TIPO-200M-40Btok-F16.gguf",)
    ),
    KnownModel("KBlueLeaf/TIPO-500M-ft", "500M", "fine-tuned 500M", ("TIPO-500M-ft-F16.gguf",)),
    KnownModel("KBlueLeaf/TIPO-500M", "500M", "base model", ("TIPO-500M_epoch5-F16.gguf",)),
    KnownModel("KBlueLeaf/TIPO-100M", "100M", "smallest model", ("TIPO-100M-F16.gguf",)),
    KnownModel(
        "KBlueLeaf/TIPOv2-1B-A200M",
        "1B MoE",
        "v2 mixture of experts: not supported yet",
        supported=False,
    ),
    KnownModel(
        "KBlueLeaf/TIPO-v2.1-1B-A200M",
        "1B MoE",
        "v2.1 mixture of experts: not supported yet",
        supported=False,
    ),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# ``repo_or_known_name:file.gguf``
_HUB_GGUF = re.compile(r"^(?P<model>[^:]+):(?P<file>[\w.-]+\.gguf)$")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint. ``path`` is a folder for ``hf`` and a file for ``gguf``;
    ``tokenizer_dir`` holds tokenizer.model (the folder itself for ``hf``; for ``gguf`` the
    file's folder or a Hub snapshot, or None: then the tokenizer is rebuilt from the file)."""

    path: Path
    format: Literal["hf", "gguf"]
    source: str
    tokenizer_dir: Path | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source

    def load_tokenizer(self) -> TipoTokenizer:
        """The training-time tokenizer: from ``tokenizer_dir``, or, for a GGUF file without
        one, rebuilt from the file's vocabulary (only a TIPO vocabulary is accepted)."""
        from .tokenizer import TipoTokenizer

        if self.tokenizer_dir is not None:
            return TipoTokenizer.from_dir(self.tokenizer_dir)
        if self.format == "gguf":
            from .gguf_tokenizer import tokenizer_from_gguf

            return tokenizer_from_gguf(self.path)
        raise CheckpointError(
            f"{self.source} has no tokenizer", hint="pass the folder that holds tokenizer.model"
        )


def known_model(spec: str) -> KnownModel | None:
    """Exact repo id, or the name without owner, case-insensitive (``tipo-200m-ft``)."""
    for model in KNOWN_MODELS:
        if spec.lower() in (model.repo_id.lower(), model.repo_id.split("/")[1].lower()):
            return model
    return None


def resolve(spec: str | Path | None = None, *, offline: bool = False) -> Checkpoint:
    """Resolve a model spec: a folder, a ``.gguf`` file, a Hub id or a known model name."""
    spec = str(spec or DEFAULT_MODEL)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Checkpoint(path, "hf", spec, path, read_config(path))
    if path.is_file() and path.suffix == ".gguf":
        return Checkpoint(path, "gguf", spec, gguf_tokenizer_dir(path))
    hub_gguf = _HUB_GGUF.match(spec)
    if hub_gguf:
        return resolve_hub_gguf(hub_gguf["model"], hub_gguf["file"], offline=offline)
    if path.suffix == ".gguf":
        raise ModelNotFoundError(
            f"no GGUF file at {spec!r}",
            hint="check the path, or name a Hub file as repo:file.gguf "
            "(e.g. KBlueLeaf/TIPO-200M-ft:TIPO-200M-ft-F16.gguf)",
        )
    repo_id = _hub_repo(spec)
    if not _HUB_ID.match(repo_id):
        raise ModelNotFoundError(
            f"no model at {spec!r}: not a folder, a .gguf file or a Hub id like {DEFAULT_MODEL}",
            hint="check the path; `tipo models` lists the known checkpoints",
        )
    folder = hub_snapshot(repo_id, offline=offline)
    return Checkpoint(folder, "hf", repo_id, folder, read_config(folder))


def _hub_repo(spec: str) -> str:
    """The repo id of a Hub id or known model name; MoE models are refused."""
    model = known_model(spec)
    repo_id = model.repo_id if model else spec
    if model and not model.supported:
        raise CheckpointError(
            f"{repo_id} is a mixture-of-experts model this version does not run",
            hint=f"use {DEFAULT_MODEL} or another TIPO v1 model (tipo models lists them)",
        )
    return repo_id


def resolve_hub_gguf(model: str, filename: str, *, offline: bool = False) -> Checkpoint:
    """A GGUF file of a Hub repo, with the repo's tokenizer files in the same snapshot."""
    repo_id = _hub_repo(model)
    if not _HUB_ID.match(repo_id):
        raise ModelNotFoundError(
            f"{model!r} is not a Hub id like {DEFAULT_MODEL} or a known model name",
            hint="`tipo models` lists the known checkpoints and their GGUF files",
        )
    wanted = [filename, "tokenizer.model"]
    folder = hub_snapshot(
        repo_id, offline=offline, allow_patterns=[filename, *TOKENIZER_FILES], required=wanted
    )
    for name in wanted:
        if not (folder / name).is_file():
            raise ModelNotFoundError(
                f"{repo_id} has no file {name}",
                hint=_gguf_names_hint(known_model(repo_id)),
            )
    return Checkpoint(folder / filename, "gguf", f"{repo_id}:{filename}", folder)


def _gguf_names_hint(model: KnownModel | None) -> str:
    if model and model.gguf:
        return f"its GGUF files: {', '.join(model.gguf)}"
    return "check the file name on the model page"


def gguf_tokenizer_dir(gguf_file: Path) -> Path | None:
    """The folder whose ``tokenizer.model`` encodes for ``gguf_file``: the file's own folder,
    else, for a released TIPO GGUF file name, the cached snapshot of its Hub repo (never a
    download: the user named a local file); None if neither has one (the tokenizer is then
    rebuilt from the file: ``Checkpoint.load_tokenizer``)."""
    if (gguf_file.parent / "tokenizer.model").is_file():
        return gguf_file.parent
    owner = next((m for m in KNOWN_MODELS if gguf_file.name in m.gguf), None)
    if owner is None:
        return None
    try:
        return hub_snapshot(
            owner.repo_id,
            offline=True,
            allow_patterns=TOKENIZER_FILES,
            required=["tokenizer.model"],
        )
    except (ModelNotFoundError, MissingDependencyError):  # not cached, or no huggingface_hub
        return None


def hub_snapshot(
    repo_id: str,
    *,
    offline: bool = False,
    allow_patterns: list[str] | None = None,
    required: list[str] | None = None,
) -> Path:
    """The cached snapshot of ``repo_id``, downloading what is missing unless ``offline``.

    ``allow_patterns`` selects the files (default ``HUB_FILES``); a cached snapshot that lacks
    one of the ``required`` files counts as missing."""
    patterns = HUB_FILES if allow_patterns is None else allow_patterns
    try:
        import huggingface_hub as hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise MissingDependencyError.for_extra(
            "huggingface_hub", "engine", "Downloading models from the Hugging Face Hub"
        ) from None
    try:
        cached = Path(
            hub.snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        )
        if all((cached / name).is_file() for name in required or ()):
            return cached
        if offline:
            raise _not_downloaded(repo_id, "offline mode is on")
    except (LocalEntryNotFoundError, FileNotFoundError):
        if offline:
            raise _not_downloaded(repo_id, "offline mode is on") from None
    try:
        return Path(hub.snapshot_download(repo_id, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise _not_downloaded(repo_id, first_line(error)) from None


def _not_downloaded(repo_id: str, reason: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{repo_id} is not in the local Hugging Face cache and could not be downloaded ({reason}).",
        hint=(
            f"on a machine with network run `tipo download {repo_id}` (or "
            f"`huggingface-cli download {repo_id}`) and copy the cache or the folder here, then "
            "pass the folder with --model /path/to/folder"
        ),
    )


def is_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def read_config(folder: Path) -> dict[str, Any]:
    """Read and check ``config.json``: the folder must describe a LLaMA causal LM."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{folder} has no config.json: not a Hugging Face checkpoint folder",
            hint="pass the folder that holds config.json and model.safetensors",
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{config_file} is not valid JSON ({error})",
            hint="the download may be incomplete: delete the folder and download it again",
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} must hold a JSON object")
    if config.get("model_type") != "llama":
        raise CheckpointError(
            f"{folder} holds a {config.get('model_type')!r} model; TIPO v1 models are 'llama'",
            hint="use a TIPO v1 checkpoint (tipo models lists them)",
        )
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder (one file, or the shards of an index)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid shard index ({error})") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder} lacks shards: {', '.join(missing)}")
        return [folder / n for n in names]
    raise CheckpointError(
        f"{folder} has no model.safetensors",
        hint="TIPO checkpoints ship model.safetensors; download the full folder again",
    )


__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "TOKENIZER_FILES",
    "Checkpoint",
    "KnownModel",
    "gguf_tokenizer_dir",
    "hub_snapshot",
    "is_cached",
    "known_model",
    "read_config",
    "resolve",
    "resolve_hub_gguf",
    "weight_files",
]
