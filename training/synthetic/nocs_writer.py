"""Writer of the NOCS / DPDN on-disk layout (preprocessing.md §1, §3; training.md §7.1).

Under a root directory (which plays the role of `data/real` and of the `data_dir` of the test protocol):

    <root>/<split>/scene_<k>/<id:04d>_color.png     RGB written as an OpenCV BGR png
    <root>/<split>/scene_<k>/<id:04d>_depth.png     uint16 millimetres, 0 = missing
    <root>/<split>/scene_<k>/<id:04d>_mask.png      3 identical uint8 channels: instance id, 255 = background
    <root>/<split>/scene_<k>/<id:04d>_label.pkl     DPDN label dict (see `label_dict`)
    <root>/<split>/scene_<k>/<id:04d>_meta.txt      NOCS meta lines "instance_id class_id model_id"
    <root>/<split>_list_all.txt, <split>_list.txt   "<split>/scene_<k>/<id:04d>" per line (DPDN filter
                                                    applied in the latter)
    <root>/obj_models/<split>.pkl                   {model_id: (1024, 3) float32 NOCS surface points}
    <root>/segmentation_results/<split>/results_<split>_scene_<k>_<id:04d>.pkl   test-protocol detections + GT
    <root>/intrinsics.yaml, intrinsics.txt          camera intrinsics (3x3 in the .txt, HouseCat6D style)
    <root>/dataset.yaml                             manifest: paths, categories, intrinsics

Label instances: objects whose visible mask holds at least `min_valid_depth_pixels` pixels of valid raw depth
(DPDN keeps instances with >= 64). `image_path` in the result pickles is "data/<split>/scene_<k>/<id>", so the
protocol's `data_dir + image_path[5:]` with data_dir = root gives the image prefix.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from .render import Frame
from .scene import Camera, Scene
from .shapes import CATEGORIES

PICKLE_PROTOCOL = 4


@dataclass
class MaskNoise:
    """Perturbation of GT masks used as "detections": random erosion/dilation and score jitter."""

    max_radius_px: int = 0
    score_jitter: float = 0.0

    def apply(self, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        out = masks.copy()
        scores = np.ones(len(masks), np.float32)
        for i in range(len(masks)):
            if self.max_radius_px > 0:
                r = int(rng.integers(0, self.max_radius_px + 1))
                if r > 0:
                    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                    op = cv2.erode if rng.random() < 0.5 else cv2.dilate
                    noisy = op(masks[i].astype(np.uint8), kernel).astype(bool)
                    if noisy.any():  # an erosion that removes a thin object keeps the GT mask
                        out[i] = noisy
            if self.score_jitter > 0:
                scores[i] = float(np.clip(1.0 - abs(rng.normal(0, self.score_jitter)), 0.05, 1.0))
        return out, scores


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(n, 4) int32 y1, x1, y2, x2 with max exclusive (all zeros for an empty mask)."""
    out = np.zeros((len(masks), 4), np.int32)
    for i, m in enumerate(masks):
        rr, cc = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rr):
            out[i] = [rr[0], cc[0], rr[-1] + 1, cc[-1] + 1]
    return out


def select_instances(frame: Frame, min_valid_depth_pixels: int) -> np.ndarray:
    return np.flatnonzero(frame.valid_depth_pixels >= min_valid_depth_pixels)


def label_dict(frame: Frame, keep: np.ndarray) -> dict:
    """DPDN label pickle: `scales * sizes` is the metric size (sizes = normalised extents, norm 1)."""
    return {
        "class_ids": [int(c) + 1 for c in frame.category_ids[keep]],
        "bboxes": frame.boxes[keep].astype(np.int32),
        "instance_ids": [int(i) for i in frame.instance_ids[keep]],
        "model_list": [frame.model_ids[i] for i in keep],
        "rotations": frame.rotations[keep].astype(np.float32),
        "translations": frame.translations[keep].astype(np.float32),
        "scales": frame.scales[keep].astype(np.float32),
        "sizes": frame.nocs_extents[keep].astype(np.float32),
        "handle_visibility": frame.handle_visibility[keep].astype(np.int64),
    }


def results_dict(
    frame: Frame, keep: np.ndarray, image_path: str, noise: MaskNoise, rng: np.random.Generator
) -> dict:
    """Test-protocol "segmentation results" pickle built from GT masks (optionally perturbed)."""
    masks, scores = noise.apply(frame.masks[keep], rng)
    n = len(keep)
    rts = np.zeros((n, 4, 4), np.float64)
    rts[:, :3, :3] = frame.rotations[keep] * frame.scales[keep, None, None]
    rts[:, :3, 3] = frame.translations[keep]
    rts[:, 3, 3] = 1.0
    class_ids = (frame.category_ids[keep] + 1).astype(np.int64)
    H, W = frame.depth_mm.shape
    return {
        "image_path": image_path,
        "pred_masks": np.moveaxis(masks, 0, -1) if n else np.zeros((H, W, 0), bool),
        "pred_bboxes": boxes_from_masks(masks),
        "pred_class_ids": class_ids.copy(),
        "pred_scores": scores,
        "gt_class_ids": class_ids,
        "gt_bboxes": frame.boxes[keep].astype(np.int32),
        "gt_RTs": rts,
        "gt_scales": frame.nocs_extents[keep].astype(np.float64),
        "gt_handle_visibility": frame.handle_visibility[keep].astype(np.int64),
    }


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=PICKLE_PROTOCOL)


def _write_png(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


class NocsWriter:
    """Writes frames of one split; call `finish()` to write the list files, models and manifest."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        camera: Camera,
        *,
        min_valid_depth_pixels: int = 64,
        write_results: bool = True,
        mask_noise: MaskNoise | None = None,
        n_model_points: int = 1024,
    ):
        self.root = Path(root)
        self.split = split
        self.camera = camera
        self.min_valid = min_valid_depth_pixels
        self.write_results = write_results
        self.mask_noise = mask_noise or MaskNoise()
        self.n_model_points = n_model_points
        self.models: dict[str, np.ndarray] = {}
        self.entries: list[tuple[str, bool]] = []  # (relative prefix, kept by the DPDN filter)
        (self.root / split).mkdir(parents=True, exist_ok=True)

    def add_scene_models(self, scene: Scene, rng: np.random.Generator) -> None:
        for obj in scene.objects:
            if obj.model.model_id not in self.models:
                self.models[obj.model.model_id] = obj.model.sample_surface(self.n_model_points, rng)

    def write_frame(self, scene_index: int, frame_index: int, frame: Frame, rng: np.random.Generator) -> str:
        rel = f"{self.split}/scene_{scene_index}/{frame_index:04d}"
        prefix = self.root / rel
        prefix.parent.mkdir(parents=True, exist_ok=True)
        keep = select_instances(frame, self.min_valid)
        _write_png(Path(f"{prefix}_color.png"), frame.rgb[..., ::-1])
        _write_png(Path(f"{prefix}_depth.png"), frame.depth_mm)
        mask = np.full(frame.depth_mm.shape, 255, np.uint8)
        for i in keep:
            mask[frame.masks[i]] = int(frame.instance_ids[i])
        _write_png(Path(f"{prefix}_mask.png"), np.repeat(mask[..., None], 3, axis=2))
        _write_pickle(Path(f"{prefix}_label.pkl"), label_dict(frame, keep))
        meta = "".join(
            f"{int(frame.instance_ids[i])} {int(frame.category_ids[i]) + 1} {frame.model_ids[i]}\n"
            for i in keep
        )
        Path(f"{prefix}_meta.txt").write_text(meta)
        if self.write_results:
            res_dir = self.root / "segmentation_results" / self.split
            res_dir.mkdir(parents=True, exist_ok=True)
            res = results_dict(frame, keep, f"data/{rel}", self.mask_noise, rng)
            _write_pickle(res_dir / f"results_{self.split}_scene_{scene_index}_{frame_index:04d}.pkl", res)
        # DPDN's training-list filter: >= 1 instance, no object wider than 600 px or taller than 440 px.
        b = frame.boxes[keep]
        ok = len(keep) > 0 and bool(np.all(b[:, 3] - b[:, 1] <= 600) and np.all(b[:, 2] - b[:, 0] <= 440))
        self.entries.append((rel, ok))
        return rel

    def finish(self) -> None:
        (self.root / f"{self.split}_list_all.txt").write_text("".join(f"{r}\n" for r, _ in self.entries))
        (self.root / f"{self.split}_list.txt").write_text("".join(f"{r}\n" for r, ok in self.entries if ok))
        (self.root / "obj_models").mkdir(exist_ok=True)
        _write_pickle(self.root / "obj_models" / f"{self.split}.pkl", dict(sorted(self.models.items())))
        K = self.camera.K
        intr = {
            "fx": float(K[0, 0]),
            "fy": float(K[1, 1]),
            "cx": float(K[0, 2]),
            "cy": float(K[1, 2]),
            "width": int(self.camera.width),
            "height": int(self.camera.height),
        }
        (self.root / "intrinsics.yaml").write_text(yaml.safe_dump(intr, sort_keys=True))
        np.savetxt(self.root / "intrinsics.txt", K, fmt="%.6f")
        manifest_path = self.root / "dataset.yaml"
        manifest = yaml.safe_load(manifest_path.read_text()) if manifest_path.exists() else {}
        manifest.update(
            {
                "format": "nocs-dpdn (cleanpose_ros synthetic)",
                "categories": list(CATEGORIES),
                "class_ids": "1-based in label/result pickles (0 = background)",
                "intrinsics": intr,
                "depth_units": "mm uint16, 0 = missing",
                "mask": "instance id in every channel (the loaders read channel 2), 255 = background",
            }
        )
        splits = manifest.setdefault("splits", {})
        splits[self.split] = {
            "list": f"{self.split}_list.txt",
            "list_all": f"{self.split}_list_all.txt",
            "obj_models": f"obj_models/{self.split}.pkl",
            "segmentation_results": f"segmentation_results/{self.split}" if self.write_results else None,
            "frames": len(self.entries),
        }
        manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=True))
