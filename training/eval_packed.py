"""Evaluate a network on a packed test split (training/datasets/packed.py) with the published NOCS metrics.

Protocol: every packed object is a detection with its ground-truth mask and score 1 (as HouseCat6D's test
protocol uses GT masks); objects are grouped back into their images and scored by
``cleanpose_training.evaluation.metrics`` (``evaluate_records``: IoU mAP with the original NOCS IoU and the
corrected CATRE IoU, and the n°m cm pose mAP gated at NOCS IoU 0.1). Inputs are built as at test time: 1024 of
the stored mask pixels (seeded), no noise, no colour augmentation. The packed set keeps only objects with ≥ 32
valid pixels, so tinier objects are absent from both predictions and ground truth. Mug handle visibility is
not known for synthetic scenes: treated as visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cleanpose_model.preprocess.reference import normalize_rgb, sample_indices


@torch.no_grad()
def predict_packed(net, queue, ds, device, batch_size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    from cleanpose_model.queue import ConfounderQueue

    net.eval()
    q = None
    if queue is not None:
        q = queue if isinstance(queue, ConfounderQueue) else ConfounderQueue(queue)
        q = q.to(device, torch.float32)
    rots, trans, sizes = [], [], []
    for start in range(0, len(ds), batch_size):
        idx = range(start, min(len(ds), start + batch_size))
        rgb, pts, choose, cat = [], [], [], []
        for i in idx:
            im, p, ch = ds.object_arrays(i)
            sel = sample_indices(len(p), 1024, np.random.default_rng([seed, i]))
            rgb.append(normalize_rgb(im))
            pts.append(p[sel])
            choose.append(ch[sel])
            cat.append(int(ds.category[i]))
        rgb_t = torch.from_numpy(np.stack(rgb)).to(device)
        pts_t = torch.from_numpy(np.stack(pts)).to(device)
        ch_t = torch.from_numpy(np.stack(choose).astype(np.int64)).to(device)
        cat_t = torch.tensor(cat, dtype=torch.int64, device=device)
        qf = q.select(cat_t, "deterministic") if q is not None else None
        out = net(rgb_t, pts_t, ch_t, cat_t, queue_feats=qf)
        rots.append(out["pred_rotation"].float().cpu().numpy())
        trans.append(out["pred_translation"].float().cpu().numpy())
        sizes.append(out["pred_size"].float().cpu().numpy())
    return {
        "rotation": np.concatenate(rots),
        "translation": np.concatenate(trans),
        "size": np.concatenate(sizes),
    }


def _rt(R, t, s):
    m = np.eye(4)
    m[:3, :3] = R * np.linalg.norm(s)
    m[:3, 3] = t
    return m


def build_records(ds, pred: dict) -> list[dict]:
    records = []
    for img in np.unique(ds.image[: len(ds)]):
        sel = np.flatnonzero(ds.image[: len(ds)] == img)
        gt_rt, gt_s, pr_rt, pr_s, boxes = [], [], [], [], []
        for i in sel:
            s_gt = ds.size[i].astype(np.float64)
            gt_rt.append(_rt(ds.rotation[i].astype(np.float64), ds.translation[i], s_gt))
            gt_s.append(s_gt / np.linalg.norm(s_gt))
            s_p = pred["size"][i].astype(np.float64)
            pr_rt.append(_rt(pred["rotation"][i].astype(np.float64), pred["translation"][i], s_p))
            pr_s.append(s_p / max(np.linalg.norm(s_p), 1e-12))
            rmin, rmax, cmin, cmax = (int(v) for v in ds.window[i])
            boxes.append([rmin, cmin, rmax, cmax])
        cls = ds.category[sel].astype(np.int64) + 1
        records.append(
            {
                "gt_class_ids": cls,
                "gt_RTs": np.stack(gt_rt),
                "gt_scales": np.stack(gt_s),
                "gt_handle_visibility": np.ones(len(sel), np.int64),
                "pred_class_ids": cls,
                "pred_bboxes": np.asarray(boxes),
                "pred_scores": np.ones(len(sel)),
                "pred_RTs": np.stack(pr_rt),
                "pred_scales": np.stack(pr_s),
            }
        )
    return records


def per_object_errors(ds, pred: dict, sym_ids=(0, 1, 3)) -> dict[str, np.ndarray]:
    """Rotation error (deg; y-axis angle for symmetric categories), translation error (cm)."""
    n = len(pred["rotation"])
    rot_err = np.zeros(n)
    for i in range(n):
        R_p, R_g = pred["rotation"][i].astype(np.float64), ds.rotation[i].astype(np.float64)
        if int(ds.category[i]) in sym_ids:
            c = float(np.clip(R_p[:, 1] @ R_g[:, 1], -1, 1))
        else:
            c = float(np.clip((np.trace(R_p @ R_g.T) - 1) / 2, -1, 1))
        rot_err[i] = np.degrees(np.arccos(c))
    t_err = 100 * np.linalg.norm(pred["translation"] - ds.translation[:n], axis=1)
    return {"rot_deg": rot_err, "trans_cm": t_err}


def evaluate_packed(net, queue, ds, device, batch_size: int = 64) -> dict:
    from cleanpose_training.evaluation.metrics import NOCS_PROTOCOL, evaluate_records

    pred = predict_packed(net, queue, ds, device, batch_size)
    res = evaluate_records(build_records(ds, pred), NOCS_PROTOCOL)
    names = list(NOCS_PROTOCOL.classes)
    table = {}
    for ci, name in [(-1, "mean"), *[(k + 1, n) for k, n in enumerate(names)]]:
        table[name] = {
            "IoU25": 100 * res.iou_ap("nocs", 0.25, ci),
            "IoU50": 100 * res.iou_ap("nocs", 0.50, ci),
            "IoU75": 100 * res.iou_ap("nocs", 0.75, ci),
            "IoU50_catre": 100 * res.iou_ap("catre", 0.50, ci),
            "5deg2cm": 100 * res.pose_ap(5, 2, ci),
            "5deg5cm": 100 * res.pose_ap(5, 5, ci),
            "10deg2cm": 100 * res.pose_ap(10, 2, ci),
            "10deg5cm": 100 * res.pose_ap(10, 5, ci),
        }
    err = per_object_errors(ds, pred)
    counts = {n: int((ds.category[: len(ds)] == k).sum()) for k, n in enumerate(names)}
    return {
        "table": table,
        "objects": len(ds),
        "images": len(np.unique(ds.image[: len(ds)])),
        "per_category_objects": counts,
        "classes_left_out_of_mean": res.classes_without_gt,
        "median_rot_deg": float(np.median(err["rot_deg"])),
        "median_trans_cm": float(np.median(err["trans_cm"])),
        "protocol": "packed synthetic test split, GT masks, score 1, NOCS metrics (IoU = original NOCS IoU; "
        "IoU50_catre = corrected CATRE IoU)",
    }


def markdown_table(result: dict) -> str:
    from cleanpose_training.evaluation.evaluate import pct

    cols = ["IoU25", "IoU50", "IoU75", "IoU50_catre", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"]
    lines = ["| category | objects | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    counts = result.get("per_category_objects", {})
    for name, row in result["table"].items():
        n = result["objects"] if name == "mean" else counts.get(name, "")
        lines.append(f"| {name} | {n} | " + " | ".join(pct(row[c] / 100) for c in cols) + " |")
    missing = result.get("classes_left_out_of_mean")
    if missing:
        lines += ["", f"No test objects of {', '.join(missing)}: left out of the mean (shown as –)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    from cleanpose_model.device import resolve_device
    from cleanpose_model.io.checkpoints import load_checkpoint
    from cleanpose_training.datasets.packed import PackedDataset

    p = argparse.ArgumentParser(
        prog="python -m cleanpose_training.eval_packed", description=__doc__.split("\n")[0]
    )
    p.add_argument("checkpoint")
    p.add_argument("packed_test")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the result JSON + markdown table here (directory)")
    a = p.parse_args(argv)
    device = str(resolve_device(a.device).device)
    net, _cfg, queue = load_checkpoint(a.checkpoint, device=device)
    ds = PackedDataset(a.packed_test, augment=False)
    res = evaluate_packed(net, queue, ds, torch.device(device))
    md = markdown_table(res)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(res, indent=1))
        (out / "eval_table.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
