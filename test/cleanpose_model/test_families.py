"""The family registry and the one source of category lists: every other list of categories in the tree is the
registry's object, not a copy."""

from __future__ import annotations

import pytest

from cleanpose_model import categories, config
from cleanpose_model.categories import EVALUATOR_SYMMETRIC, HOUSECAT6D, NOCS, CategorySet
from cleanpose_model.families import AGPOSE, CLEANPOSE, FAMILIES, SELFSUP, Estimator, check_mode, get_family
from cleanpose_model.net import CleanPoseNet
from cleanpose_ros.class_map import DEFAULT_CLASS_MAP, ClassMap
from cleanpose_training.datasets import common
from cleanpose_training.evaluation import metrics
from cleanpose_training.synthetic import shapes


def test_published_category_facts():
    # Class ids of the published label files and the symmetric sets of the published training code.
    assert NOCS.names == ("bottle", "bowl", "camera", "can", "laptop", "mug")
    assert NOCS.symmetric_ids == (0, 1, 3) and NOCS.symmetric_names == ("bottle", "bowl", "can")
    assert HOUSECAT6D.names[:3] == ("box", "bottle", "can") and len(HOUSECAT6D) == 10
    assert HOUSECAT6D.symmetric_ids == (1, 2, 7)
    assert NOCS.synset == ("BG", *NOCS.names)
    # evaluation.md §2.3: the CATRE / HouseCat6D evaluators' one list
    assert frozenset({"bottle", "bowl", "can", "glass"}) == EVALUATOR_SYMMETRIC


def test_category_set_rejects_bad_lists():
    with pytest.raises(ValueError, match="duplicate"):
        CategorySet("x", "X", ("a", "a"), frozenset())
    with pytest.raises(ValueError, match=r"symmetric categories \['z'\]"):
        CategorySet("x", "X", ("a", "b"), frozenset({"z"}))
    assert categories.dataset_of(HOUSECAT6D.names) is HOUSECAT6D
    assert categories.dataset_with(6) is NOCS and categories.dataset_with(7) is None


def test_training_and_ros_constants_are_the_registry_objects():
    assert config.NOCS_CATEGORIES is NOCS.names
    assert common.NOCS_CATEGORIES is NOCS.names and common.HOUSECAT_CATEGORIES is HOUSECAT6D.names
    assert common.NOCS_SYM_IDS is NOCS.symmetric_ids and common.HOUSECAT_SYM_IDS is HOUSECAT6D.symmetric_ids
    assert shapes.CATEGORIES is NOCS.names and shapes.SYMMETRIC is NOCS.symmetric
    assert metrics.NOCS_SYNSET is NOCS.synset and metrics.HOUSECAT_SYNSET is HOUSECAT6D.synset
    assert metrics.NOCS_PROTOCOL.iou_sym is NOCS.symmetric and metrics.NOCS_PROTOCOL.rot_sym is NOCS.symmetric
    assert metrics.NOCS_PROTOCOL.catre_iou_sym is EVALUATOR_SYMMETRIC
    assert metrics.HOUSECAT_PROTOCOL.rot_sym is EVALUATOR_SYMMETRIC
    # The detector's NOCS Mask R-CNN ids (1-based) map onto the registry's class ids.
    cmap = ClassMap(NOCS.names, DEFAULT_CLASS_MAP)
    assert [cmap.lookup(str(i)) for i in range(1, 7)] == list(range(6)) and cmap.lookup("cup") == 5


def test_registry_entries():
    assert FAMILIES == {"cleanpose": CLEANPOSE, "agpose": AGPOSE, "selfsup": SELFSUP}
    for name, info in FAMILIES.items():
        assert info.name == name
        assert issubclass(info.estimator, Estimator)
        assert info.categories == info.datasets[0].names and info.symmetric is info.datasets[0].symmetric
    for info in (CLEANPOSE, AGPOSE):  # the two published families share one network class and its inputs
        assert info.inputs.image_size == 224 and info.inputs.n_points == 1024
        assert info.build_net is CleanPoseNet
    assert SELFSUP.inputs.image_size == 256  # the self-supervised paper's crop size
    assert CLEANPOSE.datasets == (NOCS, HOUSECAT6D) and AGPOSE.datasets == (NOCS,)
    assert get_family("agpose") is AGPOSE
    with pytest.raises(
        KeyError, match=r"unknown model family 'nosuch'; registered: \['agpose', 'cleanpose', 'selfsup'\]"
    ):
        get_family("nosuch")


def test_family_configs_are_shipped_and_name_the_family():
    for info in (CLEANPOSE, AGPOSE):
        for name in info.configs:
            cfg = config.ModelConfig.named(name)
            assert cfg.variant == info.name, name
            assert categories.dataset_of(cfg.categories) in info.datasets, name


def test_modes():
    assert check_mode("exact") == "exact" and check_mode("fast") == "fast"
    assert check_mode("fp32") == "exact"  # the ROS parameter's name of the exact mode
    with pytest.raises(ValueError, match="mode must be one of"):
        check_mode("fp16")


def test_selfsup_configs_are_shipped():
    from cleanpose_model.selfsup.config import SelfSupConfig

    for name in SELFSUP.configs:
        cfg = SelfSupConfig.named(name)
        assert categories.dataset_of(cfg.categories) in SELFSUP.datasets, name
