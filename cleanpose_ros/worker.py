"""The node's worker: a one-slot mailbox filled by the executor thread and a thread that runs each frame.

The executor thread only synchronizes inputs and puts the newest set in the slot; a set that arrives while
the slot is still full replaces it and counts as dropped, so latency never builds up behind a slow model and
memory stays bounded. The worker thread takes the set and runs the frame path, one straight line:

    messages -> numpy (conversions) -> detections -> per-object inputs -> one batched forward -> poses
    (FramePipeline) -> [target frame] -> publish (Outputs)
"""

from __future__ import annotations

import threading
import time

import numpy as np

from cleanpose_model.categories import dataset_of
from cleanpose_ros import conversions
from cleanpose_ros.detections import DetectionError, parse_instance_segmentation
from cleanpose_ros.diagnostics import StageClock
from cleanpose_ros.filtering import FilterConfig, PoseStream
from cleanpose_ros.tracking import TrackerConfig


class ThrottledLog:
    """One log line per `key` per `period()` seconds (keys are a bounded set of reason kinds)."""

    def __init__(self, logger, period):
        self._logger, self._period = logger, period
        self._last: dict[str, float] = {}

    def __call__(self, key: str, msg: str, level: str = "warning") -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self._period():
            return
        if len(self._last) > 512:
            self._last.clear()
        self._last[key] = now
        getattr(self._logger, level)(msg)


class FrameWorker:
    """Runs the frame path of `node` (a configured CleanPoseNode: reads its `p`, `pipeline`, `camera_info`,
    `outputs`, `target`, `stats`) on a thread of its own."""

    def __init__(self, node):
        self.node = node
        self.log = ThrottledLog(node.get_logger(), lambda: node.p.log_throttle)
        self._cv = threading.Condition()
        self._slot = None
        self._busy = False
        self._accepting = False
        self._stop = threading.Event()
        self._noted_distortion = False
        self._stream: PoseStream | None = None  # tracking + filtering of this configuration's stream
        self._stream_frame = ""  # the frame its poses are in
        # Per-stage times (ms) of the last frame that produced outputs (also averaged into diagnostics).
        self.last_stage_ms: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="cleanpose_worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ mailbox
    def accept(self, on: bool) -> None:
        """Take input sets (active) or drop them and empty the slot (inactive)."""
        with self._cv:
            self._accepting = on
            if not on:
                self._slot = None

    def put(self, image, depth, detections) -> None:
        """Executor thread: the newest synchronized set replaces any set still waiting."""
        t_sync = time.monotonic()
        self.node.stats.on_input()
        with self._cv:
            if not self._accepting:
                return
            if self._slot is not None:
                self.node.stats.on_drop()
            self._slot = (image, depth, detections, t_sync, time.time_ns())
            self._cv.notify()

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy and time.monotonic() < deadline:
                self._cv.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._slot = None
            self._accepting = False
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while self._slot is None and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                item, self._slot = self._slot, None
                self._busy = True
            try:
                self.process(*item)
            except Exception as e:  # one bad frame must never end the worker
                kind = "out_of_memory" if type(e).__name__ == "OutOfMemoryError" else "error"
                if kind == "out_of_memory":
                    _empty_cuda_cache()  # so the next frame gets the memory this one could not
                self.node.stats.on_skip(kind)
                self.log(kind, f"frame skipped: unexpected {type(e).__name__}: {e}", "error")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    # ------------------------------------------------------------------------------------------ frame path
    def _skip(self, kind: str, msg: str) -> None:
        """The whole frame is not used: one counter, one throttled log line per reason kind."""
        self.node.stats.on_skip(kind)
        self.log(kind, f"frame skipped ({kind}): {msg}")

    def _objects_skipped(self, kind: str, indices: list[int], msg: str, level: str = "warning") -> None:
        """Objects of a used frame left out: counted per object, one throttled line per reason kind."""
        if not indices:
            return
        self.node.stats.on_objects_skipped(kind, len(indices))
        shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
        self.log(
            f"objects:{kind}",
            f"{len(indices)} object(s) left out ({kind}) on '{self.node.topic('detections')}' "
            f"[detection {shown}]: {msg}",
            level,
        )

    def process(self, image, depth_msg, det_msg, t_arrival: float, wall_ns: int | None = None) -> None:
        """One synchronized set. `t_arrival`: time.monotonic() when the set was complete; `wall_ns`: the wall
        clock then (time.time_ns()), for the "receive" stage (header stamp -> set complete)."""
        node, p = self.node, self.node.p
        pipeline, info = node.pipeline, node.camera_info
        if pipeline is None:
            return
        clk = StageClock()
        pre = _pre_stages(image.header.stamp, t_arrival, wall_ns)
        # messages -> numpy
        for key, m in (("image", image), ("depth", depth_msg)):
            if int(m.width) * int(m.height) > p.max_image_pixels:
                return self._skip(
                    "too_large",
                    f"'{node.topic(key)}' is {m.width}x{m.height} = {int(m.width) * int(m.height)} pixels, "
                    f"more than max_image_pixels {p.max_image_pixels}",
                )
        if info is None:
            return self._skip(
                "no_camera_info", f"no CameraInfo received yet on '{node.topic('camera_info')}'"
            )
        steps = (
            ("bad_camera_info", "camera_info", lambda: conversions.camera_info_to_K(info)),
            ("bad_image", "image", lambda: conversions.rgb_from_image(image)),
            ("bad_depth", "depth", lambda: conversions.depth_from_image(depth_msg)),
        )
        arrays = []
        for kind, key, convert in steps:
            try:
                arrays.append(convert())
            except conversions.ConversionError as e:
                return self._skip(kind, f"'{node.topic(key)}': {e}")
        K, rgb, depth = arrays
        clk.lap("convert")
        if reason := self._check_sizes(rgb, depth, info):
            return self._skip(*reason)
        # detections
        h, w = rgb.shape[:2]
        try:
            det = parse_instance_segmentation(det_msg, h, w, p.box_source, p.max_detections)
        except DetectionError as e:
            return self._skip("bad_detections", f"'{node.topic('detections')}': {e}")
        by_kind: dict[str, list[tuple[int, str]]] = {}
        for j, kind, reason in det.rejected:
            by_kind.setdefault(kind, []).append((j, reason))
        for kind, items in by_kind.items():
            self._objects_skipped(kind, [j for j, _ in items], items[0][1])
        clk.lap("detections")
        # per-object inputs -> one batched forward -> poses (camera optical frame)
        res = pipeline.process(rgb, depth, K, det)
        clk.lap("pipeline")
        self._report_selection(det, res, depth)
        header, objects = image.header, res.objects
        if p.target_frame:
            try:
                header, objects = node.target.apply(p.target_frame, image.header, res.objects)
            except LookupError as e:
                return self._skip("tf", f"target_frame '{p.target_frame}': {e}")
        # stable ids + temporal filter, in the output frame (a fixed one when target_frame is set)
        objects = self._track(det_msg, det, objects, header)
        clk.lap("tracking")
        # publish
        node.outputs.publish(p, header, objects, (rgb, K, image.header, res.objects), clk)
        node.stats.on_output(time.monotonic() - t_arrival, self._age_s(header), len(objects))
        clk.lap("stats")
        stages = dict(pre)
        stages.update((k, res.timings_ms[k]) for k in ("select", "build_inputs", "forward", "results"))
        stages.update(clk.ms)
        self.last_stage_ms = stages
        node.stats.on_stages(stages)

    def _track(self, det_msg, det, objects: list, header) -> list:
        """Objects with instance_id = their track's label and the filtered pose (filtering.PoseStream, made
        on the first frame from the configure-time parameters); unchanged when `tracking` is off."""
        p = self.node.p
        if not p.tracking:
            return objects
        if self._stream is not None and self._stream_frame != header.frame_id:
            # tracks and filter states hold poses of one frame: target_frame changed (or the camera's frame)
            self._stream = None
        if self._stream is None:
            self._stream_frame = header.frame_id
            # the symmetric classes of the model's category set (NOCS: bottle, bowl, can)
            cats = dataset_of(self.node.pipeline.estimator.categories)
            self._stream = PoseStream(
                TrackerConfig(p.track_max_distance, p.track_min_iou, p.track_confirm_hits, p.track_max_coast),
                FilterConfig(mode=p.filter_mode),
                cats.symmetric_ids if cats is not None else (),
            )
        # the detector's own id where it gives one (Detections.instance_ids holds the index otherwise)
        msg_dets = det_msg.detections
        ids = []
        for o in objects:
            j = det.index[o.detection_index] if det.index is not None else o.detection_index
            ids.append(str(msg_dets[j].id) or None)
        return self._stream.apply(objects, ids, header.stamp.sec + header.stamp.nanosec * 1e-9)

    def _report_selection(self, det, res, depth) -> None:
        """Log and count the objects the pipeline left out (class map, score, count, depth)."""
        p = self.node.p

        def msg_index(js):
            return [det.index[j] if det.index is not None else j for j in js]

        if res.skipped_unknown_class:
            unknown = [j for j in range(len(det)) if det.class_ids[j] in set(res.skipped_unknown_class)]
            self._objects_skipped(
                "unknown_class",
                msg_index(unknown),
                f"unknown classes {sorted(set(res.skipped_unknown_class))} (add them to the class_map "
                "parameter as 'detector_class:category')",
            )
        if res.skipped_low_score:
            low = [j for j in range(len(det)) if det.scores[j] < p.score_threshold]
            self._objects_skipped(
                "low_score", msg_index(low), f"score below score_threshold {p.score_threshold}", "info"
            )
        if res.skipped_max_objects:
            self._objects_skipped(
                "over_max_objects",
                list(range(res.skipped_max_objects)),
                f"{res.n_detections} detections, only the max_objects {p.max_objects} highest-scoring "
                "are estimated (indices here count the objects left out)",
            )
        if res.few_points:
            valid = self.node.pipeline.prepare_depth(depth) > 0  # with min_depth / max_depth applied
            counts = [int(np.count_nonzero(valid[det.masks[j]])) for j in res.few_points]
            self._objects_skipped(
                "few_points",
                msg_index(res.few_points),
                f"{counts[0]} valid depth pixels in the mask on '{self.node.topic('depth')}' (more than "
                f"min_points {p.min_points} needed; NaN, inf, zero, negative and out-of-range depth are "
                "invalid)",
            )

    def _check_sizes(self, rgb, depth, info) -> tuple[str, str] | None:
        """(kind, reason) when depth or CameraInfo do not belong to the colour image."""
        h, w = rgb.shape[:2]
        if depth.shape != (h, w):
            return "size_mismatch", (
                f"depth '{self.node.topic('depth')}' is {depth.shape[1]}x{depth.shape[0]} but the colour "
                f"image is {w}x{h} (depth must be registered to the colour camera)"
            )
        if info.width and info.height and (info.width, info.height) != (w, h):
            return "info_mismatch", (
                f"CameraInfo '{self.node.topic('camera_info')}' is {info.width}x{info.height} but the "
                f"colour image is {w}x{h}: the intrinsics do not belong to this image"
            )
        if not self._noted_distortion and conversions.has_distortion(info):
            self._noted_distortion = True
            self.node.get_logger().info(
                "CameraInfo has non-zero distortion: it is ignored (the network expects the image as given; "
                "rectify upstream for best accuracy)"
            )
        return None

    def _age_s(self, header) -> float | None:
        try:
            now = self.node.get_clock().now().nanoseconds
            return (now - (header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)) / 1e9
        except Exception:  # a clock that cannot be read only costs the age statistic
            return None


def _pre_stages(stamp, t_arrival: float, wall_ns: int | None) -> dict[str, float]:
    """Times before the frame's own stages: "receive" (header stamp -> set complete) and "queue" (waiting in
    the mailbox for the worker)."""
    pre = {"queue": (time.monotonic() - t_arrival) * 1e3}
    if wall_ns is not None:
        rx = (wall_ns - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e6
        # Only a stamp from this host's wall clock says something about transport (a bag's or a camera's
        # stamp may be far off): kept when within [0, 10 s).
        if 0.0 <= rx < 10_000.0:
            pre = {"receive": rx, **pre}
    return pre


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # only a courtesy to the next frame
        pass
