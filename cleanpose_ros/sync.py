"""Approximate time synchronization of the node's inputs behind one interface.

On a robot `message_filters.ApproximateTimeSynchronizer` is used. Where the distribution lacks
message_filters (PyPI wheels), `_ApproxSync` runs the same algorithm as message_filters' Python
ApproximateTimeSynchronizer: one stamp-keyed queue per input bounded to `queue_size` (oldest evicted); on each
arrival, candidates within `slop` of the new stamp are searched in the other queues, nearest first, and the
first combination whose total spread is below `slop` is emitted and removed from the queues.

Ahead of either, `SyncMonitor` looks at every message's stamp, so that no input is dropped silently:
a stamp equal to that input's newest (duplicate) or slightly older (stale, out of order) is dropped and
reported; a stamp more than `time_jump` s older (a bag looping, a clock reset) empties the sync queues (both
algorithms evict the OLDEST stamp, so the newer stamps left from before the jump would otherwise fill the
queues for good) and is reported; a message of the reference input (the last one: detections) that no set
used within `miss_after` s is reported as a sync miss with the measured stamp gap to the other inputs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

try:  # the distribution's implementation when present
    import message_filters as _mf
except ImportError:  # pragma: no cover - depends on the machine
    _mf = None


def _stamp_ns(msg) -> int:
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


class _ApproxSync:
    """In-package equivalent of message_filters.ApproximateTimeSynchronizer (bounded memory)."""

    def __init__(self, n_inputs: int, queue_size: int, slop: float):
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop * 1e9)
        self.queues: list[dict[int, object]] = [{} for _ in range(n_inputs)]
        self.callbacks: list[Callable] = []
        self.lock = threading.Lock()

    def registerCallback(self, cb: Callable) -> None:
        self.callbacks.append(cb)

    def add(self, msg, index: int) -> None:
        stamp = _stamp_ns(msg)
        emit = None
        with self.lock:
            q = self.queues[index]
            q[stamp] = msg
            while len(q) > self.queue_size:
                del q[min(q)]
            if stamp not in q:  # older than a full queue: evicted at once
                return
            others = [i for i in range(len(self.queues)) if i != index]
            candidates = []
            for i in others:
                near = sorted((abs(s - stamp), s) for s in self.queues[i] if abs(s - stamp) <= self.slop_ns)
                if not near:
                    return
                candidates.append([s for _, s in near])
            for combo in itertools.product(*candidates):
                stamps = list(combo)
                stamps.insert(index, stamp)
                if max(stamps) - min(stamps) < self.slop_ns:
                    emit = [self.queues[i][s] for i, s in enumerate(stamps)]
                    for i, s in enumerate(stamps):
                        del self.queues[i][s]
                    break
        if emit is not None:
            for cb in self.callbacks:
                cb(*emit)

    def clear(self) -> None:
        with self.lock:
            for q in self.queues:
                q.clear()

    def pending(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.queues)


class SyncMonitor:
    """Per-input stamp bookkeeping ahead of the synchronizer (see the module text). `report(kind, name, text,
    gap_s)` is called for each problem: kind in duplicate_stamp, stale_stamp, time_jump, sync_miss; `name`
    is the input's name, `text` the log line's detail, `gap_s` a sync miss's measured stamp gap (s, None when
    an input has had no message at all)."""

    OK, DROP, RESET = "ok", "drop", "reset"

    def __init__(
        self, names, slop: float, time_jump: float, report, miss_after: float = 0.5, history: int = 64
    ):
        self.names = list(names)
        self.ref = len(self.names) - 1
        self.slop = slop
        self.time_jump_ns = round(time_jump * 1e9)
        self.miss_after = miss_after
        self._report = report
        self._newest: list[int | None] = [None] * len(self.names)
        self._hist: list[deque[int]] = [deque(maxlen=history) for _ in self.names]
        self._pending: deque[tuple[int, float]] = deque(maxlen=history)  # reference stamps not yet used
        self._lock = threading.Lock()

    def admit(self, index: int, msg) -> str:
        """OK (pass it to the synchronizer), DROP, or RESET (empty the sync queues first, then pass it)."""
        s, name = _stamp_ns(msg), self.names[index]
        events, verdict = [], self.OK
        with self._lock:
            newest = self._newest[index]
            if newest is not None and s <= newest:
                back = (newest - s) / 1e9
                if s == newest:
                    events.append(
                        (
                            "duplicate_stamp",
                            f"stamp {s / 1e9:.3f} repeated (every message needs a stamp of its own)",
                        )
                    )
                    verdict = self.DROP
                elif newest - s <= self.time_jump_ns:
                    events.append(
                        ("stale_stamp", f"stamp {back:.3f} s older than the newest one (out of order)")
                    )
                    verdict = self.DROP
                else:
                    events.append(
                        (
                            "time_jump",
                            f"stamps jumped back by {back:.3f} s (bag loop or clock reset): sync reset",
                        )
                    )
                    verdict = self.RESET
                    self._newest = [None] * len(self.names)
                    for h in self._hist:
                        h.clear()
                    self._pending.clear()
            if verdict != self.DROP:
                self._newest[index] = s
                self._hist[index].append(s)
                if index == self.ref:
                    self._pending.append((s, time.monotonic()))
        for kind, text in events:
            self._report(kind, name, text, None)
        return verdict

    def used(self, ref_stamp_ns: int) -> None:
        """A set with this reference stamp was emitted: older reference messages still waiting are misses."""
        with self._lock:
            missed = [s for s, _ in self._pending if s < ref_stamp_ns]
            self._pending = deque(
                ((s, t) for s, t in self._pending if s > ref_stamp_ns), maxlen=self._pending.maxlen
            )
        self._misses(missed)

    def poll(self) -> None:
        """Declare the reference messages that waited longer than `miss_after` s sync misses."""
        cut = time.monotonic() - self.miss_after
        with self._lock:
            if not self._pending or self._pending[0][1] >= cut:
                return
            missed = [s for s, t in self._pending if t < cut]
            self._pending = deque(((s, t) for s, t in self._pending if t >= cut), maxlen=self._pending.maxlen)
        self._misses(missed)

    def _misses(self, stamps) -> None:
        for s in stamps:
            with self._lock:
                nearest = {
                    self.names[i]: (min(abs(x - s) for x in h) / 1e9 if h else None)
                    for i, h in enumerate(self._hist)
                    if i != self.ref
                }
            known = [g for g in nearest.values() if g is not None]
            gap = max(known) if len(known) == len(nearest) else None
            parts = ", ".join(
                f"'{n}' {g * 1e3:.1f} ms away" if g is not None else f"no '{n}' message yet"
                for n, g in nearest.items()
            )
            text = (
                f"message stamped {s / 1e9:.3f} matched no set within sync_slop {self.slop * 1e3:.0f} ms: "
                f"nearest {parts}"
            )
            self._report("sync_miss", self.names[self.ref], text, gap)


class InputSynchronizer:
    """Subscribes `topics` (list of (msg_type, topic)) with `qos` and calls `callback(*msgs)` for each
    approximately synchronized set. `close()` destroys the subscriptions (lifecycle deactivate).
    `names`: one short name per input (for reports); `on_message(name)` is called for every message received;
    `report` and `time_jump` go to the SyncMonitor (no monitor when `report` is None)."""

    def __init__(
        self,
        node,
        topics: Sequence[tuple[type, str]],
        qos,
        queue_size: int,
        slop: float,
        callback: Callable,
        use_message_filters: bool | None = None,
        callback_group=None,
        names: Sequence[str] | None = None,
        report: Callable | None = None,
        on_message: Callable | None = None,
        time_jump: float = 1.0,
    ):
        self._node = node
        self._subs = []
        self._callback = callback
        self._on_message = on_message
        self.names = list(names) if names is not None else [name for _, name in topics]
        self.monitor = SyncMonitor(self.names, slop, time_jump, report) if report is not None else None
        use_mf = (_mf is not None) if use_message_filters is None else use_message_filters
        if use_mf and _mf is None:
            raise ImportError("message_filters is not installed")
        self.backend = "message_filters" if use_mf else "cleanpose_ros.sync"
        if use_mf:
            # message_filters' synchronizer fed through plain filters, so every message passes the monitor
            # first (the same subscriptions as the in-package path).
            filters = [_mf.SimpleFilter() for _ in topics]
            self._sync = _mf.ApproximateTimeSynchronizer(filters, queue_size, slop)
            self._feed = [f.signalMessage for f in filters]
        else:
            self._sync = _ApproxSync(len(topics), queue_size, slop)
            self._feed = [lambda m, i=i: self._sync.add(m, i) for i in range(len(topics))]
        self._sync.registerCallback(self._emit)
        for i, (t, name) in enumerate(topics):
            self._subs.append(
                node.create_subscription(
                    t, name, lambda m, i=i: self._receive(m, i), qos, callback_group=callback_group
                )
            )

    def _receive(self, msg, index: int) -> None:
        if self._on_message is not None:
            self._on_message(self.names[index])
        if self.monitor is not None:
            verdict = self.monitor.admit(index, msg)
            if verdict == SyncMonitor.DROP:
                self.monitor.poll()
                return
            if verdict == SyncMonitor.RESET:
                self.clear()
        self._feed[index](msg)
        if self.monitor is not None:
            self.monitor.poll()

    def _emit(self, *msgs) -> None:
        if self.monitor is not None:
            self.monitor.used(_stamp_ns(msgs[-1]))
        self._callback(*msgs)

    def poll(self) -> None:
        """Report reference messages that waited too long (also called on every message)."""
        if self.monitor is not None:
            self.monitor.poll()

    @property
    def subscriptions(self):
        return list(self._subs)

    def pending(self) -> int:
        """Messages waiting in the sync queues (bounded by inputs x queue_size)."""
        if isinstance(self._sync, _ApproxSync):
            return self._sync.pending()
        return sum(len(q) for q in getattr(self._sync, "queues", []))

    def clear(self) -> None:
        """Empty the sync queues (a time jump; deactivate)."""
        if isinstance(self._sync, _ApproxSync):
            self._sync.clear()
        else:
            with self._sync.lock:
                for q in self._sync.queues:
                    q.clear()

    def close(self) -> None:
        for s in self._subs:
            self._node.destroy_subscription(s)
        self._subs = []
        self.clear()
