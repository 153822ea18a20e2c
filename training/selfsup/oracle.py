"""Oracle study of the selfsup pose read-out (issue 16): which part of the pipeline loses the accuracy?

    python -m cleanpose_training.selfsup.oracle DATA [--split test] [--checkpoint M] [--out OUT.json]

On labelled NOCS-layout frames (a study root such as ``DATA/a``: its ``segmentation_results/<split>`` hold the
detections and the GT, ``<frame>_label.pkl`` + ``obj_models/<split>.pkl`` each instance's model points), the
network's two outputs are replaced, one at a time, by ground truth:

- the shape: the instance's model points (NOCS frame: box-centred, unit diagonal), the GT reconstruction;
- the correspondences: each observed point's GT canonical coordinate ``x = R^T (p - t) / s`` matched to its
  nearest shape point (similarity = minus the distance).

and the same read-out the estimator runs (``cleanpose_model.selfsup.pose.read_out``: cycle filter, Umeyama,
size = extents x scale) gives the pose, scored with the project's NOCS metrics on the same inputs
``evaluate`` builds (``NOCSTestDataset``, its seed and sizes). Variants (``VARIANTS``): ``gt_shape+gt_corr``
must be ~100 %; with ``--checkpoint`` also ``gt_shape+pred_corr`` (the network's matched point, taken to the
nearest GT model point), ``pred_shape+gt_corr`` (the network's reconstruction, GT coordinates matched to its
points) and ``pred`` (the estimator as served). Per-object median rotation error (the evaluator's symmetric
rule), translation error and size ratio are reported beside the APs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cleanpose_model.categories import NOCS
from cleanpose_model.selfsup.pose import read_out
from cleanpose_training.datasets import safe_pickle
from cleanpose_training.evaluation.evaluate import pose_to_record
from cleanpose_training.evaluation.metrics import NOCS_PROTOCOL, evaluate_records, rt_degree_cm

VARIANTS = ("gt_shape+gt_corr", "gt_shape+pred_corr", "pred_shape+gt_corr", "pred")
COLUMNS = (
    ("IoU25", "iou", 0.25),
    ("IoU50", "iou", 0.5),
    ("5°2cm", "pose", (5, 2)),
    ("10°5cm", "pose", (10, 5)),
)


def gt_objects(data_dir: Path, split: str, item: dict, models: dict) -> list[dict]:
    """For each kept detection of a test item: its GT (R, t, scale, extents) and its model's points."""
    gt = item["gt"]
    path = item["image_path"]
    prefix = data_dir / (path[5:] if path.startswith("data/") else path)
    label = safe_pickle.load(f"{prefix}_label.pkl")
    out = []
    for box in gt["pred_bboxes"]:
        hits = np.flatnonzero(np.all(gt["gt_bboxes"] == box, axis=1))
        if len(hits) != 1:
            raise ValueError(f"{prefix}: detection box {box} matches {len(hits)} GT boxes (expected 1)")
        g = int(hits[0])
        rts = gt["gt_RTs"][g]
        scale = float(np.cbrt(np.linalg.det(rts[:3, :3])))
        out.append(
            {
                "R": rts[:3, :3] / scale,
                "t": rts[:3, 3],
                "scale": scale,
                "size": gt["gt_scales"][g] * scale,
                "model": np.asarray(models[label["model_list"][g]], np.float64),
            }
        )
    return out


def gt_coordinates(pts: np.ndarray, obj: dict) -> np.ndarray:
    """Each observed camera point's canonical (NOCS) coordinate under the GT pose."""
    return (pts - obj["t"]) @ obj["R"] / obj["scale"]


def nearest_sim(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(n,3) x (M,3) -> (1,n,M) similarity = minus the distance (the argmax is the nearest point)."""
    return -torch.cdist(query[None], points[None])


class Oracle:
    """The variants' predictions, one object at a time (``net`` None: the GT-only variant only)."""

    def __init__(self, net=None, keep: float = 0.5, min_pairs: int = 8, n_keypoints: int = 32):
        self.net = net
        cfg = net.cfg if net is not None else None
        self.keep = cfg.cycle_keep if cfg else keep
        self.min_pairs = cfg.min_pairs if cfg else min_pairs
        self.n_keypoints = cfg.n_keypoints if cfg else n_keypoints

    def _read(self, sim, corr, shape, pts):
        out = read_out(sim, corr[None], shape[None], pts[None], self.keep, self.min_pairs, self.n_keypoints)
        return {k: out[k][0].numpy() for k in ("rotation", "translation", "size")}

    def network(self, rgb, pts, choose, category) -> dict:
        from cleanpose_model.families.selfsup import resize_batch
        from cleanpose_model.types import ObjectBatch

        batch = ObjectBatch(rgb=rgb, pts=pts, choose=choose, category=category)
        b = resize_batch(batch, self.net.cfg.image_size)
        with torch.no_grad():
            return self.net.forward(b.rgb, b.choose, b.category)

    def predict(self, variant: str, pts: np.ndarray, obj: dict, net_out: dict | None, k: int) -> dict:
        p = torch.from_numpy(pts).double()
        x_gt = torch.from_numpy(gt_coordinates(pts, obj))
        model = torch.from_numpy(obj["model"])
        if variant == "gt_shape+gt_corr":
            return self._read(nearest_sim(x_gt, model), model, model, p)
        shape = net_out["shape"][k].double()
        corr = net_out["corr_pts"][k].double()
        sim = net_out["s_pix"][k : k + 1].double()
        if variant == "pred_shape+gt_corr":
            return self._read(nearest_sim(x_gt, corr), corr, shape, p)
        if variant == "gt_shape+pred_corr":
            # the network's matched canonical point of each pixel, taken to the nearest GT model point
            matched = corr[sim[0].argmax(1)]
            near = torch.cdist(matched[None], model[None])[0].argmin(1)
            # the similarities keep the network's cycle structure: row i of point j(i) -> GT point near(i)
            gt_sim = torch.full((1, len(pts), len(model)), -1e9, dtype=torch.float64)
            gt_sim[0, torch.arange(len(pts)), near] = sim[0].amax(1)
            return self._read(gt_sim, model, model, p)
        if variant == "pred":
            return self._read(sim, corr, shape, p)
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def run(data_dir, split: str = "test", net=None, variants=None, max_images: int | None = None) -> dict:
    """{variant: {"ap": {column: %}, "median_rot_deg", "median_shift_cm", "median_size_ratio", "objects"}}."""
    from cleanpose_training.datasets import NOCSTestDataset

    data_dir = Path(data_dir)
    variants = list(variants or (VARIANTS if net is not None else VARIANTS[:1]))
    ds = NOCSTestDataset(data_dir, "synthetic", split=split, seed=42)
    models = safe_pickle.load(data_dir / "obj_models" / f"{split}.pkl")
    oracle = Oracle(net)
    records = {v: [] for v in variants}
    errs = {v: [] for v in variants}
    n = len(ds) if max_images is None else min(max_images, len(ds))
    for i in range(n):
        item = ds[i]
        objs = gt_objects(data_dir, split, item, models)
        cats = item["category_label"].numpy()
        net_out = None
        if net is not None and len(objs):
            net_out = oracle.network(
                item["rgb"].float(), item["pts"].float(), item["choose"], item["category_label"]
            )
        for v in variants:
            R, t, s = [], [], []
            for k, obj in enumerate(objs):
                pred = oracle.predict(v, item["pts"][k].numpy().astype(np.float64), obj, net_out, k)
                R.append(pred["rotation"])
                t.append(pred["translation"])
                s.append(pred["size"])
                rt = np.eye(4)
                rt[:3, :3], rt[:3, 3] = pred["rotation"], pred["translation"]
                gt_rt = np.eye(4)
                gt_rt[:3, :3], gt_rt[:3, 3] = obj["R"], obj["t"]
                deg, cm = rt_degree_cm(rt, gt_rt, NOCS.names[int(cats[k])], 1)
                errs[v].append((deg, cm, float(np.linalg.norm(pred["size"]) / np.linalg.norm(obj["size"]))))
            rec = dict(item["gt"])
            if objs:
                rec["pred_RTs"], rec["pred_scales"] = pose_to_record(np.stack(R), np.stack(t), np.stack(s))
            else:
                rec["pred_RTs"], rec["pred_scales"] = np.zeros((0, 4, 4)), np.zeros((0, 3))
            records[v].append(rec)
    result = {}
    for v in variants:
        res = evaluate_records(records[v], NOCS_PROTOCOL)
        ap = {}
        for label, kind, thr in COLUMNS:
            x = res.iou_ap("nocs", thr) if kind == "iou" else res.pose_ap(*thr)
            ap[label] = round(100 * float(x), 1)
        e = np.array(errs[v]) if errs[v] else np.zeros((0, 3))
        result[v] = {
            "ap": ap,
            "median_rot_deg": round(float(np.nanmedian(e[:, 0])), 2) if len(e) else None,
            "median_shift_cm": round(float(np.median(e[:, 1])), 2) if len(e) else None,
            "median_size_ratio": round(float(np.median(e[:, 2])), 3) if len(e) else None,
            "objects": len(e),
        }
    return result


def table(result: dict) -> str:
    extra = " | median rot ° | median shift cm | size ratio |"
    head = "| variant | " + " | ".join(c[0] for c in COLUMNS) + extra
    lines = [head, "|---|" + "---|" * (len(COLUMNS) + 3)]
    for v, r in result.items():
        cells = [f"{r['ap'][c[0]]:.1f}" for c in COLUMNS]
        cells += [str(r["median_rot_deg"]), str(r["median_shift_cm"]), str(r["median_size_ratio"])]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleanpose_training.selfsup.oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("data", help="labelled NOCS-layout root (e.g. the study's DATA/a)")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", help="a selfsup model.safetensors: adds the variants that use the network")
    p.add_argument("--variants", nargs="+", choices=VARIANTS)
    p.add_argument("--max-images", type=int)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    net = None
    if args.checkpoint:
        from cleanpose_model.families.selfsup import load_selfsup_net

        net = load_selfsup_net(args.checkpoint).eval()
    result = run(args.data, args.split, net, args.variants, args.max_images)
    print(table(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
