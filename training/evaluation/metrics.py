"""NOCS / HouseCat6D pose-estimation metrics as the published evaluators compute them (evaluation.md).

Two 3D IoU variants are kept apart everywhere:
- "NOCS IoU (original)": `compute_3d_iou_new` of NOCS_CVPR2019 with its axis bug (min/max over axis 0 of the
  3x8 corner array, i.e. per corner). The default "IoU" of REAL275/CAMERA25 tables before CATRE.
- "CATRE IoU (corrected)": min/max per coordinate, i.e. the IoU of the camera-axis-aligned boxes of the
  transformed corners; the paper's IoU* columns.
The matching loops are vectorised over thresholds but make the same decisions as the per-threshold loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cleanpose_model.categories import EVALUATOR_SYMMETRIC, HOUSECAT6D, NOCS

NOCS_IOU_LABEL = "NOCS IoU (original)"
CATRE_IOU_LABEL = "CATRE IoU (corrected)"

NOCS_SYNSET = NOCS.synset
HOUSECAT_SYNSET = HOUSECAT6D.synset


@dataclass(frozen=True)
class Protocol:
    name: str
    synset_names: tuple[str, ...]
    iou_sym: frozenset[str]  # IoU: max over 20 rotations about the object y axis (NOCS variant)
    catre_iou_sym: frozenset[str]  # same for the CATRE variant
    iou_mug_clause: bool  # NOCS variant: a mug with an invisible handle is symmetric
    rot_sym: frozenset[str]  # rotation error: angle between the y axes only
    degree_thresholds: tuple[float, ...] = (5, 10)
    shift_thresholds: tuple[float, ...] = (2, 5)
    iou_thresholds: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75)
    iou_pose_thres: float = 0.10
    pose_columns: tuple[tuple[float, float], ...] = ((5, 2), (5, 5), (10, 2), (10, 5))
    extra: dict = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.synset_names[1:]


NOCS_PROTOCOL = Protocol(
    "nocs",
    NOCS_SYNSET,
    NOCS.symmetric,
    EVALUATOR_SYMMETRIC,
    True,
    NOCS.symmetric,
)
HOUSECAT_PROTOCOL = Protocol(
    "housecat6d",
    HOUSECAT_SYNSET,
    EVALUATOR_SYMMETRIC,
    EVALUATOR_SYMMETRIC,
    False,
    EVALUATOR_SYMMETRIC,
    shift_thresholds=(2, 5, 10),
)


# --------------------------------------------------------------------------------------------- 3D boxes


def get_3d_bbox(scale: np.ndarray) -> np.ndarray:
    """3x8 corners of a box with full extents `scale`, in the NOCS corner order."""
    sx, sy, sz = np.asarray(scale, dtype=np.float64) / 2
    corners = np.array(
        [
            [sx, sy, sz],
            [sx, sy, -sz],
            [-sx, sy, sz],
            [-sx, sy, -sz],
            [sx, -sy, sz],
            [sx, -sy, -sz],
            [-sx, -sy, sz],
            [-sx, -sy, -sz],
        ]
    )
    return corners.T


def transform_coordinates_3d(coords: np.ndarray, RT: np.ndarray) -> np.ndarray:
    h = np.vstack([coords, np.ones((1, coords.shape[1]))])
    out = RT @ h
    return out[:3] / out[3:]


def _box_iou(RT_1, RT_2, scales_1, scales_2, axis: int) -> float:
    b1 = transform_coordinates_3d(get_3d_bbox(scales_1), RT_1)
    b2 = transform_coordinates_3d(get_3d_bbox(scales_2), RT_2)
    max1, min1 = b1.max(axis=axis), b1.min(axis=axis)
    max2, min2 = b2.max(axis=axis), b2.min(axis=axis)
    omin, omax = np.maximum(min1, min2), np.minimum(max1, max2)
    inter = 0.0 if np.amin(omax - omin) < 0 else float(np.prod(omax - omin))
    union = float(np.prod(max1 - min1) + np.prod(max2 - min2) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(inter) / np.float64(union))


def asymmetric_iou_nocs(RT_1, RT_2, scales_1, scales_2) -> float:
    """Original NOCS IoU: extrema over axis 0 (per corner) - the published bug, kept for comparability."""
    return _box_iou(RT_1, RT_2, scales_1, scales_2, axis=0)


def asymmetric_iou_catre(RT_1, RT_2, scales_1, scales_2) -> float:
    """CATRE IoU: extrema per coordinate = IoU of the axis-aligned boxes of the transformed corners."""
    return _box_iou(RT_1, RT_2, scales_1, scales_2, axis=1)


def y_rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]], dtype=np.float64)


def symmetric_iou(RT_pred, RT_gt, s_pred, s_gt, symmetric: bool, variant: str = "nocs") -> float:
    fn = asymmetric_iou_nocs if variant == "nocs" else asymmetric_iou_catre
    if not symmetric:
        return fn(RT_pred, RT_gt, s_pred, s_gt)
    best = 0.0
    for i in range(20):
        # Python max, as published: a NaN candidate never replaces the running maximum
        best = max(best, fn(RT_pred @ y_rotation(2 * math.pi * i / 20), RT_gt, s_pred, s_gt))
    return best


def iou_is_symmetric(
    protocol: Protocol, variant: str, pred_name: str, gt_name: str, handle_visibility
) -> bool:
    sym = protocol.iou_sym if variant == "nocs" else protocol.catre_iou_sym
    if pred_name in sym and pred_name == gt_name:
        return True
    # CATRE forces handle visibility to 1, so its mugs are never symmetric
    return (
        variant == "nocs"
        and protocol.iou_mug_clause
        and pred_name == "mug"
        and pred_name == gt_name
        and handle_visibility == 0
    )


# ------------------------------------------------------------------------------------- rotation / shift


def rt_degree_cm(
    RT_pred: np.ndarray,
    RT_gt: np.ndarray,
    gt_name: str,
    handle_visibility,
    rot_sym: frozenset[str] = NOCS_PROTOCOL.rot_sym,
) -> tuple[float, float]:
    """(rotation error in degrees, translation error in cm), symmetric classes by the y-axis angle."""
    RT_pred, RT_gt = np.asarray(RT_pred, np.float64), np.asarray(RT_gt, np.float64)
    if not (np.array_equal(RT_pred[3], RT_gt[3]) and np.array_equal(RT_pred[3], [0, 0, 0, 1])):
        raise ValueError(f"RT bottom rows must be exactly [0, 0, 0, 1]: got {RT_pred[3]} and {RT_gt[3]}")
    R1 = RT_pred[:3, :3] / np.cbrt(np.linalg.det(RT_pred[:3, :3]))
    R2 = RT_gt[:3, :3] / np.cbrt(np.linalg.det(RT_gt[:3, :3]))
    if gt_name in rot_sym or (gt_name == "mug" and handle_visibility == 0):
        y1, y2 = R1 @ [0.0, 1.0, 0.0], R2 @ [0.0, 1.0, 0.0]
        # not clipped, as published: a cosine rounded above 1 gives NaN, which later passes every threshold
        with np.errstate(invalid="ignore"):
            theta = float(np.arccos(y1 @ y2 / (np.linalg.norm(y1) * np.linalg.norm(y2))))
    else:
        theta = float(np.arccos(np.clip((np.trace(R1 @ R2.T) - 1) / 2, -1.0, 1.0)))
    return theta * 180 / np.pi, float(np.linalg.norm(RT_pred[:3, 3] - RT_gt[:3, 3]) * 100)


# ---------------------------------------------------------------------------------------------- matching


def match_by_iou(
    overlaps: np.ndarray, pred_cls: np.ndarray, gt_cls: np.ndarray, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """`compute_3d_matches` greedy loop (predictions already in score order); (gt_matches, pred_matches)."""
    T = np.asarray(thresholds, dtype=np.float64)
    n_pred, n_gt = overlaps.shape
    pred_m = -np.ones((len(T), n_pred))
    gt_m = -np.ones((len(T), n_gt))
    for i in range(n_pred):
        order = np.argsort(overlaps[i])[::-1]
        active = np.ones(len(T), bool)
        for j in order:
            iou = overlaps[i, j]
            taken = gt_m[:, j] > -1
            brk = active & ~taken & (iou < T)
            active &= ~brk
            if pred_cls[i] != gt_cls[j]:
                continue
            hit = active & ~taken & (iou > T)  # strictly greater: IoU == threshold neither matches nor breaks
            gt_m[hit, j] = i
            pred_m[hit, i] = j
            active &= ~hit
            if not active.any():
                break
    return gt_m, pred_m


def match_by_pose(
    errors: np.ndarray,
    pred_cls: np.ndarray,
    gt_cls: np.ndarray,
    degrees: Sequence[float],
    shifts: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """`compute_match_from_degree_cm`: GTs by degrees + cm ascending; a miss is skipped, not a break."""
    D, S = np.asarray(degrees, np.float64), np.asarray(shifts, np.float64)
    n_pred, n_gt = errors.shape[:2]
    pred_m = -np.ones((len(D), len(S), n_pred))
    gt_m = -np.ones((len(D), len(S), n_gt))
    if n_pred == 0 or n_gt == 0:
        return gt_m, pred_m
    for i in range(n_pred):
        order = np.argsort(errors[i].sum(-1))
        open_ = np.ones((len(D), len(S)), bool)
        for j in order:
            if pred_cls[i] != gt_cls[j]:
                continue
            deg, cm = errors[i, j]
            # a NaN error fails both '>' tests, so it passes every threshold (published behaviour)
            ok = ~(deg > D)[:, None] & ~(cm > S)[None, :]
            hit = open_ & (gt_m[:, :, j] == -1) & ok
            gt_m[:, :, j][hit] = i
            pred_m[:, :, i][hit] = j
            open_ &= ~hit
            if not open_.any():
                break
    return gt_m, pred_m


def compute_ap(pred_match: np.ndarray, pred_scores: np.ndarray, n_gt: int) -> float:
    """VOC all-point AP (`compute_ap_from_matches_scores`); NaN when the class has no GT."""
    order = np.argsort(pred_scores)[::-1]
    pm = np.asarray(pred_match)[order]
    tp = np.cumsum(pm > -1)
    precisions = tp / (np.arange(len(pm)) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = tp.astype(np.float32) / np.float32(n_gt) if n_gt else np.full(len(pm), np.nan, np.float32)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    if n_gt == 0:
        return float("nan")
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    idx = np.where(recalls[:-1] != recalls[1:])[0] + 1
    return float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))


# -------------------------------------------------------------------------------------------- evaluation


def _as_records(rec: dict) -> dict:
    n = len(np.asarray(rec.get("pred_class_ids", [])).reshape(-1))
    m = len(np.asarray(rec["gt_class_ids"]).reshape(-1))
    hv = rec.get("gt_handle_visibility")
    return {
        "gt_class_ids": np.asarray(rec["gt_class_ids"], np.int64).reshape(m),
        "gt_RTs": np.asarray(rec["gt_RTs"], np.float64).reshape(m, 4, 4),
        "gt_scales": np.asarray(rec["gt_scales"], np.float64).reshape(m, 3),
        "gt_handle_visibility": np.ones(m, np.int64) if hv is None else np.asarray(hv).reshape(m),
        "pred_class_ids": np.asarray(rec["pred_class_ids"], np.int64).reshape(n),
        "pred_bboxes": np.asarray(rec["pred_bboxes"]).reshape(n, 4),
        "pred_scores": np.asarray(rec["pred_scores"], np.float64).reshape(n),
        "pred_RTs": np.asarray(rec["pred_RTs"], np.float64).reshape(n, 4, 4),
        "pred_scales": np.asarray(rec["pred_scales"], np.float64).reshape(n, 3),
    }


def _iou_matrix(protocol, variant, p_rt, p_s, p_cls, g_rt, g_s, g_cls, g_hv) -> np.ndarray:
    names = protocol.synset_names
    out = np.zeros((len(p_rt), len(g_rt)))
    for i in range(len(p_rt)):
        for j in range(len(g_rt)):
            hv = g_hv[j] if variant == "nocs" else 1
            sym = iou_is_symmetric(protocol, variant, names[p_cls[i]], names[g_cls[j]], hv)
            out[i, j] = symmetric_iou(p_rt[i], g_rt[j], p_s[i], g_s[j], sym, variant)
    return out


@dataclass
class EvalResult:
    protocol: Protocol
    iou_thresholds: np.ndarray
    degree_thresholds: np.ndarray
    shift_thresholds: np.ndarray
    # variant -> (C+2, T): row 0 BG (unused), 1..C classes, -1 mean over the classes whose AP is defined
    iou_aps: dict[str, np.ndarray]
    pose_aps: np.ndarray  # (C+2, D, S)
    counts: dict[str, np.ndarray]

    @property
    def classes_without_gt(self) -> list[str]:
        """Classes with no ground-truth object: their AP is undefined and they are left out of the mean."""
        return [name for k, name in enumerate(self.protocol.classes, start=1) if self.counts["gt"][k] == 0]

    def iou_ap(self, variant: str, thr: float, cls: int = -1) -> float:
        k = int(np.argmin(np.abs(self.iou_thresholds - thr)))
        return float(self.iou_aps[variant][cls, k])

    def pose_ap(self, deg: float, cm: float, cls: int = -1) -> float:
        d = int(np.argmin(np.abs(self.degree_thresholds - deg)))
        s = int(np.argmin(np.abs(self.shift_thresholds - cm)))
        return float(self.pose_aps[cls, d, s])


def mean_over_defined(per_class: np.ndarray) -> np.ndarray:
    """Mean over classes (axis 0) of the APs that are defined. The published mean is NaN as soon as one class
    has no ground truth; on the full test sets every class has some, so the values agree there, and a small
    or one-category test set still gets a mean (NaN only when no class has ground truth)."""
    defined = ~np.isnan(per_class)
    n = defined.sum(axis=0)
    total = np.where(defined, per_class, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def evaluate_records(
    records: Sequence[dict],
    protocol: Protocol = NOCS_PROTOCOL,
    iou_thresholds: Sequence[float] | None = None,
    degree_thresholds: Sequence[float] | None = None,
    shift_thresholds: Sequence[float] | None = None,
) -> EvalResult:
    """`compute_independent_mAP` (NOCS IoU) + `compute_CATRE_IoU` over per-image result records.

    Threshold lists default to the protocol's; 360 degrees and 100 cm are always appended as published, and
    the pose gate threshold (0.1) is added to the IoU list. Each threshold is matched independently, so
    denser lists (for curves) give the same values at the reported thresholds.
    """
    iou_t = sorted(set(iou_thresholds or protocol.iou_thresholds) | {protocol.iou_pose_thres})
    deg_t = sorted(set(degree_thresholds or protocol.degree_thresholds) | {360.0})
    sh_t = sorted(set(shift_thresholds or protocol.shift_thresholds) | {100.0})
    gate = iou_t.index(protocol.iou_pose_thres)
    names = protocol.synset_names
    C = len(names)
    acc = {v: {c: ([], [], 0) for c in range(1, C)} for v in ("nocs", "catre")}
    pose_acc = {c: ([], [], 0) for c in range(1, C)}
    n_gt_total = np.zeros(C + 1, np.int64)
    for raw in records:
        r = _as_records(raw)
        if np.any(np.all(r["pred_bboxes"] == 0, axis=1)):
            raise ValueError(
                "a prediction has an all-zero 2D box; the published trim_zeros step would "
                "misalign scores and poses"
            )
        for c in range(1, C):
            gsel = r["gt_class_ids"] == c
            psel = r["pred_class_ids"] == c
            g_rt, g_s = r["gt_RTs"][gsel], r["gt_scales"][gsel]
            g_cls = r["gt_class_ids"][gsel]
            g_hv = r["gt_handle_visibility"][gsel] if names[c] == "mug" else np.ones(gsel.sum(), np.int64)
            n_gt_total[c] += gsel.sum()
            order = np.argsort(r["pred_scores"][psel])[::-1]
            p_rt, p_s = r["pred_RTs"][psel][order], r["pred_scales"][psel][order]
            p_cls, p_sc = r["pred_class_ids"][psel][order], r["pred_scores"][psel][order]
            gate_gt_m = gate_pred_m = None
            for variant in ("nocs", "catre"):
                ov = _iou_matrix(protocol, variant, p_rt, p_s, p_cls, g_rt, g_s, g_cls, g_hv)
                gt_m, pred_m = match_by_iou(ov, p_cls, g_cls, iou_t)
                pm, sc, ng = acc[variant][c]
                pm.append(pred_m)
                sc.append(p_sc)
                acc[variant][c] = (pm, sc, ng + len(g_cls))
                if variant == "nocs":
                    gate_gt_m, gate_pred_m = gt_m[gate], pred_m[gate]
            # pose: only the predictions and GTs matched at the 0.1 NOCS-IoU gate take part
            kp, kg = gate_pred_m > -1, gate_gt_m > -1
            err = np.zeros((int(kp.sum()), int(kg.sum()), 2))
            for a, i in enumerate(np.flatnonzero(kp)):
                for b, j in enumerate(np.flatnonzero(kg)):
                    err[a, b] = rt_degree_cm(p_rt[i], g_rt[j], names[g_cls[j]], g_hv[j], protocol.rot_sym)
            _, pose_pm = match_by_pose(err, p_cls[kp], g_cls[kg], deg_t, sh_t)
            pm, sc, ng = pose_acc[c]
            pm.append(pose_pm)
            sc.append(p_sc[kp])
            pose_acc[c] = (pm, sc, ng + int(kg.sum()))

    iou_aps = {}
    for variant in ("nocs", "catre"):
        aps = np.zeros((C + 1, len(iou_t)))
        for c in range(1, C):
            pm, sc, ng = acc[variant][c]
            pm_all = np.concatenate(pm, axis=-1) if pm else np.zeros((len(iou_t), 0))
            sc_all = np.concatenate(sc) if sc else np.zeros(0)
            for k in range(len(iou_t)):
                aps[c, k] = compute_ap(pm_all[k], sc_all, ng)
        aps[-1] = mean_over_defined(aps[1:-1])
        iou_aps[variant] = aps
    pose_aps = np.zeros((C + 1, len(deg_t), len(sh_t)))
    pose_counts = np.zeros(C + 1, np.int64)
    for c in range(1, C):
        pm, sc, ng = pose_acc[c]
        pose_counts[c] = ng
        pm_all = np.concatenate(pm, axis=-1) if pm else np.zeros((len(deg_t), len(sh_t), 0))
        sc_all = np.concatenate(sc) if sc else np.zeros(0)
        for d in range(len(deg_t)):
            for s in range(len(sh_t)):
                pose_aps[c, d, s] = compute_ap(pm_all[d, s], sc_all, ng)
    pose_aps[-1] = mean_over_defined(pose_aps[1:-1])
    return EvalResult(
        protocol,
        np.asarray(iou_t),
        np.asarray(deg_t, float),
        np.asarray(sh_t, float),
        iou_aps,
        pose_aps,
        {"gt": n_gt_total, "pose_gt": pose_counts},
    )
