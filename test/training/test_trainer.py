"""Trainer on the CPU with a tiny network: losses go down, exact resume, packed-set round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tiny import tiny_config
from _toy import ToyObjects

from cleanpose_model.categories import NOCS
from cleanpose_training.losses import TERMS
from cleanpose_training.trainer import Trainer, build_model

LOSS_KEYS = [t for t in TERMS if t != "distillation"] + ["total"]


def make_trainer(cfg, n_obj=8, bs=4, n_points=256):
    torch.manual_seed(cfg.trainer.seed)  # initial weights (the CLI path seeds before building the network)
    net, mcfg = build_model(cfg)
    return Trainer(cfg, net=net, model_cfg=mcfg, sources=[("toy", ToyObjects(n_obj, n_points=n_points), bs)])


def test_losses_decrease_on_tiny_set(tmp_path):
    """Fitting 4 fixed objects: every loss term goes down. The geometric augmentation is switched off so a
    tiny
    network can fit within a few iterations (with it the NOCS term first rises while the keypoints spread
    out)."""
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path / "run", iterations=50)
    cfg.model_overrides.update(
        {
            "augmentation.max_translation": 0.0,
            "augmentation.max_angle_deg": 0.0,
            "augmentation.scale_min": 1.0,
            "augmentation.scale_max": 1.0,
        }
    )
    cfg.schedule.base_lr, cfg.schedule.max_lr = 2e-3, 2e-3
    net, mcfg = build_model(cfg)
    ds = ToyObjects(4, n_points=256, fixed_points=True)
    tr = Trainer(cfg, net=net, model_cfg=mcfg, sources=[("toy", ds, 4)])
    tr.fit()
    hist = tr.history
    assert len(hist) == 50 and (tmp_path / "run" / "scalars.csv").is_file()
    first = {k: np.mean([h[k] for h in hist[:5]]) for k in LOSS_KEYS}
    last = {k: np.mean([h[k] for h in hist[-5:]]) for k in LOSS_KEYS}
    worse = {k: (first[k], last[k]) for k in LOSS_KEYS if not last[k] < first[k]}
    assert not worse, f"loss terms that did not decrease (first 5 mean, last 5 mean): {worse}"


def test_resume_is_bit_exact(tmp_path):
    torch.set_num_threads(1)
    full = make_trainer(tiny_config(tmp_path / "full", iterations=6))
    full.fit()

    part = make_trainer(tiny_config(tmp_path / "part", iterations=6))
    part.fit(max_iterations=3)  # an interrupted run: its state file is written on exit
    assert part.iteration == 3 and (tmp_path / "part" / "ckpt" / "train_state.pt").is_file()
    resumed = make_trainer(tiny_config(tmp_path / "part", iterations=6))  # fresh process state, same out_dir
    resumed.fit()
    assert resumed.iteration == 6

    seq_full = [[h[k] for k in LOSS_KEYS] for h in full.history]
    seq_resumed = [[h[k] for k in LOSS_KEYS] for h in part.history + resumed.history]
    assert seq_full == seq_resumed  # exact float equality, iteration by iteration
    for (k, a), (_, b) in zip(full.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(full.queue, resumed.queue)
    rows = (tmp_path / "part" / "scalars.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6  # the CSV continues across the resume


def test_stop_request_writes_resumable_state_and_final_checkpoint(tmp_path):
    from cleanpose_model.io.checkpoints import load_checkpoint

    tr = make_trainer(tiny_config(tmp_path / "r", iterations=50, ckpt_every=1))
    orig = tr.train_step

    def step_then_stop(batch):
        out = orig(batch)
        if tr.iteration == 2:
            tr.request_stop("test")
        return out

    tr.train_step = step_then_stop
    res = tr.fit()
    assert res["stopped"] == "test" and tr.iteration == 2
    assert (tmp_path / "r" / "ckpt" / "iter_0000001.safetensors").is_file()  # periodic model snapshot
    state = torch.load(tmp_path / "r" / "ckpt" / "train_state.pt", weights_only=True)
    assert state["iteration"] == 2 and json.loads(state["config_json"])["model"] == "demo"
    path = tr.save_final()
    net, _cfg, queue = load_checkpoint(path)
    assert queue is not None and torch.equal(queue.features, tr.queue.cpu())
    for k, v in tr.net.state_dict().items():
        assert torch.equal(net.state_dict()[k], v.cpu()), k


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_steps_use_the_configured_tf32_and_restore_the_switches(tmp_path, tf32):
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn)
    before = [s.allow_tf32 for s in switches]
    tr = make_trainer(tiny_config(tmp_path / "g", iterations=2, device="cuda", tf32=tf32))
    seen = []
    tr.net.register_forward_pre_hook(lambda *_: seen.append([s.allow_tf32 for s in switches]))
    tr.fit()
    assert seen and all(v == [tf32, tf32] for v in seen)
    assert [s.allow_tf32 for s in switches] == before


def test_time_budget_rescales_schedule(tmp_path):
    tr = make_trainer(tiny_config(tmp_path / "t", iterations=100))
    tr.iteration = 10
    for _ in range(10):
        tr.optimizer.step()  # no gradients: a no-op that keeps the scheduler's call-order check quiet
        tr.scheduler.step()
    tr.cfg.schedule.step_size_up, tr.cfg.schedule.step_size_down = 30, 70
    tr.rescale_schedule(50)
    s = tr.cfg.schedule
    assert (s.iterations, s.step_size_up, s.step_size_down) == (50, 15, 35)
    from cleanpose_training.trainer import lr_at

    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(10, s))


def _pack_object(category: int, image: int, **fields) -> dict:
    """One object of a pack (the fields of ``_ShardWriter.add``): a 5-pixel object 0.6 m away, identity pose,
    10 cm box, unless ``fields`` say otherwise."""
    obj = {
        "jpeg": np.zeros(4, np.uint8),
        "depth_mm": np.full(5, 600, np.uint16),
        "pix": np.arange(5, dtype=np.uint32),
        "window": [0, 40, 0, 40],
        "category": category,
        "rotation": np.eye(3, dtype=np.float32),
        "translation": np.array([0, 0, 0.6], np.float32),
        "size": np.array([0.1, 0.1, 0.1], np.float32),
        "model": 0,
        "image": image,
    }
    return {**obj, **fields}


def _write_pack(
    root, objects: list[dict], intrinsics, image_hw, per_shard: int, model_points: int
) -> list[str]:
    """A pack directory of ``objects``, as ``packed pack`` writes one; returns its shard names."""
    from cleanpose_training.datasets.packed import FORMAT, VERSION, _ShardWriter

    w = _ShardWriter(root, per_shard=per_shard)
    for obj in objects:
        w.add(**obj)
    w.flush()
    np.save(root / "models.npy", np.zeros((1, model_points, 3), np.float16))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "intrinsics": list(intrinsics),
        "image_size": list(image_hw),
        "shards": w.names,
        "categories": list(NOCS.names),
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return w.names


def test_packed_dataset_round_trip(tmp_path):
    import cv2

    from cleanpose_model.preprocess.reference import remap_choose
    from cleanpose_training.datasets.packed import PackedDataset

    rng = np.random.default_rng(0)
    H, W = 48, 64
    K = (60.0, 60.0, 32.0, 24.0)
    objects, truth = [], []
    for i in range(3):
        window = (4, 44, 10, 50)
        v = rng.integers(4, 44, 30)
        u = rng.integers(10, 50, 30)
        d = rng.integers(400, 900, 30).astype(np.uint16)
        rgb = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        _ok, enc = cv2.imencode(".png", rgb[:, :, ::-1])  # lossless for the test
        pix = (v * W + u).astype(np.uint32)
        objects.append(
            _pack_object(i, i // 2, jpeg=enc.reshape(-1), depth_mm=d, pix=pix, window=list(window))
        )
        truth.append((v, u, d, rgb, window))
    shards = _write_pack(tmp_path, objects, K, (H, W), per_shard=2, model_points=16)
    ds = PackedDataset(tmp_path, augment=False)
    assert len(ds) == 3 and len(shards) == 2
    for i, (v, u, d, rgb, window) in enumerate(truth):
        im, pts, choose = ds.object_arrays(i)
        z = d / 1000.0
        want = np.stack([(u - K[2]) * z / K[0], (v - K[3]) * z / K[1], z], 1)
        np.testing.assert_allclose(pts, want, rtol=1e-6)
        crop_choose = (v - window[0]) * (window[3] - window[2]) + (u - window[2])
        np.testing.assert_array_equal(choose, remap_choose(crop_choose, window[1] - window[0]))
        np.testing.assert_array_equal(im, rgb)
    s = ds[1]
    assert s["pts"].shape == (1024, 3) and s["rgb"].shape == (3, 224, 224) and int(s["category_label"]) == 1
    # bottle (0) is symmetric: its rotation is canonicalised; identity stays identity
    assert torch.allclose(ds[0]["rotation_label"], torch.eye(3))


def test_results_do_not_depend_on_the_worker_count(tmp_path):
    torch.set_num_threads(1)
    a = make_trainer(tiny_config(tmp_path / "w0", iterations=3, workers=0))
    a.fit()
    # spawn: this test runs inside a pytest process that earlier tests filled with threads (DDS, OpenMP),
    # and forking such a process can deadlock the workers.
    b = make_trainer(tiny_config(tmp_path / "w2", iterations=3, workers=2, worker_start="spawn"))
    b.fit()
    assert [[h[k] for k in LOSS_KEYS] for h in a.history] == [[h[k] for k in LOSS_KEYS] for h in b.history]


def test_packed_evaluation_scores_a_perfect_prediction_100(tmp_path):
    from scipy.spatial.transform import Rotation

    from cleanpose_training.datasets.packed import PackedDataset
    from cleanpose_training.eval_packed import build_records, markdown_table, per_object_errors
    from cleanpose_training.evaluation.metrics import NOCS_PROTOCOL, evaluate_records

    rng = np.random.default_rng(1)
    objects = [
        _pack_object(
            i,
            i // 3,
            rotation=Rotation.random(random_state=i).as_matrix().astype(np.float32),
            translation=np.array([0.1 * i, 0, 0.8], np.float32),
            size=rng.uniform(0.05, 0.2, 3).astype(np.float32),
        )
        for i in range(6)
    ]
    _write_pack(tmp_path, objects, (1, 1, 0, 0), (48, 64), per_shard=10, model_points=4)
    ds = PackedDataset(tmp_path, augment=False)
    perfect = {"rotation": ds.rotation.copy(), "translation": ds.translation.copy(), "size": ds.size.copy()}
    recs = build_records(ds, perfect)
    assert len(recs) == 2 and [len(r["gt_class_ids"]) for r in recs] == [3, 3]
    res = evaluate_records(recs, NOCS_PROTOCOL)
    assert res.iou_ap("nocs", 0.5) == pytest.approx(1.0) and res.pose_ap(5, 2) == pytest.approx(1.0)
    # 20° off about the x axis: fails 5°/10° for asymmetric categories
    bad = dict(
        perfect,
        rotation=perfect["rotation"]
        @ Rotation.from_euler("x", 20, degrees=True).as_matrix().astype(np.float32),
    )
    err = per_object_errors(ds, bad)
    assert np.allclose(err["rot_deg"][[2, 4, 5]], 20, atol=1e-3) and np.allclose(err["trans_cm"], 0)
    res_bad = evaluate_records(build_records(ds, bad), NOCS_PROTOCOL)
    assert res_bad.pose_ap(10, 5, cls=3) == pytest.approx(0.0)  # camera (class id 3)
    cols = ["IoU25", "IoU50", "IoU75", "IoU50_catre", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm"]
    table = markdown_table(
        {
            "table": {"mean": dict.fromkeys(cols, 50.0), "bowl": dict.fromkeys(cols, float("nan"))},
            "objects": 6,
            "per_category_objects": {"bowl": 0},
            "classes_left_out_of_mean": ["bowl"],
        }
    )
    assert "| mean | 6 | 50.0 |" in table and "| bowl | 0 | – |" in table and "nan" not in table
    assert "No test objects of bowl: left out of the mean" in table
