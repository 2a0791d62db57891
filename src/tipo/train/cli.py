"""The ``tipo train`` and ``tipo export`` commands (registered by ``tipo.cli``)."""

from __future__ import annotations

import argparse
from typing import Any

from .config import add_flags, make_config, read_config_file

TRAIN_EPILOG = """\
examples:
  tipo train --data my_lora_dataset/ --base KBlueLeaf/TIPO-200M-ft2 --lora-rank 16 --output run
  torchrun --nproc_per_node 4 -m tipo train --config run.toml
  tipo train --data danbooru.parquet --preset tipo-25m --tokenizer llama/tokenizer.model
Every setting can sit in a TOML/YAML/JSON file (--config); flags override it."""


def add_train_parsers(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train or fine-tune a TIPO model (one process or under torchrun)",
        description="Train a TIPO model on the recipe's samples, then export a Hugging Face "
        "folder (RUN/export). Needs the train extra.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", help="TOML, YAML or JSON file of these settings")
    add_flags(train)
    export = commands.add_parser(
        "export",
        help="write a Hugging Face folder from a training checkpoint (LoRA merged)",
    )
    export.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a step-*")
    export.add_argument("output", help="the folder to write")
    export.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output")


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    file_values = read_config_file(args.config) if args.config else {}
    train(make_config(file_values, flags))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.output, args.dtype, overwrite=args.overwrite)
    print(folder)
    return 0


__all__ = ["add_train_parsers", "cmd_export", "cmd_train"]
