"""``tipo train``'s settings: one dataclass, read from a TOML/YAML/JSON file, every field a flag.

Precedence: the defaults below < the config file < command-line flags. Defaults follow the
released runs (docs/tipo-training.md §3.3): AdamW with weight decay 0.01 and betas (0.9, 0.98),
gradient clipping at 0.1, linear warm-up then cosine decay, seed 3407, samples cut at 1024 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..errors import InvalidRequestError

Precision = Literal["auto", "fp32", "bf16"]
Padding = Literal["longest", "max_length"]
PRESETS = ("tipo-25m", "tipo-200m", "tipo-500m")  # model.PRESET_SHAPES, from scratch
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class TrainConfig:
    """Every setting of a training run; ``help`` metadata becomes the flag's help."""

    data: list[str] = field(
        default_factory=list,
        metadata={"help": "datasets: kohya image folders, .jsonl, .parquet, HF dataset ids"},
    )
    output: str = field(default="tipo-run", metadata={"help": "run folder (checkpoints, logs)"})
    base: str | None = field(
        default=None, metadata={"help": "checkpoint to fine-tune: HF folder, Hub id or name"}
    )
    preset: str | None = field(
        default=None, metadata={"help": f"train from scratch: {', '.join(PRESETS)}"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "from scratch: the LLaMA tokenizer.model (or its folder)"}
    )
    tag_csv: str | None = field(
        default=None, metadata={"help": "extra tag CSV for a kohya folder's categories"}
    )
    max_records: int | None = field(default=None, metadata={"help": "read at most N records"})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 trains every weight"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (2 x rank)"})
    lora_targets: str = field(default=LORA_TARGETS, metadata={"help": "LoRA target modules"})
    epochs: int = field(default=1, metadata={"help": "passes over the data"})
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps (overrides epochs)"}
    )
    batch_size: int = field(default=8, metadata={"help": "samples per process per forward"})
    grad_accum: int = field(default=1, metadata={"help": "forwards per optimizer step"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-6, metadata={"help": "learning rate at the end"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    grad_clip: float = field(default=0.1, metadata={"help": "max gradient norm; 0: no clip"})
    cutoff_len: int = field(default=1024, metadata={"help": "tokens per sample at most"})
    padding: Padding = field(
        default="longest",
        metadata={"help": "longest: pad to the micro-batch's longest; max_length: to cutoff_len"},
    )
    precision: Precision = field(
        default="auto", metadata={"help": "auto: bf16 on GPUs that have it, else fp32"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations (less memory, ~30%% slower)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    seed: int = 3407
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    log_every: int = field(default=10, metadata={"help": "log a line every N steps"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the run folder's newest checkpoint"}
    )
    export_dtype: str = field(
        default="float32", metadata={"help": "float32, bfloat16 or float16 weights on export"}
    )

    def __post_init__(self) -> None:
        self.check()

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    def check(self) -> None:
        """Raise InvalidRequestError naming every field that cannot work."""
        problems = [text for ok, text in self._checks() if not ok]
        if problems:
            raise InvalidRequestError("invalid training settings: " + "; ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        positive = ("epochs", "batch_size", "grad_accum", "cutoff_len", "save_every", "log_every")
        checks = [(getattr(self, name) >= 1, f"{name} must be at least 1") for name in positive]
        checks += [
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.max_records is None or self.max_records >= 1, "max_records must be >= 1"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min_lr <= lr"),
            (self.warmup_steps >= 0 and self.lora_rank >= 0, "negative warmup_steps/lora_rank"),
            (self.weight_decay >= 0 and self.grad_clip >= 0, "negative weight_decay/grad_clip"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "betas must be in [0, 1)"),
            (self.base is None or self.preset is None, "give base (fine-tune) or preset, not both"),
            (self.preset is None or self.preset in PRESETS, f"preset must be one of {PRESETS}"),
            (self.padding in get_args(Padding), f"padding must be one of {get_args(Padding)}"),
            (self.precision in get_args(Precision), f"precision: one of {get_args(Precision)}"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.export_dtype in ("float32", "bfloat16", "float16"), "bad export_dtype"),
        ]
        return checks

    def missing(self) -> list[str]:
        """What a run still needs (the file and flags may each give part of it)."""
        needs = [] if self.data else ["data (--data DATASET)"]
        if self.base is None and self.preset is None:
            needs.append("a model: --base CHECKPOINT to fine-tune or --preset NAME from scratch")
        if self.preset is not None and self.tokenizer is None:
            needs.append("--tokenizer (the LLaMA tokenizer.model) to train from scratch")
        return needs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields of a TOML, YAML or JSON config file (``-`` or ``_`` in names)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidRequestError(f"cannot read the config file {file}: {error.strerror}") from None
    suffix = file.suffix.lower()
    try:
        if suffix == ".toml":
            values = _toml_loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml  # PyYAML: a dependency of transformers

            values = yaml.safe_load(text) or {}
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise InvalidRequestError(
                f"{file}: unknown config format", hint="use a .toml, .yaml or .json file"
            )
    except InvalidRequestError:
        raise
    except Exception as error:  # each parser has its own error class
        raise InvalidRequestError(f"{file} does not parse: {error}") from None
    if not isinstance(values, dict):
        raise InvalidRequestError(f"{file} must hold a table of settings, not {type(values)}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise InvalidRequestError(
                "TOML config files need Python 3.11 or the tomli package",
                hint="pip install tomli, or write the config as YAML",
            ) from None
    return tomllib.loads(text)


def make_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Defaults < ``file_values`` < ``flag_values`` (flags left unset are None)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise InvalidRequestError(
            f"unknown settings in the config file: {', '.join(unknown)}",
            hint="valid names: " + ", ".join(sorted(known)),
        )
    values = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    hints = get_type_hints(TrainConfig)
    for name, value in values.items():
        values[name] = _coerce(name, value, hints[name])
    try:
        return TrainConfig(**values)
    except TypeError as error:
        raise InvalidRequestError(f"invalid training settings: {error}") from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check a file value against the field's type (flags are typed by argparse)."""
    if get_origin(hint) is list:  # data: one dataset or a list of them
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise InvalidRequestError(f"setting {name!r}: {value!r} is not a list of strings")
    kinds = tuple(t for t in (get_args(hint) or (hint,)) if t is not type(None))
    if value is None and type(None) in get_args(hint):
        return None
    if kinds and all(isinstance(k, str) for k in kinds):  # a Literal
        ok = value in kinds
    elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    elif int in kinds:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kinds)
    if not ok:
        raise InvalidRequestError(f"setting {name!r}: {value!r} is not a valid {_describe(hint)}")
    return value


def _describe(hint: Any) -> str:
    kinds = [t for t in (get_args(hint) or (hint,)) if t is not type(None)]
    if all(isinstance(k, str) for k in kinds):
        return "choice (" + ", ".join(kinds) + ")"
    return " or ".join(getattr(k, "__name__", str(k)) for k in kinds)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``lora_rank`` -> ``--lora-rank``); unset flags are None,
    so they do not override the config file."""
    hints = get_type_hints(TrainConfig)
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        default = item.default_factory() if item.default is MISSING else item.default
        text = item.metadata.get("help", "")
        text = f"{text} (default {default})" if text else f"default {default}"
        hint = hints[item.name]
        kinds = [t for t in (get_args(hint) or (hint,)) if t is not type(None)]
        if item.name == "data":
            parser.add_argument(flag, nargs="+", default=None, help=text, metavar="DATASET")
        elif kinds == [bool]:
            switch = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=switch, default=None, help=text)
        elif all(isinstance(k, str) for k in kinds):
            parser.add_argument(flag, choices=kinds, default=None, help=text)
        else:
            parser.add_argument(flag, type=kinds[0], default=None, help=text)


__all__ = ["PRESETS", "TrainConfig", "add_flags", "make_config", "read_config_file"]
