"""The front-door encoder's inference form (inference/forms/front_door.py) computes the published module."""

from __future__ import annotations

import torch

from cleanpose_model.inference.forms.attention import FusedAttnLayer, FusedSelfAttnLayer
from cleanpose_model.inference.forms.front_door import FusedFrontDoor
from cleanpose_model.nn.front_door import FrontDoorEncoder


def test_front_door_matches():
    torch.manual_seed(0)
    fd = FrontDoorEncoder(256, 4, 256).eval()
    g = torch.Generator().manual_seed(6)
    x, glob = torch.randn(2, 96, 256, generator=g), torch.randn(2, 80, 256, generator=g)
    form = FusedFrontDoor(fd, None)
    assert isinstance(form.self_attn_layer, FusedSelfAttnLayer)
    assert isinstance(form.cross_attn_layer, FusedAttnLayer)
    assert form.self_attn_layer.attn_blocks is fd.self_attn_layer.attn_blocks
    with torch.no_grad():
        torch.testing.assert_close(form(x, glob), fd(x, glob), rtol=1e-5, atol=1e-5)
