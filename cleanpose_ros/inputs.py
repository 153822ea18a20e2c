"""The synchronized inputs of one camera for the chosen transports and segmenter input type.

    color_transport   raw: sensor_msgs/Image on <ns>/image; compressed: sensor_msgs/CompressedImage on
                      <image topic>/compressed (compressed_image_transport's jpeg/png)
    depth_transport   raw: sensor_msgs/Image on <ns>/depth; compressedDepth: sensor_msgs/CompressedImage on
                      <depth topic>/compressedDepth (compressed_depth_image_transport's png)
    segmenter_input   instance_segmentation: cleanpose_msgs/InstanceSegmentation on <ns>/detections;
                      detection2d_labels: vision_msgs/Detection2DArray on <ns>/detections + an instance-label
                      sensor_msgs/Image on <ns>/label_image (label_values says which label is whose);
                      yolo: yolo_msgs/DetectionArray (yolo_ros) on <ns>/detections

Transport topics follow image_transport's naming: the base topic is resolved first (remaps and namespace
apply to `image` / `depth` as for raw input), then the transport's suffix is appended.

The set callback decodes compressed images in the executor thread once a set is complete (so only matched
sets are decoded, and decoding overlaps the worker's forward of the previous set); a set that does not
decode is counted as an input set skipped for bad_image / bad_depth with one throttled log line naming the
cause. Segmenter messages are only wrapped here: their conversion to masks runs in the worker
(segmenters.py, through detections.parse_instance_segmentation), where a bad message skips the frame as
bad_detections and a bad detection is left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable

from cleanpose_ros import codecs
from cleanpose_ros.segmenters import LabelledDetections, YoloDetections

COLOR_TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")
SEGMENTER_INPUTS = ("instance_segmentation", "detection2d_labels", "yolo")


def detection_type(segmenter_input: str):
    """The message type of the `detections` input (ImportError names the package to install)."""
    try:
        if segmenter_input == "instance_segmentation":
            from cleanpose_msgs.msg import InstanceSegmentation

            return InstanceSegmentation
        if segmenter_input == "detection2d_labels":
            from vision_msgs.msg import Detection2DArray

            return Detection2DArray
        if segmenter_input == "yolo":
            from yolo_msgs.msg import DetectionArray

            return DetectionArray
    except ImportError as e:
        pkg = {"detection2d_labels": "vision_msgs", "yolo": "yolo_msgs (yolo_ros)"}.get(
            segmenter_input, "cleanpose_msgs"
        )
        raise ImportError(f"segmenter_input '{segmenter_input}' needs the {pkg} interfaces: {e}") from None
    raise ValueError(f"segmenter_input '{segmenter_input}' is not one of {SEGMENTER_INPUTS}")


class CameraInputs:
    """`topics` ((type, topic) pairs) and `names` of one camera's synchronized inputs, the detections last
    (the synchronizer's reference input); `callback()` turns a synchronized set into the worker's
    (image, depth, detections). `topic_of(name)`: the camera's relative topic of input `name`; `resolve`:
    the node's resolve_topic_name (remaps + namespace)."""

    def __init__(self, p, topic_of: Callable[[str], str], resolve: Callable[[str], str]):
        from sensor_msgs.msg import CompressedImage, Image

        self.color_compressed = p.color_transport == "compressed"
        self.depth_compressed = p.depth_transport == "compressedDepth"
        self.segmenter_input = p.segmenter_input
        Detections = detection_type(p.segmenter_input)  # a message type
        # (type, input name) as the static launch test reads them; the camera's topics follow
        inputs = [(Image, "image"), (Image, "depth"), (Image, "label_image"), (Detections, "detections")]
        if p.segmenter_input != "detection2d_labels":
            del inputs[2]
        self.names = [name for _, name in inputs]
        self.topics = [(t, topic_of(name)) for t, name in inputs]
        # image_transport naming: the resolved base topic (remaps, namespace) + the transport's suffix
        if self.color_compressed:
            self.topics[0] = (CompressedImage, resolve(topic_of("image")) + "/compressed")
        if self.depth_compressed:
            self.topics[1] = (CompressedImage, resolve(topic_of("depth")) + "/compressedDepth")

    def callback(self, deliver: Callable, stats, log: Callable, topic: Callable[[str], str], params):
        """The synchronizer's callback: deliver(image, depth, detections). `stats`: the camera's NodeStats;
        `log(key, text)`: the throttled log; `topic(name)`: the subscribed topic (for log lines); `params()`:
        the parameters in effect (label_values is read per set)."""

        def on_set(*msgs):
            image, depth = msgs[0], msgs[1]
            for key, kind, compressed, decode in (
                ("image", "bad_image", self.color_compressed, codecs.decode_color_msg),
                ("depth", "bad_depth", self.depth_compressed, codecs.decode_depth_msg),
            ):
                if not compressed:
                    continue
                try:
                    decoded = decode(image if key == "image" else depth, params().max_image_pixels)
                except codecs.CodecError as e:
                    stats.on_input()  # a set that came and was not used: inputs = used + dropped + skipped
                    stats.on_skip(kind)
                    log(kind, f"frame skipped ({kind}): '{topic(key)}': {e}")
                    return
                if key == "image":
                    image = decoded
                else:
                    depth = decoded
            det = msgs[-1]
            if self.segmenter_input == "detection2d_labels":
                det = LabelledDetections(det, msgs[2], params().label_values)
            elif self.segmenter_input == "yolo":
                det = YoloDetections(det)
            deliver(image, depth, det)

        return on_set
