"""The main job (`make demo`, `python -m cleanpose_tools.demo`, `cleanpose-demo`): the node without a camera.

Generates a short synthetic rosbag2 sequence with ground truth (or takes --bag), starts the cleanpose node
with the demo checkpoint as its own process, replays the bag into it over DDS, and prints what came out: per
frame and object the pose error against ground truth and the latency, the sequence's 5°2cm / 10°5cm / IoU50,
frames in / out / dropped, and the tracking figures (tracks, id switches against ground truth, frame-to-frame
jitter; cleanpose_tools/track_metrics.py). The node's debug overlays and a contact sheet land in --out.

Exit status 0 only when it really ran end to end: the node answered frames, estimated objects, and published
debug images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cleanpose_tools.bench import (
    NODE_NAME,
    NodeProcess,
    _jsonable,
    default_checkpoint,
    device_description,
    format_map,
    node_command,
    score_frames,
)
from cleanpose_tools.replay import Replayer, TopicConfig, load_frames, stamp_ns_of
from cleanpose_tools.track_metrics import format_tracking, tracking_figures

# Where the self-supervised family's demo checkpoint (and its model card) lives: `make demo ARGS="--family
# selfsup"` serves it.
SELFSUP_DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "selfsup_demo"
UNTRAINED_BANNER = (
    "!! UNTRAINED MODEL: no trained demo checkpoint (models/demo/) was found, so the node runs a network\n"
    "!! with seeded random weights in the demo configuration. Every stage runs; the poses are meaningless."
)


def _fmt(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def ensure_bag(
    path: Path, frames: int, objects: tuple[int, int], seed: int, regenerate: bool = False
) -> Path:
    """The synthetic bag at ``path``: made now, or the one an earlier run made with the same options (said
    so, with its path: a bag from an older checkout may differ from what this one would render)."""
    if (path / "metadata.yaml").exists() and not regenerate:
        print(f"[demo] reusing the bag an earlier run generated: {path} (--regenerate makes it again)")
        return path
    from cleanpose_training.synthetic.__main__ import generate_bag

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    generate_bag(path, frames=frames, objects=objects, seed=seed, shadows=False)
    print(
        f"[demo] generated synthetic bag {path} ({frames} frames of one scene with {objects[0]}-{objects[1]} "
        f"objects, the count drawn from the seed) in {time.perf_counter() - t0:.1f} s"
    )
    return path


class DebugImages:
    """Collects the node's ~/debug_image messages by header stamp (= the stamp of the frame they overlay)."""

    def __init__(self):
        self.by_stamp: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self._lock:
            self.by_stamp[stamp_ns_of(msg.header)] = msg

    def save(self, records, folder: Path) -> list[Path]:
        from matplotlib.image import imsave

        from cleanpose_ros.conversions import image_to_numpy

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for r in records:
            msg = self.by_stamp.get(r.stamp_ns)
            if msg is None:
                continue
            arr = image_to_numpy(msg)
            if msg.encoding.lower().startswith("bgr"):
                arr = arr[..., ::-1]
            p = folder / f"frame_{r.frame:04d}.png"
            imsave(p, np.ascontiguousarray(arr))
            paths.append(p)
        return paths


def contact_sheet(images: list[Path], path: Path, title: str, max_images: int = 12) -> Path | None:
    if not images:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = [images[int(i)] for i in np.linspace(0, len(images) - 1, min(max_images, len(images)))]
    cols = min(4, len(pick))
    rows = (len(pick) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes.ravel(), pick):
        ax.imshow(plt.imread(p))
        ax.set_title(p.stem, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report(run, acc: dict, bag, trained: bool, device: str) -> str:
    lat = {r.frame: (r.t_recv - r.t_send) * 1e3 for r in run.records if r.t_recv is not None}
    lines = []
    if not trained:
        lines += [UNTRAINED_BANNER, ""]
    lines.append(f"### cleanpose demo: {bag.path} ({len(bag.frames)} frames) on {device}")
    lines.append("")
    lines.append(
        "| frame | objects | class | id | rot err ° | trans err cm | size err cm | IoU | latency ms |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for o in acc.get("objects", []):
        f = o["frame"]
        if not o["found"]:
            lines.append(
                f"| {f} | {bag.frames[f].n_objects} | {o['class']} | {o['instance_id']} | not estimated "
                f"| | | | {_fmt(lat.get(f))} |"
            )
            continue
        lines.append(
            f"| {f} | {bag.frames[f].n_objects} | {o['class']} | {o['instance_id']} | {_fmt(o['rot_deg'])} | "
            f"{_fmt(o['trans_cm'])} | {_fmt(o['size_cm'])} | {_fmt(o['iou'], 2)} | {_fmt(lat.get(f))} |"
        )
    lines.append("")
    lines.append("| class | objects | mean rot err ° | mean trans err cm | mean size err cm | mean IoU |")
    lines.append("|---|---|---|---|---|---|")
    for c, s in acc.get("per_class", {}).items():
        lines.append(
            f"| {c} | {s['objects']} | {_fmt(s['rot_deg_mean'])} | {_fmt(s['trans_cm_mean'])} | "
            f"{_fmt(s['size_cm_mean'])} | {_fmt(s['iou_mean'], 2)} |"
        )
    s = acc.get("per_object_success", {})
    lines.append("")
    lines.append(
        f"Sequence: 5°2cm {_fmt(s.get('5deg2cm'))} %, 10°5cm {_fmt(s.get('10deg5cm'))} %, "
        f"IoU50 {_fmt(s.get('iou50'))} % of {s.get('gt_objects', 0)} ground-truth objects "
        f"({s.get('found', 0)} estimated)"
    )
    lines.append(format_map(acc.get("nocs_map")))
    lines.append(format_tracking(acc.get("tracking")))
    ls = [v for v in lat.values()]
    lines.append(
        f"Frames in {run.sent}, out {run.received}, dropped {run.dropped}; latency p50 "
        f"{_fmt(np.percentile(ls, 50) if ls else None)} ms, max {_fmt(max(ls) if ls else None)} ms"
    )
    if not trained:
        lines += ["", UNTRAINED_BANNER]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cleanpose-demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--bag", default=None, help="replay this bag instead of generating one (synthetic topics)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument(
        "--objects",
        default="1-4",
        help="objects in the generated scene, A-B: the count is drawn once from --seed and every frame views "
        "that scene along a camera arc (seed 0: 4 objects, all in view)",
    )
    p.add_argument(
        "--regenerate",
        action="store_true",
        help="make the bag again even when an earlier run left it in --out",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="default: models/demo, else an untrained demo model")
    p.add_argument(
        "--family",
        choices=("cleanpose", "selfsup"),
        default="cleanpose",
        help="without --checkpoint: selfsup serves the self-supervised demo (models/selfsup_demo/)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="replay rate in Hz; 0 = each frame as soon as the previous one was answered",
    )
    p.add_argument("--short", action="store_true", help="6 frames (smoke test)")
    p.add_argument("--start-timeout", type=float, default=120.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cleanpose_tools.replay import prefer_large_data_transport

    prefer_large_data_transport()
    if args.short:
        args.frames = min(args.frames, 6)
    try:
        import cleanpose_msgs.msg  # noqa: F401
        import rclpy  # noqa: F401
    except ImportError as e:
        print(
            f"[demo] ROS environment missing ({e}). Run `make demo`, or `bash scripts/setup.sh && "
            f"source scripts/env.sh` first.",
            file=sys.stderr,
        )
        return 2
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lo, _, hi = args.objects.partition("-")
    objects = (int(lo), int(hi or lo))
    if args.bag:
        bag_path = Path(args.bag)
    else:
        bag_path = ensure_bag(
            out / f"bag_{args.frames}f_{objects[0]}-{objects[1]}obj_s{args.seed}",
            args.frames,
            objects,
            args.seed,
            args.regenerate,
        )
    topics = TopicConfig()
    bag = load_frames(bag_path, topics)
    if not bag.frames:
        print(f"[demo] no complete frames in {bag_path}", file=sys.stderr)
        return 1
    counts = [f.n_objects for f in bag.frames]
    print(f"[demo] bag: {len(counts)} frames, {min(counts)}-{max(counts)} objects per frame")
    if args.checkpoint:
        checkpoint, trained = args.checkpoint, True
    elif args.family == "selfsup":
        found = sorted(SELFSUP_DEMO_DIR.glob("*.safetensors")) if SELFSUP_DEMO_DIR.is_dir() else []
        if not found:
            print(
                f"[demo] no self-supervised demo checkpoint in {SELFSUP_DEMO_DIR}: train one with "
                "scripts/selfsup_study_gpu.sh (docs/selfsup.md), or serve any selfsup checkpoint with "
                "--checkpoint PATH",
                file=sys.stderr,
            )
            return 2
        checkpoint, trained = str(found[0]), True
    else:
        ckpt, trained = default_checkpoint()
        checkpoint = str(ckpt)
    if not trained:
        print(UNTRAINED_BANNER)
    print(
        f"[demo] starting {NODE_NAME} (checkpoint {checkpoint}, device {args.device}); "
        f"log: {out / 'node.log'}"
    )
    cmd = node_command(checkpoint, args.device, topics, NODE_NAME, {"publish_debug_image": "true"})
    node = NodeProcess(cmd, out / "node.log")
    debug = DebugImages()
    rep = None
    problems: list[str] = []
    try:
        rep = Replayer(bag, topics, NODE_NAME, debug_image_cb=debug)
        try:
            rep.wait_for_node(args.start_timeout)
        except TimeoutError as e:
            state = "exited" if not node.alive() else "running"
            print(f"[demo] {e}\n[demo] node {state}; log tail:\n{node.log_tail()}", file=sys.stderr)
            return 1
        t_up = time.perf_counter()
        # One frame first, so the reported latencies do not include lazy first-call set-up.
        warm = rep.send(bag.frames[0])
        rep.wait_answer(warm, 120.0)
        run = rep.run(bag.frames, rate_hz=args.rate or None, answer_timeout_s=30.0)
        rep.wait_drain(run.records, quiet_s=1.0, max_s=3.0)  # debug images trail the poses
        time.sleep(0.3)
    finally:
        if rep is not None:
            rep.close()
        code = node.stop()
    pairs = [
        (r.frame, bag.frames[r.frame].gt, r.output) for r in run.records if bag.frames[r.frame].gt is not None
    ]
    acc = score_frames(pairs) if pairs else {"skipped": "the bag has no ground truth"}
    if pairs:
        acc["tracking"] = tracking_figures(sorted(pairs, key=lambda p: p[0]))
    images = debug.save(run.records, out / "debug")
    sheet = contact_sheet(
        images,
        out / "contact_sheet.png",
        f"cleanpose demo ({'trained' if trained else 'UNTRAINED'} model), {bag_path.name}",
    )
    device = device_description(args.device)
    text = report(run, acc, bag, trained, device)
    print(text)
    n_est = sum(len(r.output.objects) for r in run.records if r.output is not None)
    if run.received == 0:
        problems.append("the node answered no frame")
    if n_est == 0:
        problems.append("the node estimated no object")
    if not images:
        problems.append("no debug image came back from ~/debug_image")
    if "Traceback" in (out / "node.log").read_text(errors="replace"):
        problems.append(f"the node log has a traceback ({out / 'node.log'})")
    summary = {
        "bag": str(bag_path),
        "frames": len(bag.frames),
        "checkpoint": checkpoint,
        "trained_model": trained,
        "device": device,
        "sent": run.sent,
        "received": run.received,
        "dropped": run.dropped,
        "objects_estimated": n_est,
        "debug_images": len(images),
        "accuracy": acc,
        "latency_ms": {r.frame: (r.t_recv - r.t_send) * 1e3 for r in run.records if r.t_recv is not None},
        "node_exit_code": code,
        "startup_s": t_up - t_start,
        "total_s": time.perf_counter() - t_start,
        "problems": problems,
    }
    (out / "demo.json").write_text(json.dumps(_jsonable(summary), indent=2))
    (out / "demo_table.md").write_text(text + "\n")
    print(f"\n[demo] output folder: {out.resolve()}")
    print(f"[demo]   debug overlays: {out.resolve() / 'debug'} ({len(images)} images)")
    if sheet:
        print(f"[demo]   contact sheet:  {sheet.resolve()}")
    print(f"[demo]   table + numbers: {out.resolve() / 'demo_table.md'}, {out.resolve() / 'demo.json'}")
    print(f"[demo] total {summary['total_s']:.1f} s")
    if problems:
        print("[demo] FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("[demo] OK: ran end to end (bag -> DDS -> node -> poses + debug images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
