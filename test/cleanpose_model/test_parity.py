"""Parity with the published CleanPose / AG-Pose networks (spec parity.md), CPU fp32.

Weights are rebuilt from the published key names by the parity rule; inputs, the queue sample,
intermediates and outputs come from the vectors recorded with the published code.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cleanpose_model import parity

PARITY_DIR = Path(__file__).resolve().parents[1] / "data" / "parity"


@pytest.mark.parametrize("variant", ["cleanpose", "agpose"])
def test_parity_cpu(variant: str) -> None:
    report = parity.run_parity(variant, PARITY_DIR / f"{variant}_parity_v1.npz", device="cpu")
    expected = set(parity.TENSOR_NAMES) - ({"fd_global_in", "fd_out"} if variant == "agpose" else set())
    assert set(report) == expected
    assert parity.failures(report) == [], "\n" + parity.format_report(report)


def test_parity_rule() -> None:
    specs = {s.name: s for s in parity.official_keys("cleanpose_nocs")}
    assert len(specs) == 750

    def u(key: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(key.encode())).random(specs[key].shape)

    w = parity.parity_tensor(specs["feature_mlp.0.weight"])
    assert w.dtype == torch.float32 and w.shape == (128, 384, 1)
    ref = (2 * u("feature_mlp.0.weight") - 1) * math.sqrt(3 / 384)
    np.testing.assert_allclose(w.numpy(), ref.astype(np.float32))
    b = parity.parity_tensor(specs["feature_mlp.0.bias"])
    np.testing.assert_allclose(b.numpy(), (0.1 * (2 * u("feature_mlp.0.bias") - 1)).astype(np.float32))
    g = parity.parity_tensor(specs["rgb_extractor.blocks.0.ls1.gamma"])
    ref = 1 + 0.2 * (2 * u("rgb_extractor.blocks.0.ls1.gamma") - 1)
    np.testing.assert_allclose(g.numpy(), ref.astype(np.float32))
    key = "pts_extractor.SA_modules.0.mlps.0.layer0.normlayer.bn.running_var"
    np.testing.assert_allclose(parity.parity_tensor(specs[key]).numpy(), (0.5 + u(key)).astype(np.float32))
    key = "pts_extractor.SA_modules.0.mlps.0.layer0.normlayer.bn.num_batches_tracked"
    assert parity.parity_tensor(specs[key]).dtype == torch.int64


def test_queue_sample_follows_recorded_indices() -> None:
    vec = parity.load_vectors(PARITY_DIR / "cleanpose_parity_v1.npz")
    sample = parity.queue_sample(vec)
    np.testing.assert_array_equal(sample, vec["fd_global_in"])
