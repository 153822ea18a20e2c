import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

try:
    import cleanpose_msgs.msg  # noqa: F401
    import vision_msgs.msg  # noqa: F401

    HAVE_IFACES = True
except ImportError:
    HAVE_IFACES = False


def pytest_collection_modifyitems(config, items):
    if HAVE_IFACES:
        return
    skip = pytest.mark.skip(
        reason="interface packages not built: run scripts/setup.sh and source scripts/env.sh"
    )
    for it in items:
        if "cleanpose_ros" in str(it.fspath):
            it.add_marker(skip)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    # the benchmark's maker: a demo-config network with seeded random weights, in our checkpoint format
    from cleanpose_tools.bench import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "demo_random.safetensors")
