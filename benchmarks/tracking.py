"""Suite ``tracking``: identities and temporal filtering of the pose stream on synthetic sequences with ground
truth (issue 18).

Sequences: the synthetic generator's rosbag scenes (`cleanpose_training.synthetic.bag_frames`: a static scene,
the camera on a smooth arc at --rate Hz), rendered in-process. Per frame the estimator (FramePipeline, the
node's frame path without ROS; default the shipped demo checkpoint) runs on the ground-truth masks with mask
noise (random erosion / dilation up to --mask-noise px), detections shuffled, --drop of them missed, no
detector ids. Scenes: ``mixed`` (6 objects of all categories) and ``repeats`` (6 objects of bowl / can / mug
only: several of one category, the hard case for identities).

The same estimates then go through `cleanpose_ros.tracking.Tracker` + `cleanpose_ros.filtering` once per
filter mode (none | light | full) and per filtering frame (``camera``: the optical frame, as without
target_frame; ``world``: a fixed frame, as with target_frame and TF), publishing confirmed tracks only.
Figures per row, over all GT objects of all scenes:

- id_switches: a GT object's published id changes between two of its published frames;
  merged: frames where one published id covers two GT objects; fragments: ids per GT object beyond the first;
- jitter_rot_deg / jitter_trans_mm: mean frame-to-frame change of the published pose in the world frame
  (static objects: any change is jitter), rotation as the observable angle (y axis only for bottle, bowl,
  can);
- rot_err_deg / trans_err_mm: mean error against ground truth (same observable angle);
- lag_frames: the time shift (frames, parabola-refined) that best aligns the published camera-frame
  translation with the ground truth's; 0 for an output without delay;
- ms_per_frame: tracker + filters per frame on the host.

    python -m benchmarks tracking --out docs/results/cpu
    python -m benchmarks tracking --quick --out /tmp/b
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import harness
from cleanpose_tools.track_metrics import TrackScore, observable_angle_deg, to_camera, to_world

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo" / "demo.safetensors"
SCENES = {
    "mixed": ("bottle", "bowl", "camera", "can", "laptop", "mug"),
    "repeats": ("bowl", "can", "mug"),
}
MODES = ("none", "light", "full")
FRAMES = ("camera", "world")


@dataclass
class Estimate:
    """One estimated object, shaped like the pipeline's ObjectResult where `filtering.PoseStream` reads it."""

    gt: int  # GT instance id
    class_id: int
    rotation: np.ndarray
    translation: np.ndarray
    size: np.ndarray
    instance_id: str = ""
    covariance: np.ndarray | None = None


@dataclass
class SeqFrame:
    stamp: float
    T_world_cam: np.ndarray
    gt: dict  # instance id -> (R, t) in the camera frame
    estimates: list  # Estimate, in the (shuffled) order the estimator saw them


def run_sequence(pipe, scene: str, seed: int, frames: int, args) -> list[SeqFrame]:
    from cleanpose_ros.detections import Detections
    from cleanpose_training.synthetic.__main__ import bag_frames, scene_rngs
    from cleanpose_training.synthetic.nocs_writer import MaskNoise
    from cleanpose_training.synthetic.scene import Camera

    cam = Camera.real275(args.width, args.height)
    rng = scene_rngs(seed, f"tracking/{scene}", 1)[0]
    det_rng = np.random.default_rng([seed, 18])
    noise = MaskNoise(max_radius_px=args.mask_noise)
    names = pipe.estimator.categories
    out = []
    it = bag_frames(rng, frames, (6, 6), SCENES[scene], cam, args.rate, shadows=False, distractors=(0, 1))
    for i, f in enumerate(it):
        n = len(f.instance_ids)
        order = det_rng.permutation(n)
        order = order[det_rng.random(n) >= args.drop]
        masks, _ = noise.apply(f.masks[order], det_rng)
        from cleanpose_model.preprocess import mask_to_box

        keep = [k for k in range(len(order)) if masks[k].any()]
        order, masks = order[keep], masks[keep]
        boxes = np.array([mask_to_box(m) for m in masks], np.int64).reshape(-1, 4)
        det = Detections(
            masks,
            boxes,
            [names[int(f.category_ids[j])] for j in order],
            np.ones(len(order), np.float32),
            [""] * len(order),  # no detector ids
        )
        depth = f.depth_mm.astype(np.float32) / 1000.0
        res = pipe.process(f.rgb, depth, f.K, det)
        est = [
            Estimate(
                int(f.instance_ids[order[o.detection_index]]), o.class_id, o.rotation, o.translation, o.size
            )
            for o in res.objects
        ]
        gt = {int(f.instance_ids[j]): (f.rotations[j], f.translations[j]) for j in range(n)}
        out.append(SeqFrame(i / args.rate, f.T_world_cam, gt, est))
    return out


def save_sequences(seqs: list[list[SeqFrame]], path: Path) -> None:
    """The estimates and ground truth as JSON, so the tracking / filter figures can be recomputed (other
    parameters) without running the estimator again (--estimates)."""
    data = [
        [
            {
                "stamp": f.stamp,
                "T_world_cam": f.T_world_cam.tolist(),
                "gt": {
                    str(k): [np.asarray(R).tolist(), np.asarray(t).tolist()] for k, (R, t) in f.gt.items()
                },
                "estimates": [
                    [e.gt, e.class_id, e.rotation.tolist(), e.translation.tolist(), e.size.tolist()]
                    for e in f.estimates
                ],
            }
            for f in seq
        ]
        for seq in seqs
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def load_sequences(path: Path) -> list[list[SeqFrame]]:
    a = np.asarray
    return [
        [
            SeqFrame(
                f["stamp"],
                a(f["T_world_cam"]),
                {int(k): (a(R), a(t)) for k, (R, t) in f["gt"].items()},
                [Estimate(g, c, a(R), a(t), a(s)) for g, c, R, t, s in f["estimates"]],
            )
            for f in seq
        ]
        for seq in json.loads(path.read_text())
    ]


def evaluate(seqs: list[list[SeqFrame]], mode: str, frame: str, symmetric: frozenset, tcfg) -> dict:
    """Tracker + filters of `mode` in `frame` over every sequence -> the row's figures."""
    from dataclasses import replace

    from cleanpose_ros.filtering import FilterConfig, PoseStream

    score = TrackScore()  # ids and jitter: the figures the demo and cleanpose-bench report too
    err_r, err_t = [], []
    lag_num, lag_den = np.zeros(5), np.zeros(5)  # error vs shift 0..4 frames
    host_ms = []
    for seq in seqs:
        stream = PoseStream(tcfg, FilterConfig(mode=mode), symmetric)  # the node's step, as it runs there
        score.new_sequence()
        published_cam: dict[int, dict[int, np.ndarray]] = {}  # gt -> frame -> t_cam
        for k, fr in enumerate(seq):
            ests = fr.estimates
            if frame == "world":
                ests = []
                for e in fr.estimates:
                    R, t = to_world(fr.T_world_cam, e.rotation, e.translation)
                    ests.append(replace(e, rotation=R, translation=t))
            t0 = time.perf_counter()
            out = stream.apply(ests, [None] * len(ests), fr.stamp)  # no detector ids
            host_ms.append((time.perf_counter() - t0) * 1e3)
            items = []
            for e in out:
                sym = e.class_id in symmetric
                if frame == "camera":
                    Rc, tc = e.rotation, e.translation
                    Rw, tw = to_world(fr.T_world_cam, Rc, tc)
                else:
                    Rw, tw = e.rotation, e.translation
                    Rc, tc = to_camera(fr.T_world_cam, Rw, tw)
                R_gt, t_gt = fr.gt[e.gt]
                err_r.append(observable_angle_deg(Rc, R_gt, sym))
                err_t.append(1e3 * float(np.linalg.norm(tc - t_gt)))
                items.append((e.instance_id, e.gt, sym, Rw, tw))
                published_cam.setdefault(e.gt, {})[k] = tc
            score.add(k, items)
        for gt, by_frame in published_cam.items():
            for k, tc in by_frame.items():
                # every shift over the same frames (those with 4 frames of ground truth before them)
                if k < 4 or any(gt not in seq[k - s].gt for s in range(5)):
                    continue
                for s in range(5):
                    lag_num[s] += np.linalg.norm(tc - seq[k - s].gt[gt][1])
                    lag_den[s] += 1
    curve = lag_num / np.maximum(lag_den, 1)
    s = int(np.argmin(curve))
    lag = float(s) if lag_den.min() > 0 else None  # None: sequences shorter than 5 frames
    if lag is not None and 0 < s < 4:  # parabola through the minimum and its neighbours
        a, b, c = curve[s - 1], curve[s], curve[s + 1]
        den = a - 2 * b + c
        lag = s + (0.5 * (a - c) / den if den > 0 else 0.0)
    ids = score.summary()
    return {
        "id_switches": ids["id_switches"],
        "merged": ids["merged"],
        "fragments": ids["fragments"],
        "published": len(err_r),
        "jitter_rot_deg": ids["jitter_rot_deg"],
        "jitter_trans_mm": ids["jitter_trans_mm"],
        "rot_err_deg": float(np.mean(err_r)) if err_r else None,
        "trans_err_mm": float(np.mean(err_t)) if err_t else None,
        "lag_frames": lag,
        "ms_per_frame": float(np.mean(host_ms)) if host_ms else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("tracking", __doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=DEMO)
    ap.add_argument("--frames", type=int, default=90, help="frames per sequence")
    ap.add_argument("--seeds", type=int, default=2, help="sequences per scene kind")
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--drop", type=float, default=0.05, help="share of detections missed")
    ap.add_argument("--mask-noise", type=int, default=3, help="px of random erosion / dilation")
    ap.add_argument(
        "--estimates", type=Path, default=None, help="read the sequences from this JSON instead of estimating"
    )
    ap.add_argument("--save-estimates", type=Path, default=None, help="write the sequences' estimates here")
    args = harness.finish_args(ap.parse_args(argv), objects=[6], quick_objects=[6])
    if args.quick:
        args.frames, args.seeds, args.width, args.height = min(args.frames, 12), 1, 320, 240
    from cleanpose_model.categories import NOCS
    from cleanpose_model.device import resolve_device
    from cleanpose_model.estimator import PoseEstimator
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig
    from cleanpose_ros.tracking import TrackerConfig

    dev = resolve_device(args.device).device
    report = harness.Report("tracking", args, dev)
    symmetric = frozenset(NOCS.symmetric_ids)
    t0 = time.perf_counter()
    if args.estimates is not None:
        seqs = load_sequences(args.estimates)
        report.note(f"estimates read from {args.estimates}")
    else:
        pipe = FramePipeline(
            PoseEstimator.from_checkpoint(str(args.checkpoint), device=dev), PipelineConfig()
        )
        seqs = [
            run_sequence(pipe, sc, seed, args.frames, args)
            for sc in args.scenes
            for seed in range(args.seeds)
        ]
        report.note(f"estimator on {dev.type}: {time.perf_counter() - t0:.1f} s")
    if args.save_estimates is not None:
        save_sequences(seqs, args.save_estimates)
    report.note(
        f"{len(seqs)} sequences x {len(seqs[0])} frames ({args.width}x{args.height}, {args.rate:g} Hz), "
        f"{sum(len(f.estimates) for s in seqs for f in s)} estimates, {args.drop:.0%} of detections dropped, "
        f"shuffled, no detector ids, mask noise {args.mask_noise} px"
    )
    tcfg = TrackerConfig()
    for frame in FRAMES:
        for mode in MODES:
            report.add(frame=frame, mode=mode, **evaluate(seqs, mode, frame, symmetric, tcfg))
    cols = ["frame", "mode", "id_switches", "merged", "fragments", "published", "jitter_rot_deg"]
    cols += ["jitter_trans_mm", "rot_err_deg", "trans_err_mm", "lag_frames", "ms_per_frame"]
    report.print_rows(cols, "tracking + filtering on synthetic sequences")
    for value in ("jitter_rot_deg", "jitter_trans_mm"):
        for other in ("light", "full"):
            cmp = report.compare(key=("frame",), between="mode", base="none", other=other, value=value)
            report.print_comparisons(("frame",), value, cmp)
    report.write(args.out)
    return 0
