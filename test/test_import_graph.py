"""The layering of docs/DESIGN.md and the absence of import circles, measured on this checkout by
scripts/import_graph.py; and that the check itself catches what it is meant to catch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "import_graph.py"


def _load():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_this_checkout_has_no_circles_and_keeps_the_layers():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "import circles: 0" in proc.stdout and "layering violations: 0" in proc.stdout


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_check_finds_a_circle_a_lazy_import_and_a_kernel_in_a_reference_module(tmp_path):
    g = _load()
    root = _tree(
        tmp_path,
        {
            "cleanpose_model/__init__.py": "",
            "cleanpose_model/a.py": "from cleanpose_model import b\n",
            "cleanpose_model/b.py": "import cleanpose_model.a\n",
            "cleanpose_model/nn/__init__.py": "",
            "cleanpose_model/nn/layer.py": "def f():\n    from cleanpose_model.ops.triton import sa\n",
            "cleanpose_model/ops/__init__.py": "",
            "cleanpose_model/ops/triton/__init__.py": "",
            "cleanpose_model/ops/triton/sa.py": "",
            "cleanpose_ros/__init__.py": "",
            "cleanpose_ros/node.py": "from ..training import trainer\n",
            "training/__init__.py": "",
            "training/trainer.py": "from . import batching\n",
            "training/batching.py": "",
        },
    )
    graph = g.imports(g.modules(root))
    assert g.circles(graph) == [["cleanpose_model.a", "cleanpose_model.b"]]
    # the on-disk training/ folder is the package cleanpose_training; relative imports resolve
    assert graph["cleanpose_training.trainer"] == {"cleanpose_training.batching"}
    bad = g.violations(graph)
    assert any(v.startswith("cleanpose_model.nn.layer -> cleanpose_model.ops.triton.sa") for v in bad), bad
    assert g.main(["--root", str(root)]) == 1
    assert g.main(["--root", str(root), "--no-check"]) == 0
