"""cleanpose_node: a managed (lifecycle) node giving category-level metric 6D pose + size for every detected
object of a known category, from synchronized RGB, registered depth, CameraInfo and instance masks.

This module is the lifecycle and the wiring only; what runs per frame is elsewhere:
    cameras.py       one state per camera of `cameras` and the mailbox gathering every camera's latest set
    worker.py        the worker thread and the frame path (messages -> one batched forward -> publish)
    pipeline.py      detections -> per-object inputs -> one batched forward -> poses (no ROS types)
    outputs.py       the output publishers and message builders (poses, Detection3DArray, markers, TF, image)
    target_frame.py  poses re-expressed in `target_frame` through TF
    params.py        every parameter (the one source of defaults)

Lifecycle: parameters are declared in __init__ and read in on_configure, so cleanup + configure applies any
changed configure-time parameter. configure loads the model (and warms it up), creates the outputs and starts
the worker; a bad checkpoint fails configure with the reason. activate subscribes, deactivate unsubscribes
(optionally releasing the model's GPU memory), cleanup undoes configure. With autostart (default) the node
configures and activates itself.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo

from cleanpose_ros import params
from cleanpose_ros.cameras import Camera, input_topic
from cleanpose_ros.class_map import ClassMap
from cleanpose_ros.diagnostics import DiagnosticsPublisher, NodeStats, node_status
from cleanpose_ros.inputs import CameraInputs, detection_type
from cleanpose_ros.outputs import Outputs
from cleanpose_ros.pipeline import FramePipeline, PipelineConfig
from cleanpose_ros.sync import InputSynchronizer
from cleanpose_ros.target_frame import TargetFrame
from cleanpose_ros.worker import FrameWorker

NODE_NAME = "cleanpose_node"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Run-time parameters the pipeline holds a copy of (a change is pushed into it).
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
        params.declare(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The parameter values in effect: read at configure (None while unconfigured); run-time parameters
        # are updated in place, configure-time ones wait for the next configure.
        self.p: params.NodeParams | None = None
        self.stats = NodeStats()
        self.estimator = None
        self.pipeline: FramePipeline | None = None
        self.device = "cpu"
        # one per entry of the `cameras` parameter, made at configure; camera 0 counts into self.stats
        self.cameras: list[Camera] = []
        self.outputs: Outputs | None = None
        self.target: TargetFrame | None = None
        self.worker: FrameWorker | None = None
        self._diag: DiagnosticsPublisher | None = None
        self._active = False
        # input name -> resolved topic (remaps, namespace), for log lines and diagnostics; set at activate
        self.topics: dict[str, str] = {}

    def topic(self, name: str) -> str:
        """The topic of input `name` (image, depth, detections, camera_info) of camera 0 as subscribed."""
        return self.topics.get(name, name)

    @property
    def camera_info(self) -> CameraInfo | None:
        """Camera 0's latest CameraInfo (cached, not synchronized)."""
        return self.cameras[0].camera_info if self.cameras else None

    @property
    def _sync(self) -> InputSynchronizer | None:
        return self.cameras[0].sync if self.cameras else None

    @property
    def camera_info_topic(self) -> str:
        return self.topic("camera_info")

    @property
    def last_stage_ms(self) -> dict[str, float]:
        """Per-stage times (ms) of the last frame that produced outputs."""
        return self.worker.last_stage_ms if self.worker is not None else {}

    # ------------------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.p = params.from_node(self)
        try:
            self.p.validate()
            detection_type(self.p.segmenter_input)  # its interface package is there (else: which one)
            self._load_model()
        except Exception as e:
            self.get_logger().error(f"configure failed: {e}")
            self.estimator = self.pipeline = self.p = None
            return TransitionCallbackReturn.FAILURE
        self.cameras = [
            Camera(i, ns, self.stats if i == 0 else NodeStats()) for i, ns in enumerate(self.p.cameras)
        ]
        for cam in self.cameras:  # one /tf broadcaster for all: camera 0's
            cam.outputs = Outputs(self, cam.namespace, None if cam.index == 0 else self.cameras[0].outputs.tf)
        self.outputs = self.cameras[0].outputs
        self.target = TargetFrame(self)
        if self.p.target_frame:
            self.target.prepare()
        name = f"{self.get_name()}: pose estimation"
        self._diag = DiagnosticsPublisher(
            self,
            name if len(self.cameras) == 1 else f"{name} {self.cameras[0].namespace}",
            self.device,
            self.p.diagnostics_period,
            self._status,
        )
        for cam in self.cameras[1:]:  # one status per camera
            self._diag.add(f"{name} {cam.namespace}", lambda cam=cam: self._camera_status(cam))
        self.worker = FrameWorker(self)
        self.get_logger().info(
            f"configured: device {self.device}, {self._precision_text()}, "
            f"{len(self.cameras)} camera(s) {[c.namespace for c in self.cameras]}, "
            f"categories {self.estimator.categories}, tf {self.outputs.tf.backend}, "
            f"diagnostics {self._diag.backend}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _precision_text(self) -> str:
        """What the estimator really runs (its mode and dtype), and the request when it differs (a CPU runs
        exact fp32 whatever `precision` asks)."""
        est = self.estimator
        mode = getattr(est, "mode", "exact")
        dtype = str(getattr(est, "dtype", "torch.float32")).replace("torch.", "")
        text = f"mode {mode} ({dtype}{', DINOv2 fp16 + TF32' if mode == 'fast' else ''})"
        asked = {"fp32": "exact"}.get(self.p.precision, self.p.precision)
        if asked != mode:
            text += f"; precision '{self.p.precision}' was asked, '{mode}' is what {self.device} runs"
        return text

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.estimator is None:  # released by deactivate(free_gpu_on_deactivate)
            try:
                self._load_model(warm=False)
            except Exception as e:
                self.get_logger().error(f"activate failed: reloading the model: {e}")
                return TransitionCallbackReturn.FAILURE
        p = self.p
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=p.input_depth,
            durability=DurabilityPolicy.VOLATILE,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if p.input_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        for cam in self.cameras:
            self._subscribe(cam, qos)
        self.topics = dict(self.cameras[0].topics)
        self._active = True
        self.worker.accept(True)
        subs = ", ".join(
            s.topic_name for c in self.cameras for s in [*c.sync.subscriptions, c.info_sub] if s is not None
        )
        self.get_logger().info(
            f"active: subscribed to {subs} (sync {self._sync.backend}, slop {p.sync_slop} s, "
            f"queue {p.sync_queue_size}, QoS {p.input_reliability}/{p.input_depth})"
        )
        return super().on_activate(state)

    def _subscribe(self, cam: Camera, qos) -> None:
        """The synchronized inputs and the CameraInfo subscription of one camera (its namespace prefix)."""
        p = self.p
        # transports and segmenter input type (inputs.py): topics, and the set callback that decodes/wraps
        inputs = CameraInputs(p, lambda name: input_topic(cam.namespace, name), self.resolve_topic_name)
        cam.sync = InputSynchronizer(
            self,
            inputs.topics,
            qos,
            p.sync_queue_size,
            p.sync_slop,
            inputs.callback(
                lambda *msgs: self.worker.put(*msgs, camera=cam.index),
                cam.stats,
                lambda kind, text: self.worker.log(f"{cam.tag}:{kind}", text),
                cam.topic,
                lambda: self.p,
            ),
            names=inputs.names,
            report=lambda *a: self._on_input_problem(*a, cam=cam),
            on_message=cam.stats.on_message,
            time_jump=p.time_jump_threshold,
        )
        # CameraInfo is cached, not synchronized: a missing CameraInfo then gives a clear log line per frame
        # instead of a synchronizer that silently never fires.
        info_type, info_name = (CameraInfo, "camera_info")  # the camera's <ns>/camera_info
        cam.info_sub = self.create_subscription(
            info_type, input_topic(cam.namespace, info_name), cam.on_info, qos
        )
        cam.topics = {n: s.topic_name for n, s in zip(cam.sync.names, cam.sync.subscriptions)}
        cam.topics["camera_info"] = cam.info_sub.topic_name

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.worker.accept(False)
        self._unsubscribe()
        if self.p.free_gpu_on_deactivate and self.device.startswith("cuda"):
            self.worker.wait_idle()
            self._release_model()
            self.get_logger().info("deactivated: model released, GPU cache emptied (reloads on activate)")
        else:
            self.get_logger().info("deactivated: unsubscribed, input sets no longer taken (activate resumes)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info("cleaned up: model, outputs and worker released (configure loads them again)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for cam in self.cameras:
            if cam.sync is not None:
                cam.sync.close()
                cam.sync = None
            if cam.info_sub is not None:
                self.destroy_subscription(cam.info_sub)
                cam.info_sub = None

    def _teardown(self) -> None:
        """Undo configure (and activate): back to the unconfigured state."""
        self._active = False
        self._unsubscribe()
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        for part in (*(c.outputs for c in self.cameras[1:]), self.outputs, self.target, self._diag):
            if part is not None:  # camera 0's outputs (owner of the shared /tf broadcaster) last
                part.close()
        self.outputs = self.target = self._diag = None
        self.cameras = []
        self._release_model()
        self.p = None

    def _on_info(self, msg: CameraInfo) -> None:
        """Camera 0's CameraInfo (benchmarks feed the frame path through this)."""
        self.cameras[0].on_info(msg)

    def _on_input_problem(
        self, kind: str, name: str, text: str, gap_s: float | None, cam: Camera | None = None
    ) -> None:
        """A message or set the synchronizer will not pass on (sync.SyncMonitor): counted and logged."""
        cam = cam or self.cameras[0]
        if kind == "time_jump":
            cam.stats.on_time_jump()
            if self.worker is not None:
                self.worker.log(f"{cam.tag}:{kind}", f"time jump on '{cam.topic(name)}': {text}")
            return
        cam.stats.on_input_problem(kind, gap_s)
        if self.worker is not None:
            self.worker.log(f"{cam.tag}:{kind}", f"input not used ({kind}) on '{cam.topic(name)}': {text}")

    def _status(self):
        return self._camera_status(self.cameras[0])

    def _camera_status(self, cam: Camera):
        """One camera's /diagnostics status (camera 0's is the node's with one camera)."""
        if cam.sync is not None:
            cam.sync.poll()  # sync misses are found late when nothing arrives any more
        pending = cam.sync.pending() if cam.sync is not None else 0
        level, message, values = node_status(
            cam.stats, self.device, self._active, pending, self.p, cam.topics
        )
        if len(self.cameras) > 1:
            # the shared forward: sets / forwards > 1 when the cameras' objects share it
            w = self.worker
            values["camera"] = cam.namespace
            values["forwards"] = w.forwards if w is not None else 0
            values["forward_sets"] = w.forward_sets if w is not None else 0
        return level, message, values

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
        self.device = self._resolve_device()
        t0 = time.perf_counter()
        self.estimator = load_estimator(
            str(path),
            device=self.device,
            queue_mode=self.p.queue_mode,
            mode=self.p.precision,
            cuda_graphs=self.p.cuda_graphs and self.device.startswith("cuda"),
            compile=self.p.torch_compile and self.p.cuda_graphs and self.device.startswith("cuda"),
        )
        self.pipeline = FramePipeline(self.estimator, PipelineConfig.from_params(self.p))
        if self.p.warmup if warm is None else warm:
            # every camera's objects share one forward: warm (capture) the batch sizes several cameras make
            self.estimator.warmup(n_objects=min(self.p.max_objects, 8) * len(self.p.cameras))
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

    # ------------------------------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changes) -> SetParametersResult:
        """Validates every change. Unconfigured: nothing else (configure reads them). Configured: run-time
        parameters apply to the next frame; configure-time ones are kept for the next configure (logged)."""
        new = params.with_changes(params.from_node(self), changes)
        try:
            new.validate()
            if self.estimator is not None:
                ClassMap(self.estimator.categories, new.class_map)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if self.p is None:
            return SetParametersResult(successful=True)
        live = params.run_time_update(self.p, new)
        if self.pipeline is not None and any(
            getattr(live, f) != getattr(self.p, f) for f in _RUNTIME_PIPELINE_FIELDS
        ):
            try:
                self.pipeline.update_config(PipelineConfig.from_params(live))
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
        pending = params.pending_changes(self.p, new, [c.name for c in changes])
        self.p = live
        if live.target_frame and self.target is not None:
            self.target.prepare()  # buffer transforms before the first frame needs one
        # rclpy keeps no reason on a successful reply: the log is where the caller learns it.
        for name, applies in pending.items():
            when = "configure (cleanup + configure)" if applies == "configure" else "start of the node"
            self.get_logger().info(f"{name} set: takes effect at the next {when}")
        return SetParametersResult(successful=True)


def spin(node: CleanPoseNode) -> int:
    """Autostart (when set), spin until shutdown, tear down. rclpy must be initialised. (rclpy's experimental
    EventsExecutor was tried here: the node never answered and its executor thread spun at 100 % CPU.)"""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
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
