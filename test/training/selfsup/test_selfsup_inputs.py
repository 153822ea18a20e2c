"""Stage-2 inputs other than NOCS folders (Wild6D's layout, rosbag2 recordings), the ablation switches, the
logging outputs and torchrun: each read the way the node reads the same data."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from selfsup_inputs import module_inputs

from cleanpose_training.selfsup import train
from cleanpose_training.selfsup.data import BAG_TOPICS, UnlabeledBag, UnlabeledNocs, UnlabeledWild6D
from cleanpose_training.synthetic.__main__ import generate_bag

REPO = Path(__file__).resolve().parents[3]


nocs, config = module_inputs("nocs", frames=2, seed=3, width=128, height=96, stage2_batch=2)


def write_wild6d(nocs: Path, out: Path) -> tuple[Path, str, list[tuple[str, int]]]:
    """The NOCS fixture's objects of its first category rewritten in Wild6D's layout: one sequence per object
    instance, one frame per image it appears in (mask = that instance), ``metadata`` K stored column-major.
    Colour goes in PNG bytes under the .jpg name (cv2 reads by content): lossless, so samples compare.
    Returns the root, the category name and the (NOCS frame, instance) of each Wild6D frame in read order."""
    from cleanpose_model.categories import NOCS

    intr = yaml.safe_load((nocs / "intrinsics.yaml").read_text())
    K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1.0]])
    items = UnlabeledNocs(nocs, "train", seed=0, image_size=64, n_points=128).items
    cat = items[0][2]
    frames: dict[int, list[tuple[str, int]]] = {}
    for rel, inst, c in items:
        if c != cat:
            continue
        seq = out / f"obj{inst:02d}" / "seq0"
        (seq / "images").mkdir(parents=True, exist_ok=True)
        meta = {"K": K.T.reshape(-1).tolist(), "w": 128, "h": 96, "fps": 30}
        (seq / "metadata").write_text(json.dumps(meta))
        i = len(frames.setdefault(inst, []))
        mask = cv2.imread(str(nocs / f"{rel}_mask.png"), cv2.IMREAD_UNCHANGED)
        mask = mask[..., 2] if mask.ndim == 3 else mask
        cv2.imwrite(str(seq / "images" / f"{i}-mask.png"), ((mask == inst) * 255).astype(np.uint8))
        shutil.copy(nocs / f"{rel}_depth.png", seq / "images" / f"{i}-depth.png")
        png = cv2.imencode(".png", cv2.imread(str(nocs / f"{rel}_color.png")))[1]
        (seq / "images" / f"{i}.jpg").write_bytes(png.tobytes())
        frames[inst].append((rel, inst))
    return out, NOCS.names[cat], [f for inst in sorted(frames) for f in frames[inst]]


def test_wild6d_layout_reads_the_objects_as_the_nocs_folder_holds_them(nocs, tmp_path):
    from cleanpose_model.categories import NOCS
    from cleanpose_training.datasets.common import read_mask_channel, read_rgb
    from cleanpose_training.datasets.depth_fill import load_depth
    from cleanpose_training.selfsup.data import object_sample

    root, name, frames = write_wild6d(nocs, tmp_path / "wild6d" / "cat")
    w6 = UnlabeledWild6D(root, name, seed=0, image_size=64, n_points=128)
    assert len(w6) == len(frames) > 0
    intr = yaml.safe_load((nocs / "intrinsics.yaml").read_text())
    K = np.array([[intr["fx"], 0, intr["cx"]], [0, intr["fy"], intr["cy"]], [0, 0, 1.0]])
    cat = NOCS.names.index(name)
    compared = 0
    for j, (rel, inst) in enumerate(frames):
        a = w6[j]
        p = nocs / rel
        b = object_sample(
            read_rgb(f"{p}_color.png"), load_depth(p).astype(np.float32) / 1000.0, K,
            read_mask_channel(f"{p}_mask.png") == inst, cat, np.random.default_rng([0, j]), 64, 128, 50,
        )  # fmt: skip
        assert (a is None) == (b is None)
        if a is not None:  # same pixels, depth and K (column-major metadata read back right): same sample
            np.testing.assert_array_equal(a.pts, b.pts)
            np.testing.assert_array_equal(a.rgb, b.rgb)
            assert a.category == cat and a.target is None
            compared += 1
    assert compared > 0
    with pytest.raises(ValueError, match="not one of"):
        UnlabeledWild6D(root, "teapot", seed=0, image_size=64, n_points=128)


def test_wild6d_sequence_list_selects_sequences(nocs, tmp_path):
    root, name, frames = write_wild6d(nocs, tmp_path / "w")
    lst = tmp_path / "train_list_all.txt"
    lst.write_text("0_0\n")
    first = sorted(p.name for p in root.iterdir())[0]
    n_first = len(list((root / first / "seq0" / "images").glob("*-mask.png")))
    assert len(UnlabeledWild6D(root, name, 0, 64, 128, sequence_list=lst)) == n_first
    assert len(UnlabeledWild6D(root, name, 0, 64, 128)) == len(frames)


def test_stage2_trains_on_wild6d(config, nocs, tmp_path):
    root, name, _ = write_wild6d(nocs, tmp_path / "w")
    args = ["--stage", "2", "--config", str(config), "--iterations", "1", "--no-progress", "--out"]
    assert train.main([*args, str(tmp_path / "run"), "--wild6d", str(root), "--wild6d-category", name]) == 0
    assert (tmp_path / "run" / train.MODEL_FILE).is_file()


def test_bag_topics_are_the_launch_defaults():
    """The bag reader's default topics are the node's inputs as launch/cleanpose.launch.py remaps them (and
    what the synthetic bags and the replay tool use)."""
    tree = ast.parse((REPO / "launch" / "cleanpose.launch.py").read_text())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            kw = {k.arg: k.value for k in node.keywords}
            if node.args and "default_value" in kw and isinstance(kw["default_value"], ast.Constant):
                defaults[node.args[0].value] = kw["default_value"].value
    launch = {"image": "image", "depth": "depth", "info": "camera_info", "detections": "detections"}
    assert {role: defaults[arg] for role, arg in launch.items()} == BAG_TOPICS
    from cleanpose_tools.replay import TopicConfig

    assert TopicConfig().required() == BAG_TOPICS


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bag_in") / "rec"
    generate_bag(out, frames=3, seed=2, width=128, height=96, shadows=False, objects=(2, 3))
    return out


def test_bag_objects_match_the_recorded_masks(bag):
    data = UnlabeledBag([bag], seed=0, image_size=64, n_points=128)
    assert len(data.frames) == 3 and len(data) >= 3
    s = next(x for x in (data[i] for i in range(len(data))) if x is not None)
    assert s.rgb.shape == (3, 64, 64) and s.pts.shape == (128, 3) and 0.2 < float(s.pts[:, 2].mean()) < 3
    twice = UnlabeledBag([bag, bag], seed=0, image_size=64, n_points=128)
    assert len(twice) == 2 * len(data)
    with pytest.raises(ValueError, match="lacks topic"):
        UnlabeledBag([bag], 0, 64, 128, topics={"image": "/robot/rgb"})


def test_stage2_trains_on_a_bag_and_reads_no_pose_topic(config, bag, tmp_path):
    """Renaming the ground-truth topic away (a bag without poses) leaves the trained weights bit-identical."""
    from rosbags.rosbag2 import Reader, Writer

    from cleanpose_training.synthetic import bag_writer

    nogt = tmp_path / "nogt"
    with Reader(bag) as reader, Writer(nogt, version=8) as writer:
        conns = {}
        for c in reader.connections:
            if c.topic == bag_writer.TOPIC_GT:
                continue
            conns[c.id] = writer.add_connection(c.topic, c.msgtype, typestore=None, msgdef=c.msgdef.data,
                                                rihs01=c.digest)  # fmt: skip
        for c, t, raw in reader.messages():
            if c.id in conns:
                writer.write(conns[c.id], t, raw)
    args = ["--stage", "2", "--config", str(config), "--iterations", "2", "--no-progress"]
    for name, src in (("gt", bag), ("nogt", nogt)):
        assert train.main([*args, "--out", str(tmp_path / name), "--bag", str(src)]) == 0
    a = torch.load(tmp_path / "gt" / train.STATE_FILE, weights_only=True)["net"]
    b = torch.load(tmp_path / "nogt" / train.STATE_FILE, weights_only=True)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "gt" / train.PLOT_FILE).stat().st_size > 1000


def test_ablation_switches(config, nocs, tmp_path):
    cfg = train.SelfSupTrainConfig.from_yaml(config)
    cfg.stage2.ablation = "no_cfco"
    train.apply_ablation(cfg)
    assert cfg.stage2.weights.coarse == cfg.stage2.weights.fine == 0 and cfg.stage2.weights.cycle_pt > 0
    cfg = train.SelfSupTrainConfig.from_yaml(config)
    cfg.stage2.ablation = "coarse_only"
    train.apply_ablation(cfg)
    assert cfg.stage2.weights.fine == 0 and cfg.stage2.weights.coarse > 0
    cfg.stage2.ablation = "bogus"
    with pytest.raises(ValueError, match="unknown ablation"):
        train.apply_ablation(cfg)
    # fixed_prior: the decoded shape no longer depends on the image; frozen_memory: codes do not move.
    cfg = train.SelfSupTrainConfig.from_yaml(config)
    cfg.stage2.data, cfg.stage2.ablation = str(nocs), "fixed_prior"
    tr = train.SelfSupTrainer(cfg, 2, tmp_path / "fp", progress=False)
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(2, 3, 64, 64, generator=g)
    choose = torch.randint(0, 64 * 64, (2, 256), generator=g)
    out = tr.net(rgb, choose, torch.tensor([1, 1]))
    # equal up to the straight-through estimator's rounding (z_e + (e - z_e) is e to float precision)
    torch.testing.assert_close(out["shape"][0], out["shape"][1], atol=1e-5, rtol=0)
    codes = tr.net.memory.codes.clone()
    tr.run(2)
    assert torch.equal(tr.net.memory.codes, codes) and not tr.cfg.stage2.update_memory
    full = train.SelfSupTrainer(
        train.SelfSupTrainConfig.from_yaml(config), 1, tmp_path / "s1", progress=False
    ).net
    out = full(rgb, choose, torch.tensor([1, 1]))
    assert (out["shape"][0] - out["shape"][1]).abs().max() > 1e-3  # the check above can fail


def test_time_budget_stops_and_saves(config, tmp_path):
    assert train.main(["--stage", "1", "--config", str(config), "--out", str(tmp_path), "--iterations",
                       "50", "--time-budget", "0.01", "--no-progress"]) == 0  # fmt: skip
    rows = list(csv.DictReader((tmp_path / train.SCALARS_FILE).open()))
    assert len(rows) == 1 and torch.load(tmp_path / train.STATE_FILE, weights_only=True)["step"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_train_stage1(config, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "cleanpose_training.selfsup.train", "--stage", "1",
           "--config", str(config), "--out", str(tmp_path), "--iterations", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = torch.load(tmp_path / train.STATE_FILE, weights_only=True)
    assert state["step"] == 2 and state["cursors"] == [4, 4]
    rows = list(csv.DictReader((tmp_path / train.SCALARS_FILE).open()))
    assert [r["step"] for r in rows] == ["1", "2"]  # rank 0 alone writes
