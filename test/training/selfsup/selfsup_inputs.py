"""Inputs of the selfsup training tests: a small synthetic NOCS folder and the smoke config with test batch
sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cleanpose_training.synthetic.__main__ import generate_nocs

SMOKE = Path(__file__).resolve().parents[3] / "training" / "configs" / "selfsup_smoke.yaml"


def nocs_folder(root: Path, frames: int, seed: int, width: int, height: int) -> Path:
    """One scene of `frames` frames (train split, no shadows) written to `root`."""
    generate_nocs(
        root, split="train", scenes=1, frames=frames, seed=seed, width=width, height=height, shadows=False
    )
    return root


def smoke_config(path: Path, stage2_batch: int) -> Path:
    """The smoke config with batch 2 in stage 1 and `stage2_batch` in stage 2, written to `path`."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["stage1"]["batch_size"] = 2
    cfg["stage2"]["batch_size"] = stage2_batch
    path.write_text(yaml.safe_dump(cfg))
    return path


def module_inputs(folder: str, frames: int, seed: int, width: int, height: int, stage2_batch: int):
    """A test module's two module-scoped fixtures: `folder`, a `nocs_folder` of these sizes, and `config`, the
    `smoke_config` with `stage2_batch` (assign both to module names: pytest finds fixtures there)."""

    @pytest.fixture(scope="module", name=folder)
    def nocs(tmp_path_factory) -> Path:
        root = tmp_path_factory.mktemp(folder)
        return nocs_folder(root, frames=frames, seed=seed, width=width, height=height)

    @pytest.fixture(scope="module", name="config")
    def config(tmp_path_factory) -> Path:
        return smoke_config(tmp_path_factory.mktemp("cfg") / "selfsup_smoke.yaml", stage2_batch=stage2_batch)

    return nocs, config
