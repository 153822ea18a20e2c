"""Node statistics and their publication on /diagnostics: diagnostic_updater when the distribution has it,
else a timer publishing diagnostic_msgs/DiagnosticArray directly (same message layout). All buffers are
bounded (fixed-length deques, fixed counter keys), so memory stays flat over long runs."""

from __future__ import annotations

import threading
import time
from collections import deque

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


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


class NodeStats:
    """Thread-safe counters filled by the executor (inputs) and the worker (outputs)."""

    MAX_STAGES = 32  # stage names are a fixed set in the node; the bound only guards against misuse

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.inputs = 0  # synchronized input sets received
        self.processed = 0  # frames that produced outputs
        self.dropped = 0  # sets replaced while the model was busy
        self.skipped: dict[str, int] = {}  # bad-input reason kind -> frames skipped
        self.objects_total = 0
        self.objects_last = 0
        self.skipped_unknown_class = 0
        self.skipped_few_points = 0
        self._t_in: deque[float] = deque(maxlen=window)
        self._t_out: deque[float] = deque(maxlen=window)
        self._lat: deque[float] = deque(maxlen=window)
        self._age: deque[float] = deque(maxlen=window)
        self._window = window
        self._stages: dict[str, deque[float]] = {}  # stage name -> last `window` frame times (ms)

    def on_input(self) -> None:
        with self._lock:
            self.inputs += 1
            self._t_in.append(time.monotonic())

    def on_drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def on_skip(self, kind: str) -> None:
        with self._lock:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def on_output(
        self, latency_s: float, age_s: float | None, n_objects: int, unknown: int, few: int
    ) -> None:
        with self._lock:
            self.processed += 1
            self._t_out.append(time.monotonic())
            self._lat.append(latency_s)
            if age_s is not None:
                self._age.append(age_s)
            self.objects_last = n_objects
            self.objects_total += n_objects
            self.skipped_unknown_class += unknown
            self.skipped_few_points += few

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

    def snapshot(self) -> dict[str, float | int | str]:
        with self._lock:
            lat = sorted(self._lat)
            d = {
                "input_rate_hz": round(self._rate(self._t_in), 2),
                "output_rate_hz": round(self._rate(self._t_out), 2),
                "latency_ms_mean": round(1e3 * sum(lat) / len(lat), 1) if lat else 0.0,
                "latency_ms_max": round(1e3 * lat[-1], 1) if lat else 0.0,
                "stamp_age_ms_mean": round(1e3 * sum(self._age) / len(self._age), 1) if self._age else 0.0,
                "inputs": self.inputs,
                "processed": self.processed,
                "dropped": self.dropped,
                "drop_ratio": round(self.dropped / self.inputs, 3) if self.inputs else 0.0,
                "skipped_bad_input": sum(self.skipped.values()),
                "objects_last_frame": self.objects_last,
                "objects_total": self.objects_total,
                "skipped_unknown_class": self.skipped_unknown_class,
                "skipped_few_points": self.skipped_few_points,
            }
            for k, v in sorted(self.skipped.items()):
                d[f"skipped_{k}"] = v
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

    def _fill_updater(self, stat):
        level, message, values = self._fill()
        stat.summary(level, message)
        for k, v in values.items():
            stat.add(k, str(v))
        return stat

    def status(self) -> DiagnosticStatus:
        level, message, values = self._fill()
        return DiagnosticStatus(
            level=level,
            name=self._name,
            message=message,
            hardware_id=self._hw,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )

    def publish_now(self) -> None:
        if self._pub is None:
            return
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()]
        self._pub.publish(msg)

    def close(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
        self._timer = self._pub = None


def node_status(
    stats: NodeStats, device: str, active: bool, sync_pending: int
) -> tuple[int, str, dict[str, float | int | str]]:
    """(level, message, values) of the node's /diagnostics status."""
    s = stats.snapshot()
    s.update(gpu_memory(device))
    s["rss_mb"] = f"{rss_mb():.1f}"
    s["device"] = device
    s["sync_pending"] = sync_pending
    s["state"] = "active" if active else "inactive"
    level, msg = DiagnosticStatus.OK, "ok"
    if not active:
        msg = "inactive"
    elif s["inputs"] and float(s["drop_ratio"]) > 0.5:
        level, msg = (
            DiagnosticStatus.WARN,
            "more than half of the input sets are dropped (model slower than input)",
        )
    elif s["skipped_bad_input"]:
        msg = f"{s['skipped_bad_input']} input sets skipped as invalid (see log)"
    return level, msg, s
