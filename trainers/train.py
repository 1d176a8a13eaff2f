"""The one shared trainer: `train(config, report)` runs a trial epoch by epoch (Ray, the CLI).

Each epoch: train, validate, append the metrics row to model_dir/metrics.parquet, save
model_dir/checkpoint.pth.tar (and model_best.pth.tar when val top-1 improves), then call
`report(metrics, checkpoint_path)`. A resumed run continues bit-identically (RNG states,
optimizer, scheduler and normalizer buffers are all in the checkpoint).

In a process group of K ranks (Ray Train, torchrun) the same call trains one trial data-
parallel with the meaning of one process (trainers/distributed.py): each rank takes its slice
of every global batch, the normalizers are synchronized across ranks (norms.convert_sync_norms),
gradients are averaged by DDP, and rank 0 writes the files and the checkpoint, which holds
every rank's RNG state and means the same for any K.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn

from trainers import distributed
from trainers.allocator import retain_freed_memory
from trainers.checkpoint import (
    CHECKPOINT_NAME,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainers.config import TrialConfig
from trainers.epoch_bar import bar_by_default, epoch_bar
from trainers.errors import UserError
from trainers.metrics import EpochMeter, EpochSummary
from trainers.recipe import rescale_note
from trainers.records import EPOCH_METRIC_KEYS, metric_row, upsert_rows
from trainers.step import autocast_context, make_train_step

METRICS_NAME = "metrics.parquet"
Report = Callable[[dict, Path], None]
# Settings whose values live on in the optimizer/scheduler state of a checkpoint.
RECIPE_KEYS = ("lr", "momentum", "weight_decay", "lr_milestones", "lr_multiplier")
# Training steps between looks at the loss for NaN/inf: each look waits for the device,
# so not every step; a diverged epoch stops within this many steps of its first bad loss.
DIVERGENCE_CHECK_STEPS = 50
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainOutcome:
    """How a run ended. status 'diverged': the training loss became NaN/inf."""

    status: Literal["completed", "diverged"]
    epochs_done: int
    best_epoch: int | None
    best_val_acc1: float | None
    final_metrics: dict | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available: "
                            "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) here")
    return device


@contextmanager
def _reproducible(seed: int | None) -> Iterator[None]:
    """Seed every RNG and make kernels deterministic; restore the global flags afterwards."""
    if seed is None:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    # cuBLAS needs this before its first use to be deterministic
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    # warn_only: an op without a deterministic kernel warns instead of stopping the run
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # Deterministic mode would also fill every torch.empty with NaN: an extra write of each
    # output and gradient per step (the Triton path allocates with empty), for reads of
    # uninitialized memory that nothing here makes (the kernels' NaN-guard tests check it).
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]
        torch.utils.deterministic.fill_uninitialized_memory = fill


@contextmanager
def _tf32(mode: str) -> Iterator[None]:
    """Float32 GPU math in TF32 as the recipe says (config.tf32); restored afterwards."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        # The per-backend API (torch >= 2.9); mixing it with allow_tf32 is an error there.
        matmul = torch.backends.cuda.matmul
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = "tf32" if mode in ("conv", "all") else "ieee"
        matmul.fp32_precision = "tf32" if mode == "all" else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = mode in ("conv", "all")
    torch.backends.cuda.matmul.allow_tf32 = mode == "all"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _nan_metrics(epoch: int, lr: float) -> dict[str, Any]:
    metrics = {k: math.nan for k in EPOCH_METRIC_KEYS}
    metrics.update(epoch=epoch, lr=lr)
    return metrics


def _validate(run: "_Trainer") -> EpochSummary:
    run.model.eval()
    meter = EpochMeter(run.device, reduce=distributed.all_reduce_sum)
    autocast = autocast_context(run.device, run.amp_dtype)
    with torch.no_grad():
        for images, labels in run.data.val_batches():
            with autocast():
                logits = run.model(run.to_memory_format(images))
                loss = run.criterion(logits, labels)
            meter.update(logits, labels, loss)
            meter.count(labels.shape[0])
    return meter.summary()


class _Trainer:
    """State of one run; `train()` below is the public entry point."""

    def __init__(self, config: TrialConfig, model_dir: Path, progress: bool, print_freq: int,
                 log: Callable[[str], None]):
        from trainers.data import build_data
        from trainers.models import build_model
        from trainers.optim import build_optimizer, build_scheduler
        self.ranks = distributed.current()
        distributed.check_batch(config.batch_size, self.ranks)
        # only rank 0 speaks and writes; the others train in silence
        log = log if self.ranks.is_main else (lambda line: None)
        self.config, self.model_dir, self.log = config, model_dir, log
        # logged by train() after the line on the effective lr and momentum
        self.notes: list[str] = []
        # the lr and momentum the optimizer starts from: the checkpoint's when resumed
        self.recipe = config
        self.progress, self.print_freq = progress and self.ranks.is_main, print_freq
        self.device = resolve_device(config.device)
        if config.norm_impl == "triton" and self.device.type != "cuda":
            raise UserError(f"norm_impl triton needs a CUDA device, and this trial runs on "
                            f"the {self.device.type}: use norm_impl auto or eager")
        self.data = build_data(config, self.device, self.ranks)
        self.model = build_model(config, self.data.num_classes, self.data.input_size)
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        self.model.to(self.device, memory_format=self.memory_format)
        if self.ranks.world > 1:
            import norms

            self.model = norms.convert_sync_norms(self.model)
        self.net = self._data_parallel(self.model)   # what trains; self.model is saved
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.criterion = nn.CrossEntropyLoss()
        self.amp_dtype = AMP_DTYPES[config.amp_dtype] if config.amp else None
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.amp_dtype == torch.float16 else None)
        self.cuda_graph = config.cuda_graph and self.device.type == "cuda" \
            and self.ranks.world == 1
        if config.cuda_graph and not self.cuda_graph:
            why = ("needs a CUDA device; training eagerly on the cpu"
                   if self.device.type != "cuda" else
                   "is not used by multi-worker trials (DDP's all-reduce runs outside the "
                   "graph); training eagerly")
            self.notes.append(f"note: cuda_graph {why}")
        self.stepped = False   # whether a training step has run (see _first_step)
        self.epochs_done = 0
        self.best_acc1: float | None = None
        self.best_epoch: int | None = None
        self.last_metrics: dict | None = None

    def _data_parallel(self, model: nn.Module) -> nn.Module:
        """The module that trains: the model alone, or DDP over it in a process group.

        Buffers are not synced at each forward: the synchronized normalizers keep them
        identical on every rank, and rank 0's would overwrite the others' every step."""
        if self.ranks.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def restore(self, path: str | Path) -> None:
        state = load_checkpoint(path)
        check_compatible(state, self.config.to_dict(), path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0][:160]
            raise UserError(f"checkpoint {path} does not match the model "
                            f"(norm={self.config.norm}, depth={self.config.depth}, "
                            f"arch={self.config.arch}): {first}; use the settings it was "
                            "saved with or another --model-dir") from None
        saved = state["config"]
        kept = [k for k in RECIPE_KEYS if k in saved and saved[k] != self.config.to_dict()[k]]
        if kept:
            # the optimizer and scheduler states carry the old recipe, as in the seed scripts
            self.notes.append(f"note: resuming with the checkpoint's {', '.join(kept)} "
                              "(optimizer and lr schedule continue as saved)")
            self.recipe = self.config.replace(**{k: float(saved[k]) for k in ("lr", "momentum")
                                                 if k in kept})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_ranks") or []
        # each rank continues its own RNG streams; a checkpoint of another K gives rank 0's
        same_world = len(per_rank) == self.ranks.world
        set_rng_state(per_rank[self.ranks.rank] if same_world else state["rng"])
        self.epochs_done = int(state["epoch"])
        self.best_acc1 = state.get("best_acc1")
        self.best_epoch = state.get("best_epoch")
        self.last_metrics = state.get("metrics")

    def start_at(self, epochs_done: int) -> None:
        """A manual --start-epoch without a checkpoint: schedule as if epochs were done."""
        from trainers.optim import build_scheduler
        self.epochs_done = epochs_done
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler = build_scheduler(self.optimizer, self.config, epochs_done)

    def to_memory_format(self, images: torch.Tensor) -> torch.Tensor:
        """The batch in the model's memory format (channels_last when the config asks)."""
        return images.contiguous(memory_format=self.memory_format)

    def train_epoch(self, epoch: int) -> tuple[EpochSummary, bool]:
        """One pass over the training batches; stops soon after a non-finite loss.

        Nothing waits for the device between steps, but for the divergence checks and the
        per-batch log lines (every print_freq steps, when no live bar shows them)."""
        self.model.train()
        meter = EpochMeter(self.device, reduce=distributed.all_reduce_sum)
        step = make_train_step(self.net, self.criterion, self.optimizer, meter, self.device,
                               self.amp_dtype, self.scaler, self.cuda_graph)
        total = self.data.train_len
        with epoch_bar(self.progress, f"epoch {epoch}/{self.config.epochs}",
                            total) as bar:
            for i, (images, labels) in enumerate(self.data.train_batches(epoch), start=1):
                if self.stepped:
                    step(self.to_memory_format(images), labels)
                else:
                    self._first_step(step, images, labels)
                # the same steps on every rank: a look is a collective in a group
                printed = self.print_freq > 0 and i % self.print_freq == 0
                if i % DIVERGENCE_CHECK_STEPS and not printed:
                    bar.advance(i)
                    continue
                so_far = meter.summary()   # waits for the device
                if so_far.nonfinite:
                    return so_far, True
                text = f"loss {so_far.loss:.4f} acc1 {so_far.acc1:.2f}"
                bar.update(i, text)
                if printed and not self.progress:   # the seed scripts' per-batch lines
                    self.log(f"epoch {epoch} [{i}/{total}] {text}")
        summary = meter.summary()
        return summary, summary.nonfinite

    def _first_step(self, step: Callable, images: torch.Tensor, labels: torch.Tensor) -> None:
        """The run's first step, where Triton compiles Online Norm's kernels: a failure
        there is one line naming the setting that avoids them."""
        from norms.impl import triton_failure
        try:
            step(self.to_memory_format(images), labels)
        except Exception as err:
            if not triton_failure(err):
                raise
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise UserError(f"Online Norm's Triton kernels failed at the first step "
                            f"({type(err).__name__}: {first}): set norm_impl eager (--norm-impl "
                            "eager, or --set norm_impl=eager) to train with the eager ops"
                            ) from None
        self.stepped = True

    def run_epoch(self, epoch: int) -> tuple[dict[str, Any], bool]:
        if epoch > 1:
            with warnings.catch_warnings():
                # after a resume the fresh optimizer has not stepped yet; the order is right
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                self.scheduler.step()
        lr = float(self.optimizer.param_groups[0]["lr"])
        start = time.perf_counter()
        train, diverged = self.train_epoch(epoch)   # its summary waited for the device
        train_time = time.perf_counter() - start
        metrics = _nan_metrics(epoch, lr)
        metrics.update(train_loss=math.nan if diverged else train.loss,
                       train_acc1=train.acc1, train_acc5=train.acc5)
        if not diverged:
            val = _validate(self)
            metrics.update(val_loss=val.loss, val_acc1=val.acc1, val_acc5=val.acc5)
        metrics["epoch_time_s"] = time.perf_counter() - start
        metrics["images_per_s"] = train.images / train_time if train_time > 0 else math.nan
        return metrics, diverged

    def checkpoint_state(self, epoch: int, metrics: dict) -> dict[str, Any]:
        """Called on every rank (it gathers their RNG states); rank 0 saves it."""
        rngs = distributed.gather_objects(rng_state())
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "best_acc1": self.best_acc1, "best_epoch": self.best_epoch,
                "config": self.config.to_dict(), "metrics": dict(metrics), "rng": rngs[0],
                "rng_ranks": rngs if len(rngs) > 1 else [],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}


def _summary(metrics: dict) -> str:
    return (f"epoch {metrics['epoch']} lr {metrics['lr']:.4g} "
            f"train loss {metrics['train_loss']:.4f} acc1 {metrics['train_acc1']:.2f} | "
            f"val loss {metrics['val_loss']:.4f} acc1 {metrics['val_acc1']:.2f} "
            f"acc5 {metrics['val_acc5']:.2f} | {metrics['epoch_time_s']:.1f}s "
            f"{metrics['images_per_s']:.0f} img/s")


def train(config: TrialConfig, report: Report | None = None, *, model_dir: str | Path,
          resume: str | Path | None = None, start_epoch: int | None = None,
          evaluate_only: bool = False, print_freq: int = 10, progress: bool | None = None,
          log: Callable[[str], None] = print) -> TrainOutcome:
    """Train (or with evaluate_only, just validate) one trial; see the module docstring.

    report(metrics, checkpoint_path) is called once per epoch with the keys of
    trainers.records.EPOCH_METRIC_KEYS (epoch 1-based, accuracies in percent, epoch_time_s
    covering training and validation, images_per_s counting training images only). On a
    diverged epoch the val metrics are NaN and checkpoint_path is the previous epoch's
    checkpoint (absent if the first epoch diverged). resume: a checkpoint file or a model
    dir holding checkpoint.pth.tar. start_epoch: epochs to treat as done when not resuming.
    """
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise UserError(f"--model-dir {model_dir} is a file: give a folder")
    if start_epoch and not 0 <= start_epoch < config.epochs:
        raise UserError(f"--start-epoch must be in [0, {config.epochs}) for {config.epochs} "
                        f"epochs, got {start_epoch}")
    if resume is None and not evaluate_only and (model_dir / CHECKPOINT_NAME).exists():
        # a fresh run here would overwrite its checkpoints and mix its metrics rows into
        # the earlier run's (rows are keyed by epoch)
        raise UserError(f"{model_dir} already holds a run ({CHECKPOINT_NAME}): pass --resume "
                        f"{model_dir} to continue it, or choose another --model-dir")
    progress = bar_by_default() if progress is None else progress
    retain_freed_memory()   # before the first batch: keeps step tensors from page-faulting
    with _reproducible(config.seed), _tf32(config.tf32):
        run = _Trainer(config, model_dir, progress, print_freq, log)
        if resume is not None:
            run.restore(resume)
        elif start_epoch:
            run.start_at(int(start_epoch))
        note = None if evaluate_only else rescale_note(run.recipe)
        for line in ([note] if note else []) + run.notes:   # the effective recipe first
            run.log(line)
        if evaluate_only:
            return _evaluate(run, log)
        if resume is not None:
            log_resumed(run)
        return _fit(run, report, log)


def log_resumed(run: _Trainer) -> None:
    """Which epoch the run continues from, and what is left to train."""
    done, total = run.epochs_done, run.config.epochs
    if done >= total:
        run.log(f"resumed from epoch {done}'s checkpoint: all {total} epochs are done (pass "
                f"--epochs N, N > {done}, to train further)")
    else:
        left = f"epoch {total}" if done + 1 == total else f"epochs {done + 1}-{total}"
        run.log(f"resumed from epoch {done}'s checkpoint: training {left} of {total}")


def _evaluate(run: _Trainer, log: Callable[[str], None]) -> TrainOutcome:
    val = _validate(run)
    metrics = _nan_metrics(run.epochs_done, float(run.optimizer.param_groups[0]["lr"]))
    metrics.update(val_loss=val.loss, val_acc1=val.acc1, val_acc5=val.acc5)
    run.log(f"evaluate: val loss {val.loss:.4f} acc1 {val.acc1:.2f} acc5 {val.acc5:.2f} "
        f"({val.images} images)")
    return TrainOutcome("completed", run.epochs_done, run.best_epoch, run.best_acc1, metrics)


def _fit(run: _Trainer, report: Report | None, log: Callable[[str], None]) -> TrainOutcome:
    config, model_dir, main = run.config, run.model_dir, run.ranks.is_main
    if main:
        model_dir.mkdir(parents=True, exist_ok=True)
    # only rank 0 has the checkpoint file; the other ranks report None
    ckpt_path = model_dir / CHECKPOINT_NAME if main else None
    for epoch in range(run.epochs_done + 1, config.epochs + 1):
        metrics, diverged = run.run_epoch(epoch)
        if main:
            # the row goes in before the checkpoint: a crash in between redoes this epoch on
            # resume, and the upsert replaces the row instead of losing or duplicating it
            upsert_rows(model_dir / METRICS_NAME, [metric_row(config, metrics)],
                        key=("epoch",))
        run.last_metrics = metrics
        if diverged:
            run.log(f"epoch {epoch}: training loss is not finite; stopping (diverged)")
            if report is not None:
                report(dict(metrics), ckpt_path)
            return TrainOutcome("diverged", epoch, run.best_epoch, run.best_acc1, metrics)
        is_best = run.best_acc1 is None or metrics["val_acc1"] > run.best_acc1
        if is_best:
            run.best_acc1, run.best_epoch = float(metrics["val_acc1"]), epoch
        run.epochs_done = epoch
        state = run.checkpoint_state(epoch, metrics)
        if main:
            save_checkpoint(state, model_dir, is_best)
        run.log(_summary(metrics))
        if report is not None:
            report(dict(metrics), ckpt_path)
    return TrainOutcome("completed", run.epochs_done, run.best_epoch, run.best_acc1,
                        run.last_metrics)
