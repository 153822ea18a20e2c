"""The node's worker: a one-slot-per-camera mailbox filled by the executor thread and a thread that runs
each cycle.

The executor thread only synchronizes inputs and puts the newest set of a camera in that camera's slot
(cameras.CameraSlots); a set that arrives while the slot is still full replaces it and counts as that
camera's drop, so latency never builds up behind a slow model and memory stays bounded. The worker thread
gathers one set of every live camera (one cycle) and runs the frame path, one straight line:

    per camera: messages -> numpy (conversions) -> detections -> per-object inputs (FramePipeline.prepare)
    all cameras: ONE batched forward (FramePipeline.forward)
    per camera: poses -> [target frame] -> tracking + filter -> publish (the camera's Outputs)

With several cameras a set is prepared as soon as the worker has it: the cycle starts with the sets waiting,
prepares them, and takes each other live camera's set when it arrives (CameraSlots.take_more, up to
camera_wait after that first preparation), so the wait for the last camera overlaps the others' preparation;
the forward runs once every live camera's set is prepared (or camera_wait has passed).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from cleanpose_model.categories import dataset_of
from cleanpose_ros import conversions
from cleanpose_ros.cameras import CameraSlots
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


class _Frame:
    """One camera's set on its way through a cycle."""

    __slots__ = ("K", "cam", "clk", "depth", "det", "det_msg", "image", "pre", "prepared", "rgb", "t_arrival")

    def __init__(self, cam, image, det_msg, t_arrival, clk, pre):
        self.cam, self.image, self.det_msg, self.t_arrival, self.clk, self.pre = (
            cam,
            image,
            det_msg,
            t_arrival,
            clk,
            pre,
        )
        self.det = self.rgb = self.K = self.depth = self.prepared = None


class _SingleCamera:
    """The camera view of a node without `cameras` (tests' stand-in nodes, the single-module layout): its
    stats, CameraInfo and topics are the node's own."""

    def __init__(self, node):
        self._node = node
        self.index, self.namespace, self.tag = 0, "", ""
        self.stream, self.stream_frame, self.noted_distortion = None, "", False

    stats = property(lambda self: self._node.stats)
    camera_info = property(lambda self: getattr(self._node, "camera_info", None))
    outputs = property(lambda self: getattr(self._node, "outputs", None))

    def topic(self, name: str) -> str:
        return self._node.topic(name) if hasattr(self._node, "topic") else name

    def tf_prefix(self, prefix: str) -> str:
        return prefix

    def label(self) -> str:
        return "camera"


class FrameWorker:
    """Runs the frame path of `node` (a configured CleanPoseNode: reads its `p`, `pipeline`, `cameras` (each
    with its CameraInfo, stats, outputs), `target`) on a thread of its own."""

    def __init__(self, node):
        self.node = node
        self.log = ThrottledLog(node.get_logger(), lambda: node.p.log_throttle)
        n = len(getattr(node, "cameras", None) or [None])
        self._slots = CameraSlots(
            n,
            lambda i: self.camera(i).stats,
            wait=lambda: getattr(node.p, "camera_wait", 0.0),
            stale=lambda: getattr(node.p, "stale_timeout", 2.0),
        )
        self._cv = self._slots.cv
        self._busy = False
        self._stop = threading.Event()
        self._single = _SingleCamera(node)
        # Forwards run and camera sets they carried (lifetime): with several cameras, sets / forwards > 1 is
        # the batching at work (published in every camera's diagnostics).
        self.forwards = 0
        self.forward_sets = 0
        # Per-stage times (ms) of the last frame that produced outputs (also averaged into diagnostics).
        self.last_stage_ms: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="cleanpose_worker", daemon=True)
        self._thread.start()

    def camera(self, index: int):
        cams = getattr(self.node, "cameras", None)
        return cams[index] if cams else self._single

    # ------------------------------------------------------------------------------------------ mailbox
    def accept(self, on: bool) -> None:
        """Take input sets (active) or drop them and empty the slots (inactive)."""
        with self._cv:
            self._slots.accepting = on
            if not on:
                self._slots.clear()

    def put(self, image, depth, detections, camera: int = 0) -> None:
        """Executor thread: the newest synchronized set of `camera` replaces any set of it still waiting."""
        self._slots.put(camera, (image, depth, detections, time.monotonic(), time.time_ns()))

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy and time.monotonic() < deadline:
                self._cv.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._slots.clear()
            self._slots.accepting = False
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            items = self._slots.take(self._stop, gather=self._slots.n == 1)
            if items is None:
                return
            if not items:
                continue
            with self._cv:
                self._busy = True
            try:
                if self._slots.n == 1:
                    ((index, item),) = items.items()
                    self.process(*item, index)
                else:
                    self.gather_cycle(items)  # adds the sets it takes to `items`
            except Exception as e:  # one bad cycle must never end the worker
                kind = "out_of_memory" if type(e).__name__ == "OutOfMemoryError" else "error"
                if kind == "out_of_memory":
                    _empty_cuda_cache()  # so the next frame gets the memory this one could not
                for index in items:
                    self.camera(index).stats.on_skip(kind)
                self.log(kind, f"frame skipped: unexpected {type(e).__name__}: {e}", "error")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    # ------------------------------------------------------------------------------------------ frame path
    def _skip(self, cam, kind: str, msg: str) -> None:
        """The whole frame is not used: one counter, one throttled log line per reason kind (and camera)."""
        cam.stats.on_skip(kind)
        where = f" ({cam.label()})" if cam.namespace else ""
        self.log(f"{cam.tag}:{kind}", f"frame skipped ({kind}){where}: {msg}")

    def _objects_skipped(self, cam, kind: str, indices: list[int], msg: str, level: str = "warning") -> None:
        """Objects of a used frame left out: counted per object, one throttled line per reason kind."""
        if not indices:
            return
        cam.stats.on_objects_skipped(kind, len(indices))
        shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
        self.log(
            f"{cam.tag}:objects:{kind}",
            f"{len(indices)} object(s) left out ({kind}) on '{cam.topic('detections')}' "
            f"[detection {shown}]: {msg}",
            level,
        )

    def process(
        self, image, depth_msg, det_msg, t_arrival: float, wall_ns: int | None = None, camera: int = 0
    ) -> None:
        """One synchronized set of one camera. `t_arrival`: time.monotonic() when the set was complete;
        `wall_ns`: the wall clock then (time.time_ns()), for the "receive" stage (header stamp -> set
        complete)."""
        self.process_cycle({camera: (image, depth_msg, det_msg, t_arrival, wall_ns)})

    def process_cycle(self, items: dict[int, tuple]) -> None:
        """One cycle: the waiting set of each camera in `items` (camera index -> (image, depth, detections,
        t_arrival, wall_ns)); the objects of all of them go through one forward."""
        pipeline = self.node.pipeline
        if pipeline is None:
            return
        self._forward(pipeline, self._prepare_sets(pipeline, items, [], several=len(items) > 1))

    def gather_cycle(self, items: dict[int, tuple]) -> None:
        """One cycle of a several-camera node, started with the sets in `items` (taken without waiting):
        those are prepared at once, then each further live camera's set as soon as it arrives
        (CameraSlots.take_more: until every live camera has one in the cycle, or camera_wait after the first
        sets were prepared: the worker never waits idle longer than camera_wait, and a set arriving during
        the preparation still joins); then ONE forward. `items` grows by the sets taken (the caller counts
        them all when the cycle fails)."""
        pipeline = self.node.pipeline
        if pipeline is None:
            return
        frames = self._prepare_sets(pipeline, items, [], several=True)
        deadline = time.monotonic() + self._slots.wait_s()
        while (more := self._slots.take_more(items.keys(), deadline, self._stop)) is not None:
            if not more:
                self._forward(pipeline, frames)
                return
            items.update(more)
            frames = self._prepare_sets(pipeline, more, frames, several=True)

    def _prepare_sets(self, pipeline, items: dict[int, tuple], frames: list, several: bool) -> list:
        """`frames` (the cycle's prepared sets) + the sets of `items` that prepared; with `several`, a set
        that fails unexpectedly is counted and logged and the others go on (one set alone: raised)."""
        frames = list(frames)
        for index, (image, depth_msg, det_msg, t_arrival, wall_ns) in items.items():
            cam = self.camera(index)
            f = _Frame(
                cam,
                image,
                det_msg,
                t_arrival,
                StageClock(),
                _pre_stages(image.header.stamp, t_arrival, wall_ns),
            )
            for g in frames:  # their inputs must outlive this prepare (the CUDA builder's buffers)
                pipeline.own(g.prepared)
            try:
                ok = self._prepare(f, depth_msg, own_copy=False)
            except Exception as e:  # this camera's set only: the others still go through
                if not several:
                    raise
                kind = "out_of_memory" if type(e).__name__ == "OutOfMemoryError" else "error"
                cam.stats.on_skip(kind)
                self.log(kind, f"frame skipped ({cam.label()}): unexpected {type(e).__name__}: {e}", "error")
                ok = False
            if ok:
                frames.append(f)
        return frames

    def _forward(self, pipeline, frames: list) -> None:
        """ONE forward for the cycle's prepared sets, then each camera's tracking and outputs."""
        if not frames:
            return
        results = pipeline.forward([f.prepared for f in frames])
        if any(len(f.prepared.kept) for f in frames):
            self.forwards += 1
            self.forward_sets += sum(1 for f in frames if len(f.prepared.kept))
        for f, res in zip(frames, results):
            f.clk.lap("pipeline")
            self._finish(f, res)

    def _prepare(self, f: _Frame, depth_msg, own_copy: bool) -> bool:
        """messages -> numpy -> detections -> per-object inputs; False (counted, logged) when skipped."""
        node, p, cam, image = self.node, self.node.p, f.cam, f.image
        info = cam.camera_info
        for key, m in (("image", image), ("depth", depth_msg)):
            if int(m.width) * int(m.height) > p.max_image_pixels:
                self._skip(
                    cam,
                    "too_large",
                    f"'{cam.topic(key)}' is {m.width}x{m.height} = {int(m.width) * int(m.height)} pixels, "
                    f"more than max_image_pixels {p.max_image_pixels}",
                )
                return False
        if info is None:
            self._skip(cam, "no_camera_info", f"no CameraInfo received yet on '{cam.topic('camera_info')}'")
            return False
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
                self._skip(cam, kind, f"'{cam.topic(key)}': {e}")
                return False
        f.K, f.rgb, f.depth = arrays
        f.clk.lap("convert")
        if reason := self._check_sizes(cam, f.rgb, f.depth, info):
            self._skip(cam, *reason)
            return False
        # detections
        h, w = f.rgb.shape[:2]
        try:
            f.det = parse_instance_segmentation(f.det_msg, h, w, p.box_source, p.max_detections)
        except DetectionError as e:
            self._skip(cam, "bad_detections", f"'{cam.topic('detections')}': {e}")
            return False
        by_kind: dict[str, list[tuple[int, str]]] = {}
        for j, kind, reason in f.det.rejected:
            by_kind.setdefault(kind, []).append((j, reason))
        for kind, items in by_kind.items():
            self._objects_skipped(cam, kind, [j for j, _ in items], items[0][1])
        f.clk.lap("detections")
        # per-object inputs (the forward is shared with the cycle's other cameras)
        f.prepared = node.pipeline.prepare(f.rgb, f.depth, f.K, f.det, own_copy=own_copy)
        return True

    def _finish(self, f: _Frame, res) -> None:
        """poses (camera optical frame) -> [target frame] -> tracking + filter -> the camera's outputs."""
        node, p, cam, image = self.node, self.node.p, f.cam, f.image
        clk = f.clk
        self._report_selection(cam, f.det, res, f.depth)
        header, objects = image.header, res.objects
        if p.target_frame:
            try:
                header, objects = node.target.apply(p.target_frame, image.header, res.objects)
            except LookupError as e:
                return self._skip(cam, "tf", f"target_frame '{p.target_frame}': {e}")
        # stable ids + temporal filter, in the output frame (a fixed one when target_frame is set)
        objects = self._track(cam, f.det_msg, f.det, objects, header)
        clk.lap("tracking")
        # publish
        cam.outputs.publish(
            p, header, objects, (f.rgb, f.K, image.header, res.objects), clk, cam.tf_prefix(p.tf_prefix)
        )
        cam.stats.on_output(time.monotonic() - f.t_arrival, self._age_s(header), len(objects))
        clk.lap("stats")
        stages = dict(f.pre)
        stages.update((k, res.timings_ms[k]) for k in ("select", "build_inputs", "forward", "results"))
        stages.update(clk.ms)
        self.last_stage_ms = stages
        cam.stats.on_stages(stages)

    def _track(self, cam, det_msg, det, objects: list, header) -> list:
        """Objects with instance_id = their track's label and the filtered pose (filtering.PoseStream of the
        camera, made on its first frame from the configure-time parameters); unchanged when `tracking` is
        off. Tracks are per camera, also in a shared target_frame (cameras.py says why)."""
        p = self.node.p
        if not p.tracking:
            return objects
        if cam.stream is not None and cam.stream_frame != header.frame_id:
            # tracks and filter states hold poses of one frame: target_frame changed (or the camera's frame)
            cam.stream = None
        if cam.stream is None:
            cam.stream_frame = header.frame_id
            # the symmetric classes of the model's category set (NOCS: bottle, bowl, can)
            cats = dataset_of(self.node.pipeline.estimator.categories)
            cam.stream = PoseStream(
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
        return cam.stream.apply(objects, ids, header.stamp.sec + header.stamp.nanosec * 1e-9)

    def _report_selection(self, cam, det, res, depth) -> None:
        """Log and count the objects the pipeline left out (class map, score, count, depth)."""
        p = self.node.p

        def msg_index(js):
            return [det.index[j] if det.index is not None else j for j in js]

        if res.skipped_unknown_class:
            unknown = [j for j in range(len(det)) if det.class_ids[j] in set(res.skipped_unknown_class)]
            self._objects_skipped(
                cam,
                "unknown_class",
                msg_index(unknown),
                f"unknown classes {sorted(set(res.skipped_unknown_class))} (add them to the class_map "
                "parameter as 'detector_class:category')",
            )
        if res.skipped_low_score:
            low = [j for j in range(len(det)) if det.scores[j] < p.score_threshold]
            self._objects_skipped(
                cam, "low_score", msg_index(low), f"score below score_threshold {p.score_threshold}", "info"
            )
        if res.skipped_max_objects:
            self._objects_skipped(
                cam,
                "over_max_objects",
                list(range(res.skipped_max_objects)),
                f"{res.n_detections} detections, only the max_objects {p.max_objects} highest-scoring "
                "are estimated (indices here count the objects left out)",
            )
        if res.few_points:
            valid = self.node.pipeline.prepare_depth(depth) > 0  # with min_depth / max_depth applied
            counts = [int(np.count_nonzero(valid[det.masks[j]])) for j in res.few_points]
            self._objects_skipped(
                cam,
                "few_points",
                msg_index(res.few_points),
                f"{counts[0]} valid depth pixels in the mask on '{cam.topic('depth')}' (more than "
                f"min_points {p.min_points} needed; NaN, inf, zero, negative and out-of-range depth are "
                "invalid)",
            )

    def _check_sizes(self, cam, rgb, depth, info) -> tuple[str, str] | None:
        """(kind, reason) when depth or CameraInfo do not belong to the colour image."""
        h, w = rgb.shape[:2]
        if depth.shape != (h, w):
            return "size_mismatch", (
                f"depth '{cam.topic('depth')}' is {depth.shape[1]}x{depth.shape[0]} but the colour "
                f"image is {w}x{h} (depth must be registered to the colour camera)"
            )
        if info.width and info.height and (info.width, info.height) != (w, h):
            return "info_mismatch", (
                f"CameraInfo '{cam.topic('camera_info')}' is {info.width}x{info.height} but the "
                f"colour image is {w}x{h}: the intrinsics do not belong to this image"
            )
        if not cam.noted_distortion and conversions.has_distortion(info):
            cam.noted_distortion = True
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
