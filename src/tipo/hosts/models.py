"""Which checkpoint a host's model name means, and the models a host keeps loaded.

Names are the reference extension's model list (``"<repo> | <file>.gguf"`` entries, then bare
repo ids; :data:`REFERENCE_MODEL_NAMES`) plus every GGUF file and Hugging Face folder found in
the host's model folders. A saved ComfyUI workflow or WebUI setting stores the exact string, so
every name the reference ever offered stays valid.

Where a name is looked for, in order:

1. the host's model folders (ComfyUI: every folder registered for ``kgen``, ``models/kgen`` by
   default; SD-WebUI: ``models/kgen`` and the extension's ``models``). ``repo | file.gguf`` is
   the file as the reference saved it (``<repo-basename>_<file>``), or ``<file>``, or
   ``<repo-basename>/<file>``; a repo id is a folder ``<repo-basename>`` with config.json;
2. the Hugging Face cache, downloading what is missing unless offline.

A name that is in neither gives a :class:`~tipo.errors.ModelNotFoundError` that says where to
put the file and where to download it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoints import Checkpoint, known_model, resolve
from ..errors import CheckpointError, ModelNotFoundError

if TYPE_CHECKING:
    from ..pipeline import TIPO

log = logging.getLogger("tipo")

# (repo, GGUF file) pairs the reference offered, newest list first (tipo-kgen 0.3.1 and the
# extension's HEAD; older lists are subsets of these).
_REFERENCE_GGUF: tuple[tuple[str, str], ...] = (
    ("KBlueLeaf/TIPO-v2.1-1B-A200M", "TIPO-v2.1-1B-A200M-f16.gguf"),
    ("KBlueLeaf/TIPOv2-1B-A200M", "TIPOv2-1B-A200M-f16.gguf"),
    ("KBlueLeaf/TIPO-500M-ft", "TIPO-500M-ft-F16.gguf"),
    ("KBlueLeaf/TIPO-200M-ft2", "TIPO-200M-ft2-F16.gguf"),
    ("KBlueLeaf/TIPO-200M-ft", "TIPO-200M-ft-F16.gguf"),
    ("KBlueLeaf/TIPO-500M", "TIPO-500M_epoch5-F16.gguf"),
    ("KBlueLeaf/TIPO-200M", "TIPO-200M-40Btok-F16.gguf"),
    ("KBlueLeaf/TIPO-100M", "TIPO-100M-F16.gguf"),
)
# Bare repo ids: the reference's, then the development repo of its first versions.
_REFERENCE_REPOS = (*dict.fromkeys(repo for repo, _ in _REFERENCE_GGUF), "KBlueLeaf/TIPO-200M-dev")
REFERENCE_MODEL_NAMES: tuple[str, ...] = (
    *(f"{repo} | {file}" for repo, file in _REFERENCE_GGUF),
    *_REFERENCE_REPOS,
)
# The reference defaults to its first entry, a TIPO v2 mixture-of-experts model this version
# cannot run; ours is the best v1 model, the reference's default before v2.
DEFAULT_HOST_MODEL = "KBlueLeaf/TIPO-500M-ft | TIPO-500M-ft-F16.gguf"
HUB_URL = "https://huggingface.co/{repo}"


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: a Hub repo with an optional GGUF file, or a local entry."""

    repo: str | None
    file: str | None

    @classmethod
    def parse(cls, name: str) -> ModelName:
        if " | " in name:
            repo, file = (part.strip() for part in name.split(" | ", 1))
            return cls(repo or None, file)
        if "/" in name and not name.endswith((".gguf", "/")) and name.count("/") == 1:
            return cls(name, None)
        return cls(None, name)

    @property
    def basename(self) -> str:
        return (self.repo or "").rsplit("/", 1)[-1]


class ModelLocator:
    """Maps host model names to checkpoints (see the module docstring)."""

    def __init__(self, folders: Iterable[str | Path], *, offline: bool = False) -> None:
        self.folders = tuple(Path(f) for f in folders)
        self.offline = offline

    def choices(self) -> list[str]:
        """The reference's names, then local files and folders that none of them names."""
        covered = {self._local(ModelName.parse(n)) for n in REFERENCE_MODEL_NAMES}
        extra = [name for name, path in self._local_entries() if path not in covered]
        return [*REFERENCE_MODEL_NAMES, *sorted(extra)]

    def locate(self, name: str) -> Checkpoint:
        """The checkpoint of ``name``: local first, then the Hugging Face cache (or Hub)."""
        parsed = ModelName.parse(name)
        _refuse_unsupported(parsed)
        local = self._local(parsed)
        if local is not None:
            return resolve(local)
        if parsed.repo is None:
            raise ModelNotFoundError(
                f"no model {name!r} in {self._where()}",
                hint="put the .gguf file or the Hugging Face folder there",
            )
        spec = f"{parsed.repo}:{parsed.file}" if parsed.file else parsed.repo
        try:
            return resolve(spec, offline=self.offline)
        except ModelNotFoundError as error:
            raise self._not_found(parsed, error) from None

    def _local(self, name: ModelName) -> Path | None:
        for folder in self.folders:
            for candidate in _local_candidates(folder, name):
                if candidate.suffix == ".gguf" and candidate.is_file():
                    return candidate
                if candidate.suffix != ".gguf" and (candidate / "config.json").is_file():
                    return candidate
        return None

    def _local_entries(self) -> list[tuple[str, Path]]:
        """(name, path) of every GGUF file and checkpoint folder in the model folders."""
        entries = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.gguf")) + sorted(folder.glob("*/*.gguf")):
                entries.append((path.relative_to(folder).as_posix(), path))
            for config in sorted(folder.glob("*/config.json")):
                entries.append((config.parent.name, config.parent))
        return entries

    def _where(self) -> str:
        return ", ".join(str(f) for f in self.folders) or "the host's model folders"

    def _not_found(self, name: ModelName, error: ModelNotFoundError) -> ModelNotFoundError:
        first = self.folders[0] if self.folders else Path("models/kgen")
        url = HUB_URL.format(repo=name.repo)
        if name.file:
            put = f"download {name.file} from {url} into {first}"
        else:
            put = f"download the files of {url} into the folder {first / name.basename}"
        return ModelNotFoundError(
            f"TIPO model {name.repo} is not on this machine ({error.message})",
            hint=f"{put}, or run `tipo download {name.repo}` where the Hub is reachable and "
            "copy the Hugging Face cache here",
        )


def _local_candidates(folder: Path, name: ModelName) -> list[Path]:
    if name.repo is None:
        return [folder / (name.file or "")]
    if name.file is None:
        return [folder / name.basename, folder / name.repo]
    return [
        folder / f"{name.basename}_{name.file}",  # how the reference saved downloads
        folder / name.file,
        folder / name.basename / name.file,
    ]


def _refuse_unsupported(name: ModelName) -> None:
    model = known_model(name.repo) if name.repo else None
    if model is not None and not model.supported:
        raise CheckpointError(
            f"{model.repo_id} is a TIPO v2 mixture-of-experts model, which this version does "
            "not run yet",
            hint=f"choose a TIPO v1 model such as {DEFAULT_HOST_MODEL!r}",
        )


def pick_device(requested: str, host_device: str | None = None) -> str:
    """The device to load on. ``requested`` is the node's ``cpu``/``cuda``; ``host_device`` is
    where the host runs its own models (ComfyUI: ``cuda:1`` with ``--cuda-device 1``, ``cpu``
    with ``--cpu``). A saved ``cuda`` on a machine without CUDA runs on the CPU, with a warning,
    so workflows move between machines."""
    if requested != "cuda":
        return "cpu"
    if host_device and host_device.startswith("cuda"):
        return host_device
    if host_device is None and _cuda_available():
        return "cuda"
    log.warning("TIPO: CUDA is not available here (device %s); running on the CPU", host_device)
    return "cpu"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


Loader = Callable[..., "TIPO"]


def _default_loader(checkpoint: Checkpoint, **options: Any) -> TIPO:
    from ..pipeline import TIPO

    return TIPO.load(checkpoint, **options)


class ModelCache:
    """Loaded models by (checkpoint, device, weight format). It holds ``capacity`` models (one
    by default: the host needs its memory for the image model) and closes the least recently
    used when another is loaded; :meth:`unload` frees them all."""

    def __init__(self, loader: Loader = _default_loader, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._loader, self.capacity = loader, capacity
        self._models: OrderedDict[tuple[str, str, str], TIPO] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checkpoint: Checkpoint, device: str, dtype: str | None = None) -> TIPO:
        key = (str(checkpoint.path), device, dtype or "default")
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.capacity:
                _release(self._models.popitem(last=False)[1])
            log.info("TIPO: loading %s on %s", checkpoint.source, device)
            model = self._loader(checkpoint, device=device, dtype=dtype)
            self._models[key] = model
            return model

    def unload(self) -> int:
        """Close every loaded model; returns how many there were."""
        with self._lock:
            count = len(self._models)
            while self._models:
                _release(self._models.popitem(last=False)[1])
            return count

    def loaded(self) -> Sequence[tuple[str, str, str]]:
        return tuple(self._models)

    def __len__(self) -> int:
        return len(self._models)


class HostRuntime:
    """The models one host serves TIPO from: where they live (``folders`` is asked on every
    call, so a host's configuration can change), which are loaded, and on which device the
    host runs its own models (``host_device``)."""

    def __init__(
        self,
        folders: Callable[[], Sequence[str | Path]],
        *,
        host_device: Callable[[], str | None] = lambda: None,
        cache: ModelCache | None = None,
        offline: bool = False,
    ) -> None:
        self._folders, self._host_device = folders, host_device
        self.cache = cache if cache is not None else ModelCache()  # an empty cache is falsy
        self.offline = offline

    @property
    def locator(self) -> ModelLocator:
        return ModelLocator(self._folders(), offline=self.offline)

    def choices(self) -> list[str]:
        return self.locator.choices()

    def model(self, name: str, device: str = "cpu") -> TIPO:
        """The loaded model of a host model name, loading it on first use."""
        checkpoint = self.locator.locate(name)
        return self.cache.get(checkpoint, pick_device(device, self._host_device()))

    def unload(self) -> int:
        return self.cache.unload()


def _release(model: TIPO) -> None:
    model.close()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = [
    "DEFAULT_HOST_MODEL",
    "REFERENCE_MODEL_NAMES",
    "HostRuntime",
    "ModelCache",
    "ModelLocator",
    "ModelName",
    "pick_device",
]
