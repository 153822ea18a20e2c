"""Train the selfsup family: ``python -m cleanpose_training.selfsup.train --stage 1|2 --out DIR``.

Stage 1 pre-trains the shape memory, encoder and decoder on rendered single objects (Chamfer + VQ);
stage 2 (``--init`` the stage-1 model) trains end to end with no pose label on one of: ``--data`` a
NOCS-layout root, ``--wild6d ROOT --wild6d-category CAT`` Wild6D's layout, ``--bag PATH [PATH ...]``
rosbag2 recordings on the node's topics (``--image-topic`` etc. override them).
``--ablation`` trains one of ``ABLATIONS``.
``DIR`` receives ``scalars.csv`` (every loss term of every step, and the ``hungarian_s`` / ``step_s``
timings), ``model.safetensors`` (servable: ``load_estimator`` reads it) and ``train_state.pt`` (weights,
optimizer, RNG, data cursor): running the same command again resumes bit-exactly where the state was saved.
``--iterations N`` overrides the length (smoke runs), ``--time-budget S`` stops at S seconds; ``--workers N``
renders stage-1 samples / solves the stage-2 assignments in N processes; ``--device cuda`` trains on a GPU;
under ``torchrun --nproc_per_node G`` every rank trains ``batch_size`` samples of its own slice of the sample
stream (DDP, gradients averaged; the EMA memory follows rank 0's, broadcast with the buffers every step).
Logging: a tqdm bar (a plain line every ``log_every`` steps without tqdm or with ``--no-progress``),
TensorBoard scalars in ``DIR/tb`` when ``torch.utils.tensorboard`` imports, and ``losses.png`` (matplotlib) at
the end."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cleanpose_model.families.selfsup import load_selfsup_net, save_selfsup_checkpoint
from cleanpose_model.selfsup import SelfSupNet, load_selfsup_config
from cleanpose_training import distributed
from cleanpose_training.selfsup.config import SelfSupTrainConfig
from cleanpose_training.selfsup.data import (
    BAG_TOPICS,
    NocsShapes,
    RenderedShapes,
    UnlabeledBag,
    UnlabeledNocs,
    UnlabeledWild6D,
    collate,
)
from cleanpose_training.selfsup.losses import stage1_losses, stage2_losses

STATE_FILE, MODEL_FILE, SCALARS_FILE = "train_state.pt", "model.safetensors", "scalars.csv"
PLOT_FILE = "losses.png"
# The paper's ablations (Stage2Config.ablation): what each switches off.
ABLATIONS = {
    "fixed_prior": "no shape memory: every code is the memory's mean code, so the decoder's shape depends on "
    "the category only (a fixed category prior); the memory is not updated",
    "frozen_memory": "the memory is frozen after stage 1 (no EMA update in stage 2)",
    "no_cfco": "no coarse-to-fine correspondence optimisation (region and pixel pseudo-label losses off)",
    "coarse_only": "the region-level (coarse) pseudo-label loss only (pixel-level loss off)",
}


def apply_ablation(cfg: SelfSupTrainConfig) -> None:
    """The config switches of ``cfg.stage2.ablation`` (fixed_prior's memory collapse is in the trainer)."""
    name, s2 = cfg.stage2.ablation, cfg.stage2
    if name and name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
    if name in ("fixed_prior", "frozen_memory"):
        s2.update_memory = False
    if name == "no_cfco":
        s2.weights = replace(s2.weights, coarse=0.0, fine=0.0)
    if name == "coarse_only":
        s2.weights = replace(s2.weights, fine=0.0)


@torch.no_grad()
def collapse_memory(net: SelfSupNet) -> None:
    """fixed_prior: every code becomes the codes' mean (weighted by their EMA usage), so the quantised
    descriptors, hence the decoded shape, no longer depend on the image."""
    mem = net.memory
    w = mem.cluster_size / mem.cluster_size.sum()
    mean = (w[:, None] * mem.codes).sum(0)
    mem.codes.copy_(mean.expand_as(mem.codes))
    mem.code_sum.copy_(mem.codes * mem.cluster_size[:, None])


class SelfSupTrainer:
    def __init__(
        self,
        cfg: SelfSupTrainConfig,
        stage: int,
        out: str | Path,
        workers: int = 0,
        device="cpu",
        topics: dict[str, str] | None = None,
        progress: bool = True,
        dist: distributed.DistInfo | None = None,
    ):
        """``workers`` > 1: that many processes render the stage-1 samples (the same samples: each is a
        function of its index only) or solve stage 2's per-object assignments (the same exact solutions).
        ``dist``: this rank under torchrun (``distributed.init``); None: a single process on ``device``."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.cfg, self.stage, self.out = cfg, stage, Path(out)
        self.scfg = cfg.stage1 if stage == 1 else cfg.stage2
        self.dist = dist or distributed.DistInfo(device=torch.device(device))
        self.progress = progress
        if stage == 2:
            apply_ablation(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = self.dist.device
        self.net = self._build_net().to(self.device)
        mcfg = self.net.cfg
        if stage == 1:
            s1 = cfg.stage1
            if s1.data:
                self.data = NocsShapes(
                    s1.data, s1.split, cfg.seed, mcfg.image_size, mcfg.n_points, mcfg.shape_points
                )
            else:
                self.data = RenderedShapes(
                    cfg.seed, mcfg.image_size, mcfg.n_points, mcfg.shape_points, s1.render_width,
                    s1.render_height,
                )  # fmt: skip
        else:
            self.data = self._stage2_data(mcfg, topics)
            if cfg.stage2.freeze_decoder:
                self.net.decoder.requires_grad_(False)
            if cfg.stage2.ablation == "fixed_prior":
                collapse_memory(self.net)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=self.scfg.lr)
        self.step, self.cursor = 0, 0
        self._resume()
        self.model = self.net
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Stage 1's loss leaves the PointNet and the similarity heads unused: expected, not an error.
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=ids, find_unused_parameters=True
            )
        self.pool = None
        if workers > 1:
            import multiprocessing

            # spawn, not fork: the parent holds torch and Open3D state that a forked child must not inherit.
            self.pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_set_worker_data, initargs=(self.data,)
            )

    def _stage2_data(self, mcfg, topics):
        s2, seed = self.cfg.stage2, self.cfg.seed
        given = [name for name, v in (("data", s2.data), ("bags", s2.bags), ("wild6d", s2.wild6d)) if v]
        if len(given) != 1:
            raise ValueError(
                f"stage 2 needs one input (--data NOCS root, --bag PATH..., --wild6d ROOT); got {given}"
            )
        if s2.bags:
            return UnlabeledBag(s2.bags, seed, mcfg.image_size, mcfg.n_points, topics=topics)
        if s2.wild6d:
            if not s2.wild6d_category:
                raise ValueError("--wild6d needs --wild6d-category (one category per Wild6D root)")
            return UnlabeledWild6D(
                s2.wild6d, s2.wild6d_category, seed, mcfg.image_size, mcfg.n_points,
                sequence_list=s2.wild6d_list or None,
            )  # fmt: skip
        return UnlabeledNocs(s2.data, s2.split, seed, mcfg.image_size, mcfg.n_points)

    def _build_net(self) -> SelfSupNet:
        if self.stage == 2 and self.cfg.stage2.init:
            return load_selfsup_net(self.cfg.stage2.init)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return SelfSupNet(load_selfsup_config(self.cfg.model))

    # ------------------------------------------------------------------------------------------ state
    def _resume(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            (self.out / SCALARS_FILE).unlink(missing_ok=True)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["stage"] != self.stage:
            raise ValueError(f"{path} is a stage-{state['stage']} run; this is stage {self.stage}")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        cursors = state.get("cursors")
        if cursors is not None and len(cursors) != self.dist.world_size:
            raise ValueError(f"{path} was saved by {len(cursors)} ranks; resume it with as many")
        self.cursor = int(cursors[self.dist.rank]) if cursors is not None else int(state["cursor"])
        self._truncate_scalars()
        print(f"resumed from {path} at step {self.step}", flush=True)

    def _truncate_scalars(self) -> None:
        """Drop rows logged after the saved state (a run killed between checkpoints logs steps that the
        resumed run repeats)."""
        path = self.out / SCALARS_FILE
        if path.is_file():
            rows = list(csv.reader(path.open()))
            kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= self.step]
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerows(kept)

    def save(self) -> None:
        # on the device: NCCL gathers CUDA tensors only
        mine = torch.tensor([self.cursor], dtype=torch.long, device=self.device)
        cursors = distributed.all_gather_cat(self.dist, mine).cpu()
        if not self.dist.is_main:
            return
        state = {
            "stage": self.stage,
            "step": self.step,
            "cursor": self.cursor,
            "cursors": cursors.tolist() if self.dist.enabled else None,
            "net": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)
        meta = {
            "stage": self.stage,
            "step": self.step,
            "source": f"cleanpose_training.selfsup stage {self.stage}",
        }
        save_selfsup_checkpoint(self.out / MODEL_FILE, self.net, meta)

    # ------------------------------------------------------------------------------------------ data
    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next ``batch_size`` samples. Stage 2 walks a per-epoch permutation of its objects (drawn from
        (seed, epoch)) and skips objects with too few depth points; the cursor is part of the saved state."""
        # Rank r of W draws the stream's samples r, r + W, r + 2W, ... (its cursor counts its own draws):
        # one process (W = 1) draws exactly what it always drew.
        world, rank = self.dist.world_size, self.dist.rank
        if self.pool is not None and self.stage == 1:
            first, self.cursor = self.cursor, self.cursor + self.scfg.batch_size
            idx = [c * world + rank for c in range(first, self.cursor)]
            return collate(self.pool.map(_worker_sample, idx))
        if self.pool is not None:
            return collate(self._pooled_stage2_batch())
        samples = []
        while len(samples) < self.scfg.batch_size:
            k = self.cursor * world + rank
            self.cursor += 1
            if self.stage == 1:
                samples.append(self.data[k])
                continue
            n = len(self.data)
            perm = np.random.default_rng([self.cfg.seed, k // n]).permutation(n)
            s = self.data[int(perm[k % n])]
            if s is not None:
                samples.append(s)
        return collate(samples)

    def _object_index(self, draw: int) -> int:
        """The object of stage 2's draw ``draw`` (of this rank): the serial loop's choice."""
        k = draw * self.dist.world_size + self.dist.rank
        n = len(self.data)
        return int(np.random.default_rng([self.cfg.seed, k // n]).permutation(n)[k % n])

    def _pooled_stage2_batch(self) -> list:
        """The serial loop's batch, its candidates read by the workers a chunk at a time (skipped objects
        are consumed in the same order, so the cursor ends where the serial loop's does)."""
        samples, bs = [], self.scfg.batch_size
        while len(samples) < bs:
            draws = range(self.cursor, self.cursor + bs + bs // 4)
            got = self.pool.map(_worker_sample, [self._object_index(d) for d in draws])
            for s in got:
                self.cursor += 1
                if s is not None:
                    samples.append(s)
                    if len(samples) == bs:
                        break
        return samples

    # ------------------------------------------------------------------------------------------ loop
    def train_step(self, batch) -> dict[str, float]:
        self.net.train()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        update = self.stage == 1 or self.cfg.stage2.update_memory
        out = self.model(batch["rgb"], batch["choose"], batch["category"], update_memory=update)
        if self.stage == 1:
            terms = stage1_losses(out, batch["target"], self.net.cfg.beta)
        else:
            w = self.cfg.stage2.weights
            pool_map = self.pool.map if self.pool is not None else map
            terms = stage2_losses(out, batch["pts"], self.net.cfg, vars(w), pool_map)
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def run(self, iterations: int) -> Path:
        """Train to step ``iterations`` (or the time budget); returns the servable model's path."""
        path = self.out / SCALARS_FILE
        main = self.dist.is_main
        budget = float(self.scfg.time_budget_s or 0.0)
        bar, tb = self._progress_bar(iterations) if main else None, self._tensorboard() if main else None
        writer = None
        with path.open("a", newline="") if main else open("/dev/null", "w") as fh:
            t0 = time.perf_counter()
            start_step = self.step
            while self.step < iterations:
                t_step = time.perf_counter()
                scalars = self.train_step(self.next_batch())
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                scalars["step_s"] = time.perf_counter() - t_step  # data + forward + backward + update
                self.step += 1
                over = budget > 0 and self._all_over(time.perf_counter() - t0 >= budget)
                if main:
                    if writer is None:
                        writer = csv.DictWriter(fh, fieldnames=["step", *scalars])
                        if fh.tell() == 0:
                            writer.writeheader()
                    writer.writerow({"step": self.step, **scalars})
                    fh.flush()
                    if tb is not None:
                        for k, v in scalars.items():
                            tb.add_scalar(f"stage{self.stage}/{k}", v, self.step)
                    self._report(bar, scalars, iterations, t0, start_step, over)
                if self.step % self.cfg.ckpt_every == 0 or self.step == iterations or over:
                    self.save()
                if over:
                    if main:
                        print(f"time budget {budget:.0f} s reached at step {self.step}", flush=True)
                    break
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if main:
            plot_losses(path, self.out / PLOT_FILE)
        distributed.barrier(self.dist)
        return self.out / MODEL_FILE

    def _all_over(self, local: bool) -> bool:
        """Every rank stops at the same step: rank 0's clock decides."""
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        return bool(distributed.broadcast_(self.dist, flag)[0] > 0)

    def _progress_bar(self, iterations: int):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # the plain line every log_every steps stands in
            return None
        return tqdm(total=iterations, initial=self.step, desc=f"stage {self.stage}", unit="it", mininterval=1)

    def _report(self, bar, scalars, iterations, t0, start_step, last) -> None:
        terms = {k: v for k, v in scalars.items() if not k.endswith("_s")}
        if bar is not None:
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == iterations:
                bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
            return
        if self.step % self.cfg.log_every == 0 or self.step == iterations or last:
            rate = (time.perf_counter() - t0) / max(1, self.step - start_step)
            text = " ".join(f"{k}={v:.4g}" for k, v in terms.items())
            print(f"stage {self.stage} step {self.step}/{iterations} {text} ({rate:.2f} s/it)", flush=True)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is optional: CSV scalars are always written
            print(f"TensorBoard scalars off ({e}); scalars.csv has every scalar", flush=True)
            return None
        return SummaryWriter(str(self.out / "tb"))


_WORKER_DATA = None


def _set_worker_data(data) -> None:
    """Pool initializer: the data set travels to each worker once, not with every task."""
    global _WORKER_DATA
    _WORKER_DATA = data


def _worker_sample(index: int):
    return _WORKER_DATA[index]


def plot_losses(scalars_csv: Path, png: Path) -> Path | None:
    """One panel per logged term (log scale where positive) over the steps; None (and one line saying why)
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"no loss plot ({e})", flush=True)
        return None
    rows = list(csv.DictReader(scalars_csv.open()))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    names = [k for k in rows[0] if k != "step" and not k.endswith("_s")]
    cols = 3
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(12, 3 * ((len(names) + 2) // 3)))
    for ax, name in zip(np.ravel(axes), names):
        y = np.array([float(r[name]) for r in rows])
        ax.plot(steps, y, lw=0.8)
        if (y > 0).all():
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in np.ravel(axes)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cleanpose_training.selfsup.train", description=__doc__)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--config", default="training/configs/selfsup.yaml")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a train_state.pt)")
    p.add_argument("--iterations", type=int, help="override the stage's iteration count (smoke runs)")
    p.add_argument(
        "--data", help="NOCS-layout root: stage 2's unlabeled frames, or stage 1's pre-rendered shapes"
    )
    p.add_argument("--split", help="the split of --data (default: the stage's config, 'train')")
    p.add_argument("--bag", nargs="+", help="stage 2: rosbag2 recordings (overrides stage2.bags)")
    p.add_argument("--wild6d", help="stage 2: a Wild6D category folder (overrides stage2.wild6d)")
    p.add_argument("--wild6d-category", help="the category of --wild6d (a model category name)")
    p.add_argument("--wild6d-list", help="optional sequence list (<object>_<sequence> indices)")
    for role, topic in BAG_TOPICS.items():
        p.add_argument(f"--{role}-topic", default=topic, help=f"--bag: the {role} topic (default {topic})")
    p.add_argument("--ablation", choices=sorted(ABLATIONS), help="stage 2: train an ablation")
    p.add_argument("--time-budget", type=float, help="stop (and save) after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="a plain line every log_every steps, no bar")
    p.add_argument("--init", help="stage 2: the stage-1 model.safetensors (overrides stage2.init)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes rendering stage-1 samples / solving stage-2 assignments",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (under torchrun: each rank's GPU)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = SelfSupTrainConfig.from_yaml(args.config)
    s2 = cfg.stage2
    if args.split:
        (cfg.stage1 if args.stage == 1 else s2).split = args.split
    if args.stage == 1:
        cfg.stage1.data = args.data or cfg.stage1.data
    elif args.data or args.bag or args.wild6d:  # a command-line input replaces the config's
        s2.data, s2.bags, s2.wild6d = args.data or "", list(args.bag or []), args.wild6d or ""
    s2.wild6d_category = args.wild6d_category or s2.wild6d_category
    s2.wild6d_list = args.wild6d_list or s2.wild6d_list
    s2.init = args.init or s2.init
    s2.ablation = args.ablation or s2.ablation
    stage_cfg = cfg.stage1 if args.stage == 1 else s2
    if args.time_budget is not None:
        cfg.stage1.time_budget_s = s2.time_budget_s = args.time_budget
    if args.threads:
        torch.set_num_threads(args.threads)
    dist_info = distributed.init(args.device)
    if dist_info.device_fallback and dist_info.is_main:
        print(f"device: {dist_info.device} ({dist_info.device_fallback})", flush=True)
    topics = {role: getattr(args, f"{role}_topic") for role in BAG_TOPICS}
    try:
        trainer = SelfSupTrainer(
            cfg, args.stage, args.out, workers=args.workers, topics=topics,
            progress=not args.no_progress, dist=dist_info,
        )  # fmt: skip
        model = trainer.run(args.iterations or stage_cfg.iterations)
    finally:
        distributed.shutdown()
    if dist_info.is_main:
        print(f"model: {model}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
