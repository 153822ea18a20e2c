"""Rosbag2 reading and DDS replay, shared by `cleanpose-bench` and the demo.

Bags are read with `rosbags` (MCAP or sqlite3, no ROS needed) and grouped into frames: one colour image
with the depth, camera info, instance segmentation and (optional) ground truth of the same header stamp.
Replay publishes the recorded CDR bytes unchanged except for the header stamp, which is rewritten to the send
time: the node may reject stale inputs by age, and a unique stamp per send lets every output be matched to the
send it answers even when the same bag is replayed several times.
"""

from __future__ import annotations

import importlib
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

ROLES = ("image", "depth", "info", "detections")


@dataclass
class TopicConfig:
    """Bag topic per role; defaults are the synthetic bag's (docs/DESIGN.md, Topics)."""

    image: str = "/camera/color/image_raw"
    depth: str = "/camera/aligned_depth_to_color/image_raw"
    info: str = "/camera/color/camera_info"
    detections: str = "/detections"
    gt: str | None = "/ground_truth/poses"

    def required(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES}


class BagTopicError(RuntimeError):
    """A required topic is missing from the bag; the message names what the bag does hold."""


@dataclass
class Frame:
    index: int
    stamp_ns: int  # header stamp as recorded
    raw: dict[str, bytes]  # role -> CDR bytes as recorded
    n_objects: int
    gt: Any | None = None  # deserialized ObjectPoseArray (rosbags dataclass) or None


@dataclass
class BagFrames:
    path: Path
    frames: list[Frame]
    msgtypes: dict[str, str]  # role -> ROS type name ("sensor_msgs/msg/Image")
    topics_found: dict[str, str]  # every topic in the bag -> its type
    has_gt: bool
    skipped: int  # images without a matching depth / detections message
    storage: str


# ------------------------------------------------------------------------------------------------ CDR helpers
# Every input message starts with std_msgs/Header, whose stamp is the first field after the 4-byte
# encapsulation header, so the stamp can be read and rewritten in place without a full (de)serialization.


def _cdr_endian(raw: bytes | bytearray) -> str:
    return "<" if raw[1] & 1 else ">"


def cdr_stamp_ns(raw: bytes | bytearray) -> int:
    sec, nsec = struct.unpack_from(_cdr_endian(raw) + "iI", raw, 4)
    return sec * 1_000_000_000 + nsec


def cdr_restamp(raw: bytes, stamp_ns: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(_cdr_endian(buf) + "iI", buf, 4, stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    return bytes(buf)


def stamp_ns_of(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ------------------------------------------------------------------------------------------------ bag reading


def prefer_large_data_transport() -> None:
    """Fast DDS set up for whole frames in this process and the nodes it starts, unless the user chose
    otherwise: the package's shared-memory profile (cleanpose_ros.transport: a segment that holds frames,
    else ~13 ms per 640x480 image in fragment repair), and LARGE_DATA builtin transports where the profile is
    not found. With the default UDP transport a 640x480 image is ~40 UDP fragments; one lost fragment stalls
    a reliable topic until the next heartbeat (seconds) and drops the frame on a best-effort one. Must run
    before rclpy.init()."""
    from cleanpose_ros.transport import use_large_data_profile

    use_large_data_profile()
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")


def make_typestore():
    """ROS 2 typestore plus the interface packages this project uses, from their .msg files in the repo.

    Bags recorded with `ros2 bag record` embed their message definitions and need none of this; bags without
    them (older sqlite3) fall back on these definitions.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.LATEST)
    types: dict = {}
    for pkg, folder in (
        ("vision_msgs", REPO_ROOT / "test/ros_interfaces/vision_msgs/msg"),
        ("tf2_msgs", REPO_ROOT / "test/ros_interfaces/tf2_msgs/msg"),
        ("cleanpose_msgs", REPO_ROOT / "msg/msg"),
    ):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.msg")):
            name = f"{pkg}/msg/{path.stem}"
            if name not in store.types:
                types.update(get_types_from_msg(path.read_text(), name))
    store.register(types)
    return store


def _storage_of(path: Path) -> str:
    files = [path] if path.is_file() else list(path.iterdir())
    if any(f.suffix == ".mcap" for f in files):
        return "mcap"
    if any(f.suffix == ".db3" for f in files):
        return "sqlite3"
    return "unknown"


def _nearest(stamps: np.ndarray, t: int) -> int:
    i = int(np.searchsorted(stamps, t))
    cands = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
    return min(cands, key=lambda j: abs(int(stamps[j]) - t))


def load_frames(
    bag: str | Path,
    topics: TopicConfig | None = None,
    *,
    max_frames: int | None = None,
    slop_s: float = 0.02,
    max_objects: int | None = None,
) -> BagFrames:
    """Read a rosbag2 directory (or a single .mcap/.db3 file) into frames.

    Images are the frame clock; depth and detections pair by header stamp (nearest within `slop_s`, as an
    approximate-time synchronizer would), camera info by the latest one at or before the image, since it is
    constant on most robots and often recorded at a different rate.

    `max_objects` keeps only the first N detections of every frame (and their ground truth), so one recording
    gives the latency at 1, 3, ... objects per frame.
    """
    from rosbags.highlevel import AnyReader

    topics = topics or TopicConfig()
    path = Path(bag)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    store = make_typestore()
    bag_paths = [path.parent] if path.is_file() and path.suffix == ".db3" else [path]
    with AnyReader(bag_paths, default_typestore=store) as reader:
        found = {c.topic: c.msgtype for c in reader.connections}
        missing = {role: t for role, t in topics.required().items() if t not in found}
        if missing:
            listing = "\n".join(f"  {t}  [{ty}]" for t, ty in sorted(found.items())) or "  (none)"
            want = ", ".join(f"{role} = {t}" for role, t in missing.items())
            flags = ", ".join(f"--{'info' if r == 'info' else r}-topic" for r in missing)
            raise BagTopicError(
                f"bag {path} lacks required topic(s): {want}.\nTopics in the bag:\n{listing}\n"
                f"Name the right ones with {flags}."
            )
        gt_topic = topics.gt if topics.gt and topics.gt in found else None
        wanted = {t: role for role, t in topics.required().items()}
        if gt_topic:
            wanted[gt_topic] = "gt"
        conns = [c for c in reader.connections if c.topic in wanted]
        by_role: dict[str, list[tuple[int, bytes]]] = {r: [] for r in (*ROLES, "gt")}
        for conn, _t, raw in reader.messages(connections=conns):
            raw = bytes(raw)
            by_role[wanted[conn.topic]].append((cdr_stamp_ns(raw), raw))
        msgtypes = {role: found[t] for role, t in topics.required().items()}

        def deser(raw: bytes, role: str):
            topic = gt_topic if role == "gt" else topics.required()[role]
            return reader.deserialize(raw, found[topic])

        for role in by_role:
            by_role[role].sort(key=lambda x: x[0])
        stamps = {r: np.array([s for s, _ in v], dtype=np.int64) for r, v in by_role.items()}
        slop = int(slop_s * 1e9)
        frames: list[Frame] = []
        skipped = 0
        for stamp, raw_img in by_role["image"]:
            if max_frames is not None and len(frames) >= max_frames:
                break
            raw = {"image": raw_img}
            ok = True
            for role in ("depth", "detections"):
                if not len(stamps[role]):
                    ok = False
                    break
                j = _nearest(stamps[role], stamp)
                if abs(int(stamps[role][j]) - stamp) > slop:
                    ok = False
                    break
                raw[role] = by_role[role][j][1]
            j = int(np.searchsorted(stamps["info"], stamp, side="right")) - 1
            if j < 0 and len(stamps["info"]):
                j = 0  # info recorded only after the first images: it is constant, use it anyway
            if not ok or j < 0:
                skipped += 1
                continue
            raw["info"] = by_role["info"][j][1]
            det = deser(raw["detections"], "detections")
            if max_objects is not None and len(det.detections) > max_objects:
                det = _truncate_detections(det, max_objects)
                raw["detections"] = _restamp_keep(
                    store.serialize_cdr(det, msgtypes["detections"]), raw["detections"]
                )
            gt = None
            if gt_topic and len(stamps["gt"]):
                k = _nearest(stamps["gt"], stamp)
                if abs(int(stamps["gt"][k]) - stamp) <= slop:
                    gt = deser(by_role["gt"][k][1], "gt")
                    if max_objects is not None:
                        keep = {d.id for d in det.detections}
                        gt = type(gt)(gt.header, [o for o in gt.objects if o.instance_id in keep])
            frames.append(Frame(len(frames), stamp, raw, len(det.detections), gt))
    return BagFrames(path, frames, msgtypes, found, gt_topic is not None, skipped, _storage_of(path))


def _truncate_detections(det, n: int):
    from dataclasses import replace

    kw = {"detections": det.detections[:n]}
    if len(det.masks):
        kw["masks"] = det.masks[:n]
    if len(det.mask_offset_x):
        kw["mask_offset_x"], kw["mask_offset_y"] = det.mask_offset_x[:n], det.mask_offset_y[:n]
    if det.label_image.height and det.label_image.data.size:
        lab = det.label_image
        dt = np.uint16 if lab.encoding == "16UC1" else np.uint8
        img = lab.data.view(dt).copy()
        img[img > n] = 0
        kw["label_image"] = replace(lab, data=img.view(np.uint8))
    return replace(det, **kw)


def _restamp_keep(new: bytes, old: bytes) -> bytes:
    # rosbags serializes little-endian; keep the recorded stamp exactly
    return cdr_restamp(new, cdr_stamp_ns(old))


def deserialize_rclpy(raw: bytes, msgtype: str):
    """CDR bytes -> a genuine rclpy message (what a subscriber callback would get), without DDS."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(raw, msg_class(msgtype))


def msg_class(msgtype: str):
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


# ------------------------------------------------------------------------------------------------ DDS replay


@dataclass
class SendRecord:
    frame: int
    n_objects: int
    stamp_ns: int
    t_send: float  # time.monotonic() just before the first message of the frame was published
    t_recv: float | None = None
    output: Any = None  # the node's ObjectPoseArray


@dataclass
class RunResult:
    mode: str  # "rate" or "max"
    rate_hz: float | None
    iteration: int
    records: list[SendRecord]
    t_start: float
    t_end: float
    unmatched_outputs: int = 0
    resources: dict = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def received(self) -> int:
        return sum(r.t_recv is not None for r in self.records)

    @property
    def dropped(self) -> int:
        return self.sent - self.received


class Replayer:
    """Publishes bag frames to a running cleanpose node over DDS and collects its `~/poses` answers.

    One rclpy node, spun in a background thread so answers are time-stamped on arrival while the main thread
    keeps the send schedule.
    """

    def __init__(
        self,
        bag: BagFrames,
        topics: TopicConfig,
        node_name: str = "/cleanpose_node",
        *,
        debug_image_cb: Callable[[Any], None] | None = None,
        publish_topics: dict[str, str] | None = None,
        context=None,
    ):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

        # Own the rclpy context only when the caller gave none (tests pass theirs).
        self._owns_context = context is None
        if context is None:
            from rclpy.context import Context

            context = Context()
            rclpy.init(context=context)
        self.context = context
        self.bag = bag
        self.node = rclpy.create_node("cleanpose_replay", context=context)
        # Reliable publishers match both reliable and best-effort (sensor-data) subscriptions.
        pub_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {}
        pub_topics = publish_topics or topics.required()
        for role in ROLES:
            self._pubs[role] = self.node.create_publisher(
                msg_class(bag.msgtypes[role]), pub_topics[role], pub_qos
            )
        self.node_name = "/" + node_name.strip("/")
        self.poses_topic = f"{self.node_name}/poses"
        out_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._sub = self.node.create_subscription(
            msg_class("cleanpose_msgs/msg/ObjectPoseArray"), self.poses_topic, self._on_poses, out_qos
        )
        self._dbg_sub = None
        if debug_image_cb is not None:
            self._dbg_sub = self.node.create_subscription(
                msg_class("sensor_msgs/msg/Image"), f"{self.node_name}/debug_image", debug_image_cb, out_qos
            )
        self.diagnostics: dict[str, dict[str, str]] = {}
        try:
            from diagnostic_msgs.msg import DiagnosticArray

            self.node.create_subscription(
                DiagnosticArray, "/diagnostics", self._on_diag, qos_profile_sensor_data
            )
        except ImportError:
            pass
        self._lock = threading.Lock()
        self._pending: dict[int, SendRecord] = {}
        self._cond = threading.Condition(self._lock)
        self._unmatched = 0
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._spin = threading.Thread(target=self._executor.spin, daemon=True)
        self._spin.start()
        self._last_stamp = 0

    # callbacks (executor thread)
    def _on_poses(self, msg) -> None:
        t = time.monotonic()
        key = stamp_ns_of(msg.header)
        with self._cond:
            rec = self._pending.pop(key, None)
            if rec is None:
                self._unmatched += 1
                return
            rec.t_recv = t
            rec.output = msg
            self._cond.notify_all()

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values}

    # discovery
    def wait_for_node(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            subs = {r: p.get_subscription_count() for r, p in self._pubs.items()}
            if all(subs.values()) and self.node.count_publishers(self.poses_topic) > 0:
                return
            time.sleep(0.1)
        subs = {r: p.get_subscription_count() for r, p in self._pubs.items()}
        lonely = [self._pubs[r].topic_name for r, n in subs.items() if n == 0]
        raise TimeoutError(
            f"no cleanpose node answered within {timeout_s:.0f} s: "
            f"publishers of {self.poses_topic}: {self.node.count_publishers(self.poses_topic)}; "
            f"input topics nobody subscribes to: {lonely or 'none'}. Is the node active, and are its inputs "
            f"remapped to the bag topics?"
        )

    # sending
    def _fresh_stamp(self) -> int:
        # Wall clock (the node's ROS clock), strictly increasing so stamps stay unique keys.
        s = max(time.time_ns(), self._last_stamp + 1000)
        self._last_stamp = s
        return s

    def send(self, frame: Frame) -> SendRecord:
        stamp = self._fresh_stamp()
        rec = SendRecord(frame.index, frame.n_objects, stamp, time.monotonic())
        with self._lock:
            self._pending[stamp] = rec
        # Info, depth and image before detections: detections are what a detector publishes last.
        for role in ("info", "depth", "image", "detections"):
            self._pubs[role].publish(cdr_restamp(frame.raw[role], stamp))
        return rec

    def wait_answer(self, rec: SendRecord, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: rec.t_recv is not None, timeout=timeout_s)

    def wait_drain(self, records: list[SendRecord], quiet_s: float, max_s: float) -> None:
        """Wait until every send is answered, or nothing arrived for `quiet_s`, or `max_s` passed."""
        deadline = time.monotonic() + max_s
        with self._cond:
            while time.monotonic() < deadline:
                if all(r.t_recv is not None for r in records):
                    return
                n = sum(r.t_recv is not None for r in records)
                self._cond.wait(timeout=quiet_s)
                if sum(r.t_recv is not None for r in records) == n:
                    return

    def run(
        self,
        frames: list[Frame],
        *,
        rate_hz: float | None,
        iteration: int = 0,
        answer_timeout_s: float = 10.0,
        drain_quiet_s: float = 3.0,
    ) -> RunResult:
        """rate_hz set: fixed-rate playback (ros2 bag play / ros2_benchmark style); None: as fast as the node
        keeps up, each frame sent when the previous one was answered (or timed out: counted as dropped)."""
        with self._lock:
            self._unmatched = 0
        records: list[SendRecord] = []
        t0 = time.monotonic()
        if rate_hz:
            period = 1.0 / rate_hz
            for k, fr in enumerate(frames):
                target = t0 + k * period
                while (now := time.monotonic()) < target:
                    time.sleep(min(target - now, 0.002))
                records.append(self.send(fr))
            # A frame the node skips (latest-only input slot) never gets an answer; wait long enough for the
            # ones in flight, not for those.
            self.wait_drain(records, quiet_s=drain_quiet_s, max_s=answer_timeout_s + len(frames) * period)
        else:
            for fr in frames:
                rec = self.send(fr)
                records.append(rec)
                self.wait_answer(rec, answer_timeout_s)
        t_end = time.monotonic()
        with self._lock:
            for r in records:
                self._pending.pop(r.stamp_ns, None)
            unmatched = self._unmatched
        return RunResult("rate" if rate_hz else "max", rate_hz, iteration, records, t0, t_end, unmatched)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        # Wait for the spin thread to leave its wait set before the node goes: destroyed while that thread
        # still holds the entities, they are finalised on its handle exit, where rclpy can block holding the
        # GIL (a bench process hung 15 min that way, its main thread starved in Popen.wait).
        self._spin.join(timeout=10.0)
        self.node.destroy_node()
        if self._owns_context:
            self.context.try_shutdown()
