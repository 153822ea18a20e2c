"""CleanPose trainer (training.md §1, §2, §5, §6): Adam + CyclicLR, per-sub-batch losses mixed by size,
confounder
queue FIFO shared by all ranks, optional ULIP-2 distillation, atomic checkpoints and exact resume.

Determinism / resume design
---------------------------
Every random draw of an iteration is derived from (seed, iteration, rank), not from a stream carried across
iterations: the data sample at global position p of a source comes from ``worker_rng(seed, epoch, index)``
(the
dataset's own keyed generator) with (epoch, index) a pure function of p; the network's geometric
augmentation uses
a torch.Generator re-seeded from (seed, iteration, rank); the queue selection uses a NumPy RandomState
seeded from
(seed, iteration), identical on every rank because the queue is; the global torch RNG (teacher DropPath) is
re-seeded per iteration. A resumed run therefore only needs the model, optimizer, scheduler, queue and
iteration
to continue bit-for-bit, and its data does not depend on the DataLoader worker count. The RNG streams are
saved
as well, for inspection.

The published code draws from unseeded global RNGs instead (training.md pitfall 11), so it is not
reproducible;
the distributions are the same.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from cleanpose_model.config import YamlConfig
from cleanpose_training import distributed as D
from cleanpose_training.batching import IterationBatchSampler, iteration_loader, loader_workers
from cleanpose_training.losses import TERMS, CleanPoseLoss, LossWeights
from cleanpose_training.ulip.pointbert import PointBertConfig

log = logging.getLogger("cleanpose.train")

STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ScheduleConfig:
    iterations: int = 120_000
    base_lr: float = 2e-5
    max_lr: float = 5e-4
    step_size_up: int = 20_000
    step_size_down: int | None = 20_000
    mode: str = "triangular"
    # Wall-clock budget for the whole run (seconds, None = off). After ``calibrate_iters`` iterations the
    # measured
    # speed fixes the number of iterations that fit, and the cycle's step sizes are scaled by the same
    # factor so
    # the schedule still completes (used by the demo, which must fit one 10-minute GPU command).
    time_budget_s: float | None = None
    calibrate_iters: int = 60


@dataclass
class QueueConfig:
    length: int = 80
    select_num: int = 12
    # "ulip" (published, needs ulip_pointnet2) or "random" (fallback, see queue_init.py)
    init: str = "ulip"
    ulip_pointnet2: str | None = None


@dataclass
class DistillationConfig:
    ulip_pointbert: str | None = None
    # The published teacher is a submodule of Net and therefore runs in train mode (BN batch statistics,
    # DropPath active; training.md §4.2). False runs it in eval mode (deterministic targets).
    teacher_train_mode: bool = True
    # The teacher's architecture (default: PointTransformer_8192point.yaml, as the published teacher)
    pointbert: PointBertConfig = field(default_factory=PointBertConfig)


@dataclass
class TrainerConfig:
    seed: int = 42
    device: str = "auto"
    amp: str = "off"  # off | bf16 | fp16 (CUDA only; losses always in float32)
    tf32: bool = False
    clip_grad_norm: float | None = None
    ckpt_every: int = 5000
    log_every: int = 20
    workers: int = 4
    # How DataLoader workers start: "fork" (fast, the Linux default) or "spawn"/"forkserver" (safe when the
    # parent already runs threads that hold locks, e.g. inside a long-lived test or ROS process).
    worker_start: str = "fork"
    out_dir: str = "runs/cleanpose"
    resume: str = "auto"  # auto | never | <path to a train_state.pt>
    progress: bool = True
    find_unused_parameters: bool | None = None
    max_seconds: float | None = None  # stop (with a checkpoint) after this much training time
    # Also keep a model snapshot (our safetensors format, with the queue) at every ckpt_every, as the
    # published
    # epoch_<E>.pt files; train_state.pt (for resuming) is overwritten each time.
    snapshots: bool = True
    tensorboard: bool = True  # also write TensorBoard scalars (out_dir/tb) when tensorboard is importable


@dataclass
class EvalConfig:
    packed_test: str | None = (
        None  # a packed test split (datasets/packed.py) scored after training; None: none
    )
    batch_size: int = 64


@dataclass
class TrainConfig(YamlConfig):
    section: ClassVar[str] = "config"

    model: str = "cleanpose_nocs"
    model_overrides: dict = field(default_factory=dict)
    dinov2_weights: str | None = None
    data: dict = field(default_factory=dict)
    schedule: ScheduleConfig
    loss: LossWeights
    queue: QueueConfig
    distillation: DistillationConfig
    trainer: TrainerConfig
    eval: EvalConfig


def set_by_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


# ----------------------------------------------------------------------------------------------------
# Per-iteration seeds (the batches are keyed in cleanpose_training.batching)


def _seed_int(*parts: int) -> int:
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]
        & 0x7FFFFFFFFFFFFFFF
    )


# ----------------------------------------------------------------------------------------------------
# Queue


def fifo_update(queue: torch.Tensor, feats: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
    """Published FIFO: for b in batch order, pop the oldest entry of list[cat_b] and append feat_b.

    queue (C, N, d); feats (B, d); cats (B,). Vectorised per category (same result as the sequential loop)."""
    queue = queue.clone()
    n = queue.shape[1]
    for c in torch.unique(cats).tolist():
        new = feats[cats == c].to(queue.dtype)
        m = new.shape[0]
        if m >= n:
            queue[c] = new[-n:]
        else:
            queue[c] = torch.cat([queue[c, m:], new], 0)
    return queue


# ----------------------------------------------------------------------------------------------------
# Network adapter: the one place that knows the train-mode output names of CleanPoseNet


_OUT_ALIASES = {
    "queue_feat": ("queue_feat", "kpt_feat_mean", "fd_feat_mean", "queue_feature"),
    "distill_feat": ("distill_feat", "distill_student"),
    "distill_input": ("distill_input", "pts_input"),
}


def _alias(out: dict, name: str):
    for k in _OUT_ALIASES.get(name, (name,)):
        if k in out:
            return out[k]
    return None


def forward_train(net: nn.Module, batch: dict, queue_feats: torch.Tensor, generator: torch.Generator | None):
    out = net(
        batch["rgb"],
        batch["pts"],
        batch["choose"],
        batch["category_label"],
        queue_feats=queue_feats,
        generator=generator,
    )
    for name in _OUT_ALIASES:
        v = _alias(out, name)
        if v is not None:
            out[name] = v
    return out


# ----------------------------------------------------------------------------------------------------
# Checkpoint state


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=str(path.parent))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _np_state_to_tensors(state) -> dict:
    _name, keys, pos, has_gauss, cached = state
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") else net


def lr_at(step: int, s: ScheduleConfig) -> float:
    """Closed form of CyclicLR('triangular') after ``step`` scheduler steps (training.md §6), for
    tests/logs."""
    up = s.step_size_up
    down = s.step_size_down if s.step_size_down is not None else up
    total = up + down
    cycle = math.floor(1 + step / total)
    x = 1.0 + step / total - cycle
    scale = x / (up / total) if x <= up / total else (x - 1) / (up / total - 1)
    amp = (s.max_lr - s.base_lr) * (0.5 ** (cycle - 1) if s.mode == "triangular2" else 1.0)
    return s.base_lr + amp * scale


# ----------------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        info: D.DistInfo | None = None,
        net: nn.Module | None = None,
        model_cfg=None,
        sources: list[tuple[str, Dataset, int]] | None = None,
    ):
        self.cfg = cfg
        tc = cfg.trainer
        self.info = info or D.init(tc.device)
        self.device = self.info.device
        if self.info.device_fallback and self.info.is_main:
            log.warning("trainer.device=%s: %s", tc.device, self.info.device_fallback)
        self.out_dir = Path(tc.out_dir)
        self.ckpt_dir = self.out_dir / "ckpt"
        if self.info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(tc.seed)  # the initial weights: identical on every rank (DDP also broadcasts them)
        if net is None:
            net, model_cfg = build_model(cfg)
        self.model_cfg = model_cfg
        self.net = net.to(self.device)
        self.sources = sources if sources is not None else build_sources(cfg, self.info)
        self.splits = [bs for _, _, bs in self.sources]

        self.criterion = CleanPoseLoss(cfg.loss)
        self.teacher = self._build_teacher()
        params = [p for p in self.net.parameters() if p.requires_grad]
        s = cfg.schedule
        self.optimizer = torch.optim.Adam(
            params, lr=s.base_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
        )
        self._make_scheduler(s.step_size_up, s.step_size_down, 0)
        amp = tc.amp if self.device.type == "cuda" else "off"
        if tc.amp != "off" and self.device.type != "cuda":
            log.info("amp=%s ignored on %s: autocast is used on CUDA only", tc.amp, self.device)
        # YAML reads a bare `off` as False.
        amp = "off" if amp in (False, None) else amp
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))

        self.iteration = 0
        self.queue: torch.Tensor | None = None
        self.ddp_net = self.net
        self._stop_reason: str | None = None
        self.history: list[dict] = []

    # ---------------------------------------------------------------- set-up pieces

    def _build_teacher(self):
        path = self.cfg.distillation.ulip_pointbert
        if not path:
            if self.info.is_main:
                log.warning(
                    "distillation OFF: no ULIP-2 PointBERT checkpoint given "
                    "(distillation.ulip_pointbert); the L_KD term is not computed"
                )
            return None
        if float(self.criterion.w.distillation) == 0.0:
            log.warning("distillation OFF: loss weight 'distillation' is 0")
            return None
        from cleanpose_training.ulip import load_pointbert_teacher

        teacher = load_pointbert_teacher(path, self.cfg.distillation.pointbert).to(self.device)
        teacher.train(self.cfg.distillation.teacher_train_mode)
        return teacher

    def _init_queue(self) -> torch.Tensor:
        from cleanpose_training.queue_init import init_queue

        q = init_queue(self.cfg, self.model_cfg, self.sources, self.info)
        q = q.to(self.device, torch.float32)
        # Rank 0's queue is the reference: the FIFO then keeps every rank identical (same gathered updates).
        return D.broadcast_(self.info, q.contiguous())

    def _wrap_ddp(self):
        if not self.info.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        fu = self.cfg.trainer.find_unused_parameters
        if fu is None:
            # Without a teacher the distillation head (projector_pts, pointnet2ulip) gets no gradient.
            fu = self.teacher is None
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp_net = DDP(self.net, device_ids=ids, find_unused_parameters=fu)

    def _loaders(self, start: int, stop: int):
        tc = self.cfg.trainer
        workers = loader_workers(tc.workers)
        if self.info.is_main:
            log.info(
                "DataLoader workers per source: %d (configured %d, %s CPUs)",
                workers,
                tc.workers,
                os.cpu_count(),
            )
        loaders = []
        for sid, (_name, ds, bs) in enumerate(self.sources):
            sampler = IterationBatchSampler(
                len(ds), bs, start, stop, tc.seed, sid, self.info.rank, self.info.world_size
            )
            loaders.append(
                iteration_loader(ds, sampler, workers, tc.worker_start, self.device.type == "cuda")
            )
        return loaders

    def _make_scheduler(self, up: int, down: int | None, steps_taken: int):
        """A fresh CyclicLR with these step sizes, advanced by ``steps_taken`` steps."""
        s = self.cfg.schedule
        for g in self.optimizer.param_groups:
            g.pop("initial_lr", None)
        # Adam has no momentum for CyclicLR to cycle.
        self.scheduler = torch.optim.lr_scheduler.CyclicLR(
            self.optimizer, s.base_lr, s.max_lr, up, down, mode=s.mode, cycle_momentum=False
        )
        with warnings.catch_warnings():
            # fast-forwarding the schedule without optimizer steps is intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for _ in range(steps_taken):
                self.scheduler.step()

    def rescale_schedule(self, new_total: int) -> None:
        """Shorten the run to ``new_total`` iterations, scaling the LR cycle by the same factor."""
        s = self.cfg.schedule
        f = new_total / s.iterations
        s.step_size_up = max(1, round(s.step_size_up * f))
        if s.step_size_down is not None:
            s.step_size_down = max(1, round(s.step_size_down * f))
        s.iterations = int(new_total)
        self._make_scheduler(s.step_size_up, s.step_size_down, self.iteration)

    # ---------------------------------------------------------------- checkpointing

    def state_path(self) -> Path:
        return self.ckpt_dir / "train_state.pt"

    def save_state(self, path: Path | None = None) -> Path:
        path = path or self.state_path()
        state = {
            "version": STATE_VERSION,
            "iteration": self.iteration,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "queue": self.queue.detach().cpu(),
            "world_size": self.info.world_size,
            "seed": self.cfg.trainer.seed,
            "schedule": {
                "iterations": self.cfg.schedule.iterations,
                "step_size_up": self.cfg.schedule.step_size_up,
                "step_size_down": self.cfg.schedule.step_size_down,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy_queue": _np_state_to_tensors(self._queue_rng(self.iteration).get_state()),
            },
            "config_json": json.dumps(self.cfg.to_dict()),
        }
        if self.info.is_main:
            atomic_torch_save(state, path)
        D.barrier(self.info)
        return path

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise RuntimeError(f"{path}: train state version {state.get('version')} != {STATE_VERSION}")
        self.net.load_state_dict(state["model"], strict=True)
        sch = state.get("schedule") or {}
        if sch and (sch["iterations"], sch["step_size_up"], sch["step_size_down"]) != (
            self.cfg.schedule.iterations,
            self.cfg.schedule.step_size_up,
            self.cfg.schedule.step_size_down,
        ):
            # a time-budgeted run fixed its length: the resumed run continues that schedule
            self.cfg.schedule.iterations = int(sch["iterations"])
            self.cfg.schedule.step_size_up = int(sch["step_size_up"])
            self.cfg.schedule.step_size_down = sch["step_size_down"]
            self._make_scheduler(self.cfg.schedule.step_size_up, self.cfg.schedule.step_size_down, 0)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.queue = state["queue"].to(self.device)
        self.iteration = int(state["iteration"])
        if state.get("world_size") != self.info.world_size:
            log.warning(
                "resuming a %s-process run with %s processes: data shards and augmentation draws change",
                state.get("world_size"),
                self.info.world_size,
            )
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    def _resume_path(self) -> Path | None:
        r = self.cfg.trainer.resume
        if r in ("never", "", None):
            return None
        if r == "auto":
            p = self.state_path()
            return p if p.is_file() else None
        p = Path(r)
        if not p.is_file():
            raise FileNotFoundError(f"resume checkpoint {p} not found")
        return p

    def save_final(self, path: Path | None = None) -> Path | None:
        from cleanpose_model.io.checkpoints import save_checkpoint

        path = path or (self.out_dir / "final.safetensors")
        if self.info.is_main:
            meta = {
                "source": "cleanpose_ros training",
                "iterations": int(self.iteration),
                "train_config": self.cfg.to_dict(),
            }
            save_checkpoint(path, self.net, self.model_cfg, self.queue, meta)
        D.barrier(self.info)
        return path

    # ---------------------------------------------------------------- per-iteration randomness

    def _queue_rng(self, it: int) -> np.random.RandomState:
        # Same on every rank: all ranks must pick the same 12 entries of the (identical) queue.
        return np.random.RandomState(_seed_int(self.cfg.trainer.seed, it, 0x9E) % (2**32))

    def _seed_iteration(self, it: int) -> torch.Generator:
        s = _seed_int(self.cfg.trainer.seed, it, self.info.rank, 0xA6)
        torch.manual_seed(s)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(s ^ 0x5DEECE66D)
        return gen

    # ---------------------------------------------------------------- the step

    def _to_device(self, b: dict) -> dict:
        nb = self.device.type == "cuda"
        return {k: (v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in b.items()}

    @staticmethod
    def _concat(batches: list[dict]) -> dict:
        if len(batches) == 1:
            return batches[0]
        keys = set.intersection(*(set(b) for b in batches))
        out = {}
        for k in keys:
            vals = [b[k] for b in batches]
            if all(torch.is_tensor(v) for v in vals) and len({tuple(v.shape[1:]) for v in vals}) == 1:
                out[k] = torch.cat(vals, 0)
        return out

    def _precision(self):
        """TF32 products (``trainer.tf32``) on CUDA while a step runs, through the one context that sets
        torch's precision switches and restores them afterwards; the CPU has no TF32."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from cleanpose_model.inference.graphs import tf32_products

        return tf32_products(bool(self.cfg.trainer.tf32))

    def train_step(self, batch: dict) -> dict[str, float]:
        with self._precision():
            return self._train_step(batch)

    def _train_step(self, batch: dict) -> dict[str, float]:
        from cleanpose_model.queue import ConfounderQueue

        it = self.iteration
        gen = self._seed_iteration(it)
        cats = batch["category_label"].reshape(-1).long()
        qsel = ConfounderQueue(self.queue, self.cfg.queue.select_num).select(
            cats, "random", self._queue_rng(it)
        )
        self.ddp_net.train()
        amp_ctx = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with amp_ctx:
            out = forward_train(self.ddp_net, batch, qsel, gen)
        out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}
        teacher_feat = None
        if self.teacher is not None:
            pts_t = out.get("distill_input")
            if pts_t is None:
                raise RuntimeError(
                    "distillation needs the network's augmented centered points in the train-mode "
                    "output ('distill_input'/'pts_aug')"
                )
            with torch.no_grad():  # frozen: no_grad gives the same values and saves the teacher's activations
                teacher_feat = self.teacher(pts_t.detach().float())
        loss, terms = self.criterion(out, batch, self.splits, teacher_feat)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at iteration {it}: { {k: float(v) for k, v in terms.items()} }"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        gnorm = None
        if self.cfg.trainer.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            gnorm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.trainer.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # FIFO after the step, from every rank's batch in rank order, so all queues stay identical.
        qf = out.get("queue_feat")
        if qf is not None:
            feats = D.all_gather_cat(self.info, qf.detach().float().reshape(qf.shape[0], -1))
            allc = D.all_gather_cat(self.info, cats.to(self.device))
            self.queue = fifo_update(self.queue, feats, allc)
        self.iteration = it + 1
        scal = {k: float(v) for k, v in terms.items()}
        scal["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if gnorm is not None:
            scal["grad_norm"] = float(gnorm)
        return scal

    # ---------------------------------------------------------------- the loop

    def _install_signals(self):
        def handler(signum, _frame):
            if self._stop_reason is not None:
                raise KeyboardInterrupt
            self._stop_reason = f"signal {signum}"

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread (e.g. some test runners)
                old[sig] = signal.signal(sig, handler)
        return old

    def request_stop(self, reason: str = "requested") -> None:
        self._stop_reason = reason

    def fit(self, max_iterations: int | None = None) -> dict:
        tc = self.cfg.trainer
        total = self.cfg.schedule.iterations
        resume = self._resume_path()
        if resume is not None:
            self.load_state(resume)
        if self.queue is None:
            self.queue = self._init_queue()
        self._wrap_ddp()
        stop = total if max_iterations is None else min(total, max_iterations)
        old_handlers = self._install_signals()
        writer = _ScalarWriter(self.out_dir, self.info.is_main, append=resume is not None, tb=tc.tensorboard)
        bar = None
        if self.info.is_main and tc.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, dynamic_ncols=True, desc="train")
        t0 = time.time()
        t_cal = t0
        start_it = self.iteration
        acc: dict[str, float] = {}
        n_acc = 0
        loaders = self._loaders(self.iteration, stop)
        try:
            for parts in zip(*loaders):
                batch = self._to_device(self._concat(list(parts)))
                scal = self.train_step(batch)
                for k, v in scal.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                it = self.iteration
                if bar is not None:
                    bar.update(1)
                sched = self.cfg.schedule
                if sched.time_budget_s and it - start_it == 10:
                    t_cal = time.time()
                if sched.time_budget_s and it - start_it == 10 + sched.calibrate_iters:
                    per_it = (time.time() - t_cal) / sched.calibrate_iters
                    remaining = sched.time_budget_s - (time.time() - t0)
                    fit_n = it + int(0.97 * remaining / per_it)
                    # every rank must agree on the length: take rank 0's estimate
                    n_t = D.broadcast_(
                        self.info, torch.tensor([fit_n], dtype=torch.int64, device=self.device)
                    )
                    fit_n = int(n_t.item())
                    if fit_n < sched.iterations:
                        if self.info.is_main:
                            log.info(
                                "time budget %.0fs at %.3fs/it: %d -> %d iterations (LR cycle scaled)",
                                sched.time_budget_s,
                                per_it,
                                sched.iterations,
                                fit_n,
                            )
                        self.rescale_schedule(max(fit_n, it + 1))
                        stop = min(stop, sched.iterations)
                        total = sched.iterations
                        if bar is not None:
                            bar.total = total
                            bar.refresh()
                if it % tc.log_every == 0 or it == stop:
                    mean = {k: v / n_acc for k, v in acc.items()}
                    vec = torch.tensor(
                        [mean[k] for k in sorted(mean)], dtype=torch.float64, device=self.device
                    )
                    vec = D.all_reduce_mean(self.info, vec)
                    mean = dict(zip(sorted(mean), vec.tolist()))
                    mean["lr"] = scal["lr"]
                    el = time.time() - t0
                    mean["it_per_s"] = (it - start_it) / max(el, 1e-9)
                    mean["elapsed_s"] = el
                    writer.write(it, mean)
                    self.history.append({"iteration": it, **mean})
                    if bar is None and self.info.is_main:
                        log.info(
                            "it %d/%d %s",
                            it,
                            total,
                            " ".join(
                                f"{k}={mean[k]:.4g}" for k in ("total", *TERMS, "lr", "it_per_s") if k in mean
                            ),
                        )
                    if bar is not None:
                        bar.set_postfix({k: f"{mean[k]:.3g}" for k in ("total", *TERMS, "lr") if k in mean})
                    acc, n_acc = {}, 0
                if it % tc.ckpt_every == 0 and it < stop:
                    self.save_state()
                    if tc.snapshots:
                        self.save_final(self.ckpt_dir / f"iter_{it:07d}.safetensors")
                if tc.max_seconds is not None and time.time() - t0 > tc.max_seconds and it < stop:
                    self._stop_reason = f"time budget {tc.max_seconds}s"
                if self.info.enabled:
                    # every rank must stop at the same iteration: take the stop request of any rank
                    flag = torch.tensor([1.0 if self._stop_reason else 0.0], device=self.device)
                    if float(D.all_reduce_mean(self.info, flag)) > 0 and not self._stop_reason:
                        self._stop_reason = "another rank stopped"
                if it >= stop:
                    break
                if self._stop_reason:
                    log.warning("stopping at iteration %d (%s); checkpoint written", it, self._stop_reason)
                    break
        finally:
            if bar is not None:
                bar.close()
            writer.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        # Written on normal completion and on interruption alike: the run can always be resumed.
        self.save_state()
        elapsed = time.time() - t0
        done = self.iteration - start_it
        return {
            "iterations": self.iteration,
            "iterations_this_run": done,
            "seconds": elapsed,
            "it_per_s": done / max(elapsed, 1e-9),
            "stopped": self._stop_reason,
            "world_size": self.info.world_size,
            "device": str(self.device),
        }


class _ScalarWriter:
    """CSV scalars (always) + TensorBoard (when importable), rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, append: bool, tb: bool = True):
        self.enabled = enabled
        self.path = out_dir / "scalars.csv"
        self.fields: list[str] | None = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if append and self.path.is_file():
            with open(self.path) as fh:
                header = fh.readline().strip()
            self.fields = header.split(",") if header else None
        elif self.path.exists():
            self.path.unlink()
        if not tb:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def write(self, it: int, scalars: dict) -> None:
        if not self.enabled:
            return
        if self.fields is None:
            self.fields = ["iteration", *sorted(scalars)]
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.fields)
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([it] + [f"{scalars.get(k, float('nan')):.6g}" for k in self.fields[1:]])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, it)

    def close(self):
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------------
# Builders


def build_model(cfg: TrainConfig):
    from cleanpose_model.io.checkpoints import load_config
    from cleanpose_model.net import CleanPoseNet

    model_cfg = load_config(cfg.model)
    if cfg.model_overrides:
        from cleanpose_model.io.checkpoints import config_from_dict, config_to_dict

        d = config_to_dict(model_cfg)
        for k, v in cfg.model_overrides.items():
            set_by_path(d, k, v)
        model_cfg = config_from_dict(d)
        assert dataclasses.is_dataclass(model_cfg)
    net = CleanPoseNet(model_cfg)
    if cfg.dinov2_weights:
        from cleanpose_model.io.checkpoints import load_dinov2_weights

        load_dinov2_weights(net, cfg.dinov2_weights)
    return net, model_cfg


def build_sources(cfg: TrainConfig, info: D.DistInfo) -> list[tuple[str, Dataset, int]]:
    """``data.sources``: list of {type, batch_size, ...}; order = concatenation order (syn first)."""
    specs = cfg.data.get("sources")
    if not specs:
        raise ValueError("config 'data.sources' is empty: give at least one training source")
    out = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type")
        bs = int(spec.pop("batch_size"))
        name = spec.pop("name", kind)
        ds = _make_dataset(kind, spec, cfg.trainer.seed)
        out.append((name, ds, bs))
    return out


def _make_dataset(kind: str, spec: dict, seed: int) -> Dataset:
    if kind == "packed":
        from cleanpose_training.datasets.packed import PackedDataset

        return PackedDataset(seed=seed, **spec)
    if kind in ("nocs", "synthetic"):
        from cleanpose_training.datasets.nocs import NOCSTrainingDataset

        return NOCSTrainingDataset(seed=seed, **spec)
    if kind == "housecat6d":
        from cleanpose_training.datasets import housecat6d

        return housecat6d.HouseCat6DTrainingDataset(seed=seed, **spec)
    raise ValueError(f"unknown data source type {kind!r}; expected packed, nocs, synthetic or housecat6d")
