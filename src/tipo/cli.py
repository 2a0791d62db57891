"""The ``tipo`` command: a thin layer over the public API.

Results go to stdout (text, or JSON with --json), diagnostics to stderr. Errors are mapped to
exit codes by class, with the error's hint, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import (
    BackendError,
    CheckpointError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
    TipoError,
)
from .eval.cli import add_eval_parser, cmd_eval
from .train.cli import add_train_parsers, cmd_export, cmd_train

EXIT_CODES: tuple[tuple[type[TipoError], int], ...] = (
    (InvalidRequestError, 2),
    (ModelNotFoundError, 3),
    (CheckpointError, 4),
    (MissingDependencyError, 5),
    (BackendError, 6),
    (TipoError, 1),
)
# CLI flag -> ExpandRequest option, for flags whose value is passed through as given.
_REQUEST_FLAGS = (
    "nl",
    "tag_length",
    "nl_length",
    "template",
    "seed",
    "aspect",
    "width",
    "height",
    "retries",
    "operation",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "max_new_tokens",
)

_SWITCH_DEFAULTS = {
    "expand_tags": True,
    "expand_nl": True,
    "tag_first": True,
    "shuffle": True,
    "gen_meta": False,
    "control": True,
    "vocabulary": True,
}


def exit_code(error: TipoError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", "-m", help="Hub id, local folder or .gguf file (default: KBlueLeaf/TIPO-200M-ft)"
    )
    group.add_argument(
        "--backend", default="auto", help="auto (default), torch, transformers or llamacpp"
    )
    group.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    group.add_argument(
        "--dtype",
        help="weights: float32, bfloat16, float16, int8 or int4 (default: int8 on CPU, "
        "bfloat16 on CUDA; transformers: float32, bfloat16 or float16)",
    )
    group.add_argument("--offline", action="store_true", help="never touch the network")
    group.add_argument("--tag-csv", help="tag CSV (SD-WebUI autocomplete format) for aliases")
    group.add_argument(
        "--url",
        help="openai backend: OpenAI-compatible server URL(s) ending in /v1, comma-separated",
    )


def _add_expand_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tags", nargs="?", default=None, help="tags, in SD-WebUI prompt syntax")
    parser.add_argument("--nl", help="a natural-language prompt to extend")
    request = parser.add_argument_group("request")
    request.add_argument("--tag-length", help="very_short, short, long (default), very_long")
    request.add_argument("--nl-length", help="very_short, short, long (default), very_long")
    request.add_argument("--template", "-t", help="template name, text or file (tipo templates)")
    request.add_argument(
        "--ban",
        action="append",
        default=[],
        help="tag(s) to ban, comma-separated; substring or regex; repeatable",
    )
    request.add_argument("--seed", type=int, help="seed (default: random, printed with --json)")
    request.add_argument("--aspect", help="width/height: 0.75, 832x1216 or 3:4")
    request.add_argument("--width", type=int, help="image width (with --height: the aspect)")
    request.add_argument("--height", type=int, help="image height")
    request.add_argument(
        "--no-expand-tags", dest="expand_tags", action="store_false", help="keep the tags as given"
    )
    request.add_argument(
        "--no-expand-nl", dest="expand_nl", action="store_false", help="keep the sentence as given"
    )
    request.add_argument(
        "--nl-first",
        dest="tag_first",
        action="store_false",
        help="with tags and a sentence: extend the sentence first",
    )
    request.add_argument("--gen-meta", action="store_true", help="let the model add metadata")
    request.add_argument(
        "--no-shuffle",
        dest="shuffle",
        action="store_false",
        help="keep new tags in the model's order",
    )
    request.add_argument("--retries", type=int, help="re-run short steps (reference behaviour)")
    request.add_argument(
        "--operation",
        help="run one step instead of the plan: a task (tag_to_long, short_to_tag, ...) or "
        "'tag' (plain tag continuation)",
    )
    request.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="do not steer decoding (lengths and bans checked afterwards)",
    )
    request.add_argument(
        "--vocabulary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tag fields hold only known tags, bundled list + --tag-csv (default: on)",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--min-p", type=float)
    sampling.add_argument("--repetition-penalty", type=float)
    sampling.add_argument("--max-new-tokens", type=int)
    out = parser.add_argument_group("input and output")
    out.add_argument("--variants", type=int, default=1, help="N variants of the prompt (batched)")
    out.add_argument(
        "--input",
        "-i",
        help="file of requests, one per line (JSON object or "
        "plain tags); '-' reads stdin; writes JSON Lines",
    )
    out.add_argument("--json", action="store_true", help="print the full result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tipo", description="TIPO prompt presampling.")
    parser.add_argument("--version", action="version", version=f"tipo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    expand = commands.add_parser("expand", help="expand a prompt with a TIPO model")
    _add_expand_options(expand)
    _add_model_options(expand)
    protocol = commands.add_parser(
        "protocol", help="print the model-facing prompt of JSON requests (one per line)"
    )
    protocol.add_argument("file", nargs="?", default="-", help="JSON Lines file (default stdin)")
    models = commands.add_parser("models", help="list the known TIPO checkpoints")
    models.add_argument("--json", action="store_true")
    download = commands.add_parser("download", help="download a checkpoint into the HF cache")
    download.add_argument("model", nargs="?", default=None)
    convert = commands.add_parser(
        "convert", help="write a GGUF file (F16, Q8_0, Q4_K_M) from a Hugging Face folder"
    )
    convert.add_argument("model", help="Hugging Face folder, Hub id or known model name")
    convert.add_argument("output", help="the .gguf file to write")
    convert.add_argument("--quant", default="F16", help="F16 (default), Q8_0 or Q4_K_M")
    convert.add_argument("--offline", action="store_true", help="never touch the network")
    bench = commands.add_parser(
        "bench", help="time every engine side by side (and quality, and whole requests)"
    )
    bench.add_argument("--model", type=Path, help="HF folder (default: random TIPO-200M)")
    bench.add_argument("--tokenizer", type=Path, help="tokenizer.model, for the request rows")
    bench.add_argument("--dtypes", default="float32,bfloat16,float16,int8,int4")
    bench.add_argument("--batches", type=_counts, default="1,4,8,16")
    bench.add_argument("--gguf-batches", type=_counts, default="1,4,16")
    bench.add_argument("--prompt-len", type=int, default=64)
    bench.add_argument("--new-tokens", type=int, default=256)
    bench.add_argument("--threads", type=int, help="threads per engine (default: all cores)")
    bench.add_argument("--no-llamacpp", dest="llamacpp", action="store_false")
    bench.add_argument("--no-quality", dest="quality", action="store_false")
    bench.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    bench.add_argument("--no-headline", dest="headline", action="store_false",
                       help="skip the whole-request table (time to a finished prompt)")  # fmt: skip
    bench.add_argument("--retry-seeds", type=int, default=32,
                       help="requests per length and mode, retry-loop comparison")  # fmt: skip
    bench.add_argument("--quick", action="store_true",
                       help="int8 and bfloat16, batches 1 and 16, 128 tokens, 8 seeds, "
                       "short requests only")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_serve_parser(commands)
    _add_data_parser(commands)
    add_train_parsers(commands)
    add_eval_parser(commands)
    templates = commands.add_parser("templates", help="list the output templates")
    templates.add_argument("--show", help="print one template's text")
    return parser


def _counts(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> (1, 4, 16), for argparse."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,4,16, got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "expand": cmd_expand,
        "protocol": cmd_protocol,
        "models": cmd_models,
        "download": cmd_download,
        "convert": cmd_convert,
        "bench": cmd_bench,
        "templates": cmd_templates,
        "serve": cmd_serve,
        "data": cmd_data,
        "train": cmd_train,
        "export": cmd_export,
        "eval": cmd_eval,
    }[args.command]
    try:
        return handler(args)
    except TipoError as error:
        print(f"tipo: error: {error}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        print("tipo: interrupted", file=sys.stderr)
        return 130


# --- expand --------------------------------------------------------------------------------


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {k: getattr(args, k) for k in _REQUEST_FLAGS if getattr(args, k) is not None}
    if args.ban:
        options["ban"] = ",".join(args.ban)
    for flag, default in _SWITCH_DEFAULTS.items():
        if getattr(args, flag) != default:
            options[flag] = getattr(args, flag)
    return options


def _read_requests(source: str, defaults: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    """(line number, ExpandRequest or TipoError) for each non-blank line."""
    from .request import ExpandRequest

    handle: TextIO = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = _line_options(line)
                yield number, ExpandRequest.create(**{**defaults, **data})
            except TipoError as error:
                yield number, error


def _line_options(line: str) -> dict[str, Any]:
    text = line.strip()
    if not text.startswith("{"):
        return {"tags": text}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("a JSON request must be an object")
    return data


def cmd_expand(args: argparse.Namespace) -> int:
    from .pipeline import TIPO
    from .request import ExpandRequest

    if args.variants < 1:
        raise InvalidRequestError("--variants must be at least 1")
    options = _request_options(args)
    if args.input is not None and args.tags:
        raise InvalidRequestError("give tags or --input, not both")
    if args.input is None:
        request = ExpandRequest.create(tags=args.tags or "", **options)
    remote = {"url": args.url.split(",")} if args.url else {}
    tipo = TIPO.load(
        args.model,
        backend="openai" if args.url and args.backend == "auto" else args.backend,
        device=args.device,
        dtype=args.dtype,
        tag_csv=args.tag_csv,
        offline=args.offline,
        **remote,
    )
    with tipo:
        if args.input is not None:
            return _expand_file(tipo, args.input, options, args.variants)
        results = tipo.variants(request, args.variants)
        for index, result in enumerate(results):
            if args.json:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
            else:
                print(("\n" if index else "") + result.prompt)
    return 0


def _expand_file(tipo: Any, source: str, defaults: dict[str, Any], variants: int) -> int:
    """JSON Lines out, one line per request (per variant), errors in place."""
    from .request import ExpandRequest

    lines = list(_read_requests(source, defaults))
    batch: list[tuple[int, ExpandRequest]] = []
    for number, item in lines:
        if isinstance(item, ExpandRequest):
            seed = item.seed if item.seed is not None else None
            for v in range(variants):
                batch.append((number, item if seed is None else item.with_seed(seed + v)))
    results = iter(tipo.run_many([request for _, request in batch]))
    failed = 0
    by_line: dict[int, list[Any]] = {}
    for number, _ in batch:
        by_line.setdefault(number, []).append(next(results))
    for number, item in lines:
        for outcome in by_line.get(number, [item]):
            if isinstance(outcome, TipoError):
                failed += 1
                record = {"line": number, "error": outcome.message, "hint": outcome.hint}
            else:
                record = {"line": number, **outcome.to_dict()}
            print(json.dumps(record, ensure_ascii=False), flush=True)
    return 1 if failed else 0


# --- protocol, models, download, templates -------------------------------------------------


def cmd_protocol(args: argparse.Namespace) -> int:
    from .protocol import ModelRequest, build_prompt

    handle: TextIO = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    failed = 0
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = _line_options(line)
                prompt = build_prompt(ModelRequest.create(**data))
            except (TipoError, TypeError) as error:
                failed += 1
                print(f"tipo: line {number}: {error}", file=sys.stderr)
                print("null", flush=True)
                continue
            print(json.dumps(prompt, ensure_ascii=False), flush=True)
    return 2 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from .checkpoints import DEFAULT_MODEL, KNOWN_MODELS, is_cached

    rows = [
        {
            "id": m.repo_id,
            "size": m.size,
            "description": m.description,
            "gguf": list(m.gguf),
            "supported": m.supported,
            "cached": is_cached(m.repo_id),
            "default": m.repo_id == DEFAULT_MODEL,
        }
        for m in KNOWN_MODELS
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':32} {'size':7} {'cached':7} description")
    for row in rows:
        cached = "yes" if row["cached"] else "no"
        print(f"{row['id']:32} {row['size']:7} {cached:7} {row['description']}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .checkpoints import resolve

    checkpoint = resolve(args.model)
    print(checkpoint.path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import resolve
    from .convert import convert

    checkpoint = resolve(args.model, offline=args.offline)
    if checkpoint.format != "hf":
        raise InvalidRequestError(
            f"{args.model} is already a GGUF file", hint="convert a Hugging Face folder"
        )
    written = convert(
        checkpoint.path, args.output, args.quant, progress=lambda m: print(m, file=sys.stderr)
    )
    _copy_tokenizer(checkpoint.path, written.parent)
    print(written)
    return 0


TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")  # fmt: skip


def _copy_tokenizer(source: Path, target: Path) -> None:
    """A GGUF is run with our tokenizer, found beside it: put the files there if missing."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copyfile(source / name, target / name)
            print(f"copied {name} beside the GGUF file", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, format_report, run

    options = BenchOptions(
        model=args.model, tokenizer=args.tokenizer, dtypes=tuple(args.dtypes.split(",")),
        batches=args.batches, gguf_batches=args.gguf_batches,
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, llamacpp=args.llamacpp,
        quality=args.quality, pipeline=args.pipeline, threads=args.threads,
        retry_seeds=args.retry_seeds, headline=args.headline,
    )  # fmt: skip
    if args.quick:
        options.dtypes, options.batches, options.gguf_batches = ("int8", "bfloat16"), (1, 16), (1,)
        options.new_tokens, options.retry_seeds = 128, min(options.retry_seeds, 8)
        options.headline_lengths = ("short",)
    report = run(options)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from .templates import TEMPLATES, get_template

    if args.show:
        print(get_template(args.show).text)
        return 0
    for name, template in TEMPLATES.items():
        if " " not in name:  # the reference's display names are aliases
            print(f"{name:20} {template.description}")
    return 0


# --- serve ---------------------------------------------------------------------------------

# Flags of `tipo serve`, one per ServerSettings field (each also read from TIPO_<NAME>).
_SERVE_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("model", str, "Hub id, local folder or .gguf file (default: KBlueLeaf/TIPO-200M-ft)"),
    ("backend", str, "auto (default), torch, transformers, llamacpp or openai"),
    ("device", str, "cpu (default) or cuda"),
    ("dtype", str, "weight format (see tipo expand --help)"),
    ("tag_csv", str, "tag CSV (SD-WebUI autocomplete format) for aliases"),
    ("url", str, "openai backend: server URL(s) ending in /v1, comma-separated"),
    ("remote_api_key", str, "openai backend: the remote servers' API key"),
    ("remote_dialect", str, "openai backend: auto (default), vllm, sglang or llamacpp"),
    ("host", str, "address to listen on (default 127.0.0.1: this machine only)"),
    ("port", int, "port (default 8000)"),
    ("api_key", str, "require 'Authorization: Bearer <key>' on /v1 and /metrics"),
    ("cors_origin", str, "origins allowed to call the API from a browser, comma-separated"),
    ("max_batch", int, "sequences decoded together (default 16)"),
    ("max_queue", int, "sequences waiting beyond a full batch before 429 (default 64)"),
    ("timeout", float, "seconds a request may take before 504 (default 120)"),
    ("max_variants", int, "most variants per request (default 16)"),
    ("max_new_tokens", int, "most new tokens per step (default 512)"),
)


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="HTTP service with a web page (needs the server extra)",
        description="Serve TIPO over HTTP: /v1/expand, a web page at /, /docs, /metrics. "
        "Every flag can also be set as an environment variable TIPO_<FLAG> (TIPO_API_KEY=...).",
    )
    for name, kind, text in _SERVE_FLAGS:
        serve.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    serve.add_argument(
        "--offline", action="store_true", default=None, help="never touch the network"
    )
    serve.add_argument(
        "--remote-llguidance",
        action="store_true",
        default=None,
        help="openai backend: the servers run llguidance (vocabulary and bans as grammar)",
    )
    serve.add_argument(
        "--compile-attention",
        action="store_true",
        default=None,
        help="torch backend on CPU: bf16 KV cache read by a compiled decode attention, faster "
        "from ~8 sequences on (startup +5-25 s to compile; needs a C++ compiler)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from .server import ServerSettings, serve
        from .server.errors import validation_message
    except ImportError:
        raise MissingDependencyError.for_extra("fastapi", "server", "tipo serve") from None
    given = {name: getattr(args, name) for name, _, _ in _SERVE_FLAGS}
    given["offline"] = args.offline
    given["remote_llguidance"] = args.remote_llguidance
    given["compile_attention"] = args.compile_attention
    try:
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as error:
        problems = validation_message(error.errors())
        raise InvalidRequestError(f"invalid server settings: {problems}") from None
    serve(settings)
    return 0


# --- data ----------------------------------------------------------------------------------


def _add_data_parser(commands: Any) -> None:
    data = commands.add_parser(
        "data", help="training data: samples as TIPO was trained on, and their statistics"
    )
    actions = data.add_subparsers(dest="data_command", required=True, metavar="action")
    for name, text, count in (
        ("preview", "show training samples built from a dataset", 5),
        ("stats", "task, length and drop frequencies of a dataset's samples", 10_000),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("dataset", help="kohya image folder, .jsonl, .parquet or HF dataset")
        action.add_argument("-n", type=int, default=count, help=f"records (default {count})")
        action.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
        action.add_argument("--tag-csv", help="tag CSV for a kohya folder's tag categories")


def cmd_data(args: argparse.Namespace) -> int:
    from itertools import islice

    from .data import distribution, format_table, sample_for
    from .data.readers import read_records
    from .tags import TagDatabase

    if args.n < 1:
        raise InvalidRequestError("-n must be at least 1")
    db = TagDatabase.bundled()
    if args.tag_csv:
        db = db.with_csv(args.tag_csv)
    records = islice(read_records(args.dataset, db), args.n)
    samples = (sample_for(record, args.seed, i) for i, record in enumerate(records))
    if args.data_command == "stats":
        print(format_table(distribution(list(samples))))
        return 0
    for index, sample in enumerate(samples):
        notes = [sample.source, f"task {sample.task or 'none'}", sample.bucket.value]
        notes.append("loss on all" if sample.train_on_input else "loss on the output")
        notes += [f for f in ("total_drop", "drop_info", "gen_meta") if getattr(sample, f)]
        print(f"=== sample {index}: {', '.join(notes)} ===")
        print(f"{sample.user}\u2502{sample.output}" if sample.user else sample.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
