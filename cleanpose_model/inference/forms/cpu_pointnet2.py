"""The CPU (exact) form of PointNet++ MSG (nn/pointnet2_msg.py): the same picks as the torch references
(`ops/pointnet2.py`), bit for bit, in fewer passes over the (B, M, N) tables, and the feature work on
point-major rows with oneDNN products (weights packed once, forms/cpu.py):

- distances ``dx*dx + dy*dy + dz*dz`` per coordinate plane, in place (the reference's values and evaluation
  order, without its (B, M, N, 3) temporaries);
- the ball query from the (sorted) positions inside the larger radius (``nonzero``): each centre's first
  ``nsample`` in index order, padded with the first, no neighbour -> zeros, as the reference's dense
  cumulative count; three-NN by three first-occurrence ``argmin`` passes on one table updated in place;
- a set-abstraction level's first layer on [x_j - c, f_j] as ``[x_j, f_j] W^T`` per point (once per point
  instead of once per (centre, neighbour) pair), gathered, minus ``c W_x^T - b`` per centre; the deeper
  layers with bias and ReLU in the product; a feature-propagation level's first layer on the known points
  before the interpolation (the interpolation weights sum to one), the skip half added in the product.

Only the summation order of the features differs from the reference (test/cleanpose_model/inference/forms/
test_cpu_pointnet2.py). `CpuPointNet2.forward` returns (B, C, N) as the reference, a transposed view of
contiguous point-major rows (what the CPU head reads).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.inference.forms.cpu_gafa import Dense, run_chain
from cleanpose_model.inference.forms.pointnet2_msg import _folded_layers
from cleanpose_model.nn.pointnet2_msg import FeaturePropagation, PointNet2MSG, SetAbstractionMSG
from cleanpose_model.ops import pointnet2 as ops

# Floats of the widest layer output per chunk of a set-abstraction level (1 MB): each chunk's rows stay in a
# Zen 4 core's 2 MB L2 through the level's MLP and max-pool.
CHUNK_FLOATS = 262144


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (B, M, 3), b (B, N, 3) -> (B, M, N): `ops.pairwise_sq_dist`'s values (same products and sums in
    the same order, in float32), one coordinate plane at a time."""
    at, bt = a.transpose(1, 2), b.transpose(1, 2)
    d = at[:, 0, :, None] - bt[:, 0, None, :]
    d.mul_(d)
    t = at[:, 1, :, None] - bt[:, 1, None, :]
    d.add_(t.mul_(t))
    torch.sub(at[:, 2, :, None], bt[:, 2, None, :], out=t)
    return d.add_(t.mul_(t))


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """`ops.furthest_point_sample`: the same picks (the same distances, updates and first-maximum rule), with
    the loop's buffers allocated once."""
    bsz, n, _ = xyz.shape
    order = ops.fps_tie_order(n, xyz.device)
    pts = xyz.index_select(1, order).transpose(1, 2).contiguous()  # (B, 3, N) in tie-priority order
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    mag = x * x + y * y + z * z
    temp = torch.where(mag <= ops._FPS_ORIGIN_SKIP, torch.full_like(mag, -1.0), torch.full_like(mag, 1e10))
    picks = torch.zeros(bsz, npoint, dtype=torch.int64)
    diff, d = torch.empty_like(pts), torch.empty_like(mag)
    old = torch.zeros(bsz, 1, 1, dtype=torch.int64)
    for i in range(1, npoint):
        torch.sub(pts, torch.gather(pts, 2, old.expand(bsz, 3, 1)), out=diff)
        diff.mul_(diff)
        torch.add(diff[:, 0], diff[:, 1], out=d)
        torch.minimum(temp, d.add_(diff[:, 2]), out=temp)
        pick = torch.argmax(temp, dim=1)
        picks[:, i] = pick
        old = pick.view(bsz, 1, 1)
    return order[picks]


def ball_query_sparse(
    new_xyz: torch.Tensor, xyz: torch.Tensor, radii: list[float], nsamples: list[int]
) -> list[torch.Tensor]:
    """`ops.ball_query_multi` -> int64 (B, M, nsample) per (radius, nsample): the same indices, from the
    positions inside the largest radius (one object's (M, N) distance table at a time, in L2)."""
    bsz, m, _ = new_xyz.shape
    n = xyz.shape[1]
    limits = [float(np.float32(r) * np.float32(r)) for r in radii]  # rounded as the reference
    widest = max(limits)
    cands, dists = [], []
    for b in range(bsz):
        flat = sq_dist(new_xyz[b : b + 1], xyz[b : b + 1]).view(-1)
        c = torch.nonzero(flat < widest).squeeze(1)  # ascending: row-major (centre, point) order
        dists.append(flat.index_select(0, c))
        cands.append(c + b * m * n)
    cand, cand_d = torch.cat(cands), torch.cat(dists)
    rows_all = bsz * m
    out = []
    for limit, ns in zip(limits, nsamples, strict=True):
        sel = cand if limit == widest else cand[cand_d < limit]
        row = torch.div(sel, n, rounding_mode="floor")
        col = sel - row * n
        counts = torch.bincount(row, minlength=rows_all)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sel.numel()) - starts.index_select(0, row)
        keep = rank < ns
        buf = torch.zeros(rows_all, ns, dtype=torch.int64)
        buf[row[keep], rank[keep]] = col[keep]
        fill = torch.arange(ns) < counts.clamp(max=ns).unsqueeze(1)
        out.append(torch.where(fill, buf, buf[:, :1]).view(bsz, m, ns))
    return out


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`ops.three_nn`: (squared distances (B, N, 3), int64 indices (B, N, 3)), the same picks (one object's
    table at a time, updated in place)."""
    dists, idxs = [], []
    for b in range(unknown.shape[0]):
        d = sq_dist(unknown[b : b + 1], known[b : b + 1])
        for j in range(3):
            i = torch.argmin(d, dim=-1, keepdim=True)
            dists.append(torch.gather(d, -1, i))
            idxs.append(i)
            if j < 2:
                d.scatter_(-1, i, float("inf"))
    bsz = unknown.shape[0]
    return _stack3(dists, bsz), _stack3(idxs, bsz)


def _stack3(parts: list[torch.Tensor], bsz: int) -> torch.Tensor:
    """3 (1, N, 1) parts per object, objects in order -> (B, N, 3)."""
    return torch.cat([torch.cat(parts[3 * b : 3 * b + 3], dim=-1) for b in range(bsz)], dim=0)


def _layers(mlp: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = _folded_layers(mlp)
    if layers is None:
        raise ValueError("the CPU PointNet++ form needs SharedMLPs folded by forms/pointwise.py")
    return [(lay.weight.detach(), lay.bias.detach()) for lay in layers]


def _offsets(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Per-object indices (B, ...) into n rows -> indices into the flattened (B * n) rows."""
    shape = (idx.shape[0],) + (1,) * (idx.dim() - 1)
    return (idx + torch.arange(idx.shape[0]).view(shape) * n).reshape(-1)


class CpuSetAbstraction:
    """One MSG level's feature work on rows (see module doc); weights a snapshot of the folded level."""

    def __init__(self, sa: SetAbstractionMSG) -> None:
        self.sa = sa  # npoint, radii, nsamples
        per_radius = [_layers(m) for m in sa.mlps]
        firsts = [ls[0] for ls in per_radius]
        self.first = [Dense(w, None) for w, _ in firsts]  # [x, f] W^T per point
        self.centre = [(w[:, :3].float().t().contiguous(), b.float()) for w, b in firsts]
        self.rest = [[Dense(w, b, relu=True) for w, b in ls[1:]] for ls in per_radius]

    def neighbours(self, xyz: torch.Tensor, new_xyz: torch.Tensor) -> list[torch.Tensor]:
        return ball_query_sparse(new_xyz, xyz, self.sa.radii, self.sa.nsamples)

    def aggregate(
        self, xyz: torch.Tensor, new_xyz: torch.Tensor, groups: list[torch.Tensor], rows: torch.Tensor | None
    ) -> torch.Tensor:
        """xyz (B, N, 3), new_xyz (B, M, 3), groups[r] (B, M, S_r), rows (B * N, C) or None
        -> (B * M, C_out)."""
        bsz, n, _ = xyz.shape
        m = new_xyz.shape[1]
        x = xyz.reshape(-1, 3)
        x = x if rows is None else torch.cat([x, rows], dim=1)
        centres = new_xyz.reshape(-1, 3)
        outs = []
        for idx, first, (wx, b), rest in zip(groups, self.first, self.centre, self.rest, strict=True):
            s, width = idx.shape[2], first.out_features
            proj = first(x)
            c = torch.addmm(b, centres, wx, alpha=-1.0).neg_().unsqueeze(1)  # c W_x^T - b
            offs = _offsets(idx, n).view(bsz * m, s)
            widest = max([width] + [d.out_features for d in rest])
            per = max(1, CHUNK_FLOATS // (widest * s))  # centres per chunk: the chain's rows stay in L2
            out = torch.empty(bsz * m, rest[-1].out_features if rest else width)
            for r0 in range(0, bsz * m, per):
                r1 = min(r0 + per, bsz * m)
                g = F.embedding(offs[r0:r1].reshape(-1), proj).view(r1 - r0, s, width)
                h = run_chain(rest, g.sub_(c[r0:r1]).relu_().view(-1, width))
                torch.amax(h.view(r1 - r0, s, -1), dim=1, out=out[r0:r1])
            outs.append(out)
        return torch.cat(outs, dim=1)


class CpuFeaturePropagation:
    def __init__(self, fp: FeaturePropagation, c_skip: int) -> None:
        ls = _layers(fp.mlp)
        w, b = ls[0]
        c_known = w.shape[1] - c_skip
        self.known = Dense(w[:, :c_known], None)
        self.skip = Dense(w[:, c_known:], b) if c_skip else None
        self.bias = b.float()
        self.rest = [Dense(w2, b2, relu=True) for w2, b2 in ls[1:]]

    def __call__(
        self,
        idx: torch.Tensor,
        weight: torch.Tensor,
        known_rows: torch.Tensor,
        skip_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """idx / weight (B, N, 3), known_rows (B * M, C_k), skip_rows (B * N, C_s) or None
        -> (B * N, C_out)."""
        bsz, n, _ = idx.shape
        m = known_rows.shape[0] // bsz
        g = F.embedding(_offsets(idx, m), self.known(known_rows)).view(bsz * n, 3, -1)
        x = torch.bmm(weight.reshape(bsz * n, 1, 3), g).view(bsz * n, -1)
        x = x.add_(self.bias) if self.skip is None else self.skip.add(skip_rows, x)
        return run_chain(self.rest, x.relu_())


class CpuPointNet2(nn.Module):
    """`PointNet2MSG` (folded) for the CPU: forward(xyz (B, N, 3)) -> (B, C, N), a view of point-major
    rows."""

    def __init__(self, pn: PointNet2MSG) -> None:
        super().__init__()
        self.pn = pn  # shared (the published modules; FPS runs as theirs)
        self.sa = [CpuSetAbstraction(sa) for sa in pn.SA_modules]
        first = _layers(pn.SA_modules[0].mlps[0])[0][0]
        level_out = [sum(_layers(m)[-1][0].shape[0] for m in sa.mlps) for sa in pn.SA_modules]
        widths = [first.shape[1] - 3, *level_out]
        self.fp = [CpuFeaturePropagation(fp, widths[i]) for i, fp in enumerate(pn.FP_modules)]

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        bsz, n, _ = xyz.shape
        l_xyz = [xyz]
        l_rows: list[torch.Tensor | None] = [None]
        for sa in self.sa:
            new_xyz = ops.gather_points(l_xyz[-1], furthest_point_sample(l_xyz[-1], sa.sa.npoint))
            groups = sa.neighbours(l_xyz[-1], new_xyz)
            l_rows.append(sa.aggregate(l_xyz[-1], new_xyz, groups, l_rows[-1]))
            l_xyz.append(new_xyz)
        for i in range(len(self.fp) - 1, -1, -1):
            sq, idx = three_nn(l_xyz[i], l_xyz[i + 1])
            weight = ops.inverse_distance_weights(sq)
            l_rows[i] = self.fp[i](idx, weight, l_rows[i + 1], l_rows[i])
        return l_rows[0].view(bsz, n, -1).transpose(1, 2)
