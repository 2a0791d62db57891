"""`tipo train` and `tipo export` on tiny models: the loss falls on a kohya folder, two torchrun
processes train the same weights as one, a killed run resumes with the same losses, and the
exported folder loads in our engine, transformers, the reference library and `tipo convert`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoints import llama_tokenizer_model, make_tiny_checkpoint
from tipo.cli import main
from tipo.errors import CheckpointError, InvalidRequestError
from tipo.tokenizer import TipoTokenizer
from tipo.train import TrainConfig, export_checkpoint, make_config, read_config_file
from tipo.train.batches import BatchPlan, StepBatches
from tipo.train.trainer import Trainer, lr_factor
from training_data import GENERAL, make_kohya_folder

BIN = Path(sys.executable).parent
# Small, quick and still a real run: 8 samples per step, warm-up, cosine, clipping.
RUN_FLAGS = ["--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "100"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny", seed=5)


@pytest.fixture(scope="module")
def kohya(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_kohya_folder(tmp_path_factory.mktemp("kohya") / "dataset", images=40)


def train_args(data: Path, base: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--base", str(base), "--output", str(output),
            *RUN_FLAGS, *extra]  # fmt: skip


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def run_tipo(args: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(BIN / "tipo"), *args], capture_output=True, text=True, env=env, check=True, **options
    )


@pytest.fixture(scope="module")
def trained(base: Path, kohya: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tuning run of 30 steps (grad_accum 2: 16 samples a step, 2.5 epochs)."""
    run = tmp_path_factory.mktemp("runs") / "full"
    assert main(train_args(kohya, base, run, "--max-steps", "30", "--grad-accum", "2")) == 0
    return run


# --- settings -------------------------------------------------------------------------------


def test_settings_are_defaults_then_the_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('data = "a"\nlr = 2e-4\nbatch-size = 16\nlora_rank = 8\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("data: [a, b]\nlr: 0.0002\nprecision: bf16\n")
    config = make_config(read_config_file(toml), {"lr": 1e-3, "seed": None})
    assert (config.data, config.lr, config.batch_size, config.lora_rank) == (["a"], 1e-3, 16, 8)
    assert config.seed == TrainConfig().seed == 3407
    config = make_config(read_config_file(yaml), {})
    assert (config.data, config.lr, config.precision) == (["a", "b"], 2e-4, "bf16")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope = 1", "unknown settings in the config file: nope"),
        ('lr = "fast"', "'lr': 'fast' is not a valid float"),
        ('precision = "fp8"', "not a valid choice (auto, fp32, bf16)"),
        ("batch_size = 0", "batch_size must be at least 1"),
        ('base = "x"\npreset = "tipo-25m"', "give base (fine-tune) or preset, not both"),
        ("lr = [", "does not parse"),
    ],
)
def test_a_bad_config_file_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(read_config_file(path), {})


def test_a_run_without_data_or_model_says_what_it_needs(tmp_path: Path, capsys) -> None:
    assert main(["train", "--output", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "--data DATASET" in error and "--base CHECKPOINT" in error and "Traceback" not in error


def test_learning_rate_warms_up_then_follows_a_cosine_to_min_lr() -> None:
    factors = [lr_factor(step, 4, 20, 0.01) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert factors[-1] == pytest.approx(0.01, abs=0.01)


# --- the data plan --------------------------------------------------------------------------


def test_the_plan_is_the_same_for_any_process_count(kohya: Path) -> None:
    from tipo.data.readers import read_records

    records = list(read_records(kohya))
    tokenizer = TipoTokenizer.from_sentencepiece(llama_tokenizer_model())
    plan = BatchPlan(len(records), batch_size=2, micro_batches=4, seed=7)
    options = {"cutoff_len": 1024, "pad_to_cutoff": False}
    alone = StepBatches(records, tokenizer, plan, rank=0, world=1, **options)
    ranks = [StepBatches(records, tokenizer, plan, rank=r, world=2, **options) for r in (0, 1)]
    assert [ranks[0].owner(j) for j in range(4)] == [0, 1, 1, 0]  # snake: 0 1 | 1 0
    for step in range(plan.steps_per_epoch * 2):
        together = alone.micro_batches(step)
        assert [len(b) for b in together] == [2, 2, 2, 2]
        first, second = ranks[0].micro_batches(step), ranks[1].micro_batches(step)
        assert [together[0], together[3]] == first and [together[1], together[2]] == second
        lengths = [max(len(example) for example in batch) for batch in together]
        assert lengths[0] <= lengths[-1]  # sorted by text length (a proxy for tokens) first
    seen = [i for step in range(plan.steps_per_epoch) for i in plan.step_records(step)]
    assert len(seen) == len(set(seen)) == plan.steps_per_epoch * 8  # each record once an epoch
    assert plan.step_records(0) != plan.step_records(plan.steps_per_epoch)  # reshuffled
    with pytest.raises(InvalidRequestError, match="fewer than one optimizer step"):
        BatchPlan(5, batch_size=4, micro_batches=2, seed=0)


# --- training -------------------------------------------------------------------------------


def test_the_loss_falls_on_a_kohya_folder(trained: Path) -> None:
    values = losses(trained)
    assert len(values) == 30
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    print(f"loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last < first - 1.0
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert all(line["tokens"] > line["trained_tokens"] > 0 for line in lines)
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in (trained / "checkpoints").iterdir()] == ["step-00000030"]


def test_two_torchrun_processes_train_the_same_weights_as_one(
    base: Path, kohya: Path, tmp_path: Path
) -> None:
    """Global batch 8 either way: 1 process x grad_accum 2, or 2 gloo processes x 1."""
    steps = ["--max-steps", "4"]
    one = tmp_path / "one"
    run_tipo(train_args(kohya, base, one, *steps, "--grad-accum", "2"))
    two = tmp_path / "two"
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "tipo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*torchrun, *train_args(kohya, base, two, *steps, "--grad-accum", "1")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stderr
    a, b = load_file(one / "export/model.safetensors"), load_file(two / "export/model.safetensors")
    start = load_file(base / "model.safetensors")
    worst = max(float((a[name] - b[name]).abs().max()) for name in a)
    moved = min(float((a[name] - start[name]).abs().max()) for name in a if "norm" not in name)
    print(f"largest weight difference 1 vs 2 processes: {worst:.2e} (weights moved >= {moved:.1e})")
    assert worst <= 1e-6 < moved  # the same sums in the same order: equal in practice
    assert losses(one) == pytest.approx(losses(two), rel=1e-6)


def test_a_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(
    base: Path, kohya: Path, tmp_path: Path
) -> None:
    steps = ["--max-steps", "10", "--save-every", "2"]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [str(BIN / "tipo"), *train_args(kohya, base, killed, *steps)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(killed.glob("checkpoints/step-*/state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    kept = sorted(p.name for p in (killed / "checkpoints").glob("step-*"))
    assert kept and kept[-1] < "step-00000010"  # killed before the end
    with pytest.raises(subprocess.CalledProcessError) as refused:
        run_tipo(train_args(kohya, base, killed, *steps))
    assert "pass --resume" in refused.value.stderr
    resumed = run_tipo(train_args(kohya, base, killed, *steps, "--resume"))
    assert "resuming after step" in resumed.stderr
    whole = tmp_path / "whole"
    run_tipo(train_args(kohya, base, whole, *steps))
    assert losses(killed) == losses(whole)  # bit for bit: same batches, weights and moments
    with pytest.raises(subprocess.CalledProcessError) as changed:
        run_tipo(train_args(kohya, base, killed, "--max-steps", "12", "--resume"))
    assert "total_steps: 10 -> 12" in changed.value.stderr


# --- export ---------------------------------------------------------------------------------


def test_the_export_loads_in_our_engine_and_in_transformers_with_the_same_logits(
    trained: Path,
) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tipo.engine.engine import sequence_logits
    from tipo.engine.weights import load_model

    folder = trained / "export"
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    } <= names
    final = load_file(trained / "checkpoints/step-00000030/model/model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in load_file(folder / "model.safetensors").items())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = TipoTokenizer.from_dir(folder)
    text = "target: <|long|> <|tag_to_long|>\ntag: 1girl, smile"
    ids = ours.encode(text, add_bos=True, add_eos=False)
    assert tokenizer(text)["input_ids"] == ids
    assert ours.encode("<|empty|>", add_bos=False, add_eos=False) == [32000]
    reference = LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, -1]
    actual = sequence_logits(load_model(folder, "float32"), ids)[-1]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_tipo_expand_and_tipo_convert_work_on_the_export(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    folder = trained / "export"
    done = run_tipo(["expand", "1girl, smile", "--model", str(folder), "--seed", "1",
                     "--max-new-tokens", "40"])  # fmt: skip
    assert len(new_dataset_tags(done.stdout)) >= 3
    gguf = tmp_path / "trained.gguf"
    run_tipo(["convert", str(folder), str(gguf)])
    from_gguf = run_tipo(["expand", "1girl, smile", "--model", str(gguf), "--seed", "1",
                          "--max-new-tokens", "40"])  # fmt: skip
    assert len(new_dataset_tags(from_gguf.stdout)) >= 3


def new_dataset_tags(prompt: str) -> set[str]:
    """Tags of the kohya folder's vocabulary that an expansion of "1girl, smile" added."""
    words = {part.strip() for part in prompt.replace("\n", ",").split(",")}
    assert {"1girl", "smile"} <= words, prompt
    return words & set(GENERAL) - {"smile"}


def test_the_reference_library_loads_the_export(trained: Path) -> None:
    kgen_models = pytest.importorskip("kgen.models")
    from kgen.generate import generate

    kgen_models.load_model(str(trained / "export"), device="cpu")
    tokenizer = kgen_models.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|tag_to_long|>") in range(32000, 32013)
    prompt = "target: <|short|>\ntag: 1girl,"
    text, _, generated = generate(kgen_models.text_model, tokenizer, prompt, max_new_tokens=8)
    assert generated > 0 and text.removeprefix("<s>").strip().startswith(prompt)


def test_lora_trains_adapters_only_and_the_export_merges_them(
    base: Path, kohya: Path, tmp_path: Path
) -> None:
    run = tmp_path / "lora"
    assert main(train_args(kohya, base, run, "--max-steps", "3", "--lora-rank", "4")) == 0
    assert (run / "checkpoints/step-00000003/adapter/adapter_model.safetensors").is_file()
    merged = load_file(run / "export/model.safetensors")
    start = load_file(base / "model.safetensors")
    assert torch.equal(merged["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    changed = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[changed], start[changed])
    half = export_checkpoint(run, tmp_path / "half", "bfloat16")
    assert load_file(half / "model.safetensors")[changed].dtype == torch.bfloat16
    with pytest.raises(InvalidRequestError, match="not empty"):
        export_checkpoint(run, half)


def test_from_scratch_with_a_preset_and_the_llama_tokenizer(kohya: Path, tmp_path: Path) -> None:
    run = tmp_path / "scratch"
    tokenizer = str(llama_tokenizer_model())
    args = [
        "train",
        "--data",
        str(kohya),
        "--preset",
        "tipo-25m",
        "--tokenizer",
        tokenizer,
        "--output",
        str(run),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--cutoff-len",
        "128",
    ]
    assert main(args) == 0
    config = json.loads((run / "export/config.json").read_text())
    shape = (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"])
    assert shape == (256, 8, 4) and config["vocab_size"] == 32013
    assert TipoTokenizer.from_dir(run / "export").vocab_size == 32013


def test_unusable_inputs_are_clear_errors(base: Path, kohya: Path, tmp_path: Path, capsys) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert main(train_args(kohya, gguf, tmp_path / "a", "--max-steps", "1")) == 4
    assert "training starts from a Hugging Face folder" in capsys.readouterr().err
    assert main(train_args(kohya, base, tmp_path / "b", "--batch-size", "64")) == 2
    assert "fewer than one optimizer step" in capsys.readouterr().err
    assert main(train_args(tmp_path / "nothing", base, tmp_path / "c")) == 2
    assert "no training data at" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")


def test_trainer_reports_what_it_will_do(base: Path, kohya: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    config = make_config({}, {"data": [str(kohya)], "base": str(base), "max_steps": 2,
                              "batch_size": 4, "output": str(tmp_path / "run")})  # fmt: skip
    Trainer(config, log=lines.append).run()
    assert lines[0].startswith("40 records; 2 steps of 4 samples (10 per epoch) on 1 process")
    assert "warmup_steps 100 >= all steps" in lines[1]


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_losses(
    base: Path, kohya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recomputing activations is a memory trade, not a different computation: each layer's
    MLP runs twice per micro-batch (forward, then again in backward), the losses stay."""
    from transformers.models.llama import modeling_llama

    calls: list[int] = []
    forward = modeling_llama.LlamaMLP.forward  # inside the checkpointed decoder layer

    def counted(self: object, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    layer_calls = {}
    for name, extra in (("plain", ()), ("recomputed", ("--gradient-checkpointing",))):
        calls.clear()
        assert main(train_args(kohya, base, tmp_path / name, "--max-steps", "2", *extra)) == 0
        layer_calls[name] = len(calls)
    assert layer_calls == {"plain": 4, "recomputed": 8}  # 2 steps x 2 layers (x 2)
    assert losses(tmp_path / "recomputed") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)
