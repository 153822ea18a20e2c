"""The selfsup family behind the estimator interface: build -> save -> load_estimator -> predict, and the
node's frame pipeline serving the checkpoint as it serves CleanPose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cleanpose_model.categories import NOCS
from cleanpose_model.estimator import build_estimator, load_estimator
from cleanpose_model.families import FAMILIES
from cleanpose_model.families.selfsup import SELFSUP, SelfSupEstimator, resize_batch
from cleanpose_model.io import checkpoints
from cleanpose_model.types import ObjectBatch


def _batch(n=3, side=64, points=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ObjectBatch(
        rgb=torch.randn(n, 3, side, side, generator=g),
        pts=torch.rand(n, points, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 0.7]),
        choose=torch.randint(0, side * side, (n, points), generator=g),
        category=torch.arange(n) % 6,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    est = build_estimator("selfsup", "selfsup_tiny", seed=3)
    path = tmp_path_factory.mktemp("selfsup") / "tiny.safetensors"
    est.save(path, metadata={"source": "test"})
    return est, path


def test_registered_family():
    assert FAMILIES["selfsup"] is SELFSUP and SELFSUP.estimator is SelfSupEstimator
    assert SELFSUP.categories == NOCS.names
    assert isinstance(SELFSUP.build_net("selfsup_tiny"), torch.nn.Module)


def test_build_save_load_predict(saved):
    est, path = saved
    header = checkpoints.read_header(path)
    assert header["family"] == "selfsup" and header["categories"] == list(NOCS.names)
    loaded = load_estimator(path, queue_mode="deterministic", cuda_graphs=False)  # the node's options
    assert type(loaded) is SelfSupEstimator and loaded.family is SELFSUP
    assert loaded.categories == list(NOCS.names)
    assert (loaded.inputs.image_size, loaded.inputs.n_points) == (64, 256)
    for k, v in est.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k
    a, b = est.predict(_batch()), loaded.predict(_batch())
    for name in ("rotation", "translation", "size", "keypoints"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.keypoints.shape == (3, 16, 3)
    r = a.rotation.double()
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    assert torch.isfinite(a.size).all() and (a.size >= 0).all()
    assert len(loaded.predict(_batch(n=0))) == 0
    with pytest.raises(ValueError, match="category ids"):
        loaded.predict(ObjectBatch(**{**_batch().__dict__, "category": torch.tensor([0, 1, 9])}))


def test_from_config_is_seeded_and_leaves_the_global_rng():
    state = torch.random.get_rng_state()
    a = SelfSupEstimator.from_config("selfsup_tiny", seed=1)
    b = SelfSupEstimator.from_config("selfsup_tiny", seed=1)
    c = SelfSupEstimator.from_config("selfsup_tiny", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    w = "backbone.encoder.stem.0.weight"
    assert torch.equal(a.net.state_dict()[w], b.net.state_dict()[w])
    assert not torch.equal(a.net.state_dict()[w], c.net.state_dict()[w])
    with pytest.raises(TypeError, match="unknown options"):
        SelfSupEstimator.from_config("selfsup_tiny", queue_size=3)


def test_resize_batch_maps_pixels_to_the_same_place():
    b = _batch(n=1, side=224, points=5)
    b.choose = torch.tensor([[0, 223, 224 * 112 + 112, 224 * 224 - 1, 224 * 10 + 200]])
    r = resize_batch(b, 64)
    assert r.rgb.shape == (1, 3, 64, 64)
    want = [0, 63, 64 * 32 + 32, 64 * 64 - 1, 64 * 2 + 57]
    assert r.choose.tolist() == [want]


def test_frame_pipeline_serves_a_selfsup_checkpoint(saved):
    from cleanpose_ros.detections import Detections
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig

    _, path = saved
    g = np.random.default_rng(0)
    h, w = 240, 320
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = g.uniform(0.4, 1.2, (h, w)).astype(np.float32)
    boxes = np.array([(20, 30, 90, 110), (150, 200, 240, 320)], np.int64)
    masks = np.zeros((2, h, w), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    det = Detections(masks, boxes, ["mug", "laptop"], np.array([0.9, 0.8], np.float32), ["a", "b"])
    K = np.array([[300.0, 0, w / 2], [0, 300.0, h / 2], [0, 0, 1]])
    pipe = FramePipeline.from_checkpoint(str(path), cfg=PipelineConfig())
    pipe.estimator.warmup(2)
    res = pipe.process(rgb, depth, K, det)
    assert [o.detection_index for o in res.objects] == [0, 1]
    for o in res.objects:
        assert np.isfinite(o.translation).all() and np.isfinite(o.size).all()
        # A similarity fit of points inside the frustum: the object centre is in front of the camera.
        assert 0.3 < o.translation[2] < 1.5
