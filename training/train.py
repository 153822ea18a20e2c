"""``cleanpose-train``: train CleanPose from a YAML config with dotted CLI overrides.

    cleanpose-train --config training/configs/nocs.yaml --set data.sources.0.data_dir=/data/nocs ...
    torchrun --nproc_per_node=4 -m cleanpose_training.train --config training/configs/nocs.yaml  # N GPUs
    python -m cleanpose_training.train --config training/configs/demo.yaml --set trainer.device=cpu  # CPU

The same command runs on the CPU, one GPU, or N GPUs (torchrun sets RANK/WORLD_SIZE; batch sizes are per
rank).
Re-running it with the same ``trainer.out_dir`` resumes from ``<out_dir>/ckpt/train_state.pt``
(``trainer.resume:
auto``). Outputs in out_dir: ``final.safetensors`` (model + queue, our checkpoint format), ``scalars.csv`` (+
TensorBoard when installed), ``train_summary.json``, and with ``eval.packed_test`` set, ``eval.json`` +
``eval_table.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from cleanpose_training import distributed as D
from cleanpose_training.trainer import TrainConfig, Trainer

log = logging.getLogger("cleanpose.train")


def _parse_value(text: str):
    # YAML scalars: numbers, booleans, null, lists ("[1, 2]") parse as such; anything else stays a string.
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "2e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    return value


def _apply_override(d: dict, key: str, value) -> None:
    """Dotted keys; a numeric component indexes a list (``data.sources.0.data_dir``)."""
    parts = key.split(".")
    cur = d
    for i, k in enumerate(parts[:-1]):
        if isinstance(cur, list):
            cur = cur[int(k)]
            continue
        if k not in cur or cur[k] is None:
            cur[k] = [] if parts[i + 1].isdigit() else {}
        cur = cur[k]
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    d = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"config file {p} not found")
        d = yaml.safe_load(p.read_text()) or {}
    for ov in overrides:
        if "=" not in ov:
            raise SystemExit(f"--set expects key=value, got {ov!r}")
        k, v = ov.split("=", 1)
        _apply_override(d, k.strip(), _parse_value(v))
    return TrainConfig.from_dict(d)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cleanpose-train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", required=True, help="training YAML (training/configs/{nocs,housecat6d,demo}.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted path; repeatable)",
    )
    p.add_argument("--out-dir", default=None, help="shortcut for --set trainer.out_dir=...")
    p.add_argument("--iterations", type=int, default=None, help="shortcut for --set schedule.iterations=...")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (shortcut for trainer.device)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    ov = list(a.overrides)
    if a.out_dir:
        ov.append(f"trainer.out_dir={a.out_dir}")
    if a.iterations is not None:
        ov.append(f"schedule.iterations={a.iterations}")
    if a.device:
        ov.append(f"trainer.device={a.device}")
    cfg = load_config(a.config, ov)
    info = D.init(cfg.trainer.device)
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {info.rank}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    out = Path(cfg.trainer.out_dir)
    try:
        t0 = time.time()
        trainer = Trainer(cfg, info)
        n_params = sum(p.numel() for p in trainer.net.parameters())
        n_train = sum(p.numel() for p in trainer.net.parameters() if p.requires_grad)
        if info.is_main:
            log.info(
                "device %s, world size %d, params %.2fM (%.2fM trainable), sources %s",
                info.device,
                info.world_size,
                n_params / 1e6,
                n_train / 1e6,
                [(n, len(ds), bs) for n, ds, bs in trainer.sources],
            )
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        result = trainer.fit()
        final = trainer.save_final()
        summary = {
            **result,
            "setup_seconds": time.time() - t0 - result["seconds"],
            "params": n_params,
            "trainable_params": n_train,
            "global_batch": sum(trainer.splits) * info.world_size,
            "checkpoint": str(final),
            "last_scalars": trainer.history[-1] if trainer.history else None,
            "first_scalars": trainer.history[0] if trainer.history else None,
        }
        h = trainer.history
        if len(h) >= 3:
            # steady state: from the second log interval on (the first includes warm-up: workers, CUDA/cuDNN
            # init)
            first, last = h[1], h[-1]
            summary["it_per_s_steady"] = (last["iteration"] - first["iteration"]) / max(
                last["elapsed_s"] - first["elapsed_s"], 1e-9
            )
        test_root = cfg.eval.packed_test
        if info.is_main and test_root and not a.no_eval:
            from cleanpose_training.datasets.packed import PackedDataset
            from cleanpose_training.eval_packed import evaluate_packed, markdown_table

            te = time.time()
            ds = PackedDataset(test_root, augment=False)
            res = evaluate_packed(trainer.net, trainer.queue, ds, trainer.device, cfg.eval.batch_size)
            res["seconds"] = time.time() - te
            (out / "eval.json").write_text(json.dumps(res, indent=1))
            md = markdown_table(res)
            (out / "eval_table.md").write_text(md + "\n")
            summary["eval"] = {
                "mean": res["table"]["mean"],
                "objects": res["objects"],
                "median_rot_deg": res["median_rot_deg"],
                "median_trans_cm": res["median_trans_cm"],
                "seconds": res["seconds"],
            }
            print(md, flush=True)
        if info.is_main:
            (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
            log.info("done: %s", json.dumps({k: summary[k] for k in ("iterations", "seconds", "it_per_s")}))
    finally:
        D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
