"""cleanpose_tools.bench starts node processes in their own session: without a parent-death signal a test or
benchmark killed by SIGKILL (a time-out) leaves its node answering later runs on the same ROS domain."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_child_dies_with_a_sigkilled_parent():
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from cleanpose_tools.bench import _die_with_parent
        p = subprocess.Popen(["sleep", "60"], preexec_fn=_die_with_parent, start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    state = None
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            state = "gone"
        if state in ("Z", "X", "gone"):
            break
        time.sleep(0.05)
    if state not in ("Z", "X", "gone"):
        os.kill(child, signal.SIGKILL)
    assert state in ("Z", "X", "gone"), f"child still running (state {state}) after its parent was killed"
