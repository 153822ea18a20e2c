"""Fast DDS transport set-up for image-sized messages on one host.

`config/fastdds_large_data.xml` gives shared memory a segment that holds whole frames (Fast DDS's default
segment, 512 KiB, holds no 640x480 image: fragments are dropped and repaired by the reliable protocol, about
13 ms per 0.9 MB image here instead of 3 ms, and best-effort readers get nothing). The writer's profile is
what counts, so every process that publishes frames needs it; `use_large_data_profile()` sets it for the
calling process (before rclpy.init) unless the user already chose a Fast DDS configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILE_NAME = "fastdds_large_data.xml"
REPO_ROOT = Path(__file__).resolve().parents[1]
_FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
# Any of these set means the user chose the transport: leave it alone. FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA
# (what this package's launch file, scripts/env.sh and tools set before this profile existed) asks for what
# the profile does better, so it does not count; any other value does.
_USER_CHOICES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_DISCOVERY_SERVER")


def profile_path() -> Path | None:
    """The profile in the source tree or the ament share directory, or None."""
    cands = [REPO_ROOT / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        cands.append(Path(get_package_share_directory("cleanpose_ros")) / "config" / PROFILE_NAME)
    except Exception:  # not installed through ament: source tree only
        pass
    return next((p for p in cands if p.is_file()), None)


def use_large_data_profile(environ=None) -> str | None:
    """Point FASTDDS_DEFAULT_PROFILES_FILE at the profile when the RMW is Fast DDS (the default one) and no
    Fast DDS configuration is chosen (`CLEANPOSE_FASTDDS_PROFILE=0` opts out). Returns the path it set, or
    None when it left the environment as it was. Must run before rclpy.init()."""
    env = os.environ if environ is None else environ
    if env.get("CLEANPOSE_FASTDDS_PROFILE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in _FASTDDS_RMWS:
        return None
    if any(env.get(k) for k in _USER_CHOICES):
        return None
    if env.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA") != "LARGE_DATA":
        return None
    path = profile_path()
    if path is None:
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return str(path)
