"""The node builds an output only while something subscribes to it: with a client that listens to the poses
alone, the debug image (publish_debug_image on), markers and Detection3DArray are not built (their stages
are absent from the node's diagnostics); once the client subscribes to ~/debug_image, the overlay is drawn
and arrives. Poses are the same either way."""

from __future__ import annotations

import pytest
import ros_harness as H

pytestmark = pytest.mark.ros
DOMAIN = 64


def _send(client, fr, ns):
    img, dep, det = H.frame_messages(fr, ns)
    client.send(img, dep, det, H.info_msg(fr.K, fr.rgb.shape[1], fr.rgb.shape[0], ns))


def _diag_after(client, node, processed: int) -> dict:
    return client.wait(
        lambda: (d := client.diagnostics()) and int(d.get("processed", 0)) >= processed and d,
        20,
        f"diagnostics with processed >= {processed}",
        node,
    )


def test_debug_image_drawn_only_with_a_subscriber(checkpoint, tmp_path):
    from cleanpose_ros import conversions

    fr = H.synthetic_frames(1, seed=2)[0]
    params = {"checkpoint": str(checkpoint), "publish_debug_image": True}
    outputs = ("poses", "diagnostics")
    with H.running_graph(params, DOMAIN, tmp_path / "node.log", outputs=outputs) as (client, node):
        ns = 1_700_000_100_000_000_000
        _send(client, fr, ns)
        first = client.wait(lambda: client.output_for(ns), 120, "~/poses", node)
        assert len(first.objects) == len(fr.category_ids)
        diag = _diag_after(client, node, 1)
        assert "stage_ms_poses" in diag and "stage_ms_pipeline" in diag
        for stage in ("debug_image", "markers", "detections_3d"):
            assert f"stage_ms_{stage}" not in diag, (stage, diag)
        assert client.get("debug_image") == []

        client.subscribe("debug_image")
        # Until the node's publisher has matched the new subscription a frame may still go undrawn: send
        # frames until an overlay comes back.
        dbg, k = None, 0
        while dbg is None:
            k += 1
            assert k <= 60, f"no debug image after {k - 1} frames\n{node.log()[-3000:]}"
            ns_k = ns + k * 10**8
            _send(client, fr, ns_k)
            client.wait(lambda s=ns_k: client.output_for(s), 60, f"~/poses of frame {k}", node)
            try:
                dbg = client.wait(lambda s=ns_k: client.output_for(s, "debug_image"), 2, "~/debug_image")
            except AssertionError:
                dbg = None
        arr = conversions.rgb_from_image(dbg)
        assert dbg.encoding == "rgb8" and arr.shape == fr.rgb.shape and (arr != fr.rgb).any()
        diag = _diag_after(client, node, k + 1)
        assert "stage_ms_debug_image" in diag and "stage_ms_markers" not in diag
        # The same frame gives the same poses whichever outputs are built.
        later = client.output_for(ns_k)
        assert [(o.pose, o.size) for o in later.objects] == [(o.pose, o.size) for o in first.objects]
