"""Approximate time synchronization of the node's inputs behind one interface.

On a robot `message_filters.ApproximateTimeSynchronizer` is used. Where the distribution lacks
message_filters (PyPI wheels), `_ApproxSync` runs the same algorithm as message_filters' Python
ApproximateTimeSynchronizer: one stamp-keyed queue per input bounded to `queue_size` (oldest evicted); on each
arrival, candidates within `slop` of the new stamp are searched in the other queues, nearest first, and the
first combination whose total spread is below `slop` is emitted and removed from the queues.
"""

from __future__ import annotations

import itertools
import threading
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


class InputSynchronizer:
    """Subscribes `topics` (list of (msg_type, topic)) with `qos` and calls `callback(*msgs)` for each
    approximately synchronized set. `close()` destroys the subscriptions (lifecycle deactivate)."""

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
    ):
        self._node = node
        self._subs = []
        use_mf = (_mf is not None) if use_message_filters is None else use_message_filters
        if use_mf and _mf is None:
            raise ImportError("message_filters is not installed")
        self.backend = "message_filters" if use_mf else "cleanpose_ros.sync"
        if use_mf:
            mf_subs = [_mf.Subscriber(node, t, name, qos_profile=qos) for t, name in topics]
            self._sync = _mf.ApproximateTimeSynchronizer(mf_subs, queue_size, slop)
            self._sync.registerCallback(callback)
            self._subs = [s.sub for s in mf_subs]
        else:
            self._sync = _ApproxSync(len(topics), queue_size, slop)
            self._sync.registerCallback(callback)
            for i, (t, name) in enumerate(topics):
                self._subs.append(
                    node.create_subscription(
                        t, name, lambda m, i=i: self._sync.add(m, i), qos, callback_group=callback_group
                    )
                )

    @property
    def subscriptions(self):
        return list(self._subs)

    def pending(self) -> int:
        """Messages waiting in the sync queues (bounded by inputs x queue_size)."""
        if isinstance(self._sync, _ApproxSync):
            return self._sync.pending()
        return sum(len(q) for q in getattr(self._sync, "queues", []))

    def close(self) -> None:
        for s in self._subs:
            self._node.destroy_subscription(s)
        self._subs = []
        if isinstance(self._sync, _ApproxSync):
            self._sync.clear()
