"""cleanpose_ros is the runtime: neither importing the node nor any other of its modules loads the training
package (the synthetic data generator, losses, trainer); tools that need it live in cleanpose_tools."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "cleanpose_ros"
TRAINING_NAMES = ("cleanpose_training", "training")


def _loaded_after(code: str) -> list[str]:
    """Module names loaded in a fresh interpreter after running `code`."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _training(mods: list[str]) -> list[str]:
    return [m for m in mods if m.split(".")[0] in TRAINING_NAMES]


def test_importing_the_node_loads_no_training_module():
    mods = _loaded_after("import cleanpose_ros.node")
    assert "cleanpose_ros.node" in mods  # the probe ran what it should
    assert _training(mods) == []


def test_importing_every_runtime_module_loads_no_training_module():
    names = sorted(f"cleanpose_ros.{p.stem}" for p in RUNTIME.glob("*.py") if p.stem != "__init__")
    mods = _loaded_after("\n".join(f"import {n}" for n in names))
    assert set(names) <= set(mods)
    assert _training(mods) == []


def test_no_runtime_source_names_the_training_or_tools_package():
    """Also the imports inside functions (not run by merely importing the module)."""
    found = []
    for path in sorted(RUNTIME.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [
                f"{path.name}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in (*TRAINING_NAMES, "cleanpose_tools")
            ]
    assert found == []
