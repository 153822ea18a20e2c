"""Initial confounder queue (training.md §5.1).

Published (``queue.init: ulip``): the ULIP PointNet++ SSG encoder (``checkpoint_pointnet2_ssg.pt``, eval
mode) runs
over training samples in loader order on the **raw, uncentered camera-frame points**; each category's list
takes the
first ``length`` (80) 256-d features of its objects.

Fallback (``queue.init: random``, or ``ulip`` without a checkpoint, or a network whose feature width is not
256):
every entry ~ N(0, 1) per channel from a generator seeded with the run seed. Why this is acceptable: the queue
only serves as keys/values of the front-door cross-attention, the FIFO replaces every entry with the
network's own
keypoint features after about length·cat_num/batch iterations (12 for NOCS: 80·6/40), and the published ULIP
features already live in a different feature space from those that replace them (training.md pitfall 8).
Unit-variance entries match the scale of the LayerNorm'ed features that replace them. The fallback is logged.

Both are deterministic given the seed; in DDP rank 0's queue is broadcast.
"""

from __future__ import annotations

import logging

import torch

from cleanpose_training.batching import EpochKeyed, IterationBatchSampler, collate

log = logging.getLogger("cleanpose.train")


def _cat_num(model_cfg) -> int:
    cats = getattr(model_cfg, "categories", None)
    return len(cats) if cats else int(getattr(model_cfg, "cat_num", 6))


def _feat_dim(model_cfg) -> int:
    return int(getattr(model_cfg, "d_model", 256))


def random_queue(cat_num: int, length: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) + 0x0E0E)
    return torch.randn(cat_num, length, dim, generator=g)


@torch.no_grad()
def ulip_queue(
    encoder, sources, cat_num: int, length: int, seed: int, max_samples: int = 200_000, device="cpu"
) -> torch.Tensor:
    """Fill each category with the first ``length`` encoder features in sample order (training.md §5.1)."""
    encoder = encoder.to(device).eval()
    lists: list[list[torch.Tensor]] = [[] for _ in range(cat_num)]
    gen = torch.Generator().manual_seed(int(seed) + 0x51)
    # Interleave the sources per "iteration" as the training batches do (syn first, then real).
    samplers = [
        (EpochKeyed(ds), IterationBatchSampler(len(ds), bs, 0, 1 << 30, seed, sid))
        for sid, (_n, ds, bs) in enumerate(sources)
    ]
    seen = 0
    it = 0
    while seen < max_samples and any(len(lst) < length for lst in lists):
        samples = []
        for ds, sampler in samplers:
            samples += [ds[k] for k in sampler.keys_for(it)]
        it += 1
        b = collate(samples)
        feats = encoder(b["pts"].float().to(device), generator=gen).cpu()
        for f, c in zip(feats, b["category_label"].tolist()):
            if len(lists[c]) < length:
                lists[c].append(f)
        seen += len(samples)
    missing = [c for c in range(cat_num) if len(lists[c]) < length]
    q = torch.zeros(cat_num, length, feats.shape[-1])
    fallback = random_queue(cat_num, length, feats.shape[-1], seed)
    for c in range(cat_num):
        if lists[c]:
            stack = torch.stack(lists[c])
            reps = (length + len(stack) - 1) // len(stack)
            q[c] = stack.repeat(reps, 1)[:length]
        else:
            q[c] = fallback[c]
    if missing:
        log.warning(
            "queue init: categories %s had fewer than %d samples in the first %d; their lists were padded "
            "by repetition (random when empty)",
            missing,
            length,
            seen,
        )
    return q


def init_queue(cfg, model_cfg, sources, info) -> torch.Tensor:
    qc = cfg.queue
    cat_num, dim, seed = _cat_num(model_cfg), _feat_dim(model_cfg), cfg.trainer.seed
    reason = None
    if qc.init == "random":
        reason = "queue.init is 'random'"
    elif qc.init != "ulip":
        raise ValueError(f"queue.init must be 'ulip' or 'random', got {qc.init!r}")
    elif not qc.ulip_pointnet2:
        reason = "no ULIP PointNet++ checkpoint given (queue.ulip_pointnet2)"
    elif dim != 256:
        reason = f"the network's feature width is {dim}, the ULIP PointNet++ features are 256-d"
    if reason is not None:
        if info.is_main:
            log.warning(
                "queue init FALLBACK: %s -> N(0,1) entries (%d x %d x %d), seed %d; the FIFO replaces them "
                "with the network's keypoint features within ~%d iterations",
                reason,
                cat_num,
                qc.length,
                dim,
                seed,
                max(1, qc.length * cat_num // max(1, sum(bs for *_, bs in sources))),
            )
        return random_queue(cat_num, qc.length, dim, seed)
    if info.is_main:
        from cleanpose_training.ulip import load_pointnet2_ssg

        enc = load_pointnet2_ssg(qc.ulip_pointnet2)
        log.info("queue init: ULIP PointNet++ SSG features from %s", qc.ulip_pointnet2)
        return ulip_queue(enc, sources, cat_num, qc.length, seed, device=info.device)
    return torch.zeros(cat_num, qc.length, dim)  # replaced by rank 0's queue (broadcast)
