"""One rank of the 2-process gloo DDP test (launched by torchrun from test_ddp.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import tiny_config
from _toy import ToyObjects

from cleanpose_training import distributed as D
from cleanpose_training.trainer import Trainer, build_model


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = D.init("cpu")
    cfg = tiny_config(Path(out) / "run", iterations=4)
    torch.manual_seed(cfg.trainer.seed)
    net, mcfg = build_model(cfg)
    tr = Trainer(cfg, info, net=net, model_cfg=mcfg, sources=[("toy", ToyObjects(16, n_points=256), 2)])
    q0 = None
    orig = tr._init_queue

    def init_and_keep():
        nonlocal q0
        q = orig()
        q0 = q.clone()
        return q

    tr._init_queue = init_and_keep
    res = tr.fit()
    torch.save(
        {
            "queue": tr.queue,
            "queue0": q0,
            "model": tr.net.state_dict(),
            "world": info.world_size,
            "iterations": res["iterations"],
            "history": tr.history,
        },
        Path(out) / f"rank{info.rank}.pt",
    )
    D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
