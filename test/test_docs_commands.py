"""The README's commands work as written on a fresh clone: each marked block runs in a new clone.

Convention (README.md): a fenced ```bash block whose preceding line is one of

    <!-- doc-test: short -->                   CI (`make test`): must finish within SHORT_TIMEOUT_S on 2 cores
    <!-- doc-test: slow -->                    `make test-all` (marked slow): set-up, training, the whole demo
    <!-- doc-test: short until="TEXT" -->      a command that serves until stopped (the node): passes once
                                               TEXT appears in its output, then gets SIGINT and must exit
                                               without a traceback

runs as one `bash -eo pipefail` script in the clone's root. Blocks without a marker are not run (a robot's
colcon workspace, a GPU machine, your own recording): `test_unmarked_commands_name_real_things` checks that
what they name exists (modules, console scripts, make targets, repository files).

How a block runs, and why:
- In a `git clone` of this checkout's HEAD, so it sees what a new user sees: no data/, outputs/ or runs/ left
  by earlier work. Commit a change before testing its documentation.
- The clone borrows this checkout's venv and colcon overlay (`.venv`, `build/ros_ws` symlinked) instead of
  a pip install of its own (minutes, gigabytes). `PYTHONPATH` puts the clone's packages first (the venv's
  editable install points at this checkout), and `make` runs as `make -o setup`: set-up in the clone would
  reinstall the shared venv's editable package from the temporary clone. `make setup` itself is timed on a
  real fresh clone and stated in the README, not here.
- The session's ROS_DOMAIN_ID (test/conftest.py) is inherited, so the nodes the commands start stay apart
  from other test runs.

`python test/test_docs_commands.py [--slow] [--clone-dir DIR]` runs the blocks outside pytest and prints each
one's exit code and time (DIR: an existing fresh clone with its own set-up, used as it is).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
SHORT_TIMEOUT_S = 120  # generous against the ~60 s budget: the 2 cores are shared with other jobs
SLOW_TIMEOUT_S = 3600

_MARKER = re.compile(r'^<!--\s*doc-test:\s*(short|slow)(?:\s+until="([^"]+)")?\s*-->\s*$')
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    kind: str  # "short" | "slow" | "" (not run)
    until: str | None
    lang: str
    text: str
    section: str

    @property
    def name(self) -> str:
        first = next((c for c in self.commands() if not c.startswith("source ")), self.commands()[0])
        return f"L{self.line}:{first[:50]}"

    def commands(self) -> list[str]:
        """Command lines with continuations joined, comments and blank lines dropped."""
        out, cur = [], ""
        for raw in self.text.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            if cur.strip() and not cur.strip().startswith("#"):
                out.append(cur.strip())
            cur = ""
        return out


def parse_blocks(markdown: str) -> list[Block]:
    """Every fenced block, with the doc-test marker of the line before its fence (if any)."""
    lines = markdown.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        m = _FENCE.match(line)
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        kind, until = (marker.group(1), marker.group(2)) if marker else ("", None)
        blocks.append(Block(i + 1, kind, until, m.group(1), "\n".join(lines[i + 1 : j]), section))
        i = j + 1
    return blocks


def _blocks(kind: str) -> list[Block]:
    return [b for b in parse_blocks(README.read_text()) if b.kind == kind]


# ------------------------------------------------------------------------------------------------ running


def make_clone(dest: Path) -> Path:
    """A clone of this checkout's HEAD that borrows its venv and overlay (see the module docstring)."""
    clone = dest / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO_ROOT / ".venv")
    (clone / "build").mkdir(exist_ok=True)
    (clone / "build" / "ros_ws").symlink_to(REPO_ROOT / "build" / "ros_ws")
    # The folder training/ imports as cleanpose_training (setup.py's package_dir): a link gives the clone's.
    shim = dest / "pythonpath"
    shim.mkdir()
    (shim / "cleanpose_training").symlink_to(clone / "training")
    bin_dir = dest / "bin"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text(f'#!/bin/sh\nexec {shlex.quote(_real_make())} -o setup "$@"\n')
    make.chmod(0o755)
    return clone


def _real_make() -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / "make"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return "make"


def clone_env(dest: Path, clone: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{dest / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(clone), str(dest / "pythonpath")])
    for k in ("CLEANPOSE_FORCE", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        env.pop(k, None)
    return env


@dataclass
class Outcome:
    code: int | None
    seconds: float
    output: str
    note: str = ""


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout_s: float) -> Outcome:
    """Runs the block as one bash script in `cwd`. With `until`, the block passes once that text is printed:
    it is then stopped with SIGINT (as a user stops the node) and must exit without a traceback."""
    log = cwd.parent / f"block_L{block.line}.log"
    script = "set -eo pipefail\n" + block.text + "\n"
    t0 = time.monotonic()
    with open(log, "w+") as out:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        note = ""
        try:
            if block.until:
                while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                    if block.until in log.read_text(errors="replace"):
                        note = f"saw {block.until!r}, stopped with SIGINT"
                        os.killpg(proc.pid, signal.SIGINT)
                        break
                    time.sleep(0.5)
            proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            note = f"killed after {timeout_s:.0f} s"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    if block.until and not note.startswith("saw"):
        note = note or f"ended before printing {block.until!r}"
        return Outcome(
            proc.returncode if proc.returncode is not None else -9, time.monotonic() - t0, text, note
        )
    code = proc.returncode
    if block.until and note.startswith("saw"):
        # SIGINT ending: exit 0, or 130 / -2 from a shell or process that took the signal
        code = 0 if code in (0, 130, -2) and "Traceback" not in text else (code or 1)
    return Outcome(code, time.monotonic() - t0, text, note)


# What scripts/setup.sh hashes into its stamps. When the working tree differs from HEAD here, set-up inside
# the clone (the conftest's overlay check of a `make test` in a block) would find the borrowed venv's stamps
# stale and reinstall the shared venv's editable package from the temporary clone.
SETUP_INPUTS = ("setup.py", "setup.cfg", "package.xml", "requirements", "msg", "test/ros_interfaces")


def setup_inputs_committed() -> bool:
    diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *SETUP_INPUTS], cwd=REPO_ROOT)
    return diff.returncode == 0


def _check(block: Block, timeout_s: float, tmp_path: Path) -> None:
    if not setup_inputs_committed():
        pytest.skip(f"uncommitted changes to set-up inputs ({', '.join(SETUP_INPUTS)}): commit them first")
    clone = make_clone(tmp_path)
    res = run_block(block, clone, clone_env(tmp_path, clone), timeout_s)
    tail = "\n".join(res.output.splitlines()[-40:])
    assert res.code == 0, (
        f"README.md line {block.line} ({block.section}) failed with exit code {res.code} after "
        f"{res.seconds:.0f} s {res.note}\n--- block ---\n{block.text}\n--- output (tail) ---\n{tail}"
    )


# ------------------------------------------------------------------------------------------------ tests


def test_readme_marks_runnable_blocks():
    """The convention is in use: marked blocks are bash, and every audience section has a short one."""
    blocks = parse_blocks(README.read_text())
    marked = [b for b in blocks if b.kind]
    assert marked, "no <!-- doc-test: ... --> block in README.md"
    assert all(b.lang == "bash" for b in marked), [b.name for b in marked if b.lang != "bash"]
    short_sections = {b.section for b in marked if b.kind == "short"}
    text = README.read_text()
    for audience in ("Robot engineer", "Researcher", "Integrator"):
        heads = [
            s for s in re.findall(r"^#+ (.+)$", text, re.M) if s.startswith(f"For the {audience.lower()}")
        ]
        assert heads, f"README.md has no section 'For the {audience.lower()} ...'"
    assert len(short_sections) >= 3, short_sections


def test_fresh_machine_needs_exactly_two_commands():
    first = next(b for b in parse_blocks(README.read_text()) if b.section == "Two commands")
    assert [c.split("#")[0].strip() for c in first.commands()] == ["make demo", "make test"]


def _console_scripts() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group="console_scripts")}


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))


_PATH_TOKEN = re.compile(
    r"^(?:training|config|launch|models|scripts|docs|msg|rviz|cleanpose_\w+)/[\w./{},-]+$"
)


def test_unmarked_commands_name_real_things():
    """What every bash block of the README names exists: `python -m` modules, cleanpose-* console scripts,
    make targets and repository paths (the commands that only run on a robot or a GPU machine included)."""
    import importlib.util

    scripts, targets, problems = _console_scripts(), _make_targets(), []
    for b in parse_blocks(README.read_text()):
        if b.lang != "bash":
            continue
        for cmd in b.commands():
            words = shlex.split(cmd, comments=True)
            for k, w in enumerate(words):
                nxt = words[k + 1] if k + 1 < len(words) else ""
                if (
                    w == "-m"
                    and nxt.startswith(("cleanpose", "benchmarks"))
                    and not importlib.util.find_spec(nxt)
                ):
                    problems.append(f"L{b.line}: no module {nxt}")
                if w.startswith("cleanpose-") and w not in scripts:
                    problems.append(f"L{b.line}: no console script {w}")
                if w == "make" and nxt and not nxt.startswith("-") and nxt not in targets:
                    problems.append(f"L{b.line}: no make target {nxt}")
                path = w.split("=", 1)[-1]
                if _PATH_TOKEN.match(path) and "{" not in path and not (REPO_ROOT / path).exists():
                    problems.append(f"L{b.line}: no file {path}")
    assert not problems, "\n".join(problems)


@pytest.mark.ros
@pytest.mark.parametrize("block", _blocks("short"), ids=lambda b: b.name)
def test_short_block_runs_in_fresh_clone(block, tmp_path):
    _check(block, SHORT_TIMEOUT_S, tmp_path)


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT_S + 60)
@pytest.mark.parametrize("block", _blocks("slow"), ids=lambda b: b.name)
def test_slow_block_runs_in_fresh_clone(block, tmp_path):
    _check(block, SLOW_TIMEOUT_S, tmp_path)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the README's doc-test blocks; print exit code and time.")
    p.add_argument("--slow", action="store_true", help="also the slow blocks")
    p.add_argument("--only", default="", help="run the blocks whose name contains this text")
    p.add_argument(
        "--clone-dir", type=Path, help="an existing fresh clone with its own set-up (run as it is, in order)"
    )
    args = p.parse_args(argv)
    if not args.clone_dir and not setup_inputs_committed():
        print(f"uncommitted changes to set-up inputs ({', '.join(SETUP_INPUTS)}): commit them first")
        return 2
    kinds = ("short", "slow") if args.slow else ("short",)
    blocks = [b for b in parse_blocks(README.read_text()) if b.kind in kinds and args.only in b.name]
    failed = 0
    for b in blocks:
        timeout = SHORT_TIMEOUT_S if b.kind == "short" else SLOW_TIMEOUT_S
        if args.clone_dir:
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            res = run_block(b, args.clone_dir.resolve(), env, timeout)
        else:
            with tempfile.TemporaryDirectory() as d:
                clone = make_clone(Path(d))
                res = run_block(b, clone, clone_env(Path(d), clone), timeout)
        failed += res.code != 0
        print(f"{b.kind:5} exit {res.code} {res.seconds:7.1f} s  README.md:{b.line}  {b.name} {res.note}")
        for cmd in b.commands():
            print(f"        $ {cmd}")
        if res.code != 0:
            print("\n".join("        | " + s for s in res.output.splitlines()[-25:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
