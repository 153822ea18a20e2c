"""Diagnostics an operator can act on: the recent window (not lifetime totals) sets the level, per-input ages
make a silent input ERROR, and the level is back to OK one window after recovery. The sync monitor reports
duplicate, stale and jumped stamps and sync misses with the measured gap."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from cleanpose_ros.diagnostics import NodeStats, node_status
from cleanpose_ros.params import NodeParams
from cleanpose_ros.sync import SyncMonitor

TH = NodeParams(diagnostics_window=0.3, stale_timeout=0.5, warn_skip_share=0.2, warn_drop_share=0.5)


def _feed(stats, names=("image", "depth", "detections")):
    for n in names:
        stats.on_message(n)


def test_waiting_then_ok_then_warn_on_skip_share_then_ok_after_the_window():
    st = NodeStats()
    level, msg, _ = node_status(st, "cpu", True, 0, TH, {"image": "/cam/image"})
    assert level == DiagnosticStatus.WARN and "no message on '/cam/image' yet" in msg
    _feed(st)
    for _ in range(4):
        st.on_input()
        st.on_output(0.01, None, 1)
    assert node_status(st, "cpu", True, 0, TH)[0] == DiagnosticStatus.OK
    for _ in range(2):  # 2 of 6 sets: over the 20 % threshold
        st.on_input()
        st.on_skip("bad_depth")
    level, msg, v = node_status(st, "cpu", True, 0, TH)
    assert level == DiagnosticStatus.WARN and "33% of input sets not used" in msg and "bad_depth 2" in msg
    assert v["skipped_bad_depth"] == 2 and v["skipped_bad_input"] == 2
    time.sleep(0.35)  # one window later, inputs still arriving: back to OK, the lifetime counter stays
    _feed(st)
    level, msg, v = node_status(st, "cpu", True, 0, TH)
    assert (level, msg) == (DiagnosticStatus.OK, "ok") and v["skipped_bad_depth"] == 2


def test_object_skips_and_sync_misses_count_in_the_window():
    st = NodeStats()
    _feed(st)
    st.on_input()
    st.on_output(0.01, None, 1)
    st.on_objects_skipped("few_points", 3)
    level, msg, v = node_status(st, "cpu", True, 0, TH)
    assert level == DiagnosticStatus.WARN and "75% of objects left out" in msg and "few_points 3" in msg
    assert v["objects_skipped_few_points"] == 3
    st.on_input_problem("sync_miss", 0.3)
    v = node_status(st, "cpu", True, 0, TH)[2]
    assert (
        v["inputs_sync_miss"] == 1
        and v["sync_gap_last_ms"] == 300.0
        and "sync_miss 1" in v["window_skip_reasons"]
    )


def test_stale_input_is_error_and_recovers_on_the_next_message():
    st = NodeStats()
    _feed(st)
    time.sleep(0.55)
    _feed(st, ("image", "depth"))  # the segmenter went silent
    level, msg, v = node_status(st, "cpu", True, 0, TH, {"detections": "/seg/out"})
    assert level == DiagnosticStatus.ERROR and "'/seg/out' stale" in msg
    assert v["input_detections_age_s"] >= 0.5 and v["input_image_age_s"] < 0.1
    _feed(st, ("detections",))
    assert node_status(st, "cpu", True, 0, TH)[0] == DiagnosticStatus.OK


def test_frame_errors_are_error_drops_warn_rate_warns():
    st = NodeStats()
    _feed(st)
    st.on_skip("out_of_memory")
    assert node_status(st, "cpu", True, 0, TH)[0] == DiagnosticStatus.ERROR
    st2 = NodeStats()
    _feed(st2)
    for _ in range(4):
        st2.on_input()
    for _ in range(3):
        st2.on_drop()
    level, msg, _ = node_status(st2, "cpu", True, 0, TH)
    assert level == DiagnosticStatus.WARN and "dropped" in msg
    th = NodeParams(diagnostics_window=0.3, stale_timeout=5.0, min_input_rate=100.0)
    level, msg, _ = node_status(st2, "cpu", True, 0, th)
    assert level == DiagnosticStatus.WARN and "below min_input_rate" in msg
    assert node_status(st2, "cpu", False, 0, th)[:2] == (DiagnosticStatus.OK, "inactive")


def _m(sec: float):
    ns = round(sec * 1e9)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=ns // 10**9, nanosec=ns % 10**9)))


@pytest.fixture
def monitor():
    seen = []
    mon = SyncMonitor(["image", "depth", "detections"], 0.05, 1.0, lambda *a: seen.append(a), miss_after=0.05)
    return mon, seen


def test_monitor_duplicate_stale_and_time_jump(monitor):
    mon, seen = monitor
    assert mon.admit(0, _m(10.0)) == mon.OK
    assert mon.admit(0, _m(10.0)) == mon.DROP and seen[-1][:2] == ("duplicate_stamp", "image")
    assert (
        mon.admit(0, _m(9.8)) == mon.DROP and seen[-1][0] == "stale_stamp" and "0.200 s older" in seen[-1][2]
    )
    assert mon.admit(1, _m(10.0)) == mon.OK
    assert mon.admit(0, _m(2.0)) == mon.RESET and seen[-1][0] == "time_jump" and "8.000 s" in seen[-1][2]
    # after the reset every input starts again from the new time: depth's first stamp is no jump
    assert mon.admit(1, _m(2.0)) == mon.OK and len(seen) == 3


def test_monitor_sync_miss_reports_the_measured_gap(monitor):
    mon, seen = monitor
    mon.admit(0, _m(5.0))
    mon.admit(1, _m(5.3))  # depth stamped 0.3 s from colour
    mon.admit(2, _m(5.0))
    mon.poll()
    assert seen == []  # not yet: a set may still form
    time.sleep(0.06)
    mon.poll()
    kind, name, text, gap = seen[-1]
    assert (kind, name) == ("sync_miss", "detections") and gap == pytest.approx(0.3)
    assert "'depth' 300.0 ms away" in text and "'image' 0.0 ms away" in text
    # a used set clears its reference; an older unused one is a miss at once
    mon.admit(2, _m(6.0))
    mon.admit(2, _m(6.1))
    mon.used(round(6.1e9))
    assert seen[-1][0] == "sync_miss" and "6.000" in seen[-1][2]
    n = len(seen)
    time.sleep(0.06)
    mon.poll()
    assert len(seen) == n
