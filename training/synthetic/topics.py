"""The topic names a recording carries, as the node's launch file remaps them by default. Kept apart from
bag_writer (which needs the rosbags library) so that readers of the names, such as the self-supervised trainer
on a machine without rosbags, import them without it."""

TOPIC_COLOR = "/camera/color/image_raw"
TOPIC_DEPTH = "/camera/aligned_depth_to_color/image_raw"
TOPIC_INFO = "/camera/color/camera_info"
TOPIC_DETECTIONS = "/detections"
TOPIC_GT = "/ground_truth/poses"
TOPIC_TF = "/tf"
