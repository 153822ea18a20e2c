import pickle
import shutil

import numpy as np
import pytest
import torch
from nocs_fixture import make_housecat_root, make_nocs_root, make_nocs_test_root, rot_x, rot_y

from cleanpose_model.preprocess.reference import remap_choose
from cleanpose_training.datasets import (
    DatasetError,
    HouseCat6DTestDataset,
    HouseCat6DTrainingDataset,
    NOCSTestDataset,
    NOCSTrainingDataset,
    fill_missing,
    get_bbox,
    safe_pickle,
)
from cleanpose_training.datasets.augment import augment_rgb, color_jitter
from cleanpose_training.datasets.common import canonicalise_symmetric_rotation, outlier_mask


@pytest.fixture(scope="module")
def nocs_root(tmp_path_factory):
    return make_nocs_root(tmp_path_factory.mktemp("nocs"))


# --------------------------------------------------------------------------------------------- get_bbox


def test_get_bbox_window_sizes():
    assert get_bbox((100, 100, 180, 180)) == (80, 200, 80, 200)  # side 80 -> 120
    r0, r1, c0, c1 = get_bbox((100, 100, 179, 150))  # side 79 -> 80
    assert (r1 - r0, c1 - c0) == (80, 80)
    r0, r1, c0, c1 = get_bbox((0, 0, 470, 600))  # capped at 440, even when the box is larger
    assert (r1 - r0, c1 - c0) == (440, 440)


def test_get_bbox_shifts_into_image():
    assert get_bbox((0, 0, 50, 50)) == (0, 80, 0, 80)  # centre 25, half 40 -> shifted down/right
    assert get_bbox((470, 630, 480, 640)) == (440, 480, 600, 640)  # shifted up/left, not shrunk
    # HouseCat6D image size: rows 852, cols 1096
    assert get_bbox((830, 1080, 852, 1096), 852, 1096) == (812, 852, 1056, 1096)


def test_remap_choose_floor():
    window = (0, 448, 0, 448)  # ratio 0.5
    choose = np.array([0, 1, 2, 3, 448, 449 + 448])
    assert remap_choose(choose, window[1] - window[0]).tolist() == [0, 0, 1, 1, 0, 224]


# ------------------------------------------------------------------------------------------ depth filling


def test_fill_missing_fills_hole():
    depth = np.full((60, 80), 800, dtype=np.uint16)
    depth[30:34, 40:44] = 0
    filled = fill_missing(depth, 1000.0, 1)
    assert filled.dtype == np.float32
    assert np.all(filled[30:34, 40:44] > 0)
    np.testing.assert_allclose(filled[30:34, 40:44], 800.0, atol=1.0)
    np.testing.assert_allclose(filled, 800.0, atol=1.0)


def test_fill_missing_drops_beyond_3m_and_keeps_top_rows_empty():
    depth = np.zeros((40, 40), dtype=np.uint16)
    depth[20:, :] = 1000
    depth[25:28, 5:8] = 3500  # beyond max_depth 3 m: inverted value is negative -> invalid after filling
    filled = fill_missing(depth, 1000.0, 1)
    # the near-range cross dilation grows the surface by 3 rows; above that nothing is invented
    assert np.all(filled[:17] == 0)
    assert np.all(filled[25:28, 5:8] < 3000)


# ------------------------------------------------------------------------- symmetry and outlier masks


def test_canonicalise_removes_rotation_about_object_y():
    tilt = rot_x(0.4) @ rot_y(-0.2) @ rot_x(0.1)
    a = canonicalise_symmetric_rotation(tilt @ rot_y(0.3))
    b = canonicalise_symmetric_rotation(tilt @ rot_y(2.5))
    np.testing.assert_allclose(a, b, atol=1e-9)
    c = canonicalise_symmetric_rotation(rot_x(0.2) @ rot_y(0.7))
    np.testing.assert_allclose(c, rot_x(0.2), atol=1e-9)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose((a @ [0, 1, 0]), tilt @ [0, 1, 0], atol=1e-9)


def test_outlier_mask_hand_built():
    R = rot_y(np.pi / 2)  # object x axis points along camera -z
    t = np.array([0.0, 0.0, 1.0])
    size = np.array([0.3, 0.4, 0.0])  # norm 0.5
    model = np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    pts = np.array(
        [
            [0.0, 0.0, 1.0],  # at the centre -> qo (0,0,0), inlier
            [0.0, 0.0, 0.9],  # camera -0.1 z -> object +0.1 x -> qo (0.2,0,0): inlier
            [0.0, 0.1, 1.0],  # qo (0, 0.2, 0): 0.2 from both model points -> outlier at 0.1
            [0.0, 0.04, 1.0],  # qo (0, 0.08, 0): 0.08 < 0.1 -> inlier
        ]
    )
    qo, mask = outlier_mask(pts, R, t, size, model, threshold=0.1)
    np.testing.assert_allclose(qo[1], [0.2, 0.0, 0.0], atol=1e-6)
    assert mask.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert outlier_mask(pts, R, t, size, model, threshold=0.25)[1].tolist() == [1.0] * 4


# -------------------------------------------------------------------------------------- augmentation


def test_colour_augmentation_is_reproducible_and_changes_image():
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    a = augment_rgb(img, np.random.default_rng(5))
    b = augment_rgb(img, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)
    # identity factors leave the image unchanged
    same = color_jitter(img, np.random.default_rng(0), 0.0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(same, img)


# --------------------------------------------------------------------------------------- NOCS training


@pytest.mark.parametrize("data_type", ["syn", "real_withLabel"])
def test_nocs_training_sample_contract(nocs_root, data_type):
    ds = NOCSTrainingDataset(nocs_root, data_type, num_img_per_epoch=6, seed=3)
    assert len(ds) == 6
    s = ds[0]
    expect = {
        "pts": ((1024, 3), torch.float32),
        "rgb": ((3, 224, 224), torch.float32),
        "choose": ((1024,), torch.int64),
        "category_label": ((1,), torch.int64),
        "model": ((64, 3), torch.float32),
        "qo": ((1024, 3), torch.float32),
        "translation_label": ((3,), torch.float32),
        "rotation_label": ((3, 3), torch.float32),
        "size_label": ((3,), torch.float32),
        "pc_mask": ((1024,), torch.float32),
    }
    assert set(s) == set(expect)
    for k, (shape, dtype) in expect.items():
        assert tuple(s[k].shape) == shape, k
        assert s[k].dtype == dtype, k
    assert int(s["choose"].min()) >= 0 and int(s["choose"].max()) < 224 * 224
    # ±5 mm noise around the flat patches at 0.5 / 0.6 m
    z = s["pts"][:, 2].numpy()
    assert np.all(np.abs(z - np.round(z, 1)) <= 0.0051)
    # qo and pc_mask agree with the label
    R, t, sz = (s[k].double().numpy() for k in ("rotation_label", "translation_label", "size_label"))
    qo = (s["pts"].double().numpy() - t) / (np.linalg.norm(sz) + 1e-8) @ R
    np.testing.assert_allclose(s["qo"].numpy(), qo, atol=1e-5)
    d = np.linalg.norm(qo[:, None] - s["model"].double().numpy()[None], axis=2).min(1)
    np.testing.assert_array_equal(s["pc_mask"].numpy(), (d < 0.1).astype(np.float32))


def test_nocs_training_symmetric_rotation_canonicalised(nocs_root):
    ds = NOCSTrainingDataset(nocs_root, "syn", num_img_per_epoch=-1, seed=0, augment=False)
    seen = set()
    for e in range(8):
        ds.set_epoch(e)
        for i in range(len(ds)):
            s = ds[i]
            cat = int(s["category_label"][0])
            seen.add(cat)
            R = s["rotation_label"].double().numpy()
            if cat == 0:  # bottle, stored rot_x(0.2) @ rot_y(0.7): the y part is removed
                np.testing.assert_allclose(R, rot_x(0.2), atol=1e-6)
                np.testing.assert_allclose(s["size_label"].numpy(), [0.1, 0.14, 0.1], atol=1e-6)
            else:  # can (id 3) is symmetric too, stored rot_x(0.3) has no y part
                np.testing.assert_allclose(R, rot_x(0.3), atol=1e-6)
    assert seen == {0, 3}


def test_nocs_training_mug_not_canonicalised(nocs_root):
    ds = NOCSTrainingDataset(nocs_root, "real_withLabel", seed=0, augment=False)
    for e in range(10):
        ds.set_epoch(e)
        s = ds[0]
        if int(s["category_label"][0]) == 1:  # bowl: symmetric
            np.testing.assert_allclose(s["rotation_label"].numpy(), rot_x(0.2), atol=1e-6)
        else:
            assert int(s["category_label"][0]) == 5
            np.testing.assert_allclose(s["rotation_label"].numpy(), rot_x(0.3), atol=1e-6)


def test_nocs_training_reproducible_per_index(nocs_root):
    a = NOCSTrainingDataset(nocs_root, "syn", num_img_per_epoch=4, seed=11)
    b = NOCSTrainingDataset(nocs_root, "syn", num_img_per_epoch=4, seed=11)
    for k in ("pts", "rgb", "choose"):
        assert torch.equal(a[2][k], b[2][k])
    b.set_epoch(1)
    assert not torch.equal(a[2]["pts"], b[2]["pts"])


# ------------------------------------------------------------------------------------------ errors


def test_clear_error_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="NOCS dataset root"):
        NOCSTrainingDataset(tmp_path / "nope", "syn")


def test_clear_error_missing_list_and_models(tmp_path, nocs_root):
    root = tmp_path / "copy"
    shutil.copytree(nocs_root, root)
    (root / "obj_models" / "real_train.pkl").unlink()
    with pytest.raises(DatasetError, match=r"missing object model pickle: expected a file at .*real_train"):
        NOCSTrainingDataset(root, "real_withLabel")
    (root / "camera" / "train_list.txt").unlink()
    with pytest.raises(DatasetError, match=r"camera[/\\]train_list\.txt"):
        NOCSTrainingDataset(root, "syn")


def test_clear_error_malformed_label_and_images(tmp_path, nocs_root):
    root = tmp_path / "copy"
    shutil.copytree(nocs_root, root)
    lbl = root / "real" / "train" / "scene_1" / "0000_label.pkl"
    with open(lbl, "wb") as f:
        pickle.dump({"class_ids": [1]}, f)
    ds = NOCSTrainingDataset(root, "real_withLabel", augment=False)
    with pytest.raises(DatasetError, match=r"0000_label\.pkl' lacks keys \['bboxes'"):
        ds[0]
    (root / "real" / "train" / "scene_1" / "0001_mask.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot decode instance mask .*0001_mask\.png"):
        ds[1]
    (root / "real" / "train" / "scene_1" / "0000_color.png").unlink()
    with pytest.raises(DatasetError, match=r"colour image of the first entry"):
        NOCSTrainingDataset(root, "real_withLabel")


def test_safe_pickle_rejects_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"builtins\.eval"):
        safe_pickle.load(p)
    q = tmp_path / "ok.pkl"
    q.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.float32), "b": [1, 2], "c": np.float64(2.0)}))
    assert safe_pickle.load(q)["a"].dtype == np.float32


def test_synthetic_layout_with_intrinsics_file(tmp_path, nocs_root):
    root = tmp_path / "synth"
    shutil.copytree(nocs_root / "real", root)
    shutil.copytree(nocs_root / "obj_models", root / "obj_models")
    (root / "obj_models" / "real_train.pkl").rename(root / "obj_models" / "train.pkl")
    with pytest.raises(DatasetError, match="synthetic intrinsics"):
        NOCSTrainingDataset(root, "synthetic")
    np.savetxt(root / "intrinsics.txt", [[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]])
    ds = NOCSTrainingDataset(root, "synthetic", augment=False)
    assert ds.intrinsics == (600.0, 600.0, 320.0, 240.0)
    assert ds[0]["pts"].shape == (1024, 3)


# ------------------------------------------------------------------------------------------ test split


def test_nocs_test_dataset_drops_small_detections(tmp_path):
    root = make_nocs_test_root(tmp_path / "t")
    ds = NOCSTestDataset(root, "REAL275")
    assert len(ds) == 2
    item = ds[0]
    assert item["pts"].shape == (2, 1024, 3) and item["rgb"].shape == (2, 3, 224, 224)
    assert item["choose"].dtype == torch.int64 and item["category_label"].tolist() == [0, 5]
    gt = item["gt"]
    assert gt["pred_class_ids"].tolist() == [1, 6] and gt["pred_scores"].tolist() == [0.9, 0.8]
    assert gt["gt_RTs"].shape == (2, 4, 4) and gt["gt_handle_visibility"].tolist() == [1, 0]
    # no noise at test time: z is exactly the patch depth (the filled hole keeps 0.5 m)
    z = item["pts"][0, :, 2].numpy()
    np.testing.assert_allclose(z, 0.5, atol=2e-3)


def test_nocs_test_dataset_missing_results(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match=r"results/nocs_results/real_test/results_\*\.pkl"):
        NOCSTestDataset(tmp_path / "data", "REAL275")


# ----------------------------------------------------------------------------------------- HouseCat6D


def test_housecat_train_and_test(tmp_path):
    root = make_housecat_root(tmp_path / "hc", h=480, w=640)
    train = HouseCat6DTrainingDataset(root, seed=1, augment=False)
    assert len(train) == 2
    s = train[0]
    assert set(s) == {
        "pts",
        "rgb",
        "choose",
        "category_label",
        "translation_label",
        "rotation_label",
        "size_label",
    }
    assert s["pts"].shape == (1024, 3) and s["rgb"].shape == (3, 224, 224)
    cat = int(s["category_label"][0])
    assert cat in (0, 1)
    if cat == 1:  # bottle is symmetric in HouseCat6D (ids 1, 2, 7)
        np.testing.assert_allclose(
            s["rotation_label"].numpy(), canonicalise_symmetric_rotation(rot_y(0.4) @ rot_x(0.1)), atol=1e-6
        )
    test = HouseCat6DTestDataset(root)
    item = test[1]
    assert item["pts"].shape == (2, 1024, 3)
    gt = item["gt"]
    assert gt["pred_scores"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(np.linalg.norm(gt["gt_scales"], axis=1), 1.0)
    assert item["result_name"].startswith("test_scene1/")
