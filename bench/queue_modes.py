"""How far are deterministic queue selections from the published random one? (parity inputs, CPU)

The published CleanPose forward feeds the front-door encoder 12 queue entries per category drawn at random on
every call, so its pose for a fixed input is a distribution. This script runs the parity network (weights from
the parity rule, parity inputs and queue) once up to the front-door encoder, then evaluates the rest of the
network (front-door encoder, NOCS head, pose head) for
  - N random draws (``ConfounderQueue.select(mode="random")``, seeded RandomState),
  - the deterministic candidates "all" (attend over all N_q entries) and "spread" (12 fixed, evenly spaced).
For every object it takes the random-mode mean pose as the centre (chordal mean rotation, mean translation and
size) and reports distances to it: rotation angle (deg), translation (mm), size (mm, L2 over the 3 extents),
as percentiles over the random draws and as the value (and percentile rank) of each deterministic candidate.

    python bench/queue_modes.py [--draws 200] [--json outputs/bench/queue_modes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from cleanpose_model.geometry import ortho6d_to_matrix
from cleanpose_model.parity import build_parity_net, load_vectors, queue_sample
from cleanpose_model.queue import ConfounderQueue

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "test" / "data" / "parity" / "cleanpose_parity_v1.npz"


def tail(net, base, category, queue_feats):
    """The part of CleanPoseNet.forward after GAFA (eval mode), for a given queue sample."""
    kpt_feat = net.FD_Encoder(base["gafa_out"], queue_feats)
    kpt_nocs = net.nocs_predictor(kpt_feat, category)
    r6, t, s = net.estimator(base["kpt_3d"], kpt_nocs, kpt_feat)
    return ortho6d_to_matrix(r6), t + base["centroid"], s


def chordal_mean(rots: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(rots.mean(0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def angle_deg(r: np.ndarray, ref: np.ndarray) -> np.ndarray:
    cos = (np.einsum("...ij,ij->...", r, ref) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(REPO / "outputs" / "bench" / "queue_modes.json"))
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    vec = load_vectors(VECTORS)
    net = build_parity_net("cleanpose")
    rgb, pts, choose = (torch.from_numpy(vec[k]) for k in ("rgb", "pts", "choose"))
    category = torch.from_numpy(vec["category_label"]).reshape(-1)
    out = net(
        rgb, pts, choose, category, queue_feats=torch.from_numpy(queue_sample(vec)), return_intermediates=True
    )
    base = {
        "gafa_out": out["gafa_out"],
        "centroid": out["centroid"],
        "kpt_3d": out["pred_kpt_3d"] - out["centroid"][:, None],
    }
    # The tail must reproduce the full forward for the recorded sample.
    r, t, s = tail(net, base, category, torch.from_numpy(queue_sample(vec)))
    tail_err = max(
        float((a - out[k]).abs().max())
        for a, k in ((r, "pred_rotation"), (t, "pred_translation"), (s, "pred_size"))
    )
    assert tail_err < 1e-5, tail_err

    queue = ConfounderQueue(torch.from_numpy(vec["queue"]))
    rng = np.random.RandomState(args.seed)
    rand = [tail(net, base, category, queue.select(category, "random", rng)) for _ in range(args.draws)]
    R = torch.stack([x[0] for x in rand]).double().numpy()  # (D, B, 3, 3)
    T = torch.stack([x[1] for x in rand]).double().numpy()
    S = torch.stack([x[2] for x in rand]).double().numpy()
    cands = {
        mode: [x.double().numpy() for x in tail(net, base, category, queue.select(category, mode))]
        for mode in ("all", "spread")
    }
    cands["recorded official draw"] = [
        out[k].double().numpy() for k in ("pred_rotation", "pred_translation", "pred_size")
    ]

    pcts = (50, 90, 99, 100)
    result = {
        "draws": args.draws,
        "seed": args.seed,
        "tail_vs_forward_max_abs": tail_err,
        "categories": category.tolist(),
        "objects": [],
    }
    header = (
        f"{'obj':>3} {'cat':>3} {'metric':<10} "
        + " ".join(f"{'rand p' + str(p):>9}" for p in pcts)
        + "".join(f" {m[:8]:>9} {'(rank)':>7}" for m in cands)
    )
    lines = [header, "-" * len(header)]
    for b in range(R.shape[1]):
        rc, tc, sc = chordal_mean(R[:, b]), T[:, b].mean(0), S[:, b].mean(0)
        dist = {
            "rot_deg": angle_deg(R[:, b], rc),
            "trans_mm": 1e3 * np.linalg.norm(T[:, b] - tc, axis=-1),
            "size_mm": 1e3 * np.linalg.norm(S[:, b] - sc, axis=-1),
        }
        obj = {"category": int(category[b]), "random": {}, "candidates": {}}
        for metric, d in dist.items():
            obj["random"][metric] = {f"p{p}": float(np.percentile(d, p)) for p in pcts}
            row = f"{b:>3} {int(category[b]):>3} {metric:<10} " + " ".join(
                f"{np.percentile(d, p):>9.4f}" for p in pcts
            )
            for mode, (cr, ct, cs) in cands.items():
                v = {
                    "rot_deg": float(angle_deg(cr[b], rc)),
                    "trans_mm": float(1e3 * np.linalg.norm(ct[b] - tc)),
                    "size_mm": float(1e3 * np.linalg.norm(cs[b] - sc)),
                }[metric]
                rank = float((d < v).mean() * 100)
                obj["candidates"].setdefault(mode, {})[metric] = {"value": v, "percentile_rank": rank}
                row += f" {v:>9.4f} {rank:>6.0f}%"
            lines.append(row)
        result["objects"].append(obj)
    result["seconds"] = time.perf_counter() - t0
    print(f"queue modes on the parity inputs: distance to the random-mode mean pose over {args.draws} draws")
    print("\n".join(lines))
    print(f"(rank = share of random draws closer to the mean than the candidate; {result['seconds']:.1f} s)")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
