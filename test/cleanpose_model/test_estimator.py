"""The estimator interface: every registered family through build -> predict; PoseEstimator (the CleanPose /
AG-Pose family) determinism, seeded random queue mode, mixed batches, devices, our checkpoint format; family
dispatch from checkpoint headers (new and old)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cleanpose_model.categories import NOCS
from cleanpose_model.config import ModelConfig
from cleanpose_model.convert import random_batch
from cleanpose_model.errors import CheckpointFormatError, DeviceUnavailableError, QueueError
from cleanpose_model.estimator import (
    Estimator,
    PoseEstimator,
    build_estimator,
    checkpoint_family,
    load_estimator,
)
from cleanpose_model.families import CLEANPOSE, FAMILIES
from cleanpose_model.inference import InferenceMode, build_inference
from cleanpose_model.io import checkpoints as ck
from cleanpose_model.net import CleanPoseNet
from cleanpose_model.queue import ConfounderQueue
from cleanpose_model.selfsup.config import SelfSupConfig
from cleanpose_model.types import ObjectBatch, PoseResult

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo" / "demo.safetensors"
N_POINTS = 256


def tiny_config(variant: str = "cleanpose") -> ModelConfig:
    """The demo structure at toy widths: a forward of a few objects takes well under a second on CPU."""
    d = ModelConfig.named("demo").to_dict()
    d.update(
        variant=variant,
        use_front_door=variant == "cleanpose",
        n_points=N_POINTS,
        d_model=64,
        pts_feat_dim=32,
        rgb_feat_dim=32,
    )
    d["dino"].update(embed_dim=32, depth=1, num_heads=2)
    d["pointnet2"].update(
        npoints=[64, 32, 16, 8],
        sa_mlps=[[8, 8, 16], [16, 16, 32], [32, 32, 32], [32, 32, 64]],
        fp_mlps=[[32, 32], [64, 64], [64, 64], [64, 64]],
    )
    d["attention"].update(num_heads=2, dim_ffn=64)
    d["keypoints"].update(kpt_num=16, block_num=1)
    d["gafa"].update(ks=[8, 8], delta_hidden=16)
    d["nocs"].update(block_num=1, mlp=[64, 64], atten_hidden=64)
    d["front_door"].update(cross_block_num=1, self_block_num=1, queue_length=20)
    d["reconstructor"].update(pos_hidden=[16, 32], decoder_hidden=[64, 64])
    d["estimator"].update(pts_mlp=[16, 16], pose_mlp1=[64, 64], pose_mlp2=[64, 64], head_hidden=[64, 32])
    return ModelConfig.from_dict(d)


def tiny_model(variant: str = "cleanpose", seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_config(variant)
    net = CleanPoseNet(cfg).eval()
    queue = torch.randn(cfg.cat_num, 20, cfg.d_model) if variant == "cleanpose" else None
    return net, cfg, queue


# One tiny configuration per registered family: a family added to the registry without one fails the
# conformance test below by name.
TINY_CONFIGS = {
    "cleanpose": lambda: tiny_config("cleanpose"),
    "agpose": lambda: tiny_config("agpose"),
    "selfsup": lambda: SelfSupConfig.named("selfsup_tiny"),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batch():
    return random_batch(4, N_POINTS, 6, seed=3)


def _equal(a: PoseResult, b: PoseResult) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.as_numpy().values(), b.as_numpy().values()))


# ------------------------------------------------------------------------------ the interface, every family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_builds_and_predicts(name):
    assert name in TINY_CONFIGS, f"family {name!r} has no tiny test configuration"
    cfg = TINY_CONFIGS[name]()
    rng_before = torch.random.get_rng_state()
    est = build_estimator(name, cfg, device="cpu", mode="fast", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # fresh weights from a private seed
    assert isinstance(est, Estimator) and est.family is FAMILIES[name]
    assert est.device == torch.device("cpu") and est.mode == "exact"  # a CPU estimator runs exact
    assert est.categories == list(cfg.categories)
    spec = est.inputs
    assert set(spec.fields) <= {"rgb", "pts", "choose", "category"}
    n = 3
    b = random_batch(n, spec.n_points, len(est.categories), seed=4, image_size=spec.image_size)
    out = est.predict(b)
    k = out.keypoints.shape[1]
    assert out.rotation.shape == (n, 3, 3) and out.translation.shape == (n, 3) and out.size.shape == (n, 3)
    assert out.keypoints.shape == (n, k, 3) and k > 0
    assert all(torch.isfinite(t).all() for t in (out.rotation, out.translation, out.size, out.keypoints))
    rt = out.rotation.transpose(1, 2) @ out.rotation
    torch.testing.assert_close(rt, torch.eye(3).expand(n, 3, 3), atol=1e-5, rtol=0)
    again = build_estimator(name, cfg, device="cpu", mode="exact", seed=1).predict(b)
    assert _equal(out, again)  # same seed, same network
    empty = est.predict(random_batch(0, spec.n_points, len(est.categories), image_size=spec.image_size))
    assert len(empty) == 0 and empty.keypoints.shape == (0, k, 3)


def _rewrite_header(src: Path, dst: Path, **changes) -> Path:
    """A copy of ``src`` with header entries changed (``None`` drops an entry), e.g. an older header."""
    header = ck.read_header(src)
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    save_file(load_file(src), dst, metadata={ck.METADATA_KEY: json.dumps(header)})
    return dst


@pytest.mark.parametrize("variant", ["cleanpose", "agpose"])
def test_load_estimator_reads_the_family_from_new_and_old_headers(variant, batch, tmp_path):
    net, cfg, queue = tiny_model(variant)
    path = tmp_path / "new.safetensors"
    assert ck.save_checkpoint(path, net, cfg, queue)["family"] == variant
    est = load_estimator(path, device="cpu", mode="exact")
    assert checkpoint_family(path) is FAMILIES[variant] and est.family is FAMILIES[variant]
    old = _rewrite_header(path, tmp_path / "old.safetensors", family=None)  # as written before "family"
    assert "family" not in ck.read_header(old) and checkpoint_family(old) is FAMILIES[variant]
    assert _equal(load_estimator(old, device="cpu", mode="exact").predict(batch), est.predict(batch))
    other = _rewrite_header(path, tmp_path / "other.safetensors", family="nosuch")
    with pytest.raises(
        KeyError, match=r"unknown model family 'nosuch'; registered: \['agpose', 'cleanpose', 'selfsup'\]"
    ):
        load_estimator(other)


def test_demo_checkpoint_loads_unchanged():
    header = ck.read_header(DEMO)
    assert "family" not in header and header["variant"] == "cleanpose"  # written before the family entry
    est = load_estimator(DEMO, device="cpu", mode="exact")
    assert isinstance(est, PoseEstimator) and est.family is CLEANPOSE
    assert est.categories == list(NOCS.names) and est.inputs.image_size == 224 and est.inputs.n_points == 1024


# --------------------------------------------------------------------------- PoseEstimator (CleanPose family)


def test_result_shapes_and_categories(model, batch):
    est = PoseEstimator(*model)
    out = est.predict(batch)
    assert out.rotation.shape == (4, 3, 3) and out.translation.shape == (4, 3)
    assert out.size.shape == (4, 3) and out.keypoints.shape == (4, 16, 3) and len(out) == 4
    assert est.categories == ["bottle", "bowl", "camera", "can", "laptop", "mug"]
    rt = out.rotation.transpose(1, 2) @ out.rotation
    assert torch.allclose(rt, torch.eye(3).expand(4, 3, 3), atol=1e-5)
    arrays = out.as_numpy()
    assert set(arrays) == {"rotation", "translation", "size", "keypoints"}
    assert isinstance(arrays["size"], np.ndarray) and arrays["size"].dtype == np.float32


def test_deterministic_mode_is_repeatable(model, batch):
    est = PoseEstimator(*model)
    assert est.queue_mode == "deterministic"
    a, b = est.predict(batch), est.predict(batch)
    assert _equal(a, b)


def test_random_mode_reproduces_with_seed(model, batch):
    net, cfg, queue = model
    e1 = PoseEstimator(net, cfg, queue, queue_mode="random", seed=5)
    e2 = PoseEstimator(net, cfg, queue, queue_mode="random", seed=5)
    first = [e1.predict(batch) for _ in range(2)]
    second = [e2.predict(batch) for _ in range(2)]
    assert _equal(first[0], second[0]) and _equal(first[1], second[1])
    assert not torch.equal(first[0].rotation, first[1].rotation)  # a new draw per call
    # The first call used RandomState(5)'s first cat_num draws, in category order.
    idx = ConfounderQueue(queue).indices("random", np.random.RandomState(5))
    feats = ConfounderQueue(queue).gather(batch.category, idx)
    with torch.no_grad():
        # The estimator runs the network bound to the exact mode (cleanpose_model.inference): bit-equal to
        # it, rounding-close to net.
        ref = build_inference(net, InferenceMode("exact"))(
            batch.rgb, batch.pts, batch.choose, batch.category, feats
        )
        eager = net(batch.rgb, batch.pts, batch.choose, batch.category, queue_feats=feats)
    assert torch.equal(ref["pred_rotation"], first[0].rotation)
    torch.testing.assert_close(eager["pred_rotation"], first[0].rotation, rtol=1e-4, atol=1e-5)
    e1.reseed(5)
    assert _equal(e1.predict(batch), first[0])


def test_mixed_batch_equals_single_objects(model, batch):
    est = PoseEstimator(*model)
    together = est.predict(batch)
    for i in range(len(batch)):
        one = est.predict(
            ObjectBatch(
                batch.rgb[i : i + 1], batch.pts[i : i + 1], batch.choose[i : i + 1], batch.category[i : i + 1]
            )
        )
        for name, v in one.as_numpy().items():
            np.testing.assert_allclose(v[0], together.as_numpy()[name][i], atol=1e-5, rtol=0, err_msg=name)


def test_empty_batch(model):
    est = PoseEstimator(*model)
    empty = ObjectBatch(
        torch.zeros(0, 3, 224, 224),
        torch.zeros(0, N_POINTS, 3),
        torch.zeros(0, N_POINTS, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
    )
    out = est.predict(empty)
    assert len(out) == 0 and out.rotation.shape == (0, 3, 3) and out.keypoints.shape == (0, 16, 3)


def test_errors(model, batch):
    net, cfg, queue = model
    with pytest.raises(QueueError, match="needs a confounder queue"):
        PoseEstimator(net, cfg, None)
    with pytest.raises(ValueError, match="queue_mode must be"):
        PoseEstimator(net, cfg, queue, queue_mode="sometimes")
    bad = ObjectBatch(batch.rgb[:1], batch.pts[:1], batch.choose[:1], torch.tensor([6]))
    with pytest.raises(ValueError, match=r"category ids must be in \[0, 5\]"):
        PoseEstimator(net, cfg, queue).predict(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda(model, tmp_path):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        PoseEstimator(*model, device="cuda")
    with pytest.raises(DeviceUnavailableError):
        PoseEstimator.from_checkpoint(tmp_path / "m.safetensors", device="cuda")


def test_warmup_leaves_random_stream(model, batch):
    net, cfg, queue = model
    a = PoseEstimator(net, cfg, queue, queue_mode="random", seed=2)
    b = PoseEstimator(net, cfg, queue, queue_mode="random", seed=2)
    a.warmup(2, n_points=N_POINTS)
    assert _equal(a.predict(batch), b.predict(batch))


def test_agpose_variant_needs_no_queue(batch):
    net, cfg, _ = tiny_model("agpose")
    est = PoseEstimator(net, cfg)
    assert est.queue is None and _equal(est.predict(batch), est.predict(batch))


_CHILD = """
import sys, numpy as np, torch
from cleanpose_model.estimator import PoseEstimator
from cleanpose_model.types import ObjectBatch
est = PoseEstimator.from_checkpoint(sys.argv[1])
d = np.load(sys.argv[2])
out = est.predict(ObjectBatch(*(torch.from_numpy(d[k]) for k in ("rgb", "pts", "choose", "category"))))
np.savez(sys.argv[3], **out.as_numpy())
"""


def test_checkpoint_roundtrip_and_determinism_across_processes(model, batch, tmp_path):
    net, cfg, queue = model
    path = tmp_path / "tiny.safetensors"
    header = ck.save_checkpoint(path, net, cfg, queue, metadata={"source": "test"})
    assert header["variant"] == "cleanpose" and header["source"] == "test"
    assert ck.read_header(path)["config"] == cfg.to_dict()
    assert not list(tmp_path.glob(".tmp_*"))  # the atomic write left no temporary file
    loaded_net, loaded_cfg, loaded_queue = ck.load_checkpoint(path)
    assert loaded_cfg == cfg and torch.equal(loaded_queue.features, queue)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded_net.state_dict()[k]), k
    ours = PoseEstimator.from_checkpoint(path).predict(batch)
    assert _equal(ours, PoseEstimator(net, cfg, queue).predict(batch))

    inputs, result = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(
        inputs,
        rgb=batch.rgb.numpy(),
        pts=batch.pts.numpy(),
        choose=batch.choose.numpy(),
        category=batch.category.numpy(),
    )
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(inputs), str(result)], check=True, cwd=REPO, timeout=300
    )
    child = np.load(result)
    for name, v in ours.as_numpy().items():
        np.testing.assert_array_equal(child[name], v, err_msg=name)


def test_from_checkpoint_rejects_published_file_without_config(tmp_path):
    path = tmp_path / "epoch_30.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointFormatError, match="cleanpose-convert"):
        PoseEstimator.from_checkpoint(path)


def test_from_published_files_with_config(model, batch, tmp_path):
    net, cfg, queue = model
    pt, pkl, yaml_path = tmp_path / "epoch_30.pt", tmp_path / "tensor_list.pkl", tmp_path / "tiny.yaml"
    torch.save(net.state_dict(), pt)
    pkl.write_bytes(pickle.dumps([[row[None] for row in cat] for cat in queue]))
    yaml_path.write_text(yaml.safe_dump(cfg.to_dict()))
    est = PoseEstimator.from_checkpoint(pt, config=str(yaml_path), queue_path=pkl)
    assert _equal(est.predict(batch), PoseEstimator(net, cfg, queue).predict(batch))
    # a published file has no header: its family is its config's
    assert load_estimator(pt, config=str(yaml_path), queue_path=pkl).family is CLEANPOSE
    with pytest.raises(QueueError, match=r"confounder queue .* is required"):
        PoseEstimator.from_checkpoint(pt, config=str(yaml_path))
