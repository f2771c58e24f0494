"""Global pooling of the body's feature map, by name (the config's ``pool``): what the head sees of an image.

Written with plain reductions (``amax``, ``mean``, ``pow``) rather than adaptive pooling layers, so every supported
torch exports them to ONNX (the exporter of torch < 2.13 has no ``adaptive_max_pool2d``)."""

from __future__ import annotations

import torch
from torch import nn


class ConcatPool(nn.Module):
    """Max and average over the feature map side by side (fastai's ``AdaptiveConcatPool2d``, in its order)."""

    #: the pooled features per channel of the body
    factor = 2

    def forward(self, x):
        return torch.cat([x.amax(dim=(2, 3), keepdim=True), x.mean(dim=(2, 3), keepdim=True)], 1)


class AvgPool(nn.Module):
    """Average over the feature map."""

    factor = 1

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class GeM(nn.Module):
    """Generalised mean pooling, ``mean(x ** p) ** (1 / p)`` with a learnt ``p`` (3 at first): between average
    (p = 1) and max (p → ∞); the 1st-place APTOS 2019 solution's pooling."""

    factor = 1

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x):
        p = self.p.clamp(min=1.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p).to(x.dtype)


#: the config's ``pool`` names (see :data:`retinopathy.config.POOLS` for their help)
POOL_LAYERS = {"concat": ConcatPool, "avg": AvgPool, "gem": GeM}


def pool_layer(name: str) -> nn.Module:
    """A fresh pooling layer by its config name."""
    return POOL_LAYERS[name]()


def portable(model: nn.Module) -> nn.Module:
    """``model`` with fastai's adaptive concat pooling swapped for :class:`ConcatPool` (the same numbers, no
    parameters), in place: models trained before it exported to ONNX on the newest torch only."""
    from fastai.layers import AdaptiveConcatPool2d

    for name, child in list(model.named_children()):
        if isinstance(child, AdaptiveConcatPool2d) and child.size == 1:
            setattr(model, name, ConcatPool())
        else:
            portable(child)
    return model
