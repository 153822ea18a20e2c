"""Packed per-object training/test set: a compact copy of a NOCS-layout dataset for machines without the
renderer.

Why: a GPU training machine may have no renderer (open3d) and little room for a dataset's full images. Packing
keeps, per object instance, exactly what the training sample needs
before its random parts (point subset, ±5 mm noise, colour augmentation), so training from the pack is the
published per-sample pipeline (preprocessing.md §3) with the same distributions.

Layout of a pack directory::

    meta.json                categories, counts, intrinsics, source, format version
    models.npy               (n_models, P, 3) float32 canonical NOCS model points (outlier mask)
    shard_00000.npz ...      per-object arrays, concatenated:
        jpeg        uint8   all 224x224 RGB crops (JPEG, quality from meta), concatenated
        jpeg_off    int64   (n+1,) byte offsets into jpeg
        depth_mm    uint16  (Σp,) hole-filled depth of the stored mask pixels, millimetres (rounded)
        pix         uint32  (Σp,) flat full-image pixel index (row·W + col) of each stored pixel
        pix_off     int64   (n+1,) offsets into depth_mm / pix
        window      int16   (n, 4) crop window (rmin, rmax, cmin, cmax)
        category    int8    (n,) 0-based
        rotation    float32 (n, 3, 3) GT rotation (not canonicalised; done at load as the loaders do)
        translation float32 (n, 3) metres
        size        float32 (n, 3) metric extents (scales·sizes)
        model       int32   (n,) row of models.npy
        image       int32   (n,) index of the source image (for the test split / debugging)

Storing depth + pixel index instead of xyz is lossless up to the 1 mm depth rounding (6 bytes per point): the
points are back-projected at load with the pack's intrinsics. Up to ``max_points`` mask pixels are kept per
object (a uniform random subset when there are more); the training sample then draws 1024 of them exactly as
the
published loader does (with replacement when ≤ 1024).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset

from cleanpose_model.preprocess.reference import (
    backproject,
    get_bbox,
    normalize_rgb,
    remap_choose,
    resize_crop,
    sample_indices,
)
from cleanpose_training.datasets import augment as aug
from cleanpose_training.datasets.common import (
    NOCS_CATEGORIES,
    NOCS_SYM_IDS,
    canonicalise_symmetric_rotation,
    worker_rng,
)

log = logging.getLogger(__name__)

FORMAT = "cleanpose_ros.packed_objects"
VERSION = 1


class PackError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------
# Reading


class PackedDataset(Dataset):
    """Training samples (preprocessing.md §3.10 dict) from a pack; one item = one object instance.

    Randomness comes from ``worker_rng(seed, epoch, index)``, as the other training datasets."""

    def __init__(
        self,
        root,
        augment: bool = True,
        sample_num: int = 1024,
        threshold: float = 0.1,
        image_size: int = 224,
        seed: int = 0,
        sym_ids=NOCS_SYM_IDS,
        limit: int | None = None,
    ):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise PackError(
                f"packed dataset '{self.root}': meta.json not found (expected a directory written by "
                "`python -m cleanpose_training.datasets.packed pack ...`; the demo data: "
                "`python -m cleanpose_training.datasets.packed demo [OUT]`)"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise PackError(
                f"{meta_path}: format {self.meta.get('format')!r} v{self.meta.get('version')!r}, "
                f"expected {FORMAT!r} v{VERSION}"
            )
        self.intrinsics = tuple(float(v) for v in self.meta["intrinsics"])
        self.image_width = int(self.meta["image_size"][1])
        self.models = np.load(self.root / "models.npy").astype(np.float32)
        shards = [self.root / s for s in self.meta["shards"]]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise PackError(f"packed dataset '{self.root}': shard(s) missing: {missing}")
        parts = [dict(np.load(s)) for s in shards]
        self._jpeg, self._jpeg_off = _concat_ragged(
            [p["jpeg"] for p in parts], [p["jpeg_off"] for p in parts]
        )
        self._depth, self._pix_off = _concat_ragged(
            [p["depth_mm"] for p in parts], [p["pix_off"] for p in parts]
        )
        self._pix = np.concatenate([p["pix"] for p in parts])
        for k in ("window", "category", "rotation", "translation", "size", "model", "image"):
            setattr(self, k, np.concatenate([p[k] for p in parts]))
        self.n = len(self.category) if limit is None else min(limit, len(self.category))
        self.augment, self.sample_num, self.threshold = augment, sample_num, threshold
        self.image_size, self.seed, self.sym_ids = image_size, seed, tuple(sym_ids)
        self.categories = list(self.meta.get("categories", NOCS_CATEGORIES))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def object_arrays(self, i: int):
        """(rgb uint8 224x224x3, points float32 (p,3), choose-in-224 int64 (p,)) of object i, all stored
        pixels."""
        buf = self._jpeg[self._jpeg_off[i] : self._jpeg_off[i + 1]]
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise PackError(f"{self.root}: object {i}: corrupt JPEG")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        a, b = self._pix_off[i], self._pix_off[i + 1]
        pix = self._pix[a:b].astype(np.int64)
        z = self._depth[a:b].astype(np.float32) / 1000.0
        v, u = np.divmod(pix, self.image_width)
        pts = backproject(u, v, z, self.intrinsics)
        rmin, rmax, cmin, cmax = (int(x) for x in self.window[i])
        crop_choose = (v - rmin) * (cmax - cmin) + (u - cmin)
        choose = remap_choose(crop_choose, rmax - rmin, self.image_size)
        return rgb, pts, choose

    def gt(self, i: int):
        cat = int(self.category[i])
        rot = self.rotation[i].astype(np.float64)
        if cat in self.sym_ids:
            rot = canonicalise_symmetric_rotation(rot)
        return (
            cat,
            rot.astype(np.float32),
            self.translation[i].astype(np.float32),
            self.size[i].astype(np.float32),
        )

    def sample(self, i: int, rng: np.random.Generator) -> dict:
        rgb, pts, choose = self.object_arrays(i)
        sel = sample_indices(len(pts), self.sample_num, rng)
        pts, rgb = aug.augment_object(pts[sel], rgb, rng, self.augment)
        choose = choose[sel]
        cat, rot, t, size = self.gt(i)
        model = self.models[int(self.model[i])]
        # Same test as common.outlier_mask (nearest model point of Rᵀ(p − t)/‖s‖ closer than threshold),
        # with a
        # KD-tree instead of the dense 1024x1024 distance matrix: ~50x faster, it dominated the sample time.
        qo = ((pts.astype(np.float64) - t) / (np.linalg.norm(size.astype(np.float64)) + 1e-8)) @ rot.astype(
            np.float64
        )
        dmin, _ = cKDTree(model.astype(np.float64)).query(qo, k=1)
        pc_mask = (dmin < self.threshold).astype(np.float32)
        return {
            "pts": torch.from_numpy(pts.astype(np.float32)),
            "rgb": torch.from_numpy(normalize_rgb(rgb)),
            "choose": torch.from_numpy(choose.astype(np.int64)),
            "category_label": torch.tensor([cat], dtype=torch.int64),
            "translation_label": torch.from_numpy(t),
            "rotation_label": torch.from_numpy(rot),
            "size_label": torch.from_numpy(size),
            "pc_mask": torch.from_numpy(pc_mask.astype(np.float32)),
        }

    def __getitem__(self, index: int) -> dict:
        return self.sample(int(index), worker_rng(self.seed, self.epoch, int(index)))


def _concat_ragged(datas, offs):
    out_off = [np.zeros(1, np.int64)]
    base = 0
    for d, o in zip(datas, offs):
        out_off.append(o[1:].astype(np.int64) + base)
        base += len(d)
    return np.concatenate(datas), np.concatenate(out_off)


# ----------------------------------------------------------------------------------------------------
# Writing


class _ShardWriter:
    def __init__(self, out: Path, per_shard: int):
        self.out, self.per_shard = out, per_shard
        self.names: list[str] = []
        self._reset()

    def _reset(self):
        self.buf = {
            k: []
            for k in (
                "jpeg",
                "depth_mm",
                "pix",
                "window",
                "category",
                "rotation",
                "translation",
                "size",
                "model",
                "image",
            )
        }

    def add(self, **obj):
        for k, v in obj.items():
            self.buf[k].append(v)
        if len(self.buf["category"]) >= self.per_shard:
            self.flush()

    def flush(self):
        n = len(self.buf["category"])
        if n == 0:
            return
        jpeg_off = np.concatenate([[0], np.cumsum([len(j) for j in self.buf["jpeg"]])]).astype(np.int64)
        pix_off = np.concatenate([[0], np.cumsum([len(p) for p in self.buf["pix"]])]).astype(np.int64)
        name = f"shard_{len(self.names):05d}.npz"
        np.savez_compressed(
            self.out / name,
            jpeg=np.concatenate(self.buf["jpeg"]).astype(np.uint8),
            jpeg_off=jpeg_off,
            depth_mm=np.concatenate(self.buf["depth_mm"]).astype(np.uint16),
            pix=np.concatenate(self.buf["pix"]).astype(np.uint32),
            pix_off=pix_off,
            window=np.asarray(self.buf["window"], np.int16),
            category=np.asarray(self.buf["category"], np.int8),
            rotation=np.asarray(self.buf["rotation"], np.float32),
            translation=np.asarray(self.buf["translation"], np.float32),
            size=np.asarray(self.buf["size"], np.float32),
            model=np.asarray(self.buf["model"], np.int32),
            image=np.asarray(self.buf["image"], np.int32),
        )
        self.names.append(name)
        self._reset()


def pack_nocs_layout(
    src,
    out,
    list_file: str | None = None,
    max_points: int = 1024,
    jpeg_quality: int = 85,
    image_size: int = 224,
    per_shard: int = 2000,
    min_pixels: int = 32,
    seed: int = 0,
    model_points: int = 1024,
    limit_images: int | None = None,
    fill_depth: bool = True,
    split: str = "train",
) -> dict:
    """Pack every instance of every listed image of a NOCS-layout synthetic set (the synthetic generator's
    output,
    read through ``NOCSTrainingDataset(data_type='synthetic')`` discovery)."""
    from cleanpose_training.datasets.common import load_pickle, read_mask_channel, read_rgb
    from cleanpose_training.datasets.depth_fill import fill_missing, load_depth
    from cleanpose_training.datasets.nocs import TRAIN_LABEL_KEYS, NOCSTrainingDataset

    ds = NOCSTrainingDataset(src, data_type="synthetic", augment=False, list_file=list_file, split=split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard_*.npz"):
        old.unlink()
    rng = np.random.default_rng(seed)
    model_ids = sorted(ds.models)
    model_row = {m: i for i, m in enumerate(model_ids)}
    models = np.zeros((len(model_ids), model_points, 3), np.float32)
    for m, i in model_row.items():
        pts = np.asarray(ds.models[m], np.float32)
        models[i] = pts[sample_indices(len(pts), model_points, rng)] if len(pts) != model_points else pts
    writer = _ShardWriter(out, per_shard)
    img_list = ds.img_list[:limit_images] if limit_images else ds.img_list
    n_obj = skipped = 0
    counts = [0] * len(NOCS_CATEGORIES)
    hw = None
    for img_i, rel in enumerate(img_list):
        prefix = ds.img_root / rel
        depth = load_depth(prefix)
        depth = fill_missing(depth, 1000.0, 1) if fill_depth else depth.astype(np.float32)
        hw = depth.shape
        gts = load_pickle(f"{prefix}_label.pkl", "label pickle", TRAIN_LABEL_KEYS)
        mask = read_mask_channel(f"{prefix}_mask.png")
        rgb_full = read_rgb(f"{prefix}_color.png")
        for j in range(len(gts["instance_ids"])):
            window = get_bbox(gts["bboxes"][j], depth.shape[0], depth.shape[1])
            rmin, rmax, cmin, cmax = window
            inst = (mask == gts["instance_ids"][j]) & (depth > 0)
            local = inst[rmin:rmax, cmin:cmax].flatten().nonzero()[0]
            if len(local) < min_pixels:
                skipped += 1
                continue
            if len(local) > max_points:
                local = local[np.sort(rng.choice(len(local), max_points, replace=False))]
            rows, cols = np.divmod(local, cmax - cmin)
            v, u = rows + rmin, cols + cmin
            crop = resize_crop(rgb_full, window, image_size)
            ok, enc = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise PackError(f"{prefix}: JPEG encoding failed")
            cat = int(gts["class_ids"][j]) - 1
            size = np.asarray(gts["scales"][j], np.float64) * np.asarray(gts["sizes"][j], np.float64)
            writer.add(
                jpeg=enc.reshape(-1),
                depth_mm=np.round(depth[v, u]).astype(np.uint16),
                pix=(v * depth.shape[1] + u).astype(np.uint32),
                window=list(window),
                category=cat,
                rotation=np.asarray(gts["rotations"][j], np.float32),
                translation=np.asarray(gts["translations"][j], np.float32),
                size=size.astype(np.float32),
                model=model_row[gts["model_list"][j]],
                image=img_i,
            )
            counts[cat] += 1
            n_obj += 1
    writer.flush()
    np.save(out / "models.npy", models.astype(np.float16))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "categories": list(NOCS_CATEGORIES),
        "objects": n_obj,
        "per_category": counts,
        "skipped_small": skipped,
        "images": len(img_list),
        "intrinsics": list(ds.intrinsics),
        "image_size": list(hw) if hw else None,
        "max_points": max_points,
        "jpeg_quality": jpeg_quality,
        "shards": writer.names,
        "models": model_ids,
        "source": str(src),
        "list_file": list_file,
        "split": split,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def make_demo_packs(
    out, train_scenes: int = 8, test_scenes: int = 2, frames: int = 4, shadows: bool = True
) -> dict[str, dict]:
    """Render the demo model's synthetic scenes (train and test from disjoint seeds: distinct objects, layouts
    and camera paths) and pack them into ``out/train`` and ``out/test``. The renders go to a temporary
    directory. Seeds are fixed, so the same arguments give the same data; models/demo was trained on 180
    train and 20 test scenes of 4 frames."""
    import tempfile

    from cleanpose_training.synthetic.__main__ import generate_nocs

    out = Path(out)
    metas = {}
    render = {"frames": frames, "write_results": False, "shadows": shadows}
    with tempfile.TemporaryDirectory(prefix="demo_raw_") as raw:
        # (split, scenes, render seed, pack seed)
        for split, scenes, seed, pack_seed in (
            ("train", train_scenes, 1, 1),
            ("test", test_scenes, 100001, 2),
        ):
            src = Path(raw) / split
            generate_nocs(src, split=split, scenes=scenes, seed=seed, **render)
            metas[split] = pack_nocs_layout(
                src, out / split, max_points=800, jpeg_quality=75, seed=pack_seed, split=split
            )
    return metas


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cleanpose_training.datasets.packed",
        description="Pack a NOCS-layout synthetic set into per-object shards",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("src")
    pk.add_argument("out")
    pk.add_argument("--list-file", default=None, help="image list relative to SRC (default: auto-discovered)")
    pk.add_argument(
        "--split", default="train", help="synthetic split name (train_list.txt, obj_models/train.pkl)"
    )
    pk.add_argument("--max-points", type=int, default=1024)
    pk.add_argument("--jpeg-quality", type=int, default=85)
    pk.add_argument("--limit-images", type=int, default=None)
    pk.add_argument("--seed", type=int, default=0)
    info = sub.add_parser("info")
    info.add_argument("root")
    demo = sub.add_parser("demo", help="render and pack the demo model's train/test scenes (needs open3d)")
    demo.add_argument("out", nargs="?", default="outputs/demo_packed")
    demo.add_argument("--train-scenes", type=int, default=8, help="180 for the shipped demo model")
    demo.add_argument("--test-scenes", type=int, default=2, help="20 for the shipped demo model")
    demo.add_argument("--frames", type=int, default=4, help="frames per scene")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if a.cmd == "demo":
        metas = make_demo_packs(a.out, a.train_scenes, a.test_scenes, a.frames)
        print(json.dumps({split: {k: m[k] for k in ("objects", "images")} for split, m in metas.items()}))
        return 0
    if a.cmd == "pack":
        meta = pack_nocs_layout(
            a.src,
            a.out,
            a.list_file,
            a.max_points,
            a.jpeg_quality,
            limit_images=a.limit_images,
            seed=a.seed,
            split=a.split,
        )
    else:
        meta = json.loads((Path(a.root) / "meta.json").read_text())
    size = sum(f.stat().st_size for f in Path(a.out if a.cmd == "pack" else a.root).iterdir())
    print(
        json.dumps({k: meta[k] for k in ("objects", "per_category", "images", "shards")}),
        f"{size / 1e6:.1f} MB",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
