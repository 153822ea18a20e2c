"""Train the selfsup family: ``python -m cleanpose_training.selfsup.train --stage 1|2 --out DIR``.

Stage 1 pre-trains the shape memory, encoder and decoder on rendered single objects (Chamfer + VQ);
stage 2 (``--init`` the stage-1 model, ``--data`` a NOCS-layout root) trains end to end with no pose label.
``DIR`` receives ``scalars.csv`` (every loss term of every step, and the ``hungarian_s`` / ``step_s``
timings), ``model.safetensors`` (servable: ``load_estimator`` reads it) and ``train_state.pt`` (weights,
optimizer, RNG, data cursor): running the same command again resumes bit-exactly where the state was saved.
``--iterations N`` overrides the length (smoke runs); ``--workers N`` renders stage-1 samples / solves the
stage-2 assignments in N processes; ``--device cuda`` trains on a GPU."""

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
from cleanpose_training.selfsup.config import SelfSupTrainConfig
from cleanpose_training.selfsup.data import RenderedShapes, UnlabeledNocs, collate
from cleanpose_training.selfsup.losses import stage1_losses, stage2_losses

STATE_FILE, MODEL_FILE, SCALARS_FILE = "train_state.pt", "model.safetensors", "scalars.csv"


class SelfSupTrainer:
    def __init__(self, cfg: SelfSupTrainConfig, stage: int, out: str | Path, workers: int = 0, device="cpu"):
        """``workers`` > 1: that many processes render the stage-1 samples (the same samples: each is a
        function of its index only) or solve stage 2's per-object assignments (the same exact solutions)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.cfg, self.stage, self.out = cfg, stage, Path(out)
        self.scfg = cfg.stage1 if stage == 1 else cfg.stage2
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.net = self._build_net().to(self.device)
        mcfg = self.net.cfg
        if stage == 1:
            s1 = cfg.stage1
            self.data = RenderedShapes(
                cfg.seed, mcfg.image_size, mcfg.n_points, mcfg.shape_points, s1.render_width, s1.render_height
            )
        else:
            if not cfg.stage2.data:
                raise ValueError("stage 2 needs a NOCS-layout data root (stage2.data or --data)")
            self.data = UnlabeledNocs(
                cfg.stage2.data, cfg.stage2.split, cfg.seed, mcfg.image_size, mcfg.n_points
            )
            if cfg.stage2.freeze_decoder:
                self.net.decoder.requires_grad_(False)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=self.scfg.lr)
        self.step, self.cursor = 0, 0
        self._resume()
        self.pool = None
        if workers > 1:
            import multiprocessing

            # spawn, not fork: the parent holds torch and Open3D state that a forked child must not inherit.
            self.pool = multiprocessing.get_context("spawn").Pool(workers)

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
        self.step, self.cursor = int(state["step"]), int(state["cursor"])
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
        state = {
            "stage": self.stage,
            "step": self.step,
            "cursor": self.cursor,
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
        if self.pool is not None and self.stage == 1:
            first, self.cursor = self.cursor, self.cursor + self.scfg.batch_size
            return collate(self.pool.map(self.data.__getitem__, range(first, self.cursor)))
        samples = []
        while len(samples) < self.scfg.batch_size:
            k = self.cursor
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

    # ------------------------------------------------------------------------------------------ loop
    def train_step(self, batch) -> dict[str, float]:
        self.net.train()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        update = self.stage == 1 or self.cfg.stage2.update_memory
        out = self.net(batch["rgb"], batch["choose"], batch["category"], update_memory=update)
        if self.stage == 1:
            terms = stage1_losses(out, batch["target"], self.net.cfg.beta)
        else:
            w = self.cfg.stage2.weights
            pool_map = self.pool.map if self.pool is not None else map
            terms = stage2_losses(out, batch["pts"], self.net.cfg, vars(w), pool_map)
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.opt.step()
        return {k: float(v) for k, v in terms.items()}

    def run(self, iterations: int) -> Path:
        path = self.out / SCALARS_FILE
        writer = None
        with path.open("a", newline="") as fh:
            t0 = time.perf_counter()
            while self.step < iterations:
                t_step = time.perf_counter()
                scalars = self.train_step(self.next_batch())
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                scalars["step_s"] = time.perf_counter() - t_step  # data + forward + backward + update
                self.step += 1
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=["step", *scalars])
                    if fh.tell() == 0:
                        writer.writeheader()
                writer.writerow({"step": self.step, **scalars})
                fh.flush()
                if self.step % self.cfg.log_every == 0 or self.step == iterations:
                    rate = (time.perf_counter() - t0) / max(1, self.step)
                    terms = " ".join(f"{k}={v:.4g}" for k, v in scalars.items() if not k.endswith("_s"))
                    print(
                        f"stage {self.stage} step {self.step}/{iterations} {terms} ({rate:.2f} s/it)",
                        flush=True,
                    )
                if self.step % self.cfg.ckpt_every == 0 or self.step == iterations:
                    self.save()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        return self.out / MODEL_FILE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cleanpose_training.selfsup.train", description=__doc__)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--config", default="training/configs/selfsup.yaml")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds a train_state.pt)")
    p.add_argument("--iterations", type=int, help="override the stage's iteration count (smoke runs)")
    p.add_argument("--data", help="stage 2: NOCS-layout root (overrides stage2.data)")
    p.add_argument("--init", help="stage 2: the stage-1 model.safetensors (overrides stage2.init)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes rendering stage-1 samples / solving stage-2 assignments",
    )
    p.add_argument("--device", default="cpu", help="torch device of the network (cpu, cuda, cuda:1, ...)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = SelfSupTrainConfig.from_yaml(args.config)
    cfg.stage2 = replace(cfg.stage2, data=args.data or cfg.stage2.data, init=args.init or cfg.stage2.init)
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = SelfSupTrainer(cfg, args.stage, args.out, workers=args.workers, device=args.device)
    stage_cfg = cfg.stage1 if args.stage == 1 else cfg.stage2
    model = trainer.run(args.iterations or stage_cfg.iterations)
    print(f"model: {model}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
