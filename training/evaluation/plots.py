"""AP-vs-threshold curves (the NOCS evaluation's mAP plots), drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# the backend is chosen before pyplot is imported so that no display is ever needed
import matplotlib.pyplot as plt
import numpy as np

from .metrics import CATRE_IOU_LABEL, NOCS_IOU_LABEL, EvalResult


def plot_curves(res: EvalResult, path: str | Path, title: str = "") -> Path:
    """Three panels: AP vs 3D IoU threshold (both IoU variants), vs rotation (shift free), vs shift."""
    path = Path(path)
    classes = res.protocol.classes
    deg_free = int(np.argmax(res.degree_thresholds))  # 360°: rotation unconstrained
    shift_free = int(np.argmax(res.shift_thresholds))  # 100 cm: translation unconstrained
    deg_sel = res.degree_thresholds <= 60
    shift_sel = res.shift_thresholds <= 10
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    panels = [
        (
            axes[0],
            res.iou_thresholds,
            lambda c: res.iou_aps["nocs"][c],
            f"3D IoU threshold — {NOCS_IOU_LABEL}",
        ),
        (
            axes[1],
            res.iou_thresholds,
            lambda c: res.iou_aps["catre"][c],
            f"3D IoU threshold — {CATRE_IOU_LABEL}",
        ),
        (
            axes[2],
            res.degree_thresholds[deg_sel],
            lambda c: res.pose_aps[c, deg_sel, shift_free],
            "rotation error threshold (°)",
        ),
        (
            axes[3],
            res.shift_thresholds[shift_sel],
            lambda c: res.pose_aps[c, deg_free, shift_sel],
            "translation error threshold (cm)",
        ),
    ]
    for ax, x, y, xlabel in panels:
        for k, name in enumerate(classes, start=1):
            ax.plot(x, 100 * y(k), label=name, linewidth=1)
        present = [k for k in range(1, len(classes) + 1) if res.counts["gt"][k] > 0]
        if present:
            # classes without GT are NaN in the published mean; the curve averages the classes that have GT
            mean = np.mean([y(k) for k in present], axis=0)
            ax.plot(x, 100 * mean, label="mean (classes with GT)", color="black", linewidth=2)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("AP (%)")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
