"""`cleanpose-eval`: the NOCS / HouseCat6D evaluation protocol over result records or a checkpoint.

    cleanpose-eval --results DIR [--protocol nocs|housecat6d] --out OUT
    cleanpose-eval --checkpoint model.safetensors --data DIR \
        --dataset nocs|camera25|housecat6d|synthetic --out OUT

Prints the paper's tables (Markdown), writes `metrics.json`, `tables.md` and `ap_curves.png` to OUT; with
--checkpoint it first writes one result record per test image to OUT/results (evaluation.md §1).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import pickle
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cleanpose_model.errors import CheckpointError
from cleanpose_training.datasets import safe_pickle
from cleanpose_training.datasets.common import DatasetError

from .metrics import (
    CATRE_IOU_LABEL,
    HOUSECAT_PROTOCOL,
    NOCS_IOU_LABEL,
    NOCS_PROTOCOL,
    EvalResult,
    Protocol,
    evaluate_records,
)

PROTOCOLS = {"nocs": NOCS_PROTOCOL, "housecat6d": HOUSECAT_PROTOCOL}
CURVE_IOU = [i / 100 for i in range(101)]
CURVE_DEG = list(range(0, 61))
CURVE_SHIFT = [i / 2 for i in range(21)]
POSE_COLS = ((5, 2), (5, 5), (10, 2), (10, 5))


# ------------------------------------------------------------------------------------------ records


def pose_to_record(
    rotation: np.ndarray,
    translation: np.ndarray,
    size: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(pred_RTs (n,4,4) with R·‖s‖, pred_scales (n,3) = s/‖s‖) as the published test_func writes them."""
    n = len(rotation)
    norms = np.linalg.norm(size, axis=1)
    rts = np.tile(np.eye(4), (n, 1, 1))
    rts[:, :3, :3] = rotation * norms[:, None, None]
    rts[:, :3, 3] = translation
    return rts, size / norms[:, None]


def load_records(results_dir: str | Path) -> list[dict]:
    """`results*.pkl` directly in the folder (NOCS), else every `*.pkl` one level down (HouseCat6D scenes)."""
    d = Path(results_dir)
    if not d.is_dir():
        raise DatasetError(f"missing results directory: expected a folder at '{d}'")
    files = sorted(glob.glob(str(d / "results*.pkl"))) or sorted(glob.glob(str(d / "*" / "*.pkl")))
    if not files:
        raise DatasetError(f"no result records in '{d}': expected results*.pkl or <scene>/*.pkl")
    need = (
        "gt_class_ids",
        "gt_RTs",
        "gt_scales",
        "pred_class_ids",
        "pred_bboxes",
        "pred_scores",
        "pred_RTs",
        "pred_scales",
    )
    out = []
    for f in files:
        rec = safe_pickle.load(f)
        missing = [k for k in need if k not in rec]
        if missing:
            raise DatasetError(f"result record '{f}' lacks keys {missing}")
        out.append(rec)
    return out


def predict_records(
    estimator, dataset, out_dir: Path, max_images: int | None = None, log=print
) -> list[dict]:
    """Run the estimator over a test dataset (one image per item) and write one record per image."""
    import torch

    from cleanpose_model.types import ObjectBatch

    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    records = []
    t0 = time.perf_counter()
    for i in range(n):
        item = dataset[i]
        k = int(item["category_label"].shape[0])
        if k:
            res = estimator.predict(
                ObjectBatch(
                    rgb=item["rgb"], pts=item["pts"], choose=item["choose"], category=item["category_label"]
                )
            )
            R = res.rotation.detach().to("cpu", torch.float64).numpy()
            t = res.translation.detach().to("cpu", torch.float64).numpy()
            s = res.size.detach().to("cpu", torch.float64).numpy()
            rts, scales = pose_to_record(R, t, s)
        else:
            rts, scales = np.zeros((0, 4, 4)), np.zeros((0, 3))
        rec = dict(item["gt"])
        rec["pred_RTs"], rec["pred_scales"] = rts, scales
        rec["image_path"] = item["image_path"]
        name = item["result_name"]
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(rec, f, protocol=pickle.HIGHEST_PROTOCOL)
        records.append(rec)
        if log and (i + 1) % 50 == 0:
            log(f"  {i + 1}/{n} images, {(i + 1) / (time.perf_counter() - t0):.2f} img/s")
    return records


# ------------------------------------------------------------------------------------------- tables


def pct(x: float | None) -> str:
    """An AP (0..1) as a percentage cell; an undefined one (a class without ground truth) as "–"."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def left_out_note(res: EvalResult) -> str:
    """The line under a table that says which classes the mean row leaves out, or "" when none."""
    missing = res.classes_without_gt
    if not missing:
        return ""
    return f"No ground truth for {', '.join(missing)}: left out of the mean (shown as –)."


def summary_table(res: EvalResult) -> str:
    head = "| IoU variant | IoU25 | IoU50 | IoU75 | 5°2cm | 5°5cm | 10°2cm | 10°5cm |"
    lines = [head, "|" + "---|" * 8]
    pose = [pct(res.pose_ap(d, c)) for d, c in POSE_COLS]
    for variant, label in (("nocs", NOCS_IOU_LABEL), ("catre", CATRE_IOU_LABEL)):
        ious = [pct(res.iou_ap(variant, t)) for t in (0.25, 0.5, 0.75)]
        lines.append(f"| {label} | " + " | ".join(ious + pose) + " |")
    note = left_out_note(res)
    return "\n".join([*lines, "", note] if note else lines)


def per_category_table(res: EvalResult) -> str:
    head = (
        "| category | IoU25 | IoU50 | IoU75 | IoU25* | IoU50* | IoU75* | 5°2cm | 5°5cm | 10°2cm | 10°5cm "
        "| #GT | #GT pose |"
    )
    lines = [head, "|" + "---|" * 13]
    rows = [(k, name) for k, name in enumerate(res.protocol.classes, start=1)] + [(-1, "average")]
    for k, name in rows:
        cells = [pct(res.iou_ap(v, t, k)) for v in ("nocs", "catre") for t in (0.25, 0.5, 0.75)]
        cells += [pct(res.pose_ap(d, c, k)) for d, c in POSE_COLS]
        if k == -1:
            cells += [str(int(res.counts["gt"][1:-1].sum())), str(int(res.counts["pose_gt"][1:-1].sum()))]
        else:
            cells += [str(int(res.counts["gt"][k])), str(int(res.counts["pose_gt"][k]))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"IoU = {NOCS_IOU_LABEL} (per-corner extrema, the published axis bug); "
        f"IoU* = {CATRE_IOU_LABEL} (axis-aligned boxes of the transformed corners, the paper's "
        "IoU*). Pose APs count only GTs matched at original-NOCS IoU > 0.1; the average is the "
        "unweighted mean over the classes whose AP is defined."
    )
    note = left_out_note(res)
    return "\n".join([*lines, note] if note else lines)


def extra_shift_table(res: EvalResult) -> str:
    """HouseCat6D also reports 10 cm columns."""
    head = "| | 5°10cm | 10°10cm |"
    return "\n".join(
        [head, "|---|---|---|", f"| average | {pct(res.pose_ap(5, 10))} | {pct(res.pose_ap(10, 10))} |"]
    )


def result_json(res: EvalResult) -> dict:
    def clean(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(100 * x, 4)

    def metrics_for(k: int) -> dict:
        d = {}
        for v, tag in (("nocs", "nocs_iou"), ("catre", "catre_iou")):
            for t in (0.25, 0.5, 0.75):
                d[f"{tag}_{round(t * 100)}"] = clean(res.iou_ap(v, t, k))
        for deg, cm in POSE_COLS:
            d[f"{deg}deg_{cm}cm"] = clean(res.pose_ap(deg, cm, k))
        if res.protocol.name == "housecat6d":
            d["5deg_10cm"] = clean(res.pose_ap(5, 10, k))
            d["10deg_10cm"] = clean(res.pose_ap(10, 10, k))
        return d

    return {
        "protocol": res.protocol.name,
        "labels": {"nocs_iou": NOCS_IOU_LABEL, "catre_iou": CATRE_IOU_LABEL},
        "units": "AP in percent",
        "mean": metrics_for(-1),
        "classes_left_out_of_mean": res.classes_without_gt,
        "per_category": {name: metrics_for(k) for k, name in enumerate(res.protocol.classes, start=1)},
        "num_gt": {name: int(res.counts["gt"][k]) for k, name in enumerate(res.protocol.classes, start=1)},
        "num_gt_pose": {
            name: int(res.counts["pose_gt"][k]) for k, name in enumerate(res.protocol.classes, start=1)
        },
        "curves": {
            "iou_thresholds": res.iou_thresholds.tolist(),
            "nocs_iou_mean_ap": [clean(x) for x in res.iou_aps["nocs"][-1].tolist()],
            "catre_iou_mean_ap": [clean(x) for x in res.iou_aps["catre"][-1].tolist()],
            "degree_thresholds": res.degree_thresholds.tolist(),
            "shift_thresholds": res.shift_thresholds.tolist(),
            "pose_mean_ap": [[clean(x) for x in row] for row in res.pose_aps[-1].tolist()],
        },
    }


def evaluate_and_report(
    records: Iterable[dict],
    protocol: Protocol,
    out_dir: Path | None,
    title: str = "",
    plot: bool = True,
    log=print,
) -> tuple[EvalResult, str]:
    records = list(records)
    res = evaluate_records(
        records,
        protocol,
        CURVE_IOU + list(protocol.iou_thresholds),
        CURVE_DEG + list(protocol.degree_thresholds),
        CURVE_SHIFT + list(protocol.shift_thresholds),
    )
    md = [
        f"## {title or 'Evaluation'} ({len(records)} images, protocol {protocol.name})",
        "",
        summary_table(res),
        "",
        "Per category:",
        "",
        per_category_table(res),
    ]
    if protocol.name == "housecat6d":
        md += ["", extra_shift_table(res)]
    text = "\n".join(md) + "\n"
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tables.md").write_text(text)
        (out_dir / "metrics.json").write_text(json.dumps(result_json(res), indent=1, ensure_ascii=False))
        if plot:
            from .plots import plot_curves

            plot_curves(res, out_dir / "ap_curves.png", title)
    if log:
        log(text)
    return res, text


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleanpose-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--results", type=Path, help="folder of per-image result pickles (evaluation.md §1)")
    src.add_argument("--checkpoint", type=Path, help="model checkpoint (.safetensors, or published .pt/.pth)")
    p.add_argument("--data", type=Path, help="dataset root (with --checkpoint)")
    p.add_argument(
        "--dataset",
        choices=["nocs", "real275", "camera25", "housecat6d", "synthetic"],
        default="nocs",
        help="test split: nocs = REAL275 (default), camera25, housecat6d, synthetic output",
    )
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=None,
        help="metric protocol for --results (default: nocs; housecat6d for --dataset housecat6d)",
    )
    p.add_argument("--split", default="test", help="synthetic: split name of segmentation_results/<split>")
    p.add_argument(
        "--results-dir", type=Path, default=None, help="detection pickles folder (NOCS-style sets)"
    )
    p.add_argument("--intrinsics", default=None, help="intrinsics file overriding the dataset's")
    p.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--config", default=None, help="model config for a published checkpoint")
    p.add_argument("--queue", default=None, help="tensor_list.pkl for a published CleanPose checkpoint")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-plot", action="store_true")
    return p


def _test_dataset(args):
    from cleanpose_training.datasets import HouseCat6DTestDataset, NOCSTestDataset

    if args.dataset == "housecat6d":
        return HouseCat6DTestDataset(args.data, seed=args.seed)
    names = {"nocs": "REAL275", "real275": "REAL275", "camera25": "CAMERA25", "synthetic": "synthetic"}
    name = names[args.dataset]
    return NOCSTestDataset(
        args.data,
        name,
        results_dir=args.results_dir,
        intrinsics=args.intrinsics,
        seed=args.seed,
        split=args.split,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.results is not None:
            protocol = PROTOCOLS[args.protocol or ("housecat6d" if args.dataset == "housecat6d" else "nocs")]
            records = load_records(args.results)
            title = f"results {args.results}"
        else:
            if args.data is None:
                print("cleanpose-eval: --checkpoint needs --data DIR", file=sys.stderr)
                return 2
            import torch

            from cleanpose_model.estimator import load_estimator

            protocol = PROTOCOLS["housecat6d" if args.dataset == "housecat6d" else "nocs"]
            dataset = _test_dataset(args)
            est = load_estimator(
                args.checkpoint,
                device=args.device,
                dtype=getattr(torch, args.dtype),
                seed=args.seed,
                config=args.config,
                queue_path=args.queue,
            )
            print(f"evaluating {args.checkpoint} on {args.dataset} ({len(dataset)} images) on {args.device}")
            records = predict_records(est, dataset, args.out / "results", args.max_images)
            title = f"{args.checkpoint.name} on {args.dataset}"
        evaluate_and_report(records, protocol, args.out, title, plot=not args.no_plot)
    except (DatasetError, CheckpointError) as e:
        print(f"cleanpose-eval: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out / 'tables.md'}, {args.out / 'metrics.json'}"
        + ("" if args.no_plot else f", {args.out / 'ap_curves.png'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
