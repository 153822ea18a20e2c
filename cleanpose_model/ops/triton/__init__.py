"""Triton kernels of the inference forms (cleanpose_model/inference/), one module per kernel family, each
beside its torch reference in ``cleanpose_model/ops/`` (``triton/pointnet2.py`` <-> ``ops/pointnet2.py``).

Nothing here decides when it runs: the inference builder (``cleanpose_model/inference/build.py``) binds a
kernel, and the product precision it runs in (``"ieee"`` or ``"tf32"``), into the forms it builds.
"""

try:  # Triton ships with CUDA builds of torch; CPU-only installs do not have it.
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    HAVE_TRITON = False
