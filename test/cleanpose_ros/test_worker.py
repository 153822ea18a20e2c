"""The worker's one-slot mailbox: newest set wins, replaced sets count as drops, nothing is taken while not
accepting, and an exception in one frame does not end the thread."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from cleanpose_ros.diagnostics import NodeStats
from cleanpose_ros.worker import FrameWorker


class _Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg: self.lines.append((level, msg))


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture
def worker():
    log = _Log()
    node = SimpleNamespace(stats=NodeStats(), p=SimpleNamespace(log_throttle=0.0), get_logger=lambda: log)
    w = FrameWorker(node)
    yield w, node, log
    w.stop()


def test_newest_set_replaces_a_waiting_one(worker):
    w, node, _ = worker
    gate, seen = threading.Event(), []

    def process(image, *_):
        seen.append(image)
        gate.wait(5)

    w.process = process
    w.put("ignored", None, None)  # not accepting yet (inactive)
    w.accept(True)
    w.put("a", None, None)
    _wait(lambda: seen == ["a"])  # the worker is busy with "a"
    w.put("b", None, None)
    w.put("c", None, None)  # replaces "b" while it waits
    gate.set()
    _wait(lambda: seen == ["a", "c"])
    w.wait_idle()
    assert seen == ["a", "c"]
    assert (node.stats.inputs, node.stats.dropped) == (4, 1)


def test_deactivation_empties_the_slot(worker):
    w, _, _ = worker
    gate, seen = threading.Event(), []
    w.process = lambda image, *_: (seen.append(image), gate.wait(5))
    w.accept(True)
    w.put("a", None, None)
    _wait(lambda: seen == ["a"])
    w.put("b", None, None)
    w.accept(False)  # "b" is dropped with the slot
    gate.set()
    w.wait_idle()
    time.sleep(0.1)
    assert seen == ["a"]


class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
    pass


def _fail_then_serve(worker, exc: Exception, reason: str) -> None:
    """A frame whose processing raises ``exc`` is counted under ``reason`` and the next frame is served."""
    w, node, _ = worker
    seen = []

    def process(image, *_):
        seen.append(image)
        if image == "bad":
            raise exc

    w.process = process
    w.accept(True)
    w.put("bad", None, None)
    _wait(lambda: node.stats.skipped.get(reason) == 1)
    w.put("good", None, None)
    _wait(lambda: seen == ["bad", "good"])


def test_a_failing_frame_is_counted_and_the_thread_goes_on(worker):
    _fail_then_serve(worker, RuntimeError("boom"), "error")
    log = worker[2]
    assert any(level == "error" and "RuntimeError: boom" in msg for level, msg in log.lines)


def test_throttled_log_shows_the_first_of_each_cause_then_waits():
    from cleanpose_ros.worker import ThrottledLog

    log = _Log()
    period = [60.0]
    t = ThrottledLog(log, lambda: period[0])
    t("bad_depth", "one")
    t("bad_depth", "two")  # same cause within the period: held back
    t("sync_miss", "three", "error")  # another cause: shown at once
    assert log.lines == [("warning", "one"), ("error", "three")]
    period[0] = 0.0
    t("bad_depth", "four")
    assert log.lines[-1] == ("warning", "four")


def test_out_of_memory_is_its_own_reason_and_the_next_frame_is_served(worker):
    _fail_then_serve(worker, OutOfMemoryError("CUDA out of memory"), "out_of_memory")
    assert "error" not in worker[1].stats.skipped
    assert any("OutOfMemoryError" in msg for _, msg in worker[2].lines)
