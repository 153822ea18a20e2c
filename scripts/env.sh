# Source me (bash): activates .venv and the colcon overlay with the interface packages that
# scripts/setup.sh built (cleanpose_msgs, and the test-only vision_msgs / tf2_msgs).
#   source scripts/env.sh
# Works from any directory; does not run set-up (run scripts/setup.sh or `make setup` first).

_cleanpose_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -f "$_cleanpose_repo/.venv/bin/activate" ] || [ ! -f "$_cleanpose_repo/build/ros_ws/install/setup.bash" ]; then
    echo "cleanpose env: not set up yet; run: bash $_cleanpose_repo/scripts/setup.sh" >&2
    unset _cleanpose_repo
    return 1 2>/dev/null || exit 1
fi

# shellcheck disable=SC1091
source "$_cleanpose_repo/.venv/bin/activate"
# The overlay's setup scripts read unset variables (AMENT_TRACE_SETUP_FILES, ...): relax nounset around them.
_cleanpose_nounset=0
case $- in *u*) _cleanpose_nounset=1; set +u ;; esac
# The ROS wheels live in the venv itself, which acts as the underlay prefix for the overlay.
case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *)
    export AMENT_PREFIX_PATH="${VIRTUAL_ENV}${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;; esac
case ":${CMAKE_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *)
    export CMAKE_PREFIX_PATH="${VIRTUAL_ENV}${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" ;; esac
# shellcheck disable=SC1091
source "$_cleanpose_repo/build/ros_ws/install/local_setup.bash"
[ "$_cleanpose_nounset" = 1 ] && set -u
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Shared memory + TCP for large messages (images): with plain UDP one lost fragment of a 640x480 image stalls
# a reliable topic until the next heartbeat and drops the frame on a best-effort one.
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
# ... and a shared-memory segment that holds whole frames (Fast DDS's default one, 512 KiB, does not: 13 ms
# instead of 3 ms per 640x480 image in fragment repair). Overrides the builtin transports. See
# cleanpose_ros/transport.py.
if [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ] && [ -z "${ROS_DISCOVERY_SERVER:-}" ]; then
    export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_cleanpose_repo/config/fastdds_large_data.xml}"
fi
export CLEANPOSE_REPO="$_cleanpose_repo"
unset _cleanpose_repo _cleanpose_nounset
