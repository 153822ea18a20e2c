"""Training of the self-supervised family (issue 16): stage 1 pre-trains the part-level shape memory and
decoder on single-object renders of the procedural category shapes (Chamfer + VQ); stage 2 trains end to end
on unlabeled RGB-D + masks (NOCS-layout folders, pose files never opened). CLI:
``python -m cleanpose_training.selfsup.train --stage 1|2 --config ... --out DIR``."""
