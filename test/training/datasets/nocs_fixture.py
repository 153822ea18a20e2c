"""Tiny datasets in the NOCS / DPDN on-disk layout (and the HouseCat6D layout) for the loader tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np

H, W = 480, 640


def rot_y(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_x(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_image_set(
    prefix: Path,
    depth_path: Path,
    rng: np.random.Generator,
    class_ids,
    model_ids,
    rotations,
    shape=(H, W),
    hole=True,
) -> dict:
    """Two-object image: flat patches at 0.5 m and 0.6 m with instance ids 1 and 2 (background 255)."""
    h, w = shape
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    depth = np.full((h, w), 900, dtype=np.uint16)
    mask = np.full((h, w, 3), 255, dtype=np.uint8)
    boxes = [(100, 150, 180, 230), (250, 300, 330, 420)]  # (y1, x1, y2, x2)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        depth[y1:y2, x1:x2] = 500 + 100 * k
        mask[y1:y2, x1:x2, 2] = k + 1
    if hole:
        depth[120:124, 170:174] = 0  # a hole inside object 1, filled by fill_missing
    cv2.imwrite(f"{prefix}_color.png", rgb[:, :, ::-1])
    cv2.imwrite(f"{prefix}_mask.png", mask)
    depth_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(depth_path), depth)
    label = {
        "class_ids": list(class_ids),
        "bboxes": np.array(boxes, dtype=np.int32),
        "scales": np.array([0.2, 0.3], dtype=np.float32),
        "sizes": np.array([[0.5, 0.7, 0.5], [0.6, 0.4, 0.7]], dtype=np.float32),
        "rotations": np.stack(rotations).astype(np.float32),
        "translations": np.array([[-0.1, -0.05, 0.5], [0.05, 0.1, 0.6]], dtype=np.float32),
        "instance_ids": [1, 2],
        "model_list": list(model_ids),
    }
    _dump(label, Path(f"{prefix}_label.pkl"))
    return label


def make_nocs_root(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    models = {f"m{k}": (rng.uniform(-0.3, 0.3, size=(64, 3))).astype(np.float32) for k in range(2)}
    rots = [rot_x(0.2) @ rot_y(0.7), rot_x(0.3)]
    # CAMERA: composed depth in camera_full_depths
    for i in range(2):
        prefix = root / "camera" / "train" / "00000" / f"{i:04d}"
        depth_path = root / "camera_full_depths" / "train" / "00000" / f"{i:04d}_composed.png"
        write_image_set(prefix, depth_path, rng, [1, 4], ["m0", "m1"], rots)
    (root / "camera" / "train_list.txt").write_text("train/00000/0000\ntrain/00000/0001\n")
    for i in range(2):
        prefix = root / "real" / "train" / "scene_1" / f"{i:04d}"
        write_image_set(prefix, Path(f"{prefix}_depth.png"), rng, [2, 6], ["m0", "m1"], rots)
    (root / "real" / "train_list.txt").write_text("train/scene_1/0000\ntrain/scene_1/0001\n")
    _dump(models, root / "obj_models" / "camera_train.pkl")
    _dump(models, root / "obj_models" / "real_train.pkl")
    return root


def make_nocs_test_root(root: Path, seed: int = 0) -> Path:
    """REAL275 test layout: real/test images + results/nocs_results/real_test/results_*.pkl."""
    rng = np.random.default_rng(seed)
    rots = [rot_y(0.7), rot_x(0.3)]
    out = root / "results" / "nocs_results" / "real_test"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        prefix = root / "real" / "test" / "scene_1" / f"{i:04d}"
        label = write_image_set(prefix, Path(f"{prefix}_depth.png"), rng, [1, 6], ["a", "b"], rots)
        masks = np.zeros((H, W, 3), dtype=np.uint8)
        for k, (y1, x1, y2, x2) in enumerate(label["bboxes"]):
            masks[y1:y2, x1:x2, k] = 1
        masks[5:7, 5:7, 2] = 1  # a tiny third detection (4 pixels) that the loader must drop
        sizes = label["scales"][:, None] * label["sizes"]
        gt_rts = np.tile(np.eye(4), (2, 1, 1))
        for k in range(2):
            gt_rts[k, :3, :3] = rots[k] * np.linalg.norm(sizes[k])
            gt_rts[k, :3, 3] = label["translations"][k]
        res = {
            "image_path": f"data/real/test/scene_1/{i:04d}",
            "pred_masks": masks,
            "pred_bboxes": np.concatenate([label["bboxes"], [[5, 5, 7, 7]]]).astype(np.int32),
            "pred_class_ids": np.array([1, 6, 3]),
            "pred_scores": np.array([0.9, 0.8, 0.3]),
            "gt_class_ids": np.array([1, 6]),
            "gt_bboxes": label["bboxes"],
            "gt_RTs": gt_rts,
            "gt_scales": sizes / np.linalg.norm(sizes, axis=1, keepdims=True),
            "gt_handle_visibility": np.array([1, 0]),
        }
        _dump(res, out / f"results_real_test_scene_1_{i:04d}.pkl")
    return root


def make_housecat_root(root: Path, seed: int = 0, h: int = 852, w: int = 1096) -> Path:
    rng = np.random.default_rng(seed)
    rots = [rot_y(0.4) @ rot_x(0.1), rot_x(0.3)]
    for scene in ("scene01", "test_scene1"):
        for i in range(2):
            d = root / scene
            prefix = d / "rgb" / f"{i:06d}"
            label = write_image_set(
                prefix, d / "depth" / f"{i:06d}.png", rng, [2, 1], ["x", "y"], rots, shape=(h, w)
            )
            # HouseCat6D puts each modality in its own folder: move the files written next to rgb
            (d / "instance").mkdir(exist_ok=True)
            (d / "labels").mkdir(exist_ok=True)
            Path(f"{prefix}_mask.png").rename(d / "instance" / f"{i:06d}.png")
            Path(f"{prefix}_color.png").rename(d / "rgb" / f"{i:06d}.png")
            Path(f"{prefix}_label.pkl").unlink()
            label["gt_scales"] = label["scales"][:, None] * label["sizes"]
            _dump(label, d / "labels" / f"{i:06d}_label.pkl")
        np.savetxt(root / scene / "intrinsics.txt", np.array([[900.0, 0, 548], [0, 900.0, 426], [0, 0, 1]]))
    return root
