"""The self-supervised family's network (issue 16): part-level shape memory + coarse-to-fine
correspondences, plain torch. ``SelfSupNet`` is the network, ``SelfSupConfig`` its configuration; the
losses live in ``correspondence`` (C2F, cycle) and the training package (Chamfer, VQ terms)."""

from cleanpose_model.selfsup.config import SelfSupConfig, load_selfsup_config
from cleanpose_model.selfsup.net import SelfSupNet

__all__ = ["SelfSupConfig", "SelfSupNet", "load_selfsup_config"]
