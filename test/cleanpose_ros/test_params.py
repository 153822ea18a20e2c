"""params.py is the one source of the node's defaults: the shipped params file is exactly what it generates,
and the helpers the node's parameter callback uses keep configure-time values apart from run-time ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rclpy.parameter import Parameter

from cleanpose_ros import params
from cleanpose_ros.params import NodeParams

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "cleanpose.yaml"


def test_params_file_has_every_default_and_nothing_else():
    doc = yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]
    defaults = NodeParams()
    assert sorted(set(NodeParams.names()) - set(doc)) == [], "missing from config/cleanpose.yaml"
    assert sorted(set(doc) - set(NodeParams.names())) == [], "not a node parameter"
    differ = {k: (v, getattr(defaults, k)) for k, v in doc.items() if v != getattr(defaults, k)}
    assert differ == {}, "file value vs dataclass default"


def test_params_file_is_the_generated_one():
    """Descriptions and layout too: regenerate with `python -m cleanpose_ros.params --yaml`."""
    assert PARAMS_FILE.read_text() == params.to_yaml(), (
        "config/cleanpose.yaml differs from cleanpose_ros/params.py: run "
        "`python -m cleanpose_ros.params --yaml > config/cleanpose.yaml`"
    )


def test_generator_cli_prints_the_file():
    out = subprocess.run(
        [sys.executable, "-m", "cleanpose_ros.params", "--yaml"], capture_output=True, text=True, check=True
    ).stdout
    assert out == params.to_yaml()
    assert "checkpoint" in out and out.startswith("# cleanpose_node parameters")


def test_every_description_reaches_the_file_and_the_descriptor():
    text = params.to_yaml(width=10_000)  # unwrapped: one comment line per parameter
    for name in NodeParams.names():
        meta = NodeParams.meta(name)
        assert meta["desc"] in text, name
        d = params.descriptor(name)
        assert meta["desc"] in d.description
        # configure-time values must stay settable so that cleanup + configure can apply a change
        assert not d.read_only
        assert d.description.startswith("[configure]") == (meta["applies"] == "configure"), name
        assert d.description.startswith("[start-up]") == (meta["applies"] == "start"), name


def test_defaults_validate_and_cross_field_checks():
    NodeParams().validate()
    with pytest.raises(ValueError, match="min_depth"):
        NodeParams(min_depth=2.0, max_depth=1.0).validate()
    with pytest.raises(ValueError, match="precision"):
        NodeParams(precision="fp64").validate()
    with pytest.raises(ValueError, match="device"):
        NodeParams(device="gpu").validate()


def test_changes_split_into_run_time_and_configure_time():
    running = NodeParams()
    new = params.with_changes(
        running,
        [
            Parameter("device", value="cpu"),
            Parameter("score_threshold", value=0.5),
            Parameter("nope", value=1),
        ],
    )
    assert (new.device, new.score_threshold) == ("cpu", 0.5)
    assert (running.device, running.score_threshold) == ("cuda", 0.0)  # the input is not changed
    live = params.run_time_update(running, new)
    assert live.score_threshold == 0.5  # run time: in effect now
    assert live.device == "cuda"  # configure time: waits for the next configure
    assert params.pending_changes(running, new, ["device", "score_threshold", "nope"]) == {
        "device": "configure"
    }
    # a configure-time parameter set back to the value in effect is no pending change
    assert params.pending_changes(running, running, ["device"]) == {}
    stopped = params.with_changes(running, [Parameter("autostart", value=False)])
    assert params.pending_changes(running, stopped, ["autostart"]) == {"autostart": "start"}


def test_readme_parameter_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Parameters", 1)[1].split("\n### ", 1)[0]
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert table == params.to_markdown(), (
        "README.md's parameter table differs from cleanpose_ros/params.py: replace it with the output of "
        "`python -m cleanpose_ros.params --markdown`"
    )
