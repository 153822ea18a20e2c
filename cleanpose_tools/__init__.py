"""Tools around the node, not needed to run it: the demo (`cleanpose-demo`), rosbag2 replay over DDS and the
replay benchmark (`cleanpose-bench`). They may import cleanpose_training (the synthetic bag generator);
cleanpose_ros, the runtime, never does."""
