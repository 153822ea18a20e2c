"""Published state_dict loading (strict, named errors), DINOv2 hub weights, and our safetensors format."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cleanpose_model.config import ModelConfig
from cleanpose_model.errors import (
    CheckpointFormatError,
    InvalidCheckpointFile,
    StateDictMismatch,
    WrongVariantError,
)
from cleanpose_model.io import checkpoints as ck
from cleanpose_model.net import CleanPoseNet
from cleanpose_model.parity import official_keys


def official(name: str, device="meta") -> dict[str, torch.Tensor]:
    """Tensors of the official key list (shape and dtype only, on the meta device: no memory)."""
    return {s.name: torch.zeros(s.shape, dtype=s.dtype, device=device) for s in official_keys(name)}


# ---------------------------------------------------------------------------------- strict key checking


@pytest.mark.parametrize("name", ["cleanpose_nocs", "cleanpose_housecat6d", "agpose_nocs"])
def test_official_key_lists_load_strictly_into_our_network(name):
    """The published state_dict layout (copies of the official key lists in cleanpose_model/data) loads into
    our network through the strict checker, and ours into it: no missing, unexpected or reshaped key."""
    with torch.device("meta"):  # structure only: no weights are allocated or initialised
        ours = CleanPoseNet(ModelConfig.named(name)).state_dict()
    ck.check_state_dict(ours, official(name), f"official_keys_{name}.txt")
    ck.check_state_dict(official(name), ours, f"CleanPoseNet({name})")


def test_missing_key_is_listed():
    sd = official("cleanpose_nocs")
    expected = dict(sd)
    del sd["estimator.rotation_estimator.4.weight"]
    with pytest.raises(StateDictMismatch) as err:
        ck.check_state_dict(expected, sd, "epoch_30.pt")
    msg = str(err.value)
    assert not isinstance(err.value, WrongVariantError)
    assert "epoch_30.pt" in msg
    assert "missing keys (1): estimator.rotation_estimator.4.weight" in msg
    assert "unexpected" not in msg and "shape" not in msg
    assert err.value.missing == ["estimator.rotation_estimator.4.weight"]


def test_extra_key_is_listed():
    expected = official("cleanpose_nocs")
    sd = dict(expected, **{"estimator.extra_head.weight": torch.zeros(3, 3, device="meta")})
    with pytest.raises(StateDictMismatch, match=r"unexpected keys \(1\): estimator\.extra_head\.weight"):
        ck.check_state_dict(expected, sd, "f.pt")


def test_wrong_shape_lists_key_expected_got():
    expected = official("cleanpose_nocs")
    sd = dict(expected, **{"feature_mlp.0.weight": torch.zeros(64, 384, 1, device="meta")})
    with pytest.raises(StateDictMismatch) as err:
        ck.check_state_dict(expected, sd, "f.pt")
    listed = "('feature_mlp.0.weight', (128, 384, 1), (64, 384, 1))"
    assert f"shape mismatches (1, as (key, expected, got)): {listed}" in str(err.value)
    assert err.value.shape_mismatches == [("feature_mlp.0.weight", (128, 384, 1), (64, 384, 1))]


def test_many_missing_keys_are_counted_and_truncated():
    expected = official("cleanpose_nocs")
    sd = {k: v for k, v in expected.items() if not k.startswith("pts_extractor.")}
    with pytest.raises(StateDictMismatch) as err:
        ck.check_state_dict(expected, sd, "f.pt")
    # 192 pts_extractor keys, 32 of them num_batches_tracked (tolerated)
    assert "missing keys (160): pts_extractor.SA_modules.0" in str(err.value)
    assert "(140 more)" in str(err.value)


def test_agpose_file_into_cleanpose_names_the_variant():
    with pytest.raises(WrongVariantError) as err:
        ck.check_state_dict(official("cleanpose_nocs"), official("agpose_nocs"), "agpose_epoch_30.pt")
    assert "this is an AG-Pose checkpoint, use variant agpose" in str(err.value)
    assert (
        "missing keys (109): pointnet2ulip, projector_pts.0.weight, projector_pts.2.weight, FD_Encoder."
        in str(err.value)
    )


def test_cleanpose_file_into_agpose_names_the_variant():
    with pytest.raises(WrongVariantError, match="this is a CleanPose checkpoint, use variant cleanpose"):
        ck.check_state_dict(official("agpose_nocs"), official("cleanpose_nocs"), "f.pt")


def test_housecat_file_into_nocs_net_names_the_dataset_config():
    with pytest.raises(WrongVariantError) as err:
        ck.check_state_dict(official("cleanpose_nocs"), official("cleanpose_housecat6d"), "epoch_150.pt")
    msg = str(err.value)
    assert "10 categories (HouseCat6D)" in msg and "built for 6" in msg
    assert "use the dataset config cleanpose_housecat6d" in msg
    assert "('nocs_predictor.atten_mlp.4.weight', (1152, 512, 1), (1920, 512, 1))" in msg


def test_published_tolerances():
    expected = official("cleanpose_nocs")
    # missing num_batches_tracked is tolerated (gorilla's strict load does the same)
    ck.check_state_dict(expected, {k: v for k, v in expected.items() if "num_batches_tracked" not in k}, "f")
    # distillation keys are accepted by a network built without the distillation head
    no_distill = {
        k: v for k, v in expected.items() if k != "pointnet2ulip" and not k.startswith("projector_pts.")
    }
    assert len(no_distill) == 747
    ck.check_state_dict(no_distill, expected, "f")


# ------------------------------------------------------------------------------- load_into on a real module


class _Tiny(nn.Module):
    """Official-style names at small sizes: BN (num_batches_tracked), a NOCS head, a front-door part."""

    def __init__(self, cat_num=2):
        super().__init__()
        self.feature_mlp = nn.Sequential(nn.Conv1d(4, 3, 1), nn.BatchNorm1d(3))
        self.nocs_predictor = nn.Module()
        self.nocs_predictor.atten_mlp = nn.Sequential(*[nn.Identity()] * 4, nn.Conv1d(3, cat_num * 192, 1))
        self.FD_Encoder = nn.Linear(3, 3)


def test_load_into_copies_values_and_keeps_missing_counters():
    src, dst = _Tiny(), _Tiny()
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_()
    src.feature_mlp[1].running_mean.fill_(0.5)
    sd = {k: v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}
    sd["pointnet2ulip"] = torch.zeros(128, 768)  # training-only, ignored
    ck.load_into(dst, sd, "tiny")
    for k, v in dst.state_dict().items():
        if "num_batches_tracked" not in k:
            assert torch.equal(v, src.state_dict()[k]), k


# ---------------------------------------------------------------------------------- published file reading


def _write(path, obj):
    torch.save(obj, path)
    return path


def test_published_file_unwrapping(tmp_path):
    sd = _Tiny().state_dict()
    for wrapped in (
        sd,
        {"model": sd},
        {"state_dict": sd},
        {f"module.{k}": v for k, v in sd.items()},
        dict(sd, **{"ULIP_model.point_encoder.weight": torch.zeros(2)}),
    ):
        loaded = ck.load_published_state_dict(_write(tmp_path / "e.pt", wrapped))
        assert list(loaded) == list(sd)
    ck.load_into(_Tiny(), loaded, "e.pt")


def test_truncated_published_file(tmp_path):
    path = _write(tmp_path / "epoch_30.pt", _Tiny().state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidCheckpointFile) as err:
        ck.load_published_state_dict(path)
    assert str(err.value).startswith(f"not a valid checkpoint: {path}: truncated or corrupt file")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_non_checkpoint_files(tmp_path):
    with pytest.raises(InvalidCheckpointFile, match="file not found"):
        ck.load_published_state_dict(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(InvalidCheckpointFile, match=r"not a valid checkpoint: .*text\.pt"):
        ck.load_published_state_dict(tmp_path / "text.pt")
    with pytest.raises(InvalidCheckpointFile, match="expected a state_dict"):
        ck.load_published_state_dict(_write(tmp_path / "list.pt", [torch.zeros(1)]))


class _Shell:
    def __reduce__(self):
        return (os.system, ("true",))


def test_published_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Shell()}, path, pickle_module=pickle)
    with pytest.raises(InvalidCheckpointFile, match="refused by the weights-only loader"):
        ck.load_published_state_dict(path)


# ---------------------------------------------------------------------------------- DINOv2 hub weights


class _Dino(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.norm = nn.LayerNorm(dim)


class _WithDino(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.rgb_extractor = _Dino(dim)
        self.feature_mlp = nn.Linear(dim, 2)


def test_dinov2_hub_file(tmp_path):
    hub = {k: torch.randn(v.shape) for k, v in _Dino().state_dict().items()}
    net = ck.load_dinov2_weights(_WithDino(), _write(tmp_path / "dinov2_vits14_pretrain.pth", hub))
    assert torch.equal(net.rgb_extractor.pos_embed, hub["pos_embed"])
    before = net.rgb_extractor.mask_token.clone()
    no_mask = {k: v * 2 for k, v in hub.items() if k != "mask_token"}
    ck.load_dinov2_weights(net, _write(tmp_path / "nomask.pth", no_mask))
    assert torch.equal(net.rgb_extractor.mask_token, before) and torch.equal(
        net.rgb_extractor.norm.weight, no_mask["norm.weight"]
    )
    with pytest.raises(WrongVariantError, match="register tokens"):
        reg = dict(hub, register_tokens=torch.zeros(1, 4, 8))
        ck.load_dinov2_weights(net, _write(tmp_path / "reg.pth", reg))
    wide = {k: torch.zeros(*v.shape[:-1], 16) for k, v in hub.items()}
    with pytest.raises(StateDictMismatch, match="embedding width 16 != 8: not the ViT-S/14"):
        ck.load_dinov2_weights(net, _write(tmp_path / "vitb.pth", wide))


# ---------------------------------------------------------------------------------- our format: errors


def test_our_format_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2)}, path)
    with pytest.raises(CheckpointFormatError, match="no 'cleanpose' metadata header"):
        ck.load_checkpoint(path)
    header = {"format": ck.FORMAT_NAME, "version": 99, "variant": "cleanpose", "config": {}}
    save_file({"a": torch.zeros(2)}, path, metadata={"cleanpose": json.dumps(header)})
    with pytest.raises(CheckpointFormatError, match=r"version 99 is not supported .*update cleanpose_model"):
        ck.load_checkpoint(path)
    save_file({"a": torch.zeros(2)}, path, metadata={"cleanpose": json.dumps(dict(header, format="other"))})
    with pytest.raises(CheckpointFormatError, match="header format is 'other'"):
        ck.load_checkpoint(path)
    pth = _write(tmp_path / "epoch_30.pth", {"a": torch.zeros(2)})
    with pytest.raises(CheckpointFormatError, match="convert it with `cleanpose-convert"):
        ck.load_checkpoint(pth)
    header["version"] = ck.FORMAT_VERSION
    save_file({"a": torch.zeros(1000)}, path, metadata={"cleanpose": json.dumps(header)})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(InvalidCheckpointFile, match=f"not a valid checkpoint: {path}: truncated or corrupt"):
        ck.load_checkpoint(path)


def test_header_names_the_family(tmp_path):
    # New headers carry "family"; headers written before it only "variant", whose value is the family name.
    assert ck.header_family({"family": "selfsup", "variant": "x"}) == "selfsup"
    assert ck.header_family({"variant": "agpose"}) == "agpose"
    path = tmp_path / "m.safetensors"
    header = {"format": ck.FORMAT_NAME, "version": ck.FORMAT_VERSION, "config": {}}
    save_file({"a": torch.zeros(2)}, path, metadata={"cleanpose": json.dumps(header)})
    with pytest.raises(CheckpointFormatError, match=r"names no model family \('family' or 'variant'\)"):
        ck.read_header(path)
    save_file({"a": torch.zeros(2)}, path, metadata={"cleanpose": json.dumps(dict(header, family="selfsup"))})
    assert ck.header_family(ck.read_header(path)) == "selfsup"
    with pytest.raises(WrongVariantError, match="holds a 'selfsup' model, not a CleanPose/AG-Pose network"):
        ck.load_checkpoint(path)


def test_any_family_writes_and_reads_the_format(tmp_path):
    path = tmp_path / "other.safetensors"
    tensors = {"encoder.weight": torch.arange(6.0).reshape(2, 3)}
    header = ck.write_checkpoint(path, tensors, {"width": 3}, {"family": "selfsup", "source": "test"})
    assert header["format"] == ck.FORMAT_NAME and header["version"] == ck.FORMAT_VERSION
    read, loaded = ck.read_checkpoint(path)
    assert read == header and ck.header_family(read) == "selfsup" and read["config"] == {"width": 3}
    assert torch.equal(loaded["encoder.weight"], tensors["encoder.weight"])
    assert ck.read_checkpoint(path, tensors=False)[1] is None
    with pytest.raises(ValueError, match="must name the model family"):
        ck.write_checkpoint(path, tensors, {}, {"source": "test"})
    with pytest.raises(ValueError, match="may not override 'version'"):
        ck.write_checkpoint(path, tensors, {}, {"family": "selfsup", "version": 2})
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="may not override 'family'"):
        ck.save_checkpoint(tmp_path / "n.safetensors", net, None, metadata={"family": "selfsup"})
