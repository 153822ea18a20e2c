"""A tiny network of the CleanPose structure for CPU training tests, and a matching TrainConfig."""

from __future__ import annotations

from cleanpose_training.trainer import TrainConfig

TINY_MODEL = {
    "dino.embed_dim": 32,
    "dino.depth": 1,
    "dino.num_heads": 2,
    "d_model": 32,
    "pts_feat_dim": 16,
    "rgb_feat_dim": 16,
    "pointnet2.npoints": [64, 32, 16, 8],
    "pointnet2.sa_mlps": [[8, 8, 16], [16, 16, 16], [16, 16, 32], [32, 32, 32]],
    "pointnet2.fp_mlps": [[16, 16], [32, 32], [32, 32], [32, 32]],
    "attention.dim_ffn": 32,
    "keypoints.kpt_num": 8,
    "keypoints.block_num": 1,
    "gafa.ks": [4, 8],
    "gafa.delta_hidden": 8,
    "nocs.mlp": [32, 32],
    "nocs.atten_hidden": 32,
    "nocs.block_num": 1,
    "front_door.cross_block_num": 1,
    "front_door.self_block_num": 1,
    "front_door.queue_length": 16,
    "reconstructor.pos_hidden": [8, 16],
    "reconstructor.decoder_hidden": [32, 32],
    "estimator.pts_mlp": [8, 16],
    "estimator.pose_mlp1": [32, 32],
    "estimator.pose_mlp2": [32, 32],
    "estimator.head_hidden": [32, 16],
    "distill.feat_dim": 32,
}


def tiny_config(out_dir, iterations: int = 6, **trainer) -> TrainConfig:
    t = {
        "out_dir": str(out_dir),
        "workers": 0,
        "log_every": 1,
        "ckpt_every": 1000,
        "progress": False,
        "resume": "auto",
        "device": "cpu",
        "seed": 7,
    }
    t.update(trainer)
    return TrainConfig.from_dict(
        {
            "model": "demo",
            "model_overrides": TINY_MODEL,
            "schedule": {
                "iterations": iterations,
                "base_lr": 1e-3,
                "max_lr": 2e-3,
                "step_size_up": 3,
                "step_size_down": 3,
            },
            "queue": {"init": "random", "length": 16},
            "trainer": t,
        }
    )
