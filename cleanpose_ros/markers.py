"""RViz MarkerArray for one frame: a DELETEALL first (no stale boxes from earlier frames, the most common
complaint about pose visualisers), then per object a LINE_LIST box, a TEXT_VIEW_FACING label (class, score,
size in cm) and optionally an RGB axes LINE_LIST. ns = class name, ids unique within the frame."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from cleanpose_ros.geometry_utils import BOX_EDGES, box_corners

_PALETTE = [
    (0.12, 0.47, 0.71),
    (1.0, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.50, 0.50, 0.50),
]


def class_color(class_id: int) -> tuple[float, float, float]:
    return _PALETTE[int(class_id) % len(_PALETTE)]


def _pt(p) -> Point:
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def build_markers(header, objects, axes: bool = True, lifetime_s: float = 0.0) -> MarkerArray:
    """`objects`: items with class_name, class_id, score, rotation, translation, size (in header's frame)."""
    arr = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    arr.markers.append(clear)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    for i, o in enumerate(objects):
        r, g, b = class_color(o.class_id)
        corners = box_corners(o.rotation, o.translation, o.size)
        box = Marker(
            header=header, ns=o.class_name, id=3 * i, type=Marker.LINE_LIST, action=Marker.ADD, lifetime=life
        )
        box.pose.orientation.w = 1.0
        box.scale.x = 0.004
        box.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        for a_, b_ in BOX_EDGES:
            box.points.extend([_pt(corners[a_]), _pt(corners[b_])])
        arr.markers.append(box)

        text = Marker(
            header=header,
            ns=o.class_name,
            id=3 * i + 1,
            type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            lifetime=life,
        )
        # Above the box along the object's up (y) axis.
        up = np.asarray(o.rotation)[:, 1]
        p = np.asarray(o.translation) + up * (float(o.size[1]) / 2 + 0.03)
        text.pose.position = _pt(p)
        text.pose.orientation.w = 1.0
        text.scale.z = 0.03
        text.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        s = np.asarray(o.size) * 100
        text.text = f"{o.class_name} {o.score:.2f}\n{s[0]:.0f}x{s[1]:.0f}x{s[2]:.0f} cm"
        arr.markers.append(text)

        if axes:
            ax = Marker(
                header=header,
                ns=o.class_name,
                id=3 * i + 2,
                type=Marker.LINE_LIST,
                action=Marker.ADD,
                lifetime=life,
            )
            ax.pose.orientation.w = 1.0
            ax.scale.x = 0.004
            ax.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
            length = 0.5 * float(np.max(o.size)) if np.max(o.size) > 0 else 0.05
            t = np.asarray(o.translation)
            for k, c in enumerate(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))):
                ax.points.extend([_pt(t), _pt(t + np.asarray(o.rotation)[:, k] * length)])
                col = ColorRGBA(r=c[0], g=c[1], b=c[2], a=1.0)
                ax.colors.extend([col, col])
            arr.markers.append(ax)
    return arr
