"""Suite ``kernels``: each Triton kernel of ``cleanpose_model/ops/triton/`` against its torch reference in
``cleanpose_model/ops/``, on network-sized inputs with a batch of --objects objects: time of both forms and
the kernel's largest deviation from the reference on the same inputs (a mismatch count for index outputs).

Kernel rows need Triton and CUDA (or ``TRITON_INTERPRET=1`` on the CPU, where the times mean nothing); without
them only the torch references are timed, the report says why, and no ratio is formed. Not timed here: the
set-abstraction / feature-propagation kernels of ``ops/triton/sa.py``, whose packed weights follow the
network's layers (the forward suite times them in place).

    python -m benchmarks kernels --objects 1 6 16 --out docs/results/h200
    python -m benchmarks kernels --quick --out /tmp/b
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import harness

# The network's sizes: 96 keypoints, 1024 points, 256 channels, DINOv2 ViT-S/14 (257 tokens x 384).
KPT, PTS, C = 96, 1024, 256


@dataclass(frozen=True)
class Case:
    """One kernel: ``make(n, device, gen) -> args``; ``ref(*args)`` and ``kernel(module, *args)`` return the
    output compared (``err`` turns the two outputs into one deviation figure)."""

    name: str
    module: str  # under cleanpose_model.ops.triton, imported only when kernels run
    make: Callable
    ref: Callable
    kernel: Callable
    err: Callable


def _r(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def max_abs(a, b) -> float:
    """Largest absolute difference of two outputs (tensors, or tuples of tensors)."""
    if isinstance(a, (list, tuple)):
        return max(max_abs(x, y) for x, y in zip(a, b, strict=True))
    return float((a.double() - b.double()).abs().max())


def mismatches(a, b) -> float:
    """Entries that differ between two index outputs (tensors, or lists of tensors)."""
    if isinstance(a, (list, tuple)):
        return sum(mismatches(x, y) for x, y in zip(a, b, strict=True))
    return float((a != b).sum())


def _attention(n, g):
    q = _r(g, n, KPT, C, scale=2.0)
    kv = _r(g, n, PTS, 2 * C)
    return q, kv[..., :C], kv[..., C:]  # k and v: strided slices of one product, as the network has them


def _knn(n, g):
    pts = torch.rand(n, PTS, 3, generator=g) * 0.2 - 0.1
    kpt = pts[:, :KPT] + 0.01 * _r(g, n, KPT, 3)
    return (torch.linalg.vector_norm(kpt.unsqueeze(2) - pts.unsqueeze(1), dim=-1),)


def _layernorm(n, g):
    m, width = n * 257, 384
    res = _r(g, m, width, scale=3.0)
    y = _r(g, m, width).half()
    return res, y, torch.rand(width, generator=g) * 0.5, 1.0 + 0.2 * _r(g, width), 0.1 * _r(g, width)


def _cloud(n, g):
    return (_r(g, n, PTS, 3, scale=0.05),)


def _gather(n, g):
    feat = _r(g, n, 16 * 16, 128).transpose(1, 2)  # (B, C, P) read through a channels-last view
    return feat, torch.randint(0, 224 * 224, (n, PTS), generator=g)


def _pairwise(n, g):
    x = _r(g, n, KPT, 3, scale=0.1)
    return x, _r(g, 64, 3, scale=3.0), _r(g, 64, scale=0.1), _r(g, 64, C, scale=0.2), _r(g, C, scale=0.1)


def _nocs(n, g):
    cats, bins, c_in = 6, 64, 512
    h = torch.relu(_r(g, n, KPT, c_in))
    w, b = _r(g, cats * 3 * bins, c_in, scale=0.2), _r(g, cats * 3 * bins)
    return h, w, b, torch.randint(0, cats, (n,), generator=g)


def _embed(n, g):
    patches = _r(g, n, 256, 384).half()
    return patches, _r(g, 257, 384), 1.0 + 0.2 * _r(g, 384), 0.1 * _r(g, 384)


def _gate(n, g):
    ln, aug, ori = torch.nn.LayerNorm(C), torch.nn.Linear(C, 1), torch.nn.Linear(C, 1)
    with torch.no_grad():
        ln.weight.add_(0.1 * _r(g, C))
        ln.bias.add_(0.1 * _r(g, C))
    return (*(_r(g, n, KPT, C) for _ in range(3)), ln, aug, ori)


def _aggregate(n, g, knn=16):
    pts = _r(g, n, PTS, 3, scale=0.1)
    idx = torch.randint(0, PTS, (n, KPT, knn), generator=g)
    knn_xyz = torch.gather(pts, 1, idx.reshape(n, -1, 1).expand(-1, -1, 3)).view(n, KPT, knn, 3)
    feats = (_r(g, n, PTS, C), _r(g, n, KPT, C), _r(g, n, KPT, C))  # proj, q, pre
    weights = (_r(g, 64, 3, scale=3.0), _r(g, 64, scale=0.1), _r(g, 64, C, scale=0.2), _r(g, C, scale=0.1))
    weights += (_r(g, C, C, scale=0.06), _r(g, C, scale=0.1), _r(g, C, C, scale=0.06), _r(g, C, scale=0.1))
    return (_r(g, n, KPT, 3, scale=0.1), knn_xyz, idx, *feats, *weights)


def _ops(name):
    return importlib.import_module(f"cleanpose_model.ops.{name}")


def _lnorm_ref(res, y, gamma, w, b):
    return _ops("layernorm").residual_layer_norm_math(res.clone(), y, gamma, w, b, 1e-6, torch.float16)


# The first PointNet++ level's two radii and sample counts, around its 512 centres.
BALL_RADII, BALL_SAMPLES = (0.01, 0.02), (16, 32)


def _ball_ref(xyz):
    P = _ops("pointnet2")
    return [P.ball_query(r, k, xyz, xyz[:, :512]) for r, k in zip(BALL_RADII, BALL_SAMPLES)]


CASES = (
    Case(
        "attention",
        "attention",
        _attention,
        lambda q, k, v: _ops("attention").attention_math(q, k, v, 4),
        lambda T, q, k, v: T.attention_triton(q, k, v, 4, "ieee"),
        max_abs,
    ),
    Case(
        "knn",
        "knn",
        _knn,
        lambda d: _ops("knn").knn_indices(d, 16),
        lambda T, d: T.knn_indices_triton(d, 16),
        lambda a, b: mismatches(a.sort(-1).values, b.sort(-1).values),
    ),
    Case(
        "residual_layer_norm",
        "layernorm",
        _layernorm,
        _lnorm_ref,
        lambda T, res, y, gamma, w, b: T.residual_layer_norm_triton(
            res.clone(), y, gamma, w, b, 1e-6, torch.float16
        ),
        max_abs,
    ),
    Case(
        "embed_layer_norm",
        "layernorm",
        _embed,
        lambda *a: _ops("layernorm").embed_layer_norm_math(*a, 1e-6, torch.float16),
        lambda T, *a: T.embed_layer_norm_triton(*a, 1e-6, torch.float16),
        max_abs,
    ),
    Case(
        "fps",
        "pointnet2",
        _cloud,
        lambda xyz: _ops("pointnet2").furthest_point_sample(xyz, 512),
        lambda T, xyz: T.fps_triton(xyz, T.fps_tie_rank(xyz.shape[1], xyz.device), 512)[0],
        mismatches,
    ),
    Case(
        "ball_query",
        "pointnet2",
        _cloud,
        _ball_ref,
        lambda T, xyz: list(T.ball_query2_triton(xyz[:, :512], xyz, BALL_RADII, BALL_SAMPLES)),
        mismatches,
    ),
    Case(
        "three_nn",
        "pointnet2",
        _cloud,
        lambda xyz: _ops("pointnet2").three_nn(xyz, xyz[:, :256])[1],
        lambda T, xyz: T.three_nn_triton(xyz, xyz[:, :256])[1],
        mismatches,
    ),
    Case(
        "bilinear_gather",
        "gather",
        _gather,
        lambda feat, choose: _ops("gather").bilinear_gather_torch(feat, choose, 16, 224),
        lambda T, feat, choose: T.bilinear_gather_triton(feat, choose, 16, 224),
        max_abs,
    ),
    Case(
        "pairwise_mlp_mean",
        "gafa",
        _pairwise,
        lambda *a: _ops("gafa").pairwise_mlp_mean_torch(*a),
        lambda T, *a: T.pairwise_mlp_mean_triton(*a, "ieee"),
        max_abs,
    ),
    Case(
        "neighbour_aggregate",
        "gafa",
        _aggregate,
        lambda *a: _ops("gafa").neighbour_aggregate_torch(*a[:6], a[6:], 5.0),
        lambda T, *a: T.neighbour_aggregate_triton(*a[:6], a[6:], 5.0, "ieee"),
        max_abs,
    ),
    Case(
        "front_door_gate",
        "head_tails",
        _gate,
        lambda *a: _ops("head_tails").front_door_gate_torch(*a),
        lambda T, *a: T.front_door_gate_triton(*a),
        max_abs,
    ),
    Case(
        "nocs_expectation",
        "head_tails",
        _nocs,
        lambda h, w, b, cat: _ops("head_tails").nocs_expectation_torch(h, w, b, cat, 6, 64),
        lambda T, h, w, b, cat: T.nocs_expectation_triton(h, w, b, cat, 64, "ieee"),
        max_abs,
    ),
)


def kernels_available(dev: torch.device) -> str | None:
    """None when the Triton kernels can run here, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed: only the torch references are timed"
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels need CUDA (or TRITON_INTERPRET=1): only the torch references are timed"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = harness.common_parser("kernels", __doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=[c.name for c in CASES], help="these kernels only")
    args = harness.finish_args(ap.parse_args(argv), objects=[1, 6, 16], quick_objects=[1])
    from cleanpose_model.device import resolve_device

    dev = resolve_device(args.device).device
    report = harness.Report("kernels", args, dev)
    why_not = kernels_available(dev)
    if why_not:
        report.note(why_not)
    timing = {"warmup": args.warmup, "iterations": args.iterations}
    cases = [c for c in CASES if not args.only or c.name in args.only]
    with torch.inference_mode():
        for case in cases:
            for n in args.objects:
                g = torch.Generator().manual_seed(n)
                inputs = [t.to(dev) for t in case.make(n, g)]
                ref = case.ref(*inputs)
                stats = harness.measure(lambda c=case, a=inputs: c.ref(*a), dev, **timing)
                report.add(kernel=case.name, form="torch", objects=n, **stats)
                if why_not:
                    continue
                mod = importlib.import_module(f"cleanpose_model.ops.triton.{case.module}")
                got = case.kernel(mod, *inputs)
                stats = harness.measure(lambda c=case, m=mod, a=inputs: c.kernel(m, *a), dev, **timing)
                report.add(kernel=case.name, form="triton", objects=n, **stats, max_err=case.err(got, ref))
            print(f"[kernels] {case.name} done", flush=True)  # first calls compile: minutes on a cold cache
    report.print_rows(
        ["kernel", "form", "objects", "median_ms", "p5_ms", "p95_ms", "max_err"], "Kernels (ms)"
    )
    report.compare(key=("kernel", "objects"), between="form", base="torch", other="triton")
    report.print_comparisons(("kernel", "objects"), "Triton vs torch reference")
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
