"""A run folder: its checkpoints (written atomically, the newest few kept), logs and export.

::

    RUN/config.yaml                     the settings of the run (written at start)
    RUN/tokenizer/                      the TIPO tokenizer files (copied at start)
    RUN/checkpoints/step-00000500/      model/ (full) or adapter/ (LoRA), optimizer.pt, state.json
    RUN/metrics.jsonl                   one JSON line per logged step
    RUN/tensorboard/                    TensorBoard event files
    RUN/export/                         the Hugging Face folder written at the end
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .hf_folder import write_json

STATE_FILE = "state.json"
_PREFIX = "step-"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def saved_steps(self) -> list[Path]:
        """Complete checkpoints (a state.json is written last), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            p
            for p in self.checkpoints.iterdir()
            if p.name.startswith(_PREFIX) and (p / STATE_FILE).is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def newest(self) -> Path | None:
        steps = self.saved_steps()
        return steps[-1] if steps else None

    def staging(self, step: int) -> Path:
        """An empty folder to write checkpoint ``step`` into before :meth:`publish`."""
        folder = self.checkpoints / f".{_PREFIX}{step:08d}.partial"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def publish(self, staged: Path, step: int, state: dict[str, Any], keep: int) -> Path:
        """Finish a staged checkpoint: state.json last, then one rename, then prune old ones.
        A process killed at any point leaves the previous checkpoint usable."""
        write_json(staged / STATE_FILE, state)
        final = self.checkpoints / f"{_PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
        for old in self.saved_steps()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{checkpoint} is not a complete training checkpoint ({error})",
            hint="pass a run folder or one of its checkpoints/step-* folders",
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint / STATE_FILE} is not a JSON object")
    return state


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    if (path / STATE_FILE).is_file():
        return path
    newest = RunFolder(path).newest()
    if newest is None:
        raise CheckpointError(
            f"no training checkpoint in {path}",
            hint="pass a run folder of `tipo train` (it has checkpoints/step-*) or one step",
        )
    return newest


__all__ = ["RunFolder", "find_checkpoint", "read_state"]
