"""DDP: 2 gloo processes on the CPU under torchrun train, keep identical weights and identical queues."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from cleanpose_training.batching import IterationBatchSampler

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_per_rank_shards_are_disjoint_and_cover_the_global_sequence():
    one = IterationBatchSampler(10, 4, 0, 5, seed=3, source_id=0, rank=0, world_size=1)
    ranks = [IterationBatchSampler(10, 2, 0, 5, seed=3, source_id=0, rank=r, world_size=2) for r in range(2)]
    for it in range(5):
        a, b = ranks[0].keys_for(it), ranks[1].keys_for(it)
        assert not set(a) & set(b)
        assert a + b == one.keys_for(it)  # rank shards are consecutive slices of the global sample sequence
    seen = [k for it in range(5) for k in one.keys_for(it)]
    epoch0 = sorted(i for e, i in seen if e == 0)
    assert epoch0 == list(range(10))  # each epoch is a permutation of the dataset


def test_two_process_gloo_ddp_keeps_queues_identical(tmp_path):
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(HERE / "_ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and r0["iterations"] == r1["iterations"] == 4
    assert torch.equal(r0["queue0"], r1["queue0"])
    assert torch.equal(r0["queue"], r1["queue"])
    assert not torch.equal(r0["queue"], r0["queue0"])  # the FIFO did run
    # Parameters stay identical (averaged gradients). BatchNorm running statistics are per rank between
    # forwards
    # (DDP broadcasts rank 0's buffers at each forward); checkpoints are written by rank 0.
    params = [
        k for k in r0["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for k in params:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    # losses are averaged over the ranks for logging: both ranks log the same numbers
    assert [h["total"] for h in r0["history"]] == [h["total"] for h in r1["history"]]
    assert (tmp_path / "run" / "ckpt" / "train_state.pt").is_file()
