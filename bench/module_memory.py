"""What each kind of op on the fast inference path costs in GPU memory outside PyTorch's allocator.

With lazy module loading (CUDA_MODULE_LOADING=LAZY, the default since CUDA 11.7) the driver loads a
kernel's whole module (one translation unit of libtorch_cuda / cuBLAS) the first time any kernel in it
runs, and keeps it resident for the life of the context. Some torch TUs (sort/topk, CUB scans, scatter,
indexing, reductions) hold hundreds of template instantiations, so first-using one op can cost tens
of MB that show up nowhere in torch.cuda.memory_reserved(). This script first-uses, one after the
other in one process, every op kind the fast forward (cleanpose_model/fast.py, precision "fast")
runs, on small tensors of the dtypes it uses, and records how much the device's used memory grew
outside the allocator (device used minus reserved) after each: the cost of the module that op pulled in,
given everything before it. Inputs are built on the CPU and copied over, so building them loads nothing.
Ops sharing a module show the cost on the first one only; ``--isolated`` re-measures the costly ones
alone in fresh processes (context + that op) to tell shared modules apart.

The growth can also be local memory rather than code: the driver backs every thread the GPU can hold
with the largest per-thread stack frame of any kernel launched so far (at least the context's 1 KB
stack limit) and never shrinks it, so one spilling kernel can cost hundreds of MB. The report lists
every Triton kernel the process compiled with its registers, spills and local bytes per thread.
Measured on an H100 (docs/results/h100/module_memory.json): the first torch kernel ~92 MB, cuBLAS
~66 MB, every further torch op kind 0, the ball query's former 32-centre tiles 388 MB (2.5 KB frame).

    python bench/module_memory.py [--out DIR] [--isolated]   # on the GPU machine
    python bench/module_memory.py --device cpu --out /tmp/m   # CI short mode: runs every probe on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory_breakdown import DeviceUsage


def probes(dev):
    """(name, group, fn) in roughly the order the fast forward first uses them."""
    import torch
    import torch.nn.functional as F

    from cleanpose_model.ops import pointnet2_triton as T

    cuda = dev.type == "cuda"

    def t(*shape, dtype=torch.float32, hi=8, seed=0, scale=1.0):
        # Made on the CPU: an H2D copy of a same-dtype tensor runs no kernel, so inputs load no module.
        g = torch.Generator().manual_seed(seed)
        if dtype in (torch.int64, torch.int32):
            return torch.randint(0, hi, shape, generator=g, dtype=dtype).to(dev)
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(dev)

    a, b = t(64, 256), t(64, 256, seed=1)
    w, bias = t(128, 256), t(128)
    h = t(64, 256, dtype=torch.float16)
    wh, bh = t(128, 256, dtype=torch.float16), t(128, dtype=torch.float16)
    x3 = t(2, 96, 256)
    idx = t(2, 96, 16, dtype=torch.int64, hi=256)
    xyz = t(2, 1024, 3, scale=0.05)
    cen512 = t(2, 512, 3, scale=0.05, seed=3)

    def tf32_linear():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return F.linear(a, w, bias)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    def autocast_linear():
        with torch.autocast(dev.type, dtype=torch.float16 if cuda else torch.bfloat16):
            return F.linear(a, w, bias)

    def sdpa():
        q = t(1, 6, 257, 64, dtype=torch.float16 if cuda else torch.float32)
        return F.scaled_dot_product_attention(q, q, q)

    def bicubic():
        return F.interpolate(t(1, 8, 37, 37), scale_factor=(0.44, 0.44), mode="bicubic")

    def ball_query_torch():
        from cleanpose_model.ops.pointnet2 import ball_query_from_sq_dist, pairwise_sq_dist

        return ball_query_from_sq_dist(pairwise_sq_dist(cen512, xyz), 0.02, 32)

    logits = t(2, 6, 3, 8, 96)
    cat = t(2, dtype=torch.int64, hi=6)
    rows = t(2, dtype=torch.int64, hi=1)  # [0, 0]: an arange without the arange kernel

    ops = [
        ("fill (zeros, full_like)", "elementwise", lambda: torch.zeros(64, 256, device=dev)),
        ("add / sub fp32", "elementwise", lambda: (a + b, a - b)),
        ("mul fp32", "elementwise", lambda: a * b),
        ("div fp32 (true)", "elementwise", lambda: a / b),
        ("copy fp32 -> fp16 (autocast cast)", "copy", lambda: a.half()),
        ("copy fp16 -> fp32 (.float())", "copy", lambda: h.float()),
        ("permute().contiguous() fp32", "copy", lambda: x3.transpose(1, 2).contiguous()),
        ("F.linear fp32 (cuBLAS)", "matmul", lambda: F.linear(a, w, bias)),
        ("F.linear TF32", "matmul", tf32_linear),
        ("F.linear fp16", "matmul", lambda: F.linear(h, wh, bh)),
        ("F.linear under autocast (casts + fp16)", "matmul", autocast_linear),
        ("bmm fp32", "matmul", lambda: torch.bmm(x3, x3.transpose(1, 2))),
        ("baddbmm fp32", "matmul", lambda: torch.baddbmm(x3[:, :, :96], x3, x3.transpose(1, 2))),
        ("matmul 4-D broadcast (bins)", "matmul", lambda: torch.matmul(t(2, 96, 3, 8), t(8, 1))),
        ("cat", "copy", lambda: torch.cat([a, b], dim=1)),
        ("stack", "copy", lambda: torch.stack([a, b], dim=-1)),
        ("expand().copy_() (input padding)", "copy", lambda: a[:2].copy_(a[:1].expand(2, -1))),
        ("clone", "copy", lambda: a.clone()),
        ("layer_norm fp32", "norm", lambda: F.layer_norm(a, (256,))),
        ("layer_norm fp16", "norm", lambda: F.layer_norm(h, (256,))),
        ("scaled_dot_product_attention fp16", "attention", sdpa),
        ("gelu fp16", "activation", lambda: F.gelu(h)),
        ("gelu fp32", "activation", lambda: F.gelu(a)),
        ("relu / relu_", "activation", lambda: (torch.relu(a), a.clone().relu_())),
        ("sigmoid", "activation", lambda: torch.sigmoid(a)),
        ("softmax fp32", "softmax", lambda: torch.softmax(x3, dim=-1)),
        ("sqrt", "elementwise", lambda: torch.sqrt(a.abs())),
        ("reciprocal-style scalar div (1 / x)", "elementwise", lambda: 1.0 / (a.abs() + 1e-8)),
        ("clamp / clamp_min fp32", "elementwise", lambda: (a.clamp(0.0, 1.0), a.clamp_min(0.0))),
        ("clamp int64", "elementwise", lambda: idx.clamp(max=100)),
        ("floor fp32", "elementwise", lambda: a.floor()),
        ("div floor int64", "elementwise", lambda: torch.div(idx, 7, rounding_mode="floor")),
        ("remainder int64", "elementwise", lambda: idx % 7),
        ("cast int64 <-> fp32 (.long(), .to(float32))", "copy", lambda: (a.long(), idx.float())),
        ("compare lt / le, logical and", "elementwise", lambda: (a < 0.5) & (b <= 0.5)),
        ("where", "elementwise", lambda: torch.where(a > 0, a, b)),
        ("arange", "elementwise", lambda: torch.arange(256, device=dev)),
        ("mean (dim)", "reduction", lambda: x3.mean(dim=1)),
        ("sum (dim)", "reduction", lambda: x3.sum(dim=2)),
        ("amax (dim)", "reduction", lambda: x3.amax(dim=-1)),
        ("Tensor.norm / linalg.vector_norm", "reduction", lambda: torch.linalg.vector_norm(x3, dim=-1)),
        ("cosine_similarity", "reduction", lambda: F.cosine_similarity(x3, x3.flip(1), dim=-1)),
        ("adaptive_avg_pool1d", "reduction", lambda: F.adaptive_avg_pool1d(x3, 1)),
        ("gather", "index", lambda: torch.gather(x3, 2, idx)),
        ("advanced indexing t[rows, cat]", "index", lambda: logits[rows, cat]),
        ("bicubic interpolate (DINOv2 pos embed, once)", "resample", bicubic),
        ("cumsum int32", "scan", lambda: torch.cumsum(a > 0, dim=-1, dtype=torch.int32)),
        (
            "scatter_",
            "index",
            lambda: torch.zeros(2, 96, 257, dtype=torch.int64, device=dev).scatter_(2, idx, idx),
        ),
        ("topk (GAFA kNN)", "sort", lambda: t(2, 96, 1024).topk(16, dim=2, largest=False)),
        ("ball query torch (pairwise, cumsum, scatter)", "pointnet2", ball_query_torch),
    ]
    if cuda and T.HAVE_TRITON:
        from cleanpose_model.ops import pointnet2 as P
        from cleanpose_model.ops.knn import knn_indices

        levels = [t(2, n, 3, scale=0.05, seed=10 + n) for n in (1024, 512, 256, 128, 64)]
        ops += [
            (
                "Triton FPS (4 levels)",
                "triton",
                lambda: [P.sample_centres(levels[i], levels[i + 1].shape[1]) for i in range(4)],
            ),
            (
                "Triton ball query (4 levels, default tiles)",
                "triton",
                lambda: [
                    T.ball_query2_triton(levels[i + 1], levels[i], (0.01, 0.02), (16, 32)) for i in range(4)
                ],
            ),
            (
                "Triton three_nn (4 levels)",
                "triton",
                lambda: [T.three_nn_triton(levels[i], levels[i + 1]) for i in range(4)],
            ),
            (
                "Triton kNN (ops/knn.py, k 16 and 32)",
                "triton",
                lambda: [knn_indices(t(2, 96, 1024), k) for k in (16, 32)],
            ),
            # Last, so its cost is not hidden behind the others: the tiles the ball query used before.
            (
                "Triton ball query, 32-centre tiles",
                "triton",
                lambda: T.ball_query2_triton(levels[2], levels[1], (0.01, 0.02), (16, 32), block_m=32),
            ),
        ]
    return ops


def triton_kernels() -> list[dict]:
    """Registers, spills and per-thread local memory of every Triton kernel this process compiled: the
    driver sizes the context's local memory for the largest per-thread frame of any launched kernel."""
    import ctypes

    from cleanpose_model.ops import knn  # noqa: F401  (its kernel is listed too)
    from cleanpose_model.ops import pointnet2_triton as T

    if not T.HAVE_TRITON:
        return []
    import triton

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        libcuda = None
    jits = []  # every @triton.jit function of the project's modules loaded in this process
    for name, mod in list(sys.modules.items()):
        if name.startswith("cleanpose_model"):
            for obj in vars(mod).values():
                if isinstance(obj, triton.runtime.jit.JITFunction) and obj not in jits:
                    jits.append(obj)
    rows = []
    for fn in jits:
        for cache in getattr(fn, "device_caches", {}).values():
            for kernel in cache[0].values():
                local = None
                if libcuda is not None and getattr(kernel, "function", None):
                    val = ctypes.c_int()
                    # CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3
                    if (
                        libcuda.cuFuncGetAttribute(ctypes.byref(val), 3, ctypes.c_void_p(kernel.function))
                        == 0
                    ):
                        local = val.value
                consts = getattr(getattr(kernel, "src", None), "constants", {}) or {}
                rows.append(
                    {
                        "kernel": fn.fn.__name__,
                        "constexprs": {str(k): v for k, v in consts.items() if isinstance(v, int | float)},
                        "num_warps": kernel.metadata.num_warps,
                        "n_regs": getattr(kernel, "n_regs", None),
                        "n_spills": getattr(kernel, "n_spills", None),
                        "local_bytes_per_thread": local,
                    }
                )
    return rows


def _versions() -> dict:
    import torch

    info = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "CUDA_MODULE_LOADING": os.environ.get("CUDA_MODULE_LOADING"),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            info["driver"] = None
    return info


def sequential(usage: DeviceUsage, device: str, only: str | None = None) -> list[dict]:
    """First-use every probe (or only the one named ``only``, after context init) in this process."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def outside() -> tuple[float | None, float]:
        if not cuda:
            return None, 0.0
        torch.cuda.synchronize(dev)
        total = usage.process_mb()
        reserved = torch.cuda.memory_reserved(dev) / 2**20
        return (None if total is None else total - reserved), reserved

    if cuda:
        torch.empty(1, device=dev)  # the context, no kernel
    rows = [{"op": "CUDA context (torch.empty)", "group": "context"}]
    prev, reserved = outside()
    rows[0].update(outside_mb=prev, delta_mb=prev, reserved_mb=reserved)
    with torch.inference_mode():
        for name, group, fn in probes(dev):
            if only is not None and name != only:
                continue
            fn()
            now, reserved = outside()
            delta = None if now is None or prev is None else now - prev
            rows.append(
                {"op": name, "group": group, "outside_mb": now, "delta_mb": delta, "reserved_mb": reserved}
            )
            prev = now
    return rows


def isolated(names: list[str]) -> dict[str, float | None]:
    """Cost of each op alone: a fresh process per op, context first, then the op (probe inputs are
    H2D copies, which load no kernel module)."""
    out = {}
    for name in names:
        res = subprocess.run(
            [sys.executable, __file__, "--child", name], capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0:
            out[name] = None
            print(f"isolated {name!r} failed: {res.stderr[-500:]}", file=sys.stderr)
            continue
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        out[name] = rows[-1]["delta_mb"] if len(rows) > 1 else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu (CI short mode)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/bench/module_memory")))
    ap.add_argument("--isolated", action="store_true", help="also measure the costly ops alone")
    ap.add_argument("--min-mb", type=float, default=2.0, help="--isolated re-measures ops costing >= this")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    usage = DeviceUsage()  # before torch exists in this process
    if args.child is not None:
        print(json.dumps(sequential(usage, "cuda", only=args.child)))
        return 0
    from cleanpose_model.device import resolve_device

    device = resolve_device(args.device).device.type  # "auto" (or no --device): CUDA when present
    report = {**_versions(), "run_device": device, "rows": sequential(usage, device)}
    # torch sets LAZY itself at CUDA init when the variable is unset, so both values are logged.
    report["CUDA_MODULE_LOADING_after_init"] = os.environ.get("CUDA_MODULE_LOADING")
    rows = report["rows"]
    if device == "cuda" and args.isolated:
        costly = [r["op"] for r in rows[1:] if (r["delta_mb"] or 0) >= args.min_mb]
        alone = isolated(costly)
        for r in rows:
            r["alone_mb"] = alone.get(r["op"])
    if device == "cuda":
        report["triton_kernels"] = triton_kernels()
    ranked = sorted(rows[1:], key=lambda r: -(r["delta_mb"] or 0))
    report["ranked"] = [r["op"] for r in ranked]
    print(
        f"## Memory outside the allocator per first-used op, {report.get('device', device)}, torch "
        f"{report['torch']}, CUDA {report['cuda_runtime']}, "
        f"CUDA_MODULE_LOADING={report['CUDA_MODULE_LOADING']} (after CUDA init: "
        f"{report['CUDA_MODULE_LOADING_after_init']})\n"
    )
    print(f"context: {rows[0]['outside_mb']} MB outside the allocator\n")
    cols = ["op", "group", "delta_mb", "alone_mb", "outside_mb", "reserved_mb"]

    def fmt(v):
        return "-" if v is None else f"{v:.0f}" if isinstance(v, float) else str(v)

    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in ranked:
        print("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    if device == "cuda":
        total = sum(r["delta_mb"] or 0 for r in rows[1:])
        print(f"\nall probes together: {total:.0f} MB outside the allocator beyond the context")
        print("\n## Triton kernels compiled here\n")
        for k in report["triton_kernels"]:
            print(f"- {k}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "module_memory.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'module_memory.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
