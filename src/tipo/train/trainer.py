"""``tipo train``: the recipe's training loop on PyTorch's own distributed stack.

One process or ``torchrun --nproc_per_node N`` (one or several nodes) run the same code: under
torchrun every process joins a process group (NCCL on GPUs, gloo on CPUs) and the model is wrapped
in ``DistributedDataParallel``. Each optimizer step trains on one global batch of
``batch_size x processes x grad_accum`` samples (see batches.py), and its loss is the recipe's:
next-token cross-entropy averaged over every label token of the global batch, whatever the number
of processes. Checkpoints hold the weights (or the LoRA adapter), the optimizer and the schedule;
the data plan of any step is a function of the seed, so a resumed run continues with exactly the
batches and losses an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.batches import count_tokens
from ..errors import InvalidRequestError
from .batches import BatchPlan, StepBatches
from .config import TrainConfig
from .hf_folder import copy_tokenizer_files, write_tokenizer_files
from .model import (
    add_lora,
    base_folder,
    load_adapter,
    load_model,
    new_model,
    preset_config,
    require_training_packages,
)
from .run_folder import RunFolder, read_state

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import TrainingRecord
    from ..tokenizer import TipoTokenizer

# Settings that fix the data order and the schedule: a resumed run must keep them.
RESUME_KEYS = ("data", "max_records", "seed", "global_batch", "total_steps", "cutoff_len",
               "base", "preset", "lora_rank", "lora_targets", "tag_csv")  # fmt: skip


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: torchrun's RANK / WORLD_SIZE / LOCAL_RANK."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> Processes:
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise InvalidRequestError("device cuda was asked for, but torch sees no GPU")
        where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(where)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world, local_rank, where)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes."""
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier()

    def stop(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The learning rate of ``step`` over the peak: linear warm-up over ``warmup`` steps, then a
    cosine from 1 down to ``floor`` (min_lr / lr) at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StepStats:
    loss: float
    tokens: int  # non-padding tokens, all processes
    trained_tokens: int  # tokens with a label (loss), all processes
    lr: float
    seconds: float = 0.0  # wall time since the previous step ended, data wait included


class Trainer:
    """One training run; ``run()`` trains, checkpoints and exports."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] | None = None) -> None:
        needs = config.missing()
        if needs:
            raise InvalidRequestError("tipo train needs " + "; ".join(needs))
        require_training_packages(config.lora)
        self.config = config
        self.folder = RunFolder(Path(config.output))
        self.processes = Processes.start(config.device)
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.tokenizer = self._prepare_tokenizer()
        # Resolved once (a Hub id may be looked up online); rank 0 has fetched it by now.
        self.base = base_folder(config.base) if config.base is not None else None
        self.precision = self._precision()
        self.records = self._read_records()
        world = self.processes.world
        self.plan = BatchPlan(
            len(self.records), config.batch_size, world * config.grad_accum, config.seed
        )
        self.total_steps = config.max_steps or config.epochs * self.plan.steps_per_epoch
        self.batches = StepBatches(
            self.records,
            self.tokenizer,
            self.plan,
            rank=self.processes.rank,
            world=world,
            cutoff_len=config.cutoff_len,
            pad_to_cutoff=config.padding == "max_length",
        )

    # --- setup ---------------------------------------------------------------------------------

    def _prepare_tokenizer(self) -> TipoTokenizer:
        from ..tokenizer import TipoTokenizer

        config, target = self.config, self.folder.tokenizer
        if self.processes.main and not (target / "tokenizer.model").is_file():
            target.mkdir(parents=True, exist_ok=True)
            if config.base is not None:
                copy_tokenizer_files(base_folder(config.base), target)
            else:
                write_tokenizer_files(target, config.tokenizer or "")
        self.processes.barrier()
        return TipoTokenizer.from_dir(target)

    def _read_records(self) -> list[TrainingRecord]:
        from ..data.readers import read_records
        from ..tags import TagDatabase

        db = TagDatabase.bundled()
        if self.config.tag_csv:
            db = db.with_csv(self.config.tag_csv)
        records: list[TrainingRecord] = []
        for source in self.config.data:
            records += read_records(source, db)
        return records[: self.config.max_records]

    def _identity(self) -> dict[str, Any]:
        settings = self.config.to_dict()
        identity = {key: settings[key] for key in RESUME_KEYS if key in settings}
        identity.update(global_batch=self.plan.global_batch, total_steps=self.total_steps)
        return identity

    def _build_model(self) -> tuple[nn.Module, Path | None, int]:
        """The model to train, the checkpoint it resumes from (None: a new run) and the step to
        start at."""
        config = self.config
        newest = self.folder.newest()
        if newest is not None and not config.resume:
            raise InvalidRequestError(
                f"{self.folder.path} already holds a run (checkpoint {newest.name})",
                hint="pass --resume to continue it, or choose a new --output",
            )
        if config.resume and newest is not None:
            state = read_state(newest)
            self._check_resumable(state)
            if self.base is not None and config.lora:
                model = load_adapter(load_model(self.base), newest / "adapter")
            else:
                model = load_model(newest / "model")
            return model, newest, int(state["step"])
        if self.base is not None:
            model = load_model(self.base)
        else:
            model = new_model(preset_config(config.preset or ""), config.seed)
        if config.lora:
            import torch

            torch.manual_seed(config.seed)  # LoRA A matrices start random
            model = add_lora(model, config)
        return model, None, 0

    def _check_resumable(self, state: dict[str, Any]) -> None:
        saved, now = state.get("identity", {}), self._identity()
        changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
        if changed:
            raise InvalidRequestError(
                "cannot resume exactly: settings that fix the data order changed ("
                + "; ".join(changed)
                + ")",
                hint="resume with the run's own settings (see config.yaml in the run folder)",
            )

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> Path:
        """Train to the last step, checkpoint along the way, export; returns the export folder."""
        import torch

        config, processes = self.config, self.processes
        if processes.main:
            self.folder.path.mkdir(parents=True, exist_ok=True)
            _write_yaml(self.folder.path / "config.yaml", config.to_dict())
        model, resumed, start = self._build_model()
        model.to(processes.device).train()  # from_pretrained returns eval mode
        if config.gradient_checkpointing:  # transformers 5 renamed the method
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        warmup, floor = config.warmup_steps, config.min_lr / config.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup, self.total_steps, floor)
        )
        if resumed is not None:
            saved = torch.load(resumed / "optimizer.pt", map_location="cpu")
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
        wrapped = model
        if processes.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [processes.device.index] if processes.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        self._announce(model, start, trainable)
        logger = MetricsLog(self.folder, processes.main, config.log_every, self.total_steps, start)
        try:
            ended = time.perf_counter()
            for step, micro in _prefetch(self.batches.iterate(start, self.total_steps)):
                stats = self._step(wrapped, micro, optimizer, schedule, trainable)
                stats.seconds = time.perf_counter() - ended
                logger.record(step + 1, stats)
                if (step + 1) % config.save_every == 0 or step + 1 == self.total_steps:
                    self._save(model, optimizer, schedule, step + 1)
                ended = time.perf_counter()
        finally:
            logger.close()
        del wrapped, model, optimizer, schedule, trainable  # the export reads the checkpoint back
        export = self.folder.export
        if processes.main:
            from .export import export_checkpoint

            export_checkpoint(self.folder.newest(), export, config.export_dtype, overwrite=True)
            self.log(f"exported {export} (load it with: tipo expand --model {export})")
        processes.barrier()
        processes.stop()
        return export

    def _announce(self, model: nn.Module, start: int, trainable: list[Any]) -> None:
        if not self.processes.main:
            return
        count = sum(p.numel() for p in trainable)
        total = sum(p.numel() for p in model.parameters())
        plan = self.plan
        self.log(
            f"{len(self.records)} records; {self.total_steps} steps of {plan.global_batch} "
            f"samples ({plan.steps_per_epoch} per epoch) on {self.processes.world} process(es), "
            f"{self.processes.device}, {self.precision}; training {count:,} of {total:,} "
            "parameters" + (f"; resuming after step {start}" if start else "")
        )
        if self.config.warmup_steps >= self.total_steps:
            self.log(f"note: warmup_steps {self.config.warmup_steps} >= all steps: no decay")

    def _precision(self) -> str:
        import torch

        wanted = self.config.precision
        if wanted == "auto":
            cuda = self.processes.device.type == "cuda"
            return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        return wanted

    def _step(
        self,
        model: nn.Module,
        micro: list[dict[str, Any]],
        optimizer: torch.optim.Optimizer,
        schedule: Any,
        trainable: list[Any],
    ) -> StepStats:
        import torch
        import torch.nn.functional as F

        device, world = self.processes.device, self.processes.world
        counts = [count_tokens(batch) for batch in micro]  # (tokens, tokens with a label)
        tokens, label_tokens = self.processes.sum([sum(c) for c in zip(*counts, strict=True)])
        scale = world / max(label_tokens, 1.0)
        bf16 = self.precision == "bf16"
        loss_sum = torch.zeros((), device=device)
        for index, batch in enumerate(micro):
            last = index == len(micro) - 1
            sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            with sync:  # no_sync: gradients meet across processes on the last micro-batch
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                # position t predicts token t + 1: shift the labels, not the (large) logits
                targets = F.pad(labels[:, 1:], (0, 1), value=-100)
                loss = F.cross_entropy(
                    logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                    reduction="sum",
                )  # fmt: skip
                (loss * scale).backward()
            loss_sum += loss.detach()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        (total_loss,) = self.processes.sum([float(loss_sum)])
        return StepStats(total_loss / max(label_tokens, 1.0), int(tokens), int(label_tokens), lr)

    def _save(self, model: nn.Module, optimizer: Any, schedule: Any, step: int) -> None:
        import torch

        if self.processes.main:
            staged = self.folder.staging(step)
            model.save_pretrained(staged / ("adapter" if self.config.lora else "model"))
            torch.save(
                {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
                staged / "optimizer.pt",
            )
            state = {
                "step": step,
                "identity": self._identity(),
                "base": str(self.base) if self.base is not None else None,
                "lora": self.config.lora,
            }
            self.folder.publish(staged, step, state, self.config.keep_checkpoints)
        self.processes.barrier()


class MetricsLog:
    """Rank 0's log: a line every ``every`` steps (or a progress bar on a terminal), a JSON
    line per step in metrics.jsonl, and TensorBoard scalars when tensorboard is installed.
    A resumed run first drops what the interrupted one logged after its checkpoint."""

    def __init__(self, folder: RunFolder, active: bool, every: int, total: int, start: int):
        self.active, self.every, self.total = active, every, total
        self.file = self.board = self.bar = None
        self.window: list[StepStats] = []
        if not active:
            return
        _truncate_metrics(folder.metrics, start)
        self.file = folder.metrics.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(folder.path / "tensorboard"), purge_step=start + 1)
        except ImportError:
            print("TensorBoard logs need: pip install tensorboard", file=sys.stderr)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def record(self, step: int, stats: StepStats) -> None:
        if not self.active:
            return
        rate = stats.tokens / stats.seconds if stats.seconds > 0 else 0.0
        line = {"step": step, "loss": stats.loss, "lr": stats.lr, "tokens": stats.tokens,
                "trained_tokens": stats.trained_tokens, "seconds": stats.seconds,
                "tokens_per_second": rate}  # fmt: skip
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        if self.board is not None:
            for key in ("loss", "lr", "tokens_per_second"):
                self.board.add_scalar(f"train/{key}", line[key], step)
        self.window.append(stats)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", tok_s=f"{rate:,.0f}")
            self.bar.update(step - self.bar.n)
        elif step % self.every == 0 or step == self.total:
            seconds = sum(s.seconds for s in self.window)
            tokens = sum(s.tokens for s in self.window)
            rate = tokens / max(seconds, 1e-9)
            print(
                f"step {step}/{self.total}  loss {stats.loss:.4f}  lr {stats.lr:.2e}  "
                f"{rate:,.0f} tok/s  {seconds / len(self.window):.2f} s/step",
                file=sys.stderr,
                flush=True,
            )
            self.window.clear()

    def close(self) -> None:
        for handle in (self.file, self.board, self.bar):
            if handle is not None:
                handle.close()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the lines of steps up to ``last_step`` (all of them when starting afresh)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def _prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` built on a background thread, ``depth`` ahead: the next step's samples are
    tokenized and padded while this step computes (the tokenizer releases the GIL little, but
    torch's kernels do)."""
    import queue
    import threading

    buffer: queue.Queue[Any] = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def fill() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as error:  # handed to the consumer, raised there
            buffer.put(error)
            return
        buffer.put(done)

    worker = threading.Thread(target=fill, daemon=True, name="tipo-train-batches")
    worker.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            while True:
                buffer.get_nowait()


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def train(config: TrainConfig) -> Path:
    """Run ``config`` to the end; returns the exported Hugging Face folder."""
    return Trainer(config).run()


__all__ = ["Processes", "Trainer", "lr_factor", "train"]
