"""The `tipo` command, in-process on a tiny checkpoint, and as a real process for errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tipo.cli import main
from tipo.protocol import ModelRequest, build_prompt


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake(tiny_checkpoint):
    return ["--backend", "fake", "--model", tiny_checkpoint]


def test_expand_prints_a_ready_prompt(capsys, fake):
    code, out, err = run(
        capsys,
        "expand",
        "1girl, scenery, (blue sky:1.2), <lora:foo:0.7>",
        "--nl",
        "a girl on a hill",
        "--seed",
        1,
        *fake,
    )
    assert code == 0, err
    assert out.startswith("1girl,") and "(blue sky:1.2)" in out and "<lora:foo:0.7>" in out
    assert "a girl on a hill" in out


def test_expand_json_has_the_documented_fields(capsys, fake):
    code, out, _ = run(
        capsys, "expand", "scenery", "--seed", 7, "--json", "--aspect", "832x1216", *fake
    )
    result = json.loads(out)
    assert code == 0
    assert {"prompt", "tags", "extended", "generated", "seed", "steps", "timings"} <= set(result)
    assert result["seed"] == 7 and result["tags"]["general"][0] == "scenery"
    step = result["steps"][0]
    assert step["prompt"] == "aspect ratio: 0.7\ntarget: <|long|>\ntag: scenery"
    assert step["output"] and step["new_tokens"] > 0


def test_expand_variants(capsys, fake):
    code, out, _ = run(capsys, "expand", "scenery", "--seed", 1, "--variants", 3, "--json", *fake)
    seeds = [json.loads(line)["seed"] for line in out.splitlines()]
    assert code == 0 and seeds == [1, 2, 3]


def test_expand_many_requests_from_a_file(capsys, fake, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        '{"tags": "1girl, scenery", "seed": 3, "tag_length": "short"}\n'
        "\n"
        "2girls, beach\n"
        '{"tags": "x", "tag_length": "enormous"}\n'
        "{not json\n",
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "expand", "--input", requests, "--template", "tags", *fake)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # some lines failed; the others are still answered, in order
    assert [r["line"] for r in records] == [1, 3, 4, 5]
    assert records[0]["seed"] == 3 and records[0]["steps"][0]["length"] == "short"
    assert records[1]["tags"]["special"] == ["2girls"]
    assert "unknown length" in records[2]["error"] and "invalid JSON" in records[3]["error"]


def test_expand_reads_stdin(capsys, fake, monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("scenery\n"))
    code, out, _ = run(capsys, "expand", "--input", "-", "--seed", 2, *fake)
    assert code == 0 and json.loads(out)["seed"] == 2


def test_protocol_prints_the_model_facing_prompt(capsys, tmp_path, monkeypatch):
    lines = [
        {
            "tags": ["scenery", "1girl"],
            "nl": "a hill",
            "task": "tag_to_long",
            "length": "long",
            "meta": {"rating": "general"},
            "gen_meta": False,
            "expand": True,
        },
        {"tags": [], "nl": "", "task": None, "length": None, "meta": {}, "expand": False},
        {"tags": "not a list"},
    ]
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    code, out, err = run(capsys, "protocol", source)
    printed = out.splitlines()
    assert json.loads(printed[0]) == build_prompt(ModelRequest.create(**lines[0]))
    assert json.loads(printed[0]).startswith("rating: general\ntarget: <|long|> <|tag_to_long|>")
    assert json.loads(printed[1]) == "target: \ntag:"
    assert printed[2] == "null" and "line 3" in err and code == 2


def test_models_lists_the_known_checkpoints(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["id"] == "KBlueLeaf/TIPO-200M-ft" and rows[0]["default"]
    assert {"cached", "gguf", "supported"} <= set(rows[0])


def test_templates_command(capsys):
    code, out, _ = run(capsys, "templates")
    assert code == 0 and "noobai" in out and "flux" in out


def test_bad_option_is_exit_2_with_a_message(capsys, fake):
    code, _, err = run(capsys, "expand", "a", "--tag-length", "huge", *fake)
    assert code == 2 and "unknown length" in err and "hint" in err


def test_corrupt_config_is_exit_4(capsys, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "expand", "a", "--model", folder)
    assert code == 4 and "config.json is not valid JSON" in err


def _tipo_process(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "tipo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_missing_model_offline_says_how_to_get_it(tmp_path):
    """No network and no cache: a short message with the fix, no traceback."""
    done = _tipo_process("expand", "1girl", env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 3
    assert "KBlueLeaf/TIPO-200M-ft" in done.stderr and "tipo download" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_local_folder_is_a_clear_error(tmp_path):
    done = _tipo_process("expand", "1girl", "--model", tmp_path / "nope" / "model")
    assert done.returncode == 3 and "no model at" in done.stderr
    assert "Traceback" not in done.stderr


def test_same_seed_same_output_in_a_new_process(tiny_checkpoint):
    """Users of the reference report different prompts for the same seed; ours repeat,
    whatever the hash seed of the process."""
    args = (
        "expand",
        "1girl, scenery",
        "--nl",
        "a hill",
        "--seed",
        42,
        "--json",
        "--model",
        tiny_checkpoint,
        "--backend",
        "transformers",
        "--max-new-tokens",
        24,
    )
    outputs = [_tipo_process(*args, env_extra={"PYTHONHASHSEED": str(seed)}) for seed in (1, 2)]
    assert all(o.returncode == 0 for o in outputs), outputs[0].stderr
    first, second = (json.loads(o.stdout) for o in outputs)
    assert first["prompt"] == second["prompt"] and first["steps"] == [
        {**s, "seconds": first["steps"][i]["seconds"]} for i, s in enumerate(second["steps"])
    ]


def test_convert_then_expand_with_the_gguf(capsys, tiny_checkpoint, tmp_path):
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra (CI installs it)")
    output = tmp_path / "gguf" / "tiny-F16.gguf"
    code, out, err = run(capsys, "convert", tiny_checkpoint, output)
    assert code == 0 and out.strip() == str(output) and output.is_file()
    assert (output.parent / "tokenizer.model").is_file()
    code, out, err = run(
        capsys,
        "expand",
        "1girl, scenery",
        "--model",
        output,
        "--seed",
        3,
        "--max-new-tokens",
        24,
        "--json",
        "--template",
        "tags",
    )
    assert code == 0, err
    assert json.loads(out)["steps"][0]["prompt"] == "target: <|long|>\ntag: 1girl, scenery"


def test_bench_runs_every_section_on_a_tiny_checkpoint(capsys, tiny_checkpoint):
    """A smoke test of the harness (no timing is asserted: figures are the bench's output)."""
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        tiny_checkpoint,
        "--dtypes",
        "float32,int8",
        "--batches",
        "1,2",
        "--gguf-batches",
        "1",
        "--new-tokens",
        8,
        "--no-quality",
        "--no-headline",
        "--retry-seeds",
        2,
        "--json",
    )
    report = json.loads(out)
    assert code == 0, err
    engines = {(r["engine"], r["weights"], r["batch"]) for r in report["speed"]}
    assert ("torch", "int8", 2) in engines and ("transformers (reference)", "float32", 1) in engines
    assert not [r for r in report["speed"] if "error" in r]
    assert all(r["tokens_per_s"] > 0 and r["of_bound"] > 0 for r in report["speed"])
    modes = {(r["mode"], r["variants"]) for r in report["pipeline"]}
    assert ("reference retry loop", 1) in modes and ("one pass, controlled", 16) in modes
    assert ("one pass, controlled, free tags", 16) in modes
    by_mode = {(r["mode"], r["variants"]): r for r in report["pipeline"]}
    jumping = by_mode[("one pass, controlled", 1)]["forwards_per_token"]
    assert 0 < jumping <= by_mode[("one pass, controlled, token by token", 1)]["forwards_per_token"]
    controlled = [r for r in report["retries"] if r["mode"] == "one pass, controlled"]
    assert len(controlled) == 4 and all(r["met_targets"] == r["requests"] for r in controlled)
    assert "headline" not in report  # --no-headline (tests/test_bench.py runs it)


def test_bench_reports_the_rows_it_can_and_skips_the_rest_with_reasons(
    capsys, tiny_checkpoint, tmp_path
):
    """No tokenizer.model: the GGUF files and whole requests cannot be built. The speed rows are
    still measured and every skipped group says why (the bench used to stop)."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare)
    (bare / "tokenizer.model").unlink()
    code, out, err = run(capsys, "bench", "--model", bare, "--dtypes", "float32",
                         "--batches", "1", "--new-tokens", 4, "--no-quality")  # fmt: skip
    assert code == 0, err
    assert "| torch | float32 | 1 |" in out and "skipped:" in out
    assert "headline (whole requests) rows: requests need a tokenizer" in out
    assert "- pipeline and retries rows: requests need a tokenizer" in out
    llamacpp = "- llama.cpp speed and headline rows: "
    assert llamacpp + "a GGUF file carries the vocabulary" in out or (
        llamacpp + "llama-cpp-python is not installed" in out
    )


def test_empty_input_generates_from_nothing(capsys, fake):
    code, out, err = run(capsys, "expand", "", "--seed", 1, "--json", *fake)
    result = json.loads(out)
    assert code == 0, err
    assert [s["task"] for s in result["steps"]] == ["tag", "tag_to_long"]
    assert result["tags"]["general"] and result["generated"]


def test_100_kb_input_is_a_clear_error_not_a_hang(capsys, fake):
    huge = ", ".join(f"tag{i}" for i in range(15_000))
    assert len(huge) > 100_000
    code, _, err = run(capsys, "expand", huge, *fake)
    assert code == 2 and "context" in err and "Traceback" not in err
