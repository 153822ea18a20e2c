"""FramePipeline's preprocessing switch: the batched torch path (what a CUDA device gets) and the numpy path
(CPU) give the same objects and poses for the same frame; torch on the CPU runs the same code as on CUDA."""

from __future__ import annotations

import numpy as np
import pytest


def _frame(seed=0, h=240, w=320):
    from cleanpose_ros.detections import Detections

    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = g.uniform(0.4, 1.2, (h, w)).astype(np.float32)
    depth[g.random((h, w)) < 0.1] = 0.0
    boxes = np.array([(20, 30, 90, 110), (150, 200, 240, 320), (5, 5, 8, 9), (100, 0, 140, 60)], np.int64)
    masks = np.zeros((len(boxes), h, w), bool)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = True
    det = Detections(
        masks,
        boxes,
        ["mug", "laptop", "can", "bowl"],
        np.array([0.9, 0.8, 0.7, 0.6], np.float32),
        ["a", "b", "c", "d"],
    )
    K = np.array([[300.0, 0, w / 2], [0, 300.0, h / 2], [0, 0, 1]])
    return rgb, depth, K, det


@pytest.fixture(scope="module")
def estimator(checkpoint):
    from cleanpose_model.estimator import PoseEstimator

    return PoseEstimator.from_checkpoint(str(checkpoint), device="cpu")


def test_torch_and_numpy_preprocessing_give_the_same_poses(estimator):
    from cleanpose_ros.pipeline import FramePipeline, PipelineConfig

    rgb, depth, K, det = _frame()
    res = {
        mode: FramePipeline(estimator, PipelineConfig(preprocess=mode)).process(rgb, depth, K, det)
        for mode in ("numpy", "torch")
    }
    a, b = res["numpy"], res["torch"]
    assert [o.detection_index for o in a.objects] == [0, 1, 3] == [o.detection_index for o in b.objects]
    assert a.skipped_few_points == b.skipped_few_points == 1  # the 12-pixel "can"
    for x, y in zip(a.objects, b.objects):
        assert (x.class_id, x.num_points) == (y.class_id, y.num_points)
        # same pixels; RGB within one grey level by contract (identical on this OpenCV)
        np.testing.assert_allclose(x.rotation, y.rotation, atol=1e-4)
        np.testing.assert_allclose(x.translation, y.translation, atol=1e-5)
        np.testing.assert_allclose(x.size, y.size, atol=1e-5)


def test_auto_picks_numpy_on_cpu_and_bad_mode_raises(estimator, monkeypatch):
    from cleanpose_ros import pipeline as P

    rgb, depth, K, det = _frame(1)
    called = []
    monkeypatch.setattr(P, "GraphedInputBuilder", lambda *a, **k: called.append(1))
    res = P.FramePipeline(estimator, P.PipelineConfig()).process(rgb, depth, K, det)
    assert not called and len(res.objects) == 3
    with pytest.raises(ValueError, match="preprocess must be"):
        P.FramePipeline(estimator, P.PipelineConfig(preprocess="gpu")).process(rgb, depth, K, det)


@pytest.mark.gpu
def test_cuda_upload_through_reused_pinned_buffer_gives_the_numpy_inputs(estimator):
    """FrameUploader sends a frame up in one copy through a pinned buffer reused across frames (grown for a
    larger frame); the pipeline's CUDA build_inputs (GraphedInputBuilder, its own staging) gives the numpy
    path's per-object inputs."""
    import torch

    from cleanpose_ros.pipeline import FramePipeline, FrameUploader, PipelineConfig

    up = FrameUploader("cuda")
    for seed, (h, w) in ((0, (120, 160)), (1, (240, 320)), (2, (120, 160))):
        rgb, depth, K, det = _frame(seed, h, w)
        d, r, m = up.upload(depth, rgb, det.masks)
        torch.cuda.synchronize()
        assert torch.equal(d.cpu(), torch.from_numpy(depth)) and torch.equal(r.cpu(), torch.from_numpy(rgb))
        assert m.dtype == torch.bool and torch.equal(m.cpu(), torch.from_numpy(det.masks))
    est = type("E", (), {"device": torch.device("cuda"), "dtype": torch.float32})()
    est.categories = estimator.categories
    rgb, depth, K, det = _frame(3)
    cats = [estimator.categories.index(c) for c in det.class_ids]
    gpu = FramePipeline(est).build_inputs(rgb, depth, K, det.masks, det.boxes, cats)
    ref = FramePipeline(estimator, PipelineConfig(preprocess="numpy")).build_inputs(
        rgb, depth, K, det.masks, det.boxes, cats
    )
    for x, y in zip(
        (gpu[0].pts, gpu[0].choose, gpu[0].category), (ref[0].pts, ref[0].choose, ref[0].category)
    ):
        assert torch.equal(x.cpu(), y)
    np.testing.assert_array_equal(gpu[1], ref[1])
