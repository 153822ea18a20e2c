#!/usr/bin/env bash
# Idempotent set-up of the development environment on a machine without a ROS distribution:
#   .venv (Python 3.11) with torch 2.13.0 CPU, the ROS 2 Kilted wheels (rclpy + Fast DDS), colcon and the
#   ament/rosidl toolchain, the project itself (editable), and a colcon build of the interface packages
#   (cleanpose_msgs + the test-only vision_msgs / tf2_msgs copies and yolo_msgs) into build/ros_ws.
# Every step is keyed by a stamp holding a hash of its inputs, so a second run is a fast no-op.
#
# Environment knobs:
#   CLEANPOSE_PYTHON   interpreter for the venv (default: python3.11)
#   CLEANPOSE_FORCE=1  ignore the stamps and redo every step
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
WS="$REPO/build/ros_ws"
PYTHON="${CLEANPOSE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    # Debian 12's python3 is 3.11; a machine with several Pythons may only have it as python3.11.
    PYTHON=python3.11
    command -v python3.11 >/dev/null || PYTHON=python3
fi
FORCE="${CLEANPOSE_FORCE:-0}"
REQ_FILES=(requirements/base.txt requirements/ros.txt requirements/dev.txt)
# Packages colcon builds here; the vision_msgs / tf2_msgs copies and yolo_msgs are only for machines without a
# distribution (test-only).
INTERFACE_PKGS=(msg test/ros_interfaces/vision_msgs test/ros_interfaces/tf2_msgs test/ros_interfaces/yolo_msgs)

log() { printf '[setup +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# Hash of file contents (and names), stable across clones: stamps must not depend on mtimes.
hash_files() { sha256sum "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ "$FORCE" != 1 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

SECONDS=0

# --- 1. system library open3d needs -------------------------------------------------------------------
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    if is_root && command -v apt-get >/dev/null; then
        log "installing Debian libusb-1.0-0 (open3d links against it)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q libusb-1.0-0 >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libusb-1.0-0 >/dev/null; } \
            || die "apt-get install libusb-1.0-0 failed"
    else
        die "libusb-1.0.so.0 is missing (open3d needs it). Run as root: apt-get install -y libusb-1.0-0"
    fi
fi

# --- 2. venv --------------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set CLEANPOSE_PYTHON to a Python 3.11 interpreter"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$PYTHON is not Python 3.11 (the ROS 2 wheels are cp311); set CLEANPOSE_PYTHON"
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        # Debian splits venv support (ensurepip) into python3.11-venv.
        is_root && command -v apt-get >/dev/null \
            || die "$PYTHON cannot create venvs; as root: apt-get install -y python3.11-venv"
        log "installing Debian python3.11-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3.11-venv >/dev/null \
            || die "apt-get install python3.11-venv failed"
    fi
    log "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$VENV is not Python 3.11 (the ROS 2 wheels are cp311); remove it and re-run"

# --- 3. requirements ------------------------------------------------------------------------------------
req_hash="$(hash_files "${REQ_FILES[@]}")"
if ! stamp_ok "$VENV/.stamp-requirements" "$req_hash"; then
    log "pip install ${REQ_FILES[*]} (a few minutes on a clean machine; log: .venv/.pip-requirements.log)"
    pip_args=()
    for f in "${REQ_FILES[@]}"; do pip_args+=(-r "$f"); done
    # The log keeps pip's warnings (e.g. about index locations this machine lacks) out of the way unless it fails.
    "$PY" -m pip install --disable-pip-version-check "${pip_args[@]}" > "$VENV/.pip-requirements.log" 2>&1 \
        || { tail -n 40 "$VENV/.pip-requirements.log" >&2; die "pip install of the requirements failed"; }
    echo "$req_hash" > "$VENV/.stamp-requirements"
    rm -f "$VENV/.stamp-project" "$WS/.stamp"
fi

# --- 4. the project, editable (packages + console scripts) ----------------------------------------------
proj_hash="$(hash_files setup.py setup.cfg package.xml)"
if ! stamp_ok "$VENV/.stamp-project" "$proj_hash"; then
    log "pip install -e . (cleanpose_model, cleanpose_ros, training + console scripts)"
    # --no-build-isolation: the venv already has setuptools; isolation would fetch it again.
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
        > "$VENV/.pip-project.log" 2>&1 || { cat "$VENV/.pip-project.log" >&2; die "pip install -e . failed"; }
    echo "$proj_hash" > "$VENV/.stamp-project"
fi

# --- 5. the two path quirks of the ROS wheels -----------------------------------------------------------
# Their CMake configs name the wheel build machine's Python include dir and numpy; rosidl's Python generator
# fails at configure time when those paths do not exist, so point them at this Python and this venv.
WHEEL_PY=/opt/python/cp311-cp311
py_include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
venv_numpy="$("$PY" -c 'import numpy, os; print(os.path.dirname(numpy.__file__))')"
ensure_link() {  # ensure_link TARGET LINK: create LINK -> TARGET unless LINK already resolves to a directory
    local target="$1" link="$2"
    if [ -d "$link" ]; then return 0; fi
    if ! is_root && ! [ -w "$(dirname "$link")" ] 2>/dev/null; then
        die "missing $link (the ROS wheels' CMake configs need it). As root: mkdir -p $(dirname "$link") && ln -sfn $target $link"
    fi
    log "linking $link -> $target"
    mkdir -p "$(dirname "$link")"
    ln -sfn "$target" "$link"
}
ensure_link "$py_include" "$WHEEL_PY/include/python3.11"
ensure_link "$venv_numpy" "$WHEEL_PY/lib/python3.11/site-packages/numpy"

# --- 6. colcon build of the interface packages ----------------------------------------------------------
ws_inputs=()
while IFS= read -r f; do ws_inputs+=("$f"); done < <(
    find "${INTERFACE_PKGS[@]}" -type f \( -name '*.msg' -o -name 'package.xml' -o -name 'CMakeLists.txt' \) | sort)
ws_hash="$(printf '%s\n' "$req_hash" "$(hash_files "${ws_inputs[@]}")" | sha256sum | cut -c1-16)"
if ! stamp_ok "$WS/.stamp" "$ws_hash" || [ ! -f "$WS/install/setup.bash" ]; then
    log "colcon build ${INTERFACE_PKGS[*]} -> ${WS#"$REPO"/}/install"
    rm -rf "$WS"
    mkdir -p "$WS"
    # shellcheck disable=SC1091
    (
        source "$VENV/bin/activate"
        export CMAKE_PREFIX_PATH="$VIRTUAL_ENV" AMENT_PREFIX_PATH="$VIRTUAL_ENV"
        # Base paths name the packages directly: test/ros_interfaces/COLCON_IGNORE hides the test-only
        # copies from a recursive crawl (robot workspaces), but not from an explicit base path.
        colcon --log-base "$WS/log" build \
            --base-paths "${INTERFACE_PKGS[@]}" \
            --build-base "$WS/build" --install-base "$WS/install" --merge-install \
            --event-handlers console_cohesion- status- summary+ \
            --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" \
            > "$WS/colcon.out" 2>&1
    ) || { tail -n 60 "$WS/colcon.out" >&2; die "colcon build failed (full log: $WS/colcon.out)"; }
    echo "$ws_hash" > "$WS/.stamp"
fi

log "done. Use: source scripts/env.sh"
