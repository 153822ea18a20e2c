"""cleanpose-convert: published-format files -> our safetensors, identical outputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_estimator import N_POINTS, tiny_model

from cleanpose_model.convert import main, random_batch
from cleanpose_model.estimator import PoseEstimator
from cleanpose_model.io import checkpoints as ck
from cleanpose_model.parity import build_parity_net, load_vectors, parity_state_dict, queue_sample

PARITY = Path(__file__).resolve().parents[1] / "data" / "parity" / "cleanpose_parity_v1.npz"


def _write_queue_pickle(path, queue: torch.Tensor):
    # Published layout: plain pickle of cat_num lists of (1, d) tensors.
    path.write_bytes(pickle.dumps([[row[None].clone() for row in cat] for cat in queue]))
    return path


def test_roundtrip_published_parity_files(tmp_path, capsys):
    vec = load_vectors(PARITY)
    pt = tmp_path / "epoch_30.pt"
    torch.save(parity_state_dict("cleanpose_nocs"), pt)  # official key names, parity weights
    pkl = _write_queue_pickle(tmp_path / "tensor_list.pkl", torch.from_numpy(vec["queue"]))
    out = tmp_path / "model.safetensors"
    assert (
        main(["--checkpoint", str(pt), "--queue", str(pkl), "--config", "cleanpose_nocs", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "family      cleanpose" in printed and "queue       (6, 80, 256)" in printed
    assert ck.read_header(out)["source"]["checkpoint"] == "epoch_30.pt"

    net, _, queue = ck.load_checkpoint(out)
    assert torch.equal(queue.features, torch.from_numpy(vec["queue"]))
    reference = build_parity_net("cleanpose")  # built from the key-name rule directly, no file involved
    b = slice(0, 2)  # two objects keep the CPU time of the 37M-parameter net small
    args = [torch.from_numpy(vec[k][b]) for k in ("rgb", "pts", "choose", "category_label")]
    feats = torch.from_numpy(queue_sample(vec)[b])
    with torch.no_grad():
        ours = net(*args, queue_feats=feats)
        ref = reference(*args, queue_feats=feats)
    for k in ("pred_rotation", "pred_translation", "pred_size", "pred_kpt_3d", "kpt_nocs"):
        assert torch.equal(ours[k], ref[k]), k
    # and the converted weights still compute what the published network recorded
    for k in ("pred_rotation", "pred_translation", "pred_size"):
        np.testing.assert_allclose(ours[k].numpy(), vec[f"out_{k}"][b], atol=1e-4, rtol=0, err_msg=k)


@pytest.fixture
def tiny_files(tmp_path):
    net, cfg, queue = tiny_model()
    pt = tmp_path / "epoch_30.pt"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, pt)
    yml = tmp_path / "tiny.yaml"
    yml.write_text(yaml.safe_dump(cfg.to_dict()))
    pkl = _write_queue_pickle(tmp_path / "tensor_list.pkl", queue)
    return net, cfg, queue, pt, yml, pkl


def test_verify_flag(tiny_files, tmp_path, capsys):
    net, cfg, queue, pt, yml, pkl = tiny_files
    out = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "--checkpoint",
                str(pt),
                "--queue",
                str(pkl),
                "--config",
                str(yml),
                "--out",
                str(out),
                "--verify",
            ]
        )
        == 0
    )
    assert "verify: max |published - converted| over all outputs = 0" in capsys.readouterr().out
    batch = random_batch(2, N_POINTS, 6, seed=1)
    a = PoseEstimator.from_checkpoint(out).predict(batch)
    b = PoseEstimator(net, cfg, queue).predict(batch)
    assert torch.equal(a.rotation, b.rotation) and torch.equal(a.size, b.size)


def test_cli_errors_are_one_line(tiny_files, tmp_path, capsys):
    *_, pt, yml, pkl = tiny_files
    out = str(tmp_path / "m.safetensors")
    assert main(["--checkpoint", str(pt), "--config", str(yml), "--out", out]) == 1
    assert "confounder queue" in capsys.readouterr().err

    ag_net = tiny_model("agpose")[0]
    ag_pt = tmp_path / "agpose.pt"
    torch.save(ag_net.state_dict(), ag_pt)
    assert main(["--checkpoint", str(ag_pt), "--queue", str(pkl), "--config", str(yml), "--out", out]) == 1
    assert "this is an AG-Pose checkpoint, use variant agpose" in capsys.readouterr().err

    # an unrelated state_dict lacks FD_Encoder.* too, but is named as neither variant
    other_pt = tmp_path / "unrelated.pt"
    torch.save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, other_pt)
    assert main(["--checkpoint", str(other_pt), "--queue", str(pkl), "--config", str(yml), "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"{other_pt} is not a published CleanPose or AG-Pose checkpoint" in err
    assert "AG-Pose checkpoint, use" not in err and "unexpected keys (2): conv.weight, fc.bias" in err

    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 3])
    assert main(["--checkpoint", str(pt), "--queue", str(pkl), "--config", str(yml), "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"not a valid checkpoint: {pt}: truncated or corrupt" in err and "Traceback" not in err
    assert not Path(out).exists()


def test_dinov2_file_fills_a_checkpoint_without_backbone(tiny_files, tmp_path):
    net, *_, yml, pkl = tiny_files
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("rgb_extractor.")}
    no_backbone = tmp_path / "no_backbone.pt"
    torch.save(sd, no_backbone)
    prefix = "rgb_extractor."
    hub = {k[len(prefix) :]: v for k, v in net.state_dict().items() if k.startswith(prefix)}
    dino = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(hub, dino)
    out = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "--checkpoint",
                str(no_backbone),
                "--queue",
                str(pkl),
                "--dinov2",
                str(dino),
                "--config",
                str(yml),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    loaded, _, _ = ck.load_checkpoint(out)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
