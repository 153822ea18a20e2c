"""Inference-time folding of the network's per-point layers into plain matrix products.

The published network is built from 1x1 convolutions, most followed by an eval-mode batch norm
(PointNet++ shared MLPs, GAFA, NOCS and pose heads), and DINOv2 embeds patches with a
stride-14 convolution. At inference all of these are matrix products:

- a batch norm in eval mode is an affine map per channel, so it folds into the preceding
  convolution's weight and bias (one product instead of a convolution + a normalisation pass);
- a 1x1 convolution over (B, C, ...) is a (C_out, C) matrix applied at every position; when
  the input is a transposed view of a channels-last tensor (the heads transpose (B, K, C)
  tensors in and out of every MLP) it runs as ``F.linear`` on that tensor with no copy;
- a patch embedding with stride == kernel is an unfold (a reshape) and a linear layer.

Products go to cuBLAS and nothing is left for cuDNN, whose handle and kernels would otherwise
take GPU memory in the inference process. The result computes the same function as the
published layers: it differs by float rounding only (a few ulp per layer; the parity tests
hold it to the same bounds as the eager network). Training keeps the published modules;
``fold_for_inference`` returns a new module tree and leaves its argument untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cleanpose_model.nn.pointnet2_msg import _ConvBnRelu2d
from cleanpose_model.ops.triton.linear import linear_triton

# Modules whose forward applies their children in their listed order, like a Sequential: a conv -> BN -> ReLU
# run among their children folds into one product.
_SEQUENTIAL = (nn.Sequential, _ConvBnRelu2d)


class PointwiseLinear(nn.Module):
    """``y = relu?(W x + b)`` over the channel dim 1 of a (B, C, *spatial) tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.relu = relu
        # The exact mode on CUDA binds the 3xTF32 kernel here (`use_kernel`); None: torch's products.
        self.precision: str | None = None

    def use_kernel(self, precision: str) -> None:
        """Run the product, bias and ReLU as one `ops/triton/linear.py` launch in ``precision``."""
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x.movedim(1, -1)
        if self.precision is not None:
            # One launch, in either layout: the kernel reads x and writes y through their strides.
            y = torch.empty(x.shape[0], self.weight.shape[0], *x.shape[2:], device=x.device)
            linear_triton(
                x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2),
                self.weight,
                self.bias,
                activation="relu" if self.relu else None,
                precision=self.precision,
                out=y.view(y.shape[0], y.shape[1], -1).transpose(1, 2),
            )
            return y
        if last.is_contiguous():
            # A transposed view of a channels-last tensor: apply the matrix in place of the transpose.
            y = F.linear(last, self.weight, self.bias).movedim(-1, 1)
        else:
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            bsz, _, n = flat.shape
            y = torch.baddbmm(
                self.bias.view(1, -1, 1).expand(bsz, -1, n),
                self.weight.unsqueeze(0).expand(bsz, -1, -1),
                flat,
            ).view(bsz, -1, *x.shape[2:])
        # In place, as the published nn.ReLU(inplace=True): y is this layer's own fresh output.
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape
        return f"{c_in}, {c_out}, relu={self.relu}"


class PatchLinear(nn.Module):
    """A stride == kernel patch-embedding convolution as unfold + linear: (B, C, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.patch = conv.kernel_size[0]
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        gh, gw = x.shape[2] // p, x.shape[3] // p
        x = x[:, :, : gh * p, : gw * p]  # a trailing partial patch is dropped, as by the convolution
        b, c = x.shape[:2]
        patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
        # Returned as the conv's (B, D, gh, gw) view; PatchEmbed's flatten + transpose is then free.
        return F.linear(patches, self.weight, self.bias).transpose(1, 2).view(b, -1, gh, gw)


def _is_pointwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv1d | nn.Conv2d)
        and all(k == 1 for k in m.kernel_size)
        and all(s == 1 for s in m.stride)
        and all(p == 0 for p in m.padding)
        and m.groups == 1
    )


def _is_patch_embedding(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size[0] > 1
        and m.kernel_size == m.stride
        and m.kernel_size[0] == m.kernel_size[1]
        and m.padding == (0, 0)
        and m.groups == 1
    )


def _folded(conv: nn.Module, bn: nn.Module | None, relu: bool) -> PointwiseLinear:
    w = conv.weight.detach().flatten(1).double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(w[:, 0])
    if bn is not None:
        if bn.training or bn.running_mean is None:
            raise ValueError("batch norm folding needs eval-mode statistics (call .eval() first)")
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale[:, None]
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    dtype = conv.weight.dtype
    return PointwiseLinear(w.to(dtype), b.to(dtype), relu)


def _unwrap_bn(m: nn.Module) -> nn.Module | None:
    """The batch norm in ``m`` (itself, or a one-child wrapper around one), else None."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m
    children = list(m.children())
    if len(children) == 1 and isinstance(children[0], nn.modules.batchnorm._BatchNorm):
        return children[0]
    return None


def _fold_sequence(names: list[str], mods: list[nn.Module]) -> dict[str, nn.Module] | None:
    """Conv [BN] [ReLU] runs inside a Sequential-like list of children: the conv slot gets the folded
    layer, the BN and ReLU slots become Identity (indices stay valid). None if nothing to fold."""
    out = dict(zip(names, mods, strict=True))
    changed = False
    i = 0
    while i < len(mods):
        if not _is_pointwise(mods[i]):
            i += 1
            continue
        j = i + 1
        bn = _unwrap_bn(mods[j]) if j < len(mods) else None
        if bn is not None:
            j += 1
        relu = j < len(mods) and isinstance(mods[j], nn.ReLU)
        out[names[i]] = _folded(mods[i], bn, relu)
        for k in range(i + 1, j + int(relu)):
            out[names[k]] = nn.Identity()
        changed = True
        i = j + int(relu)
    return out if changed else None


def fold_for_inference(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with its 1x1 convolutions, their batch norms and ReLUs folded
    into ``PointwiseLinear`` layers and stride == kernel patch embeddings as ``PatchLinear``.

    Only the containers on the way to a replaced layer are copied (shallowly); every other
    submodule, parameter and buffer is shared with ``module``, so the weights are not duplicated.
    """
    children = dict(module.named_children())
    if not children:
        return module
    names, mods = list(children), [fold_for_inference(c) for c in children.values()]
    new = dict(zip(names, mods, strict=True))
    # Conv -> BN -> ReLU chains are folded only where the children run in their listed order.
    if isinstance(module, _SEQUENTIAL):
        new = _fold_sequence(names, mods) or new
    for name, m in list(new.items()):
        if _is_pointwise(m):
            new[name] = _folded(m, None, False)
        elif _is_patch_embedding(m):
            new[name] = PatchLinear(m)
    if all(new[n] is children[n] for n in names):
        return module
    clone = copy.copy(module)
    clone._modules = dict(new)
    return clone
