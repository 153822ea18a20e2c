"""``cleanpose-convert``: published CleanPose / AG-Pose files -> one cleanpose safetensors checkpoint.

    cleanpose-convert --checkpoint epoch_30.pt --queue tensor_list.pkl --config cleanpose_nocs \
        --out model.safetensors [--dinov2 dinov2_vits14_pretrain.pth] [--verify]

The published state_dict is loaded strictly (weights_only) into a network built from ``--config``; the queue
pickle goes through the restricted unpickler. ``--verify`` reloads the written file and checks that it gives
bit-identical outputs to the network built from the published files on a random batch.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from cleanpose_model.errors import CheckpointError, DeviceUnavailableError, WrongVariantError
from cleanpose_model.io import checkpoints


def random_batch(n_objects: int, n_points: int, cat_num: int, seed: int = 0, image_size: int = 224):
    """Plausible random inputs: normalised-image noise and points on a 10 cm blob 0.7 m in front."""
    from cleanpose_model.types import ObjectBatch

    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n_objects, n_points, 3, generator=g) - 0.5) * 0.1 + torch.tensor([0.0, 0.0, 0.7])
    return ObjectBatch(
        rgb=torch.randn(n_objects, 3, image_size, image_size, generator=g),
        pts=pts,
        choose=torch.randint(0, image_size * image_size, (n_objects, n_points), generator=g),
        category=torch.arange(n_objects) % cat_num,
    )


def verify(net, cfg, queue, out_path: str, n_objects: int = 2) -> float:
    """Max abs output difference between ``net`` and the reloaded ``out_path`` (0.0 when identical)."""
    from cleanpose_model.estimator import PoseEstimator, load_estimator

    ref = PoseEstimator(net, cfg, queue)
    new = load_estimator(out_path)  # as every user loads it: the family read from the written header
    batch = random_batch(n_objects, cfg.n_points, cfg.cat_num, image_size=cfg.image_size)
    a, b = ref.predict(batch), new.predict(batch)
    return max(
        float((x - y).abs().max())
        for x, y in (
            (a.rotation, b.rotation),
            (a.translation, b.translation),
            (a.size, b.size),
            (a.keypoints, b.keypoints),
        )
    )


def variant_message(exc: WrongVariantError, path: str) -> str:
    """The loader's message, unless the file is no published network at all.

    The loader names the other variant ("this is an AG-Pose checkpoint") when every FD_Encoder.* key is
    missing, which is also true of any unrelated state_dict; when most of the missing keys are outside the
    front-door encoder, the file shares little with either network, and naming a variant would send the user
    to a second wrong config."""
    other = [k for k in exc.missing if not k.startswith("FD_Encoder.")]
    if len(other) * 2 <= len(exc.missing):
        return str(exc)
    # The loader's message: a heading line, the variant line, then the key report.
    report = str(exc).splitlines()[2:]
    return "\n".join(
        [
            f"{path} is not a published CleanPose or AG-Pose checkpoint: {len(other)} keys of the network "
            f"outside FD_Encoder.* are missing from it (an unrelated state_dict?)",
            *report,
        ]
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cleanpose-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="published state_dict (.pt/.pth), e.g. epoch_30.pt")
    p.add_argument("--queue", help="confounder queue tensor_list.pkl (required for CleanPose)")
    p.add_argument(
        "--dinov2",
        help="DINOv2 hub weights (dinov2_vits14_pretrain.pth) for a checkpoint saved "
        "without its frozen backbone; the checkpoint's own rgb_extractor.* keys take precedence",
    )
    p.add_argument(
        "--config",
        required=True,
        help="shipped config (cleanpose_nocs, cleanpose_housecat6d, agpose_nocs) or a YAML path",
    )
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--verify", action="store_true", help="reload the output and compare outputs (identical)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = checkpoints.load_config(args.config)
        net, cfg, queue = checkpoints.load_published(
            args.checkpoint, cfg, queue_path=args.queue, dinov2_path=args.dinov2
        )
        if queue is not None and queue.num_entries != cfg.front_door.queue_length:
            print(
                f"note: queue holds {queue.num_entries} entries per category (config says "
                f"{cfg.front_door.queue_length}); the file keeps all of them",
                file=sys.stderr,
            )
        header = checkpoints.save_checkpoint(
            args.out,
            net,
            cfg,
            queue,
            metadata={
                "source": {
                    "checkpoint": os.path.basename(args.checkpoint),
                    "queue": os.path.basename(args.queue) if args.queue else None,
                    "dinov2": os.path.basename(args.dinov2) if args.dinov2 else None,
                }
            },
        )
    except WrongVariantError as exc:
        print(f"cleanpose-convert: error: {variant_message(exc, args.checkpoint)}", file=sys.stderr)
        return 1
    except (CheckpointError, DeviceUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"cleanpose-convert: error: {exc}", file=sys.stderr)
        return 1
    n_params = sum(p.numel() for p in net.state_dict().values() if p.is_floating_point())
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    print(f"  family      {header['family']}")
    print(f"  categories  {', '.join(header['categories'])}")
    print(f"  tensors     {len(net.state_dict())} ({n_params:,} float values)")
    print(f"  queue       {tuple(queue.features.shape) if queue is not None else 'none (AG-Pose)'}")
    print(f"  format      {header['format']} v{header['version']}")
    if args.verify:
        diff = verify(net, cfg, queue, args.out)
        print(f"verify: max |published - converted| over all outputs = {diff:.3g}")
        if diff != 0.0:
            print(
                "cleanpose-convert: error: converted checkpoint does not reproduce the published weights",
                file=sys.stderr,
            )
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
