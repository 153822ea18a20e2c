"""Several cameras through one node: each camera's own inputs, state and statistics, and the mailbox that
gathers the latest synchronized set of every camera for one batched forward per cycle.

    Camera       one entry of the `cameras` parameter: its topic names (namespace prefix), its synchronizer
                 and SyncMonitor, its cached CameraInfo, its NodeStats (its /diagnostics status), its
                 tracking + filter stream and its output publishers.
    CameraSlots  one slot per camera, latest-only: a set that arrives while the camera's slot is full
                 replaces it (a drop of that camera). take() hands the worker every filled slot at once,
                 after waiting at most `wait()` s for the other LIVE cameras (a camera whose last set is older
                 than `stale()` s is not waited for, so a camera that stops costs the others nothing).

Decisions (documented in README "Several cameras"):
  - outputs are per camera (~/<ns>/poses, ...), also when target_frame is set: one topic per camera keeps
    each stream's stamp and rate its own, and a consumer that wants one stream subscribes to several;
  - tracks are per camera, also in a shared target_frame: one object seen by two cameras is two tracks
    (associating across cameras needs calibration the node cannot check);
  - with cameras == [""] (the default) topic names, output names, TF frame names and the diagnostics name
    are exactly those of the single-camera node.
"""

from __future__ import annotations

import re
import threading
import time

_BAD = re.compile(r"[^A-Za-z0-9_]")


def tag(namespace: str) -> str:
    """A name part made of the namespace ('/robot/cam_left' -> 'robot_cam_left'; '' -> '')."""
    return _BAD.sub("_", namespace.strip("/"))


def input_topic(namespace: str, name: str) -> str:
    """The input topic of `name` for a camera: relative names stay relative (remappable, namespace-able)."""
    ns = namespace.rstrip("/")
    return f"{ns}/{name}" if ns else name


def output_topic(namespace: str, name: str) -> str:
    """~/<name> for the single camera, ~/<ns>/<name> otherwise (`name` with or without its "~/")."""
    t, name = tag(namespace), name.removeprefix("~/")
    return f"~/{t}/{name}" if t else f"~/{name}"


class Camera:
    """One camera's state in the node (see the module text). `index`: its place in `cameras`."""

    def __init__(self, index: int, namespace: str, stats):
        self.index = index
        self.namespace = namespace
        self.tag = tag(namespace)
        self.stats = stats
        self.camera_info = None  # the latest one (cached, not synchronized)
        self.sync = None  # sync.InputSynchronizer while active
        self.info_sub = None
        self.outputs = None  # outputs.Outputs of this camera
        self.stream = None  # filtering.PoseStream, made on the first frame
        self.stream_frame = ""
        self.noted_distortion = False
        self.topics: dict[str, str] = {}  # input name -> resolved topic, set at activate

    def topic(self, name: str) -> str:
        return self.topics.get(name, input_topic(self.namespace, name))

    def tf_prefix(self, prefix: str) -> str:
        return f"{prefix}{self.tag}_" if self.tag else prefix

    def on_info(self, msg) -> None:
        self.stats.on_message("camera_info")
        self.camera_info = msg

    def label(self) -> str:
        return f"camera '{self.namespace}'" if self.namespace else "camera"


class CameraSlots:
    """Latest-only mailbox, one slot per camera (see the module text). `stats_of(i)`: the NodeStats that
    counts camera i's sets and drops; `wait()` / `stale()`: seconds, read at every take (run-time
    parameters)."""

    def __init__(self, n: int, stats_of, wait=lambda: 0.0, stale=lambda: 2.0):
        self.n = n
        self._stats_of = stats_of
        self._wait, self._stale = wait, stale
        self.cv = threading.Condition()
        self._slots: dict[int, tuple] = {}
        self._last_put: dict[int, float] = {}
        self.accepting = False

    def put(self, index: int, item: tuple) -> None:
        stats = self._stats_of(index)
        stats.on_input()
        with self.cv:
            if not self.accepting:
                return
            if index in self._slots:
                stats.on_drop()
            self._slots[index] = item
            self._last_put[index] = time.monotonic()
            self.cv.notify_all()

    def wait_s(self) -> float:
        """camera_wait now (a run-time parameter)."""
        return self._wait()

    def clear(self) -> None:
        with self.cv:
            self._slots = {}

    def __bool__(self) -> bool:
        return bool(self._slots)

    def _missing_live(self, now: float, taken=()) -> list[int]:
        """Cameras with no set waiting (and none `taken` in this cycle) that delivered one within stale() s:
        worth waiting for."""
        cut = now - self._stale()
        return [i for i, t in self._last_put.items() if i not in self._slots and i not in taken and t >= cut]

    def take(self, stop: threading.Event, gather: bool = True) -> dict[int, tuple] | None:
        """Block until a set is waiting, then (`gather`) wait up to wait() s for the missing live cameras;
        returns every filled slot (camera index -> item) and empties them, or None when `stop` is set.
        gather=False: the sets waiting now, at once (the worker prepares them while it gathers the other
        cameras' sets with `take_more`)."""
        with self.cv:
            while not self._slots and not stop.is_set():
                self.cv.wait(0.5)
            if stop.is_set():
                return None
            if self.n > 1 and gather:
                deadline = time.monotonic() + self._wait()
                while not stop.is_set():
                    now = time.monotonic()
                    if now >= deadline or not self._missing_live(now) or not self._slots:
                        break
                    self.cv.wait(deadline - now)
                if stop.is_set():
                    return None
            items, self._slots = self._slots, {}
            return items  # empty when deactivation emptied the slots meanwhile

    def take_more(self, taken, deadline: float, stop: threading.Event) -> dict[int, tuple] | None:
        """The cycle's next sets: the waiting sets of cameras not in `taken` (emptied), as soon as there is
        one; waits (until the monotonic `deadline`) only while a live camera not in `taken` has none. {}: the
        cycle is complete (every live camera taken, or the deadline passed); None: `stop` is set or inputs
        are no longer accepted (deactivation: the cycle is dropped, as `take` returns nothing then). A camera
        in `taken` whose slot fills meanwhile keeps that set for the next cycle."""
        with self.cv:
            while not stop.is_set() and self.accepting:
                new = {i: self._slots.pop(i) for i in [i for i in self._slots if i not in taken]}
                if new:
                    return new
                now = time.monotonic()
                if now >= deadline or not self._missing_live(now, taken):
                    return {}
                self.cv.wait(deadline - now)
            return None
