"""benchmarks/published.py against a tiny stand-in for the published code, written into a tmpdir with the
published layout (model/Net.py importing from utils/ and model/pointnet2/, config/REAL/camera_real.yaml,
a ``torch.hub.load`` of DINOv2 in the constructor, the queue as a per-category ``tensor_list``), and the
forward suite's published comparison table."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from benchmarks import forward, published

FAKE_NET = """
import torch
from torch import nn
import pointnet2_utils  # model/pointnet2 on sys.path, as the published code imports it
from rotation_utils import centre  # utils/ on sys.path

class Net(nn.Module):
    def __init__(self, cfg, ULIP_model, tensor_list):
        super().__init__()
        self.rgb_extractor = torch.hub.load("facebookresearch/dinov2", "dinov2_vits14")
        self.head = nn.Linear(cfg.IAKD.query_dim, 3)
        self.tensor_list = tensor_list
        self.select_num = cfg.select_num

    def forward(self, inputs):
        tok = self.rgb_extractor.forward_features(inputs["rgb"])["x_prenorm"][:, 1:]
        cls = inputs["category_label"].reshape(-1)
        queue = torch.stack([torch.cat(per_cat) for per_cat in self.tensor_list])[cls]
        feat = tok.mean(1) + queue.mean(1) + pointnet2_utils.bias
        t = self.head(feat) + centre(inputs["pts"])
        eye = torch.eye(3).expand(len(cls), 3, 3)
        return {"pred_translation": t, "pred_rotation": eye, "pred_size": t.abs()}
"""


class TinyVit(nn.Module):
    """Stands in for our reference ViT: (B, 3, H, W) -> (B, 1 + tokens, C) pre-norm tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, x):
        tokens = self.proj(x.flatten(2).transpose(1, 2))
        return torch.cat([tokens.mean(1, keepdim=True), tokens], 1)


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "CleanPose"
    (root / "model" / "pointnet2").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "config" / "REAL").mkdir(parents=True)
    (root / "model" / "Net.py").write_text(FAKE_NET)
    (root / "model" / "pointnet2" / "pointnet2_utils.py").write_text("bias = 0.5\n")
    (root / "utils" / "rotation_utils.py").write_text("def centre(pts):\n    return pts.mean(1)\n")
    (root / "config" / "REAL" / "camera_real.yaml").write_text(
        textwrap.dedent(
            """\
            pose_net:
              select_num: 2
              cat_num: 3
              IAKD:
                query_dim: 8
            """
        )
    )
    saved_path, saved_mods = list(sys.path), set(sys.modules)
    yield root
    sys.path[:] = saved_path
    # Forget only the fake checkout's modules (Net, pointnet2_utils, rotation_utils): library modules first
    # imported meanwhile (torch's lazily imported submodules) must stay, or re-importing them registers their
    # operators twice and breaks every later torch test in this process.
    for name in set(sys.modules) - saved_mods:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(str(root)):
            del sys.modules[name]


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 4, 4, generator=g), torch.randn(b, 5, 3, generator=g), None, torch.tensor([2, 0])


def test_published_net_runs_the_checkout_with_our_weights_and_queue(fake_root):
    vit = TinyVit(8)
    head = nn.Linear(8, 3)
    sd = {
        **{f"rgb_extractor.{k}": v for k, v in vit.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    queue = torch.randn(3, 2, 8)
    hub = torch.hub.load
    net = published.PublishedNet(fake_root, sd, queue, vit, torch.device("cpu"))
    assert torch.hub.load is hub  # replaced only while the constructor ran
    assert "reference" in net.dinov2
    # the queue reaches the published forward as per-category lists of (1, d) tensors
    assert [[t.shape for t in c] for c in net.net.tensor_list] == [[(1, 8)] * 2] * 3
    rgb, pts, choose, cat = _inputs()
    out = net(rgb, pts, choose, cat)
    with torch.no_grad():
        feat = vit(rgb)[:, 1:].mean(1) + queue[cat].mean(1) + 0.5
        want = head(feat) + pts.mean(1)
    torch.testing.assert_close(out["pred_translation"], want)
    assert not out["pred_translation"].requires_grad


def test_published_net_refuses_other_weights_and_other_layouts(fake_root, tmp_path):
    vit = TinyVit(8)
    sd = {f"rgb_extractor.{k}": v for k, v in vit.state_dict().items()}  # no head.* keys
    with pytest.raises(RuntimeError, match=r"head\.weight"):
        published.PublishedNet(fake_root, sd, torch.randn(3, 2, 8), vit, torch.device("cpu"))
    with pytest.raises(ValueError, match="select_num"):
        published.PublishedNet(fake_root, sd, torch.randn(3, 5, 8), vit, torch.device("cpu"))
    with pytest.raises(SystemExit, match=r"model/Net\.py"):
        published.check_root(tmp_path / "empty")


def test_tf32_flags_set_and_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with published.tf32(False):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with published.tf32(None):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_published_comparisons_are_ratios_of_this_runs_medians():
    from benchmarks import harness

    report = harness.Report("forward", None, "cpu")
    pose = {"rotation": [[1.0] * 9], "translation": [[0.0, 0.0, 0.5]], "size": [[0.1] * 3]}
    moved = {**pose, "translation": [[0.0, 0.0, 0.502]]}
    report.add(tree="current", mode="exact", objects=1, median_ms=4.0)
    report.add(tree="published", mode="published", objects=1, median_ms=12.0)
    report.add(tree="published", mode="published_tf32_off", objects=1, median_ms=16.0)
    outputs = {
        ("current", "exact", 1): pose,
        ("published", "published", 1): moved,
        ("published", "published_tf32_off", 1): pose,
    }
    forward.published_comparisons(report, outputs, ["exact", "fast"], [1])
    got = {(c["published"], c["ours"]): c for c in report.data["published_comparisons"]}
    assert set(got) == {("published", "exact"), ("published_tf32_off", "exact")}  # no fast row: no ratio
    assert got[("published_tf32_off", "exact")]["speedup"] == 4.0
    assert got[("published", "exact")]["max_pose_diff"] == pytest.approx(0.002)
