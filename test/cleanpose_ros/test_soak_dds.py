"""Latest-only processing under input faster than inference (drop accounting), and a soak: memory stays
flat and no queue grows over a long replay. The short soak runs in CI; the long one is marked slow."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ros_harness as H

pytestmark = pytest.mark.ros
DOMAIN = 63
W, Hh = 160, 120
K = np.array([[150.0, 0, 80], [0, 150.0, 60], [0, 0, 1]])
RGB = np.full((Hh, W, 3), 120, np.uint8)
DEPTH = np.full((Hh, W), 600, np.uint16)
MASK = np.zeros((1, Hh, W), bool)
MASK[0, 40:80, 60:100] = True


def _frame(ns, cls="mug"):
    return (H.image_msg(RGB, "rgb8", ns), H.image_msg(DEPTH, "16UC1", ns), H.detections_msg(MASK, [cls], ns))


@pytest.fixture(scope="module")
def graph(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    with H.running_graph(
        {
            "checkpoint": str(checkpoint),
            "input_depth": 100,
            "sync_queue_size": 10,
            "publish_debug_image": True,
        },
        DOMAIN,
        log,
    ) as (client, node):
        client.pub_info.publish(H.info_msg(K, W, Hh))
        yield client, node


def _quiet(client, node, key="processed", settle=1.5, timeout=120.0):
    """Diagnostics once `key` has stopped changing for `settle` s."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.diagnostics()
        v = (d.get(key), d.get("inputs"))
        if v != last:
            last, since = v, time.monotonic()
        elif d and time.monotonic() - since > settle:
            return d
        time.sleep(0.1)
        assert node.alive()
    raise AssertionError("node never went quiet")


def test_drop_accounting_under_input_faster_than_inference(graph):
    client, node = graph
    base = _quiet(client, node)
    n, rate = 45, 30.0
    sent = []
    t0 = time.monotonic()
    for k in range(n):
        ns = 3_000_000_000 + k * 33_333_333
        client.send(*_frame(ns))
        sent.append(ns)
        time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
    last = client.wait(lambda: client.output_for(sent[-1]), 120, "answer to the last frame", node)
    assert len(last.objects) == 1  # latest-only: the newest set is always processed
    d = _quiet(client, node)
    inputs = int(d["inputs"]) - int(base["inputs"])
    processed = int(d["processed"]) - int(base["processed"])
    dropped = int(d["dropped"]) - int(base["dropped"])
    assert inputs == n
    assert processed + dropped == inputs
    assert dropped >= n // 2  # inference (~1 s on this CPU) is far slower than 30 Hz
    answered = {H.stamp_ns(m.header) for m in client.get("poses")} & set(sent)
    assert len(answered) == processed
    assert int(d["sync_pending"]) <= 3 * 10


def _soak(client, node, n_frames, every_real=100, rate=200.0):
    rss = []
    t0 = time.monotonic()
    for k in range(n_frames):
        ns = 10_000_000_000 + k * 5_000_000
        client.send(*_frame(ns, "mug" if k % every_real == 0 else "person"))
        if k % 50 == 0:
            rss.append(node.rss_mb())
        time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
    client.wait(
        lambda: client.output_for(10_000_000_000 + (n_frames - 1) * 5_000_000), 120, "last frame", node
    )
    d = _quiet(client, node)
    rss.append(node.rss_mb())
    return rss, d


def _check_soak(rss, d, n_frames, limit_mb):
    # the first samples include allocator / DDS warm-up; growth is judged after them
    growth = max(rss[2:]) - rss[2]
    assert growth < limit_mb, f"RSS grew {growth:.1f} MB over {n_frames} frames: {rss}"
    assert int(d["sync_pending"]) <= 3 * 10
    assert int(d["processed"]) + int(d["dropped"]) + int(d["skipped_bad_input"]) == int(d["inputs"])


def test_soak_short_memory_flat_no_unbounded_queue(graph):
    client, node = graph
    rss, d = _soak(client, node, 400)
    _check_soak(rss, d, 400, limit_mb=25.0)


@pytest.mark.slow
def test_soak_long_memory_flat(graph):
    client, node = graph
    rss, d = _soak(client, node, 5000, every_real=250)
    _check_soak(rss, d, 5000, limit_mb=25.0)
