"""``tipo eval``: the command-line face of the evaluation (a thin layer over ``run_eval``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EVAL_EPILOG = """\
examples:
  tipo eval run eval.toml            everything the config asks for; reruns skip what is done
  tipo eval run eval.toml --text-only  prompts, expansions and text metrics, no images

The run folder gets results.json, report.md (printed) and plots/; see the README's Evaluation."""


def add_eval_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate expanders side by side: prompts, images, metrics, report",
        description="The TIPO paper's evaluation as one command. Needs the eval extra.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = evaluate.add_subparsers(dest="eval_command", required=True, metavar="action")
    run = actions.add_parser("run", help="run what is missing of an evaluation config")
    run.add_argument("config", help="TOML, YAML or JSON file (see the README)")
    run.add_argument("--text-only", action="store_true", help="skip images and image metrics")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .evaluate import run_eval
    from .report import markdown

    config = load_config(args.config)
    document = run_eval(config, progress=not args.quiet, images=not args.text_only)
    print(markdown(document), end="")
    print(f"report: {config.output / 'report.md'}", file=sys.stderr)
    return 0


__all__ = ["add_eval_parser", "cmd_eval"]
