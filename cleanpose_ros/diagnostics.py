"""Node statistics and their publication on /diagnostics: diagnostic_updater when the distribution has it,
else a timer publishing diagnostic_msgs/DiagnosticArray directly (same message layout). All buffers are
bounded (fixed-length deques, fixed counter keys), so memory stays flat over long runs."""

from __future__ import annotations

import threading
import time
from collections import deque

try:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # the counters (NodeStats, StageClock) and the worker that fills them stay importable
    # without ROS (the GPU test machine); publishing and node_status need the package and fail without it
    DiagnosticArray = DiagnosticStatus = KeyValue = None

from cleanpose_ros.params import NodeParams


class StageClock:
    """Per-stage wall times of one frame: `lap(name)` books the time since the previous lap (or since the
    clock was made) under `name`, in ms; a name booked twice adds up. One perf_counter read per stage."""

    __slots__ = ("_t", "ms")

    def __init__(self):
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now


# The synchronized inputs; each must keep arriving (a silent one makes the node ERROR "stale"). CameraInfo is
# cached, not synchronized, and may legitimately be published once (latched), so it is reported, not judged.
SYNCED_INPUTS = ("image", "depth", "detections")
INPUTS = (*SYNCED_INPUTS, "camera_info")
# Input-set problems found ahead of the worker (sync.SyncMonitor): each is a message or set not used.
INPUT_PROBLEMS = ("sync_miss", "duplicate_stamp", "stale_stamp")


class NodeStats:
    """Thread-safe counters filled by the executor (inputs) and the worker (outputs). Two views: lifetime
    totals (what happened since start) and a recent window (what is happening now, which sets the level and
    clears within one window after recovery)."""

    MAX_STAGES = 32  # stage names are a fixed set in the node; the bound only guards against misuse
    MAX_KINDS = 64  # skip reasons are a fixed set too; same guard
    MAX_EVENTS = 20_000  # events kept for the window (a few seconds at hundreds of events per second)

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.inputs = 0  # synchronized input sets received
        self.processed = 0  # frames that produced outputs
        self.dropped = 0  # sets replaced while the model was busy
        self.skipped: dict[str, int] = {}  # frame-level reason -> frames skipped
        self.objects_skipped: dict[str, int] = {}  # object-level reason -> objects left out
        self.input_problems: dict[str, int] = {}  # INPUT_PROBLEMS kind -> messages / sets not used
        self.time_jumps = 0  # sync resets after a stamp went back (bag loop, clock reset)
        self.sync_gap_last_s: float | None = None  # measured stamp gap of the last sync miss
        self.objects_total = 0
        self.objects_last = 0
        self._t_in: deque[float] = deque(maxlen=window)
        self._t_out: deque[float] = deque(maxlen=window)
        self._lat: deque[float] = deque(maxlen=window)
        self._age: deque[float] = deque(maxlen=window)
        self._msg_t: dict[str, deque[float]] = {k: deque(maxlen=window) for k in INPUTS}
        # Lifetime messages per input: a publisher that counts what it sent gets the transport's losses.
        self.messages: dict[str, int] = dict.fromkeys(INPUTS, 0)
        self._window = window
        self._stages: dict[str, deque[float]] = {}  # stage name -> last `window` frame times (ms)
        # (monotonic time, what, kind, count) for the recent window; what in set/drop/skip/processed/objects/
        # object_skip/problem.
        self._events: deque[tuple[float, str, str, int]] = deque(maxlen=self.MAX_EVENTS)

    def _event(self, what: str, kind: str = "", n: int = 1) -> None:
        self._events.append((time.monotonic(), what, kind, n))

    @classmethod
    def _bump(cls, d: dict[str, int], kind: str, n: int = 1) -> None:
        if kind in d or len(d) < cls.MAX_KINDS:
            d[kind] = d.get(kind, 0) + n

    def on_message(self, name: str) -> None:
        """A message arrived on input `name` (one of INPUTS)."""
        with self._lock:
            q = self._msg_t.get(name)
            if q is not None:
                q.append(time.monotonic())
                self.messages[name] += 1

    def on_input(self) -> None:
        with self._lock:
            self.inputs += 1
            self._t_in.append(time.monotonic())
            self._event("set")

    def on_drop(self) -> None:
        with self._lock:
            self.dropped += 1
            self._event("drop")

    def on_skip(self, kind: str) -> None:
        """A whole frame (synchronized set) was not used, for reason `kind`."""
        with self._lock:
            self._bump(self.skipped, kind)
            self._event("skip", kind)

    def on_objects_skipped(self, kind: str, n: int) -> None:
        """`n` objects of a used frame were left out, for reason `kind`."""
        if n <= 0:
            return
        with self._lock:
            self._bump(self.objects_skipped, kind, n)
            self._event("object_skip", kind, n)

    def on_input_problem(self, kind: str, gap_s: float | None = None) -> None:
        """A message or set not used before it reached the worker (INPUT_PROBLEMS); `gap_s`: a sync miss's
        measured stamp gap."""
        with self._lock:
            self._bump(self.input_problems, kind)
            if gap_s is not None:
                self.sync_gap_last_s = gap_s
            self._event("problem", kind)

    def on_time_jump(self) -> None:
        with self._lock:
            self.time_jumps += 1

    def on_output(self, latency_s: float, age_s: float | None, n_objects: int) -> None:
        with self._lock:
            self.processed += 1
            self._t_out.append(time.monotonic())
            self._lat.append(latency_s)
            if age_s is not None:
                self._age.append(age_s)
            self.objects_last = n_objects
            self.objects_total += n_objects
            self._event("processed")
            self._event("objects", "", n_objects)

    def on_stages(self, ms: dict[str, float]) -> None:
        """Per-stage times (ms) of one processed frame (a StageClock's `ms`)."""
        with self._lock:
            for k, v in ms.items():
                q = self._stages.get(k)
                if q is None:
                    if len(self._stages) >= self.MAX_STAGES:
                        continue
                    q = self._stages[k] = deque(maxlen=self._window)
                q.append(v)

    @staticmethod
    def _rate(ts) -> float:
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        # A stream that stopped decays to 0 instead of holding its last rate.
        span = max(ts[-1] - ts[0], time.monotonic() - ts[-1])
        return (len(ts) - 1) / span

    def _recent(self, window: float) -> dict[str, dict[str, int]]:
        """what -> kind -> count over the last `window` seconds (older events are forgotten)."""
        cut = time.monotonic() - window
        ev = self._events
        while ev and ev[0][0] < cut:
            ev.popleft()
        out: dict[str, dict[str, int]] = {}
        for _, what, kind, n in ev:
            d = out.setdefault(what, {})
            d[kind] = d.get(kind, 0) + n
        return out

    def snapshot(self, window: float = 1.0) -> dict[str, float | int | str]:
        now = time.monotonic()
        with self._lock:
            lat = sorted(self._lat)
            d = {
                "input_rate_hz": round(self._rate(self._t_in), 2),
                "output_rate_hz": round(self._rate(self._t_out), 2),
                "latency_ms_mean": round(1e3 * sum(lat) / len(lat), 1) if lat else 0.0,
                "latency_ms_max": round(1e3 * lat[-1], 1) if lat else 0.0,
                "stamp_age_ms_mean": round(1e3 * sum(self._age) / len(self._age), 1) if self._age else 0.0,
            }
            # Per input: messages per second over the window and seconds since the last one.
            for name, q in self._msg_t.items():
                d[f"input_{name}_rate_hz"] = round(sum(1 for t in q if t >= now - window) / window, 2)
                d[f"input_{name}_age_s"] = round(now - q[-1], 2) if q else "never"
                d[f"input_{name}_messages"] = self.messages[name]
            d.update(
                {
                    "inputs": self.inputs,
                    "processed": self.processed,
                    "dropped": self.dropped,
                    "drop_ratio": round(self.dropped / self.inputs, 3) if self.inputs else 0.0,
                    # frames (synchronized sets) skipped: processed + dropped + this = inputs
                    "skipped_bad_input": sum(self.skipped.values()),
                    "objects_skipped": sum(self.objects_skipped.values()),
                    "inputs_not_synchronized": sum(self.input_problems.values()),
                    "objects_last_frame": self.objects_last,
                    "objects_total": self.objects_total,
                    "time_jumps": self.time_jumps,
                    "sync_gap_last_ms": round(1e3 * self.sync_gap_last_s, 1)
                    if self.sync_gap_last_s is not None
                    else "n/a",
                }
            )
            for k, v in sorted(self.skipped.items()):
                d[f"skipped_{k}"] = v
            for k, v in sorted(self.objects_skipped.items()):
                d[f"objects_skipped_{k}"] = v
            for k, v in sorted(self.input_problems.items()):
                d[f"inputs_{k}"] = v
            # The recent window: what the level is judged on.
            r = self._recent(window)
            sets = r.get("set", {}).get("", 0)
            problems = sum(r.get("problem", {}).values())
            skipped = sum(r.get("skip", {}).values())
            used = r.get("objects", {}).get("", 0)
            obj_skipped = sum(r.get("object_skip", {}).values())
            d["window_s"] = window
            d["window_sets"] = sets
            d["window_processed"] = r.get("processed", {}).get("", 0)
            d["window_dropped"] = r.get("drop", {}).get("", 0)
            d["window_skip_share"] = (
                round((skipped + problems) / (sets + problems), 3) if sets + problems else 0.0
            )
            d["window_object_skip_share"] = (
                round(obj_skipped / (used + obj_skipped), 3) if obj_skipped else 0.0
            )
            d["window_drop_share"] = round(d["window_dropped"] / sets, 3) if sets else 0.0
            reasons = {**r.get("skip", {}), **r.get("problem", {})}
            d["window_skip_reasons"] = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
            d["window_object_skip_reasons"] = (
                ", ".join(f"{k} {v}" for k, v in sorted(r.get("object_skip", {}).items())) or "none"
            )
            d["window_errors"] = sum(r.get("skip", {}).get(k, 0) for k in ("error", "out_of_memory"))
            for k, q in self._stages.items():  # in first-seen order: the frame path's order
                if q:
                    d[f"stage_ms_{k}"] = round(sum(q) / len(q), 2)
            return d


def gpu_memory(device) -> dict[str, str]:
    try:
        import torch

        if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            return {
                "gpu_memory_allocated_mb": f"{torch.cuda.memory_allocated(device) / 2**20:.1f}",
                "gpu_memory_reserved_mb": f"{torch.cuda.memory_reserved(device) / 2**20:.1f}",
                "gpu_memory_peak_mb": f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f}",
            }
    except Exception:  # diagnostics must never take the node down
        pass
    return {"gpu_memory_allocated_mb": "n/a (cpu)"}


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return -1.0


class DiagnosticsPublisher:
    """Calls `fill()` -> (level, message, dict) every `period` s and publishes it under `name`."""

    def __init__(self, node, name: str, hardware_id: str, period: float, fill):
        self._node, self._name, self._hw, self._fill = node, name, hardware_id, fill
        self._pub = self._timer = self._updater = None
        self._more: list[tuple[str, object]] = []  # further (name, fill) statuses: add()
        try:
            import diagnostic_updater

            self._updater = diagnostic_updater.Updater(node, period)
            self._updater.setHardwareID(hardware_id)
            self._updater.add(name, self._fill_updater)
            self.backend = "diagnostic_updater"
        except ImportError:
            self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self._timer = node.create_timer(period, self.publish_now)
            self.backend = "diagnostic_msgs"

    def _fill_updater(self, stat, fill=None):
        level, message, values = (fill or self._fill)()
        stat.summary(level, message)
        for k, v in values.items():
            stat.add(k, str(v))
        return stat

    def add(self, name: str, fill) -> None:
        """One more status (another camera of the node) in the same /diagnostics messages."""
        self._more.append((name, fill))
        if self._updater is not None:
            self._updater.add(name, lambda stat, fill=fill: self._fill_updater(stat, fill))

    def status(self, name: str | None = None, fill=None) -> DiagnosticStatus:
        level, message, values = (fill or self._fill)()
        return DiagnosticStatus(
            level=level,
            name=name or self._name,
            message=message,
            hardware_id=self._hw,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )

    def publish_now(self) -> None:
        if self._pub is None:
            return
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()] + [self.status(n, f) for n, f in self._more]
        self._pub.publish(msg)

    def close(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
        self._timer = self._pub = None


def node_status(
    stats: NodeStats,
    device: str,
    active: bool,
    sync_pending: int,
    p: NodeParams | None = None,
    topics: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, float | int | str]]:
    """(level, message, values) of the node's /diagnostics status. ERROR: a synchronized input went silent
    for `stale_timeout` s, or the frame path raised in the window. WARN: no message yet on an input, a skip or
    drop share over its threshold, an input rate under `min_input_rate`. Else OK. Judged on the recent window
    only, so the level returns to OK within one window (plus one publishing period) of recovery. The
    thresholds are the diagnostics parameters of `p` (default: NodeParams' defaults)."""
    p = p or NodeParams()
    window = p.diagnostics_window
    topics = topics or {}
    s = stats.snapshot(window)
    s.update(gpu_memory(device))
    s["rss_mb"] = f"{rss_mb():.1f}"
    s["device"] = device
    s["sync_pending"] = sync_pending
    s["state"] = "active" if active else "inactive"
    if not active:
        return DiagnosticStatus.OK, "inactive", s
    errors, warns = [], []
    if s["window_errors"]:
        errors.append(f"{s['window_errors']} frames failed in the frame path (see log)")
    for name in SYNCED_INPUTS:
        age, topic = s[f"input_{name}_age_s"], topics.get(name, name)
        if age == "never":
            warns.append(f"no message on '{topic}' yet")
        elif age > p.stale_timeout:
            errors.append(f"'{topic}' stale: no message for {age:.1f} s")
        elif p.min_input_rate > 0 and s[f"input_{name}_rate_hz"] < p.min_input_rate:
            warns.append(
                f"'{topic}' at {s[f'input_{name}_rate_hz']} Hz, below min_input_rate {p.min_input_rate} Hz"
            )
    if s["window_skip_share"] > p.warn_skip_share:
        warns.append(
            f"{100 * s['window_skip_share']:.0f}% of input sets not used in the last {window:g} s "
            f"({s['window_skip_reasons']}; see log)"
        )
    if s["window_object_skip_share"] > p.warn_skip_share:
        warns.append(
            f"{100 * s['window_object_skip_share']:.0f}% of objects left out in the last {window:g} s "
            f"({s['window_object_skip_reasons']}; see log)"
        )
    if s["window_drop_share"] > p.warn_drop_share:
        warns.append(
            f"{100 * s['window_drop_share']:.0f}% of input sets dropped in the last {window:g} s "
            "(model slower than the input: latest-only)"
        )
    if errors:
        return DiagnosticStatus.ERROR, "; ".join(errors + warns), s
    if warns:
        return DiagnosticStatus.WARN, "; ".join(warns), s
    return DiagnosticStatus.OK, "ok", s
