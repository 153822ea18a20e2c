"""One side of the DDS round trip, run as its own process by test_roundtrip_dds.py.

python dds_peer.py pub --ns NS --done FILE --timeout S
    publishes every payload of dds_payloads.PAYLOADS once (reliable, transient-local, so a subscriber that
    matches later still gets it) and keeps its node alive until FILE exists or the timeout passes.
python dds_peer.py sub --ns NS --out DIR --timeout S
    subscribes to every payload topic, writes the first message of each, serialized (CDR), to
    DIR/<topic>.cdr, then touches DIR/done. Exit 0 when all arrived, 3 on timeout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rclpy
from dds_payloads import PAYLOADS, message_type
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def run_pub(args: argparse.Namespace) -> int:
    node = rclpy.create_node("cleanpose_test_publisher", namespace=args.ns)
    publishers = []
    for topic, (type_path, build) in PAYLOADS.items():
        pub = node.create_publisher(message_type(type_path), topic, QOS)
        pub.publish(build())
        publishers.append(pub)
    deadline = time.monotonic() + args.timeout
    done = Path(args.done)
    while not done.exists() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    return 0 if done.exists() else 3


def run_sub(args: argparse.Namespace) -> int:
    node = rclpy.create_node("cleanpose_test_subscriber", namespace=args.ns)
    out = Path(args.out)
    received: dict[str, bytes] = {}

    def make_callback(topic: str):
        def callback(msg) -> None:
            received.setdefault(topic, serialize_message(msg))

        return callback

    subs = [
        node.create_subscription(message_type(type_path), topic, make_callback(topic), QOS)
        for topic, (type_path, _) in PAYLOADS.items()
    ]
    deadline = time.monotonic() + args.timeout
    while len(received) < len(subs) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    for topic, data in received.items():
        (out / f"{topic}.cdr").write_bytes(data)
    missing = sorted(set(PAYLOADS) - set(received))
    if missing:
        print(f"subscriber timed out; missing topics: {missing}", file=sys.stderr)
    (out / "done").touch()
    node.destroy_node()
    return 3 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["pub", "sub"])
    parser.add_argument("--ns", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out")
    parser.add_argument("--done")
    args = parser.parse_args()
    rclpy.init()
    try:
        return run_pub(args) if args.role == "pub" else run_sub(args)
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
