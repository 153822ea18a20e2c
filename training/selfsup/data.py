"""Data of the two training stages. Every sample is a pure function of (seed, index), so a run resumed at
step k draws exactly the samples an uninterrupted run draws, with no sampler state to save.

- ``RenderedShapes`` (stage 1): single objects of the procedural category shapes (the stand-in for ShapeNet),
  one random view each, cropped by the same preprocessing the node uses; the target is the object's canonical
  (NOCS) surface point cloud.
- ``NocsShapes`` (stage 1, where no renderer is installed, e.g. a GPU box without Open3D): the objects of
  a labelled NOCS-layout split rendered beforehand (``cleanpose_training.synthetic nocs``), each with its
  model's canonical surface points (``obj_models/<split>.pkl``, via the label's ``model_list``) as the
  target: the same kind of sample as ``RenderedShapes``, from a fixed set of views.
- ``UnlabeledNocs`` (stage 2): a NOCS-layout folder written by ``cleanpose_training.synthetic nocs`` (or the
  real dataset's layout), read as a robot would record it: colour, depth, instance mask, the category of each
  instance (``meta.txt``: what a segmenter reports) and the intrinsics. Pose files (``*_label.pkl``,
  ``obj_models/``, ``segmentation_results/``) are never opened.
- ``UnlabeledWild6D`` (stage 2): Wild6D's published training layout, one category per root:
  ``<root>/<object>/<sequence>/images/<i>.jpg`` with ``<i>-depth.png`` (uint16 mm) and ``<i>-mask.png``
  (one object, non-zero), and ``<root>/<object>/<sequence>/metadata`` (JSON: ``K`` as 9 numbers in
  column-major order, ``w``, ``h``, ``fps``). The sequence list (the category's ``train_list_all.txt``:
  ``<object index>_<sequence index>`` into the sorted folder names) is optional: every sequence otherwise.
  Wild6D's training videos carry no pose.
- ``UnlabeledBag`` (stage 2): rosbag2 recordings (MCAP or sqlite3, read with ``rosbags``, no ROS needed) on
  the topics the node subscribes to (the launch file's defaults: ``BAG_TOPICS``): colour, aligned depth,
  camera info and the segmenter's ``cleanpose_msgs/InstanceSegmentation``; any ground-truth topic in the
  bag is never read."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from cleanpose_model.categories import NOCS
from cleanpose_model.preprocess import build_object_inputs_np, mask_to_box
from cleanpose_training.datasets.common import read_mask_channel, read_rgb
from cleanpose_training.datasets.depth_fill import load_depth


@dataclass
class Sample:
    """One object: ``rgb`` (3,S,S) normalised crop, ``pts`` (n,3) camera-frame metres, ``choose`` (n,)
    crop pixel indices, ``category``; ``target`` (P,3) canonical points in stage 1 (None in stage 2)."""

    rgb: np.ndarray
    pts: np.ndarray
    choose: np.ndarray
    category: int
    target: np.ndarray | None = None


def collate(samples: list[Sample]) -> dict[str, torch.Tensor]:
    out = {
        "rgb": torch.from_numpy(np.stack([s.rgb for s in samples])),
        "pts": torch.from_numpy(np.stack([s.pts for s in samples])),
        "choose": torch.from_numpy(np.stack([s.choose for s in samples])),
        "category": torch.tensor([s.category for s in samples], dtype=torch.long),
    }
    if samples[0].target is not None:
        out["target"] = torch.from_numpy(np.stack([s.target for s in samples]))
    return out


class RenderedShapes:
    """Stage-1 samples: sample ``i`` renders one freshly drawn object of a random category from a random
    view; draws with too few visible depth pixels are redrawn from the next sub-seed."""

    def __init__(self, seed: int, image_size: int, n_points: int, shape_points: int, width=160, height=120):
        from cleanpose_training.synthetic.scene import Camera

        self.seed, self.image_size, self.n_points, self.shape_points = (
            seed,
            image_size,
            n_points,
            shape_points,
        )
        self.camera = Camera.real275(width, height)

    def __getitem__(self, index: int) -> Sample:
        from cleanpose_training.synthetic.render import Renderer
        from cleanpose_training.synthetic.scene import random_views, sample_scene

        for attempt in range(20):
            rng = np.random.default_rng([self.seed, index, attempt])
            scene = sample_scene(rng, 1, NOCS.names, distractors=(0, 0))
            renderer = Renderer(scene, self.camera, shadows=False)
            frame = renderer.render(random_views(rng, scene, 1)[0], rng)
            if len(frame.masks) == 0:
                continue
            depth = frame.depth_mm.astype(np.float32) / 1000.0
            objs = build_object_inputs_np(
                frame.rgb, depth, frame.K, frame.masks[:1], frame.boxes[:1], frame.category_ids[:1], rng,
                n_points=self.n_points, image_size=self.image_size,
            )  # fmt: skip
            if len(objs) == 0:
                continue
            target = scene.objects[0].model.sample_surface(self.shape_points, rng)
            return Sample(objs.rgb[0], objs.pts[0], objs.choose[0], int(objs.category[0]), target)
        raise RuntimeError(f"no visible object in 20 draws for sample {index}")


class UnlabeledNocs:
    """Stage-2 samples: every (frame, instance) of ``<root>/<split>_list_all.txt``. Depth points are drawn
    from ``np.random.default_rng([seed, index])``."""

    def __init__(self, root, split: str, seed: int, image_size: int, n_points: int, min_points: int = 50):
        self.root = Path(root)
        self.seed, self.image_size, self.n_points, self.min_points = seed, image_size, n_points, min_points
        intr = yaml.safe_load((self.root / "intrinsics.yaml").read_text())
        self.K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1]], np.float64)
        frames = (self.root / f"{split}_list_all.txt").read_text().split()
        self.items: list[tuple[str, int, int]] = []  # (frame prefix, instance id, 0-based category)
        for rel in frames:
            for line in Path(self.root / f"{rel}_meta.txt").read_text().splitlines():
                inst, cls = line.split()[:2]
                self.items.append((rel, int(inst), int(cls) - 1))
        if not self.items:
            raise ValueError(f"{self.root}: no object instances in {split}_list_all.txt")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | None:
        """The object, or None when its mask holds too few depth points (the caller skips it)."""
        rel, inst, cat = self.items[index % len(self.items)]
        prefix = self.root / rel
        mask = read_mask_channel(f"{prefix}_mask.png") == inst
        box = mask_to_box(mask)
        if box is None:
            return None
        depth = load_depth(prefix).astype(np.float32) / 1000.0
        objs = build_object_inputs_np(
            read_rgb(f"{prefix}_color.png"), depth, self.K, mask[None], [box], [cat],
            np.random.default_rng([self.seed, index]), n_points=self.n_points,
            min_points=self.min_points, image_size=self.image_size,
        )  # fmt: skip
        if len(objs) == 0:
            return None
        return Sample(objs.rgb[0], objs.pts[0], objs.choose[0], cat)


def object_sample(rgb, depth_m, K, mask, category: int, rng, image_size: int, n_points: int, min_points: int):
    """One unlabeled object as the node preprocesses it, or None (empty mask, too few depth points)."""
    box = mask_to_box(mask)
    if box is None:
        return None
    objs = build_object_inputs_np(
        rgb, depth_m, K, mask[None], [box], [category], rng,
        n_points=n_points, min_points=min_points, image_size=image_size,
    )  # fmt: skip
    if len(objs) == 0:
        return None
    return Sample(objs.rgb[0], objs.pts[0], objs.choose[0], category)


class UnlabeledWild6D:
    """Stage-2 samples of one Wild6D category folder: every frame with a mask of every listed sequence."""

    def __init__(self, root, category: str, seed: int, image_size: int, n_points: int, min_points: int = 50,
                 sequence_list: str | Path | None = None):  # fmt: skip
        self.root = Path(root)
        if category not in NOCS.names:
            raise ValueError(f"Wild6D category {category!r} is not one of {list(NOCS.names)}")
        self.category = NOCS.names.index(category)
        self.seed, self.image_size, self.n_points, self.min_points = seed, image_size, n_points, min_points
        objects = sorted(p for p in self.root.iterdir() if p.is_dir())
        if sequence_list:
            pairs = [
                tuple(int(x) for x in e.split("_")[-2:]) for e in Path(sequence_list).read_text().split()
            ]
        else:
            pairs = [
                (i, j) for i, o in enumerate(objects) for j in range(sum(p.is_dir() for p in o.iterdir()))
            ]
        self.items: list[tuple[Path, np.ndarray]] = []  # (frame prefix, K)
        for oi, si in pairs:
            seq = sorted(p for p in objects[oi].iterdir() if p.is_dir())[si]
            meta = json.loads((seq / "metadata").read_text())
            K = np.asarray(meta["K"], np.float64).reshape(3, 3).T  # stored column-major
            masks = sorted((seq / "images").glob("*-mask.png"), key=lambda q: int(q.name.split("-")[0]))
            self.items += [(m.with_name(m.name[: -len("-mask.png")]), K) for m in masks]
        if not self.items:
            raise ValueError(f"{self.root}: no Wild6D frames (<object>/<sequence>/images/<i>-mask.png)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | None:
        prefix, K = self.items[index % len(self.items)]
        rgb = read_rgb(f"{prefix}.jpg")
        mask = read_mask_channel(f"{prefix}-mask.png") > 0
        depth = cv2.imread(f"{prefix}-depth.png", cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise FileNotFoundError(f"{prefix}-depth.png: missing or unreadable depth image")
        return object_sample(
            rgb, depth.astype(np.float32) / 1000.0, K, mask, self.category,
            np.random.default_rng([self.seed, index]), self.image_size, self.n_points, self.min_points,
        )  # fmt: skip


def _bag_topics() -> dict[str, str]:
    from cleanpose_training.synthetic import topics as bw

    return {
        "image": bw.TOPIC_COLOR,
        "depth": bw.TOPIC_DEPTH,
        "info": bw.TOPIC_INFO,
        "detections": bw.TOPIC_DETECTIONS,
    }


# The topics the node subscribes to as its launch file remaps them by default (test_selfsup_inputs checks they
# equal launch/cleanpose.launch.py's): a robot's recording of what the node was fed trains with no flag.
BAG_TOPICS = _bag_topics()


def _image_array(msg) -> np.ndarray:
    """sensor_msgs/Image as (H,W[,C]) array: colour as RGB uint8, depth as float32 metres."""
    enc = msg.encoding.lower()
    data = np.asarray(msg.data, np.uint8)
    if enc in ("16uc1", "mono16"):
        rows = data.reshape(msg.height, msg.step).view("<u2" if not msg.is_bigendian else ">u2")
        return rows[:, : msg.width].astype(np.float32) / 1000.0
    if enc == "32fc1":
        rows = data.reshape(msg.height, msg.step).view("<f4" if not msg.is_bigendian else ">f4")
        return np.nan_to_num(rows[:, : msg.width].astype(np.float32), nan=0.0, posinf=0.0)
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1}.get(enc)
    if ch is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    img = data.reshape(msg.height, msg.step)[:, : msg.width * ch].reshape(msg.height, msg.width, ch)
    if enc.startswith("bgr"):
        img = img[..., [2, 1, 0]]
    elif enc.startswith("rgb"):
        img = img[..., :3]
    return np.ascontiguousarray(img if ch > 1 else img[..., 0])


def _instance_masks(seg, height: int, width: int) -> list[np.ndarray]:
    """Full-frame boolean mask of each detection of a cleanpose_msgs/InstanceSegmentation (both formats)."""
    n = len(seg.detections)
    if seg.format == 1:  # FORMAT_LABEL_IMAGE: pixel value k + 1 marks detection k
        lab = _image_array(seg.label_image) if seg.label_image.encoding.lower() != "16uc1" else (
            np.asarray(seg.label_image.data, np.uint8).reshape(seg.label_image.height, -1).view("<u2")
        )  # fmt: skip
        return [lab == k + 1 for k in range(n)]
    out = []
    for k, m in enumerate(seg.masks[:n]):
        full = np.zeros((height, width), bool)
        ox = int(seg.mask_offset_x[k]) if len(seg.mask_offset_x) > k else 0
        oy = int(seg.mask_offset_y[k]) if len(seg.mask_offset_y) > k else 0
        arr = _image_array(m) > 0
        h, w = min(arr.shape[0], height - oy), min(arr.shape[1], width - ox)
        full[oy : oy + h, ox : ox + w] = arr[:h, :w]
        out.append(full)
    return out


class UnlabeledBag:
    """Stage-2 samples of one or more rosbag2 recordings: every detection of every colour frame that has a
    depth and a detections message of the same header stamp (within ``slop_s``, as the node's approximate-time
    sync) and a camera info at or before it. Detections whose class is not a model category are skipped and
    counted (``skipped``, named once on stderr). The recorded CDR bytes are kept; frames decode on demand."""

    def __init__(self, bags, seed: int, image_size: int, n_points: int, min_points: int = 50,
                 topics: dict[str, str] | None = None, slop_s: float = 0.02):  # fmt: skip
        from rosbags.highlevel import AnyReader

        from cleanpose_training.synthetic.types import typestore

        self.topics = {**BAG_TOPICS, **(topics or {})}
        self.seed, self.image_size, self.n_points, self.min_points = seed, image_size, n_points, min_points
        self.frames: list[dict] = []  # role -> deserialized message
        self.items: list[tuple[int, int, int]] = []  # (frame, detection, category)
        self.skipped: dict[str, int] = {}
        store = typestore()
        for bag in [Path(b) for b in ([bags] if isinstance(bags, (str, Path)) else bags)]:
            with AnyReader([bag], default_typestore=store) as reader:
                found = {c.topic: c.msgtype for c in reader.connections}
                missing = {r: t for r, t in self.topics.items() if t not in found}
                if missing:
                    raise ValueError(
                        f"bag {bag} lacks topic(s) {missing}; it holds {sorted(found)} (name them with "
                        "--image-topic / --depth-topic / --info-topic / --detections-topic)"
                    )
                role_of = {t: r for r, t in self.topics.items()}
                conns = [c for c in reader.connections if c.topic in role_of]
                msgs: dict[str, list] = {r: [] for r in self.topics}
                for conn, _t, raw in reader.messages(connections=conns):
                    role = role_of[conn.topic]
                    msg = reader.deserialize(raw, conn.msgtype)
                    st = msg.header.stamp
                    msgs[role].append((st.sec * 10**9 + st.nanosec, msg))
                for v in msgs.values():
                    v.sort(key=lambda x: x[0])
                self._pair(msgs, int(slop_s * 1e9))
        if self.skipped:
            print(f"UnlabeledBag: skipped detections of unknown classes: {self.skipped}", file=sys.stderr)
        if not self.items:
            raise ValueError(f"no usable detections in {bags} (topics {self.topics})")

    def _pair(self, msgs: dict[str, list], slop: int) -> None:
        stamps = {r: np.array([s for s, _ in v], np.int64) for r, v in msgs.items()}
        for stamp, image in msgs["image"]:
            frame = {"image": image}
            for role in ("depth", "detections"):
                if not len(stamps[role]):
                    break
                j = int(np.argmin(np.abs(stamps[role] - stamp)))
                if abs(int(stamps[role][j]) - stamp) > slop:
                    break
                frame[role] = msgs[role][j][1]
            j = int(np.searchsorted(stamps["info"], stamp, side="right")) - 1
            if len(frame) < 3 or not len(stamps["info"]):
                continue
            frame["info"] = msgs["info"][max(j, 0)][1]  # constant on most robots: an early one is fine
            f = len(self.frames)
            self.frames.append(frame)
            for k, det in enumerate(frame["detections"].detections):
                name = det.results[0].hypothesis.class_id.strip().lower() if det.results else ""
                if name in NOCS.names:
                    self.items.append((f, k, NOCS.names.index(name)))
                else:
                    self.skipped[name] = self.skipped.get(name, 0) + 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | None:
        f, k, cat = self.items[index % len(self.items)]
        frame = self.frames[f]
        rgb = _image_array(frame["image"])
        depth = _image_array(frame["depth"])
        if rgb.ndim != 3 or depth.shape != rgb.shape[:2]:
            raise ValueError(f"bag frame {f}: colour {rgb.shape} and depth {depth.shape} differ in size")
        K = np.asarray(frame["info"].k, np.float64).reshape(3, 3)
        mask = _instance_masks(frame["detections"], *depth.shape)[k]
        return object_sample(
            rgb, depth, K, mask, cat, np.random.default_rng([self.seed, index]),
            self.image_size, self.n_points, self.min_points,
        )  # fmt: skip


class NocsShapes:
    """Stage-1 samples from a labelled NOCS-layout split: the object crop and its CAD model's canonical points
    (``shape_points`` drawn from the stored model cloud). Objects with too few depth points are skipped."""

    def __init__(self, root, split: str, seed: int, image_size: int, n_points: int, shape_points: int):
        from cleanpose_training.datasets import safe_pickle

        self.objects = UnlabeledNocs(root, split, seed, image_size, n_points)
        self.seed, self.shape_points = seed, shape_points
        self.models = safe_pickle.load(Path(root) / "obj_models" / f"{split}.pkl")
        self.model_of: list[str] = []
        labels: dict[str, dict] = {}
        for rel, inst, _ in self.objects.items:
            if rel not in labels:
                labels[rel] = safe_pickle.load(Path(root) / f"{rel}_label.pkl")
            lab = labels[rel]
            self.model_of.append(lab["model_list"][lab["instance_ids"].index(inst)])

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``; an object without enough depth points is replaced by the next one."""
        for k in range(index, index + len(self)):
            s = self.objects[k]
            if s is not None:
                cloud = self.models[self.model_of[k % len(self)]]
                rng = np.random.default_rng([self.seed, index, 1])
                pick = rng.choice(len(cloud), self.shape_points, replace=len(cloud) < self.shape_points)
                s.target = np.asarray(cloud, np.float32)[pick]
                return s
        raise RuntimeError("no object of the stage-1 split has enough depth points")
