"""cleanpose_node: a managed (lifecycle) node giving category-level metric 6D pose + size for every detected
object of a known category, from synchronized RGB, registered depth, CameraInfo and instance masks.

Lifecycle: configure loads the model (and warms it up) and creates the outputs; a bad checkpoint fails
configure with the reason. activate subscribes, deactivate unsubscribes (optionally releasing the model's GPU
memory). With autostart (default) the node configures and activates itself.

Threading: the executor thread only synchronizes inputs and stores the newest set in a one-slot mailbox; a
worker thread runs conversion, preprocessing, one batched forward and publication. A set that arrives while
the slot is still full replaces it and counts as dropped, so latency never builds up behind a slow model and
memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from cleanpose_ros import conversions, params
from cleanpose_ros.class_map import ClassMap
from cleanpose_ros.debug_image import draw_debug_image
from cleanpose_ros.detections import DetectionError, parse_instance_segmentation
from cleanpose_ros.diagnostics import DiagnosticsPublisher, NodeStats, StageClock, gpu_memory, rss_mb
from cleanpose_ros.geometry_utils import quat_xyzw
from cleanpose_ros.markers import build_markers
from cleanpose_ros.pipeline import FramePipeline, PipelineConfig
from cleanpose_ros.sync import InputSynchronizer
from cleanpose_ros.tf_publisher import make_transform, object_frame

NODE_NAME = "cleanpose_node"
REPO_ROOT = Path(__file__).resolve().parents[1]
_RUNTIME_PIPELINE_FIELDS = (
    "score_threshold",
    "max_objects",
    "min_points",
    "min_depth",
    "max_depth",
    "class_map",
    "seed",
)


def default_checkpoint() -> Path | None:
    """The shipped demo checkpoint: models/demo/*.safetensors in the source tree or the ament share dir."""
    dirs = [REPO_ROOT / "models" / "demo"]
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("cleanpose_ros")) / "models" / "demo")
    except Exception:  # not installed through ament: source tree only
        pass
    for d in dirs:
        found = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        if found:
            return found[0]
    return None


class CleanPoseNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.p = params.declare(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.stats = NodeStats()
        self.estimator = None
        self.pipeline: FramePipeline | None = None
        self._device = "cpu"
        self._sync: InputSynchronizer | None = None
        self._info_sub = None
        self._info: CameraInfo | None = None
        self._pubs: dict[str, object] = {}
        self._tf = None
        self._tf_lookup = None
        self._diag = None
        self._msg: dict[str, type] = {}  # output message classes, resolved at configure
        # One-slot mailbox between the executor (producer) and the worker (consumer).
        self._cv = threading.Condition()
        self._slot = None
        self._busy = False
        self._active = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._last_log: dict[str, float] = {}
        self._noted_distortion = False
        # Per-stage times (ms) of the last frame that produced outputs (also averaged into diagnostics).
        self.last_stage_ms: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ logging
    def _warn(self, key: str, msg: str, level: str = "warning") -> None:
        """One log line per `key` per `log_throttle` seconds (keys are a bounded set of reason kinds)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) < self.p.log_throttle:
            return
        if len(self._last_log) > 512:
            self._last_log.clear()
        self._last_log[key] = now
        getattr(self.get_logger(), level)(msg)

    # ------------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._load_model()
        except Exception as e:
            self.get_logger().error(f"configure failed: {e}")
            self.estimator = self.pipeline = None
            return TransitionCallbackReturn.FAILURE
        self._create_outputs()
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="cleanpose_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"configured: device {self._device}, precision {self.p.precision}, "
            f"categories {self.estimator.categories}, "
            f"tf {self._tf.backend}, diagnostics {self._diag.backend}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator is None:  # released by deactivate(free_gpu_on_deactivate)
            try:
                self._load_model(warm=False)
            except Exception as e:
                self.get_logger().error(f"activate failed: reloading the model: {e}")
                return TransitionCallbackReturn.FAILURE
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.p.input_depth,
            durability=DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if self.p.input_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        from cleanpose_msgs.msg import InstanceSegmentation

        self._sync = InputSynchronizer(
            self,
            [(Image, "image"), (Image, "depth"), (InstanceSegmentation, "detections")],
            qos,
            self.p.sync_queue_size,
            self.p.sync_slop,
            self._on_synced,
        )
        # CameraInfo is cached, not synchronized: a missing CameraInfo then gives a clear log line per frame
        # instead of a synchronizer that silently never fires.
        self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_info, qos)
        with self._cv:
            self._active = True
        self.get_logger().info(
            f"active: subscribed to {self._sub_names()} (sync {self._sync.backend}, "
            f"slop {self.p.sync_slop} s, "
            f"queue {self.p.sync_queue_size}, QoS {self.p.input_reliability}/{self.p.input_depth})"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._cv:
            self._active = False
            self._slot = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        if self._info_sub is not None:
            self.destroy_subscription(self._info_sub)
            self._info_sub = None
        if self.p.free_gpu_on_deactivate and self._device.startswith("cuda"):
            self._wait_idle()
            self._release_model()
            self.get_logger().info("deactivated: model released, GPU cache emptied (reloads on activate)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._cv:
            self._active = False
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self._stop.set()
        with self._cv:
            self._slot = None
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        for obj in (self._tf, self._tf_lookup, self._diag):
            if obj is not None:
                obj.close()
        self._tf = self._tf_lookup = self._diag = None
        self._release_model()

    # ------------------------------------------------------------------------------------------ model
    def _resolve_device(self) -> str:
        from cleanpose_model.device import resolve_device

        device, reason = resolve_device(self.p.device, fallback=True)
        if reason:
            self.get_logger().warning(reason)
        return str(device)

    def _load_model(self, warm: bool | None = None) -> None:

        from cleanpose_model.estimator import load_estimator

        path = self.p.checkpoint or default_checkpoint()
        if not path:
            raise FileNotFoundError(
                "parameter 'checkpoint' is empty and no demo checkpoint was found in "
                f"{REPO_ROOT / 'models' / 'demo'}"
            )
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint '{path}' does not exist")
        self._device = self._resolve_device()
        t0 = time.perf_counter()
        self.estimator = load_estimator(
            str(path),
            device=self._device,
            queue_mode=self.p.queue_mode,
            mode=self.p.precision,
            cuda_graphs=self.p.cuda_graphs and self._device.startswith("cuda"),
            compile=self.p.torch_compile and self.p.cuda_graphs and self._device.startswith("cuda"),
        )
        self.pipeline = FramePipeline(self.estimator, self._pipeline_config(self.p))
        if self.p.warmup if warm is None else warm:
            self.estimator.warmup(n_objects=min(self.p.max_objects, 8))
        # Everything alive now (torch, the model, rclpy) lives as long as the node: move it out of the cyclic
        # collector's reach, so a full collection scans only per-frame garbage instead of the ~10^6 objects
        # the imports made (an unfrozen gen-2 pass stalls the frame it lands on by tens of ms).
        gc.collect()
        gc.freeze()
        self.get_logger().info(f"model loaded from {path} in {time.perf_counter() - t0:.2f} s")

    def _release_model(self) -> None:
        self.estimator = self.pipeline = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    @staticmethod
    def _pipeline_config(p: params.NodeParams) -> PipelineConfig:
        return PipelineConfig(
            score_threshold=p.score_threshold,
            max_objects=p.max_objects,
            min_points=p.min_points,
            min_depth=p.min_depth,
            max_depth=p.max_depth,
            class_map=list(p.class_map),
            seed=p.seed,
            box_source=p.box_source,
        )

    # ------------------------------------------------------------------------------------------ outputs
    def _create_outputs(self) -> None:
        from cleanpose_msgs.msg import ObjectPose, ObjectPoseArray
        from visualization_msgs.msg import MarkerArray

        from cleanpose_ros.tf_publisher import TfPublisher

        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._msg = {"ObjectPoseArray": ObjectPoseArray, "ObjectPose": ObjectPose}
        self._pubs = {
            "poses": self.create_lifecycle_publisher(ObjectPoseArray, "~/poses", out_qos),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", out_qos),
            "debug_image": self.create_lifecycle_publisher(Image, "~/debug_image", out_qos),
        }
        try:
            from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

            self._msg.update(
                Detection3DArray=Detection3DArray,
                Detection3D=Detection3D,
                ObjectHypothesisWithPose=ObjectHypothesisWithPose,
            )
            self._pubs["detections_3d"] = self.create_lifecycle_publisher(
                Detection3DArray, "~/detections_3d", out_qos
            )
        except ImportError:
            self.get_logger().info("vision_msgs not installed: ~/detections_3d is not published")
        self._tf = TfPublisher(self)
        if not self._tf.available:
            self.get_logger().warning("neither tf2_ros nor tf2_msgs is installed: object TF frames are off")
        self._diag = DiagnosticsPublisher(
            self,
            f"{self.get_name()}: pose estimation",
            self._device,
            self.p.diagnostics_period,
            self._diag_fill,
        )
        self._ensure_tf_lookup()

    def _ensure_tf_lookup(self) -> None:
        if self.p.target_frame and self._tf_lookup is None:
            from cleanpose_ros.tf_buffer import TfLookup

            try:
                self._tf_lookup = TfLookup(self)
            except ImportError:
                self.get_logger().error("target_frame is set but neither tf2_ros nor tf2_msgs is installed")

    def _diag_fill(self):
        from diagnostic_msgs.msg import DiagnosticStatus

        s = self.stats.snapshot()
        s.update(gpu_memory(self._device))
        s["rss_mb"] = f"{rss_mb():.1f}"
        s["device"] = self._device
        s["sync_pending"] = self._sync.pending() if self._sync is not None else 0
        s["state"] = "active" if self._active else "inactive"
        level, msg = DiagnosticStatus.OK, "ok"
        if not self._active:
            level, msg = DiagnosticStatus.OK, "inactive"
        elif s["inputs"] and float(s["drop_ratio"]) > 0.5:
            level, msg = (
                DiagnosticStatus.WARN,
                "more than half of the input sets are dropped (model slower than input)",
            )
        elif s["skipped_bad_input"]:
            msg = f"{s['skipped_bad_input']} input sets skipped as invalid (see log)"
        return level, msg, s

    # ------------------------------------------------------------------------------------------ inputs
    def _sub_names(self) -> str:
        subs = (self._sync.subscriptions if self._sync else []) + ([self._info_sub] if self._info_sub else [])
        return ", ".join(s.topic_name for s in subs)

    def _on_info(self, msg: CameraInfo) -> None:
        self._info = msg

    def _on_synced(self, image, depth, detections) -> None:
        t_sync = time.monotonic()
        self.stats.on_input()
        with self._cv:
            if not self._active:
                return
            if self._slot is not None:
                self.stats.on_drop()
            self._slot = (image, depth, detections, t_sync, time.time_ns())
            self._cv.notify()

    def _wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy and time.monotonic() < deadline:
                self._cv.wait(0.05)

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while self._slot is None and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                item, self._slot = self._slot, None
                self._busy = True
            try:
                self._process(*item)
            except Exception as e:  # one bad frame must never end the worker
                self.stats.on_skip("error")
                self._warn("error", f"frame skipped: unexpected {type(e).__name__}: {e}", "error")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    # ------------------------------------------------------------------------------------------ frame
    def _skip(self, kind: str, msg: str) -> None:
        self.stats.on_skip(kind)
        self._warn(kind, f"frame skipped: {msg}")

    def _process(self, image, depth_msg, det_msg, t_arrival: float, wall_ns: int | None = None) -> None:
        """One synchronized set. `t_arrival`: time.monotonic() when the set was complete; `wall_ns`: the wall
        clock then (time.time_ns()), for the "receive" stage (header stamp -> set complete)."""
        clk = StageClock()
        # Before the frame's own stages: how long the set waited in the mailbox for the worker.
        pre = {"queue": (time.monotonic() - t_arrival) * 1e3}
        if wall_ns is not None:
            st = image.header.stamp
            rx = (wall_ns - (st.sec * 1_000_000_000 + st.nanosec)) / 1e6
            # Only a stamp from this host's wall clock says something about transport (a bag's or a camera's
            # stamp may be far off): kept when within [0, 10 s).
            if 0.0 <= rx < 10_000.0:
                pre = {"receive": rx, **pre}
        pipeline, info = self.pipeline, self._info
        if pipeline is None:
            return
        if info is None:
            return self._skip(
                "no_camera_info",
                "no CameraInfo received yet on "
                f"'{self._info_sub.topic_name if self._info_sub else 'camera_info'}'",
            )
        try:
            K = conversions.camera_info_to_K(info)
            rgb = conversions.rgb_from_image(image)
            depth = conversions.depth_from_image(depth_msg)
        except conversions.ConversionError as e:
            return self._skip("bad_image", str(e))
        clk.lap("convert")
        h, w = rgb.shape[:2]
        if depth.shape != (h, w):
            return self._skip(
                "size_mismatch",
                f"depth is {depth.shape[1]}x{depth.shape[0]} but the colour "
                f"image is {w}x{h} (depth must be registered to the colour camera)",
            )
        if info.width and info.height and (info.width, info.height) != (w, h):
            return self._skip(
                "info_mismatch",
                f"CameraInfo is {info.width}x{info.height} but the colour image "
                f"is {w}x{h}: the intrinsics do not belong to this image",
            )
        if not self._noted_distortion and conversions.has_distortion(info):
            self._noted_distortion = True
            self.get_logger().info(
                "CameraInfo has non-zero distortion: it is ignored (the network expects the "
                "image as given; rectify upstream for best accuracy)"
            )
        try:
            det = parse_instance_segmentation(det_msg, h, w, self.p.box_source)
        except DetectionError as e:
            return self._skip("bad_detections", f"detections: {e}")
        for j, reason in det.rejected:
            self._warn(f"rejected:{reason[:40]}", f"detection {j} ignored: {reason}")
        clk.lap("detections")
        res = pipeline.process(rgb, depth, K, det)
        clk.lap("pipeline")
        if res.skipped_unknown_class:
            names = sorted(set(res.skipped_unknown_class))
            self._warn(
                "unknown_class",
                f"detections of unknown classes {names} ignored (add them to the "
                "class_map parameter as 'detector_class:category')",
            )
        header = image.header
        objects = res.objects  # ObjectResult: class, score, id, pose, size, points (camera frame)
        cam_objects = objects
        if self.p.target_frame:
            try:
                T = self._lookup(self.p.target_frame, header.frame_id)
            except LookupError as e:
                return self._skip("tf", f"target_frame '{self.p.target_frame}': {e}")
            objects = [
                dataclasses.replace(
                    o, rotation=T[:3, :3] @ o.rotation, translation=T[:3, :3] @ o.translation + T[:3, 3]
                )
                for o in objects
            ]
            header = Header(stamp=image.header.stamp, frame_id=self.p.target_frame)
        clk.lap("outputs")
        self._publish(header, objects, cam_objects, rgb, K, image.header, clk)
        age = None
        try:
            now = self.get_clock().now().nanoseconds
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            age = (now - stamp) / 1e9
        except Exception:
            pass
        self.stats.on_output(
            time.monotonic() - t_arrival,
            age,
            len(objects),
            len(res.skipped_unknown_class),
            res.skipped_few_points,
        )
        clk.lap("stats")
        stages = dict(pre)
        stages.update((k, res.timings_ms[k]) for k in ("select", "build_inputs", "forward", "results"))
        stages.update(clk.ms)
        self.last_stage_ms = stages
        self.stats.on_stages(stages)

    def _lookup(self, target: str, source: str) -> np.ndarray:
        self._ensure_tf_lookup()
        if self._tf_lookup is None:
            raise LookupError("no TF listener available")
        return self._tf_lookup.lookup(target, source)

    # ------------------------------------------------------------------------------------------ publishing
    def _subscribed(self, key: str) -> bool:
        """Whether `key`'s publisher has a matched subscription. Outputs are volatile, so a message published
        with none is delivered to nobody: skipping its construction changes nothing a subscriber sees."""
        pub = self._pubs.get(key)
        return pub is not None and pub.get_subscription_count() > 0

    def _publish(self, header, objects, cam_objects, rgb, K, image_header, clk: StageClock) -> None:
        """Builds and publishes each output that has a subscriber (TF: /tf has one). Poses go through one
        quaternion computation for all objects, shared by the messages; `clk` books one stage per output
        built."""
        m, p = self._msg, self.p
        want_poses = self._subscribed("poses")
        want_d3d = self._subscribed("detections_3d")
        want_tf = p.publish_tf and self._tf is not None and bool(objects) and self._tf.subscribed()
        trans = quats = sizes = ()
        if objects and (want_poses or want_d3d or want_tf):
            # Host lists of every object's translation, quaternion (x, y, z, w) and size, computed once.
            trans = [np.asarray(o.translation, np.float64).tolist() for o in objects]
            quats = quat_xyzw(np.stack([o.rotation for o in objects])).tolist()
            sizes = [np.asarray(o.size, np.float64).tolist() for o in objects]
        clk.lap("outputs")
        if want_poses:
            arr = m["ObjectPoseArray"](header=header)
            for o, t, q, sz in zip(objects, trans, quats, sizes):
                op = m["ObjectPose"](
                    class_name=o.class_name,
                    class_id=int(o.class_id),
                    score=float(o.score),
                    instance_id=o.instance_id,
                    num_points=int(o.num_points),
                )
                _set_pose(op.pose, t, q)
                op.size.x, op.size.y, op.size.z = sz
                arr.objects.append(op)
            self._pubs["poses"].publish(arr)
            clk.lap("poses")
        if want_d3d:
            arr = m["Detection3DArray"](header=header)
            for o, t, q, sz in zip(objects, trans, quats, sizes):
                d = m["Detection3D"](header=header, id=o.instance_id)
                hyp = m["ObjectHypothesisWithPose"]()
                hyp.hypothesis.class_id = o.class_name
                hyp.hypothesis.score = float(o.score)
                _set_pose(hyp.pose.pose, t, q)
                d.results.append(hyp)
                _set_pose(d.bbox.center, t, q)
                d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = sz
                arr.detections.append(d)
            self._pubs["detections_3d"].publish(arr)
            clk.lap("detections_3d")
        if p.publish_markers and self._subscribed("markers"):
            self._pubs["markers"].publish(build_markers(header, objects, axes=p.marker_axes))
            clk.lap("markers")
        if want_tf:
            prefix = p.tf_prefix
            self._tf.send(
                [
                    make_transform(header, object_frame(prefix, o.class_name, o.instance_id), None, t, q)
                    for o, t, q in zip(objects, trans, quats)
                ]
            )
            clk.lap("tf")
        if p.publish_debug_image and self._subscribed("debug_image"):
            img = draw_debug_image(rgb, K, cam_objects)
            self._pubs["debug_image"].publish(conversions.numpy_to_image(img, "rgb8", image_header))
            clk.lap("debug_image")

    # ------------------------------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changes) -> SetParametersResult:
        new = dataclasses.replace(self.p, class_map=list(self.p.class_map))
        for prm in changes:
            if prm.name not in params.NodeParams.names():
                continue
            v = prm.value
            setattr(new, prm.name, list(v) if isinstance(getattr(new, prm.name), list) else v)
        try:
            new.validate()
            cats = self.estimator.categories if self.estimator is not None else None
            if cats is not None:
                ClassMap(cats, new.class_map)
            if self.pipeline is not None and any(
                getattr(new, f) != getattr(self.p, f) for f in _RUNTIME_PIPELINE_FIELDS
            ):
                self.pipeline.update_config(self._pipeline_config(new))
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self.p = new
        if new.target_frame and self._diag is not None:
            self._ensure_tf_lookup()
        return SetParametersResult(successful=True)


def _set_pose(pose, t, q) -> None:
    """geometry_msgs/Pose from a translation and a quaternion (x, y, z, w), both lists of floats."""
    p, o = pose.position, pose.orientation
    p.x, p.y, p.z = t
    o.x, o.y, o.z, o.w = q


def spin(node: CleanPoseNode) -> int:
    """Autostart (when set), spin until shutdown, tear down. rclpy must be initialised. (rclpy's experimental
    EventsExecutor was tried here: the node never answered and its executor thread spun at 100 % CPU.)"""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.p.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                # Keep running: a lifecycle manager (or `ros2 lifecycle set`) may configure it again.
                node.get_logger().error(
                    "autostart: configure failed (reason above); the node stays unconfigured"
                )
            else:
                node.trigger_activate()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        with node._cv:
            node._active = False
        node._teardown()
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def main(args=None) -> int:
    from cleanpose_ros.transport import use_large_data_profile

    profile = use_large_data_profile()  # before rclpy.init: the participant reads it when created
    rclpy.init(args=args)
    node = CleanPoseNode()
    if profile:
        node.get_logger().info(f"Fast DDS profile for frame-sized messages: {profile}")
    return spin(node)


if __name__ == "__main__":
    raise SystemExit(main())
