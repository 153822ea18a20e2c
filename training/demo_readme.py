"""Install the demo GPU run's outputs into models/demo/ and fill the README's result sections.

    python -m cleanpose_training.demo_readme <dir holding the run's $OUT files> [--models models/demo]

Copies ``final.safetensors`` (or joins its ``.partNN`` pieces, checking the sha256 in train.log) to
``models/demo/demo.safetensors`` and ``train_summary.json``, ``eval.json``, ``eval_table.md``,
``scalars.csv``, ``config.yaml``, ``train.log`` next to it, then replaces the text between the README's
``<!-- summary -->`` / ``<!-- eval -->`` markers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

from cleanpose_training.losses import TERMS

FILES = (
    "train_summary.json",
    "eval.json",
    "eval_table.md",
    "scalars.csv",
    "config.yaml",
    "train.log",
    "gpu.txt",
)


def summary_markdown(summary: dict) -> str:
    first, last = summary.get("first_scalars") or {}, summary.get("last_scalars") or {}
    ips = summary.get("it_per_s", 0)
    lines = [
        f"- device: {summary.get('device')} ({summary.get('gpu', '').strip() or 'see gpu.txt'}), "
        f"world size {summary.get('world_size')}, global batch {summary.get('global_batch')}",
        f"- iterations: {summary.get('iterations')} in {summary.get('seconds', 0):.0f} s "
        f"(**{ips:.2f} it/s**, {ips * summary.get('global_batch', 0):.0f} objects/s); set-up + final save "
        f"{summary.get('setup_seconds', 0):.0f} s",
        f"- parameters: {summary.get('params', 0) / 1e6:.2f} M",
        "",
        "| term | first log interval (mean) | last log interval (mean) |",
        "|---|---|---|",
    ]

    def cell(scalars: dict, k: str) -> str:
        return f"{scalars[k]:.4g}" if k in scalars else "–"  # a term not logged in that interval

    for k in (*TERMS, "total", "lr"):
        if k in first or k in last:
            lines.append(f"| {k} | {cell(first, k)} | {cell(last, k)} |")
    return "\n".join(lines)


def _replace(text: str, marker: str, body: str) -> str:
    pat = re.compile(rf"<!-- {marker} -->.*?<!-- /{marker} -->", re.S)
    block = f"<!-- {marker} -->\n{body}\n<!-- /{marker} -->"
    if not pat.search(text):
        raise SystemExit(f"README has no <!-- {marker} --> ... <!-- /{marker} --> block")
    return pat.sub(lambda _m: block, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cleanpose_training.demo_readme", description=__doc__.split("\n")[0]
    )
    p.add_argument("run_dir")
    p.add_argument("--models", default="models/demo")
    a = p.parse_args(argv)
    run, dst = Path(a.run_dir), Path(a.models)
    dst.mkdir(parents=True, exist_ok=True)
    ckpt = run / "final.safetensors"
    parts = sorted(run.glob("final.safetensors.part*"))
    if ckpt.is_file():
        shutil.copyfile(ckpt, dst / "demo.safetensors")
    elif parts:  # scripts/train_demo_gpu.sh splits it so that no result file exceeds 16 MiB
        with open(dst / "demo.safetensors", "wb") as fh:
            for part in parts:
                fh.write(part.read_bytes())
    else:
        raise SystemExit(f"neither {ckpt} nor its parts found")
    log = run / "train.log"
    m = (
        re.search(r"^([0-9a-f]{64})\s+\S*final\.safetensors$", log.read_text(), re.M)
        if log.is_file()
        else None
    )
    if m:
        got = hashlib.sha256((dst / "demo.safetensors").read_bytes()).hexdigest()
        if got != m.group(1):
            raise SystemExit(f"checkpoint sha256 {got} != {m.group(1)} recorded in {log}")
    for f in FILES:
        if (run / f).is_file():
            shutil.copyfile(run / f, dst / f)
    summary = json.loads((run / "train_summary.json").read_text())
    if (run / "gpu.txt").is_file():
        summary["gpu"] = (run / "gpu.txt").read_text()
    readme = dst / "README.md"
    text = readme.read_text()
    text = _replace(text, "summary", summary_markdown(summary))
    if (run / "eval_table.md").is_file():
        ev = json.loads((run / "eval.json").read_text())
        body = (
            f"{ev['objects']} objects in {ev['images']} images; median rotation error "
            f"{ev['median_rot_deg']:.1f}°, median translation error {ev['median_trans_cm']:.1f} cm.\n\n"
            + (run / "eval_table.md").read_text().strip()
        )
        text = _replace(text, "eval", body)
    text = text.replace(
        "**Status: not trained yet** — the GPU run below has not been done. The tables are filled in "
        "after it.\n",
        "",
    )
    readme.write_text(text)
    print(f"installed {dst / 'demo.safetensors'} ({(dst / 'demo.safetensors').stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
