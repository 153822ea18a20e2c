"""cleanpose_model.config: dataclasses from dicts and YAML, unknown keys named where they sit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from cleanpose_model.config import YamlConfig, dataclass_from_dict


@dataclass
class _Inner:
    width: int = 8
    names: list[str] = field(default_factory=list)


@dataclass
class _Outer(YamlConfig):
    section: ClassVar[str] = "outer"

    depth: int = 2
    inner: _Inner = field(default_factory=_Inner)
    free: dict = field(default_factory=dict)  # a plain dict field stays a dict


def test_nested_dataclasses_are_built_and_plain_dicts_kept():
    cfg = _Outer.from_dict({"depth": 3, "inner": {"width": 4}, "free": {"anything": 1}})
    assert cfg == _Outer(depth=3, inner=_Inner(width=4), free={"anything": 1})
    assert _Outer.from_dict(cfg.to_dict()) == cfg
    assert _Outer.from_dict(None) == _Outer()


def test_unknown_keys_are_named_with_their_place():
    with pytest.raises(
        ValueError, match=r"^outer\.inner: unknown keys \['widht'\]; expected \['names', 'width'\]"
    ):
        _Outer.from_dict({"inner": {"widht": 4}})
    with pytest.raises(ValueError, match=r"^outer: expected a mapping, got list"):
        dataclass_from_dict(_Outer, [1], "outer")


def test_yaml_block_under_its_section_and_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("outer:\n  depth: 5\n  inner: {names: [a, b]}\nother: {ignored: true}\n")
    assert _Outer.from_yaml(path) == _Outer(depth=5, inner=_Inner(names=["a", "b"]))
    path.write_text("depth: 5\nbogus: 1\n")
    with pytest.raises(ValueError, match=r"c\.yaml: outer: unknown keys \['bogus'\]"):
        _Outer.from_yaml(path)
