"""RViz MarkerArray for one frame: a DELETEALL first (no stale boxes from earlier frames, the most common
complaint about pose visualisers), then per object a LINE_LIST box, a TEXT_VIEW_FACING label
(`<class> #<track id>`, score, size in cm) and optionally an RGB axes LINE_LIST. ns = class name, ids unique
within the frame. With trails (Trails, parameter trail_length): one LINE_STRIP per object through its track's
last published positions, ns "trails"."""

from __future__ import annotations

from collections import deque

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


def _point(c) -> Point:
    return Point(x=c[0], y=c[1], z=c[2])


_AXIS_COLORS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _marker(header, ns: str, marker_id: int, marker_type: int, life: Duration, rgb) -> Marker:
    """An opaque ADD marker of colour ``rgb`` with an identity pose (its points or position are in header's
    frame)."""
    m = Marker(header=header, ns=ns, id=marker_id, type=marker_type, action=Marker.ADD, lifetime=life)
    m.pose.orientation.w = 1.0
    m.color = ColorRGBA(r=rgb[0], g=rgb[1], b=rgb[2], a=1.0)
    return m


class Trails:
    """The last `length` published positions of each track (class, instance id) of one output stream.

    A track not published for `forget` updates is dropped (bounded memory over any run); a change of the
    output frame starts every trail again (positions of two frames never share a line)."""

    def __init__(self, length: int, forget: int = 30):
        self.length, self.forget = int(length), max(int(forget), 1)
        self._frame = ""
        self._n = 0
        self._tracks: dict[tuple[str, str], tuple[int, deque]] = {}

    def update(self, frame_id: str, objects) -> list[list]:
        """Adds this frame's positions; returns each object's trail (oldest first, this frame's last)."""
        if frame_id != self._frame:
            self._frame, self._tracks = frame_id, {}
        self._n += 1
        out = []
        for o in objects:
            key = (o.class_name, str(o.instance_id))
            _, q = self._tracks.get(key, (0, None))
            if q is None or q.maxlen != self.length:
                q = deque(q or (), maxlen=self.length)
            q.append(np.asarray(o.translation, np.float64).tolist())
            self._tracks[key] = (self._n, q)
            out.append(list(q))
        if len(self._tracks) > len(objects):
            cut = self._n - self.forget
            self._tracks = {k: v for k, v in self._tracks.items() if v[0] > cut}
        return out


def build_markers(
    header, objects, axes: bool = True, lifetime_s: float = 0.0, trails: list | None = None
) -> MarkerArray:
    """`objects`: items with class_name, class_id, score, instance_id, rotation, translation, size (in
    header's frame). `trails`: per object its trail positions (Trails.update), drawn when 2 or more.

    Coordinates go to host floats once per object (`tolist`), and a box's 24 edge ends refer to its 8 corner
    Points (the message holds the same values; it is serialised, never mutated, after this)."""
    arr = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    markers = [clear]
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    for i, o in enumerate(objects):
        r, g, b = class_color(o.class_id)
        R = np.asarray(o.rotation)
        t = np.asarray(o.translation)
        size = np.asarray(o.size)
        corners = [_point(c) for c in box_corners(o.rotation, o.translation, o.size).tolist()]
        box = _marker(header, o.class_name, 3 * i, Marker.LINE_LIST, life, (r, g, b))
        box.scale.x = 0.004
        box.points = [corners[k] for edge in BOX_EDGES for k in edge]
        markers.append(box)

        text = _marker(header, o.class_name, 3 * i + 1, Marker.TEXT_VIEW_FACING, life, (r, g, b))
        # Above the box along the object's up (y) axis.
        text.pose.position = _point((t + R[:, 1] * (float(o.size[1]) / 2 + 0.03)).tolist())
        text.scale.z = 0.03
        s = size * 100
        text.text = f"{o.class_name} #{o.instance_id}\n{o.score:.2f} {s[0]:.0f}x{s[1]:.0f}x{s[2]:.0f} cm"
        markers.append(text)

        if axes:
            ax = _marker(header, o.class_name, 3 * i + 2, Marker.LINE_LIST, life, (1.0, 1.0, 1.0))
            ax.scale.x = 0.004
            smax = np.max(size)
            length = 0.5 * float(smax) if smax > 0 else 0.05
            origin = _point(t.tolist())
            # End k = t + (column k of R) * length, element by element as per axis.
            ends = (t + (R * length).T).tolist()
            pts, cols = [], []
            for end, (cr, cg, cb) in zip(ends, _AXIS_COLORS):
                col = ColorRGBA(r=cr, g=cg, b=cb, a=1.0)
                pts += [origin, _point(end)]
                cols += [col, col]
            ax.points = pts
            ax.colors = cols
            markers.append(ax)
        if trails is not None and len(trails[i]) >= 2:
            line = _marker(header, "trails", i, Marker.LINE_STRIP, life, (r, g, b))
            line.scale.x = 0.003
            line.points = [_point(c) for c in trails[i]]
            markers.append(line)
    arr.markers = markers
    return arr
