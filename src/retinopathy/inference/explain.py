"""Where the model looks: Grad-CAM heat maps (the ``grad-cam`` package) from the last convolutional stage of a
fold's body, for what its head says of the grade it predicts (a classifier: that grade's logit; the other heads:
their score), averaged over the folds of an ensemble, and drawn over the image."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..training.serving_model import ServingModel


def last_conv_stage(model: nn.Module) -> nn.Module:
    """The body's last convolutional stage of a fastai vision model (``Sequential(body, head)``): timm bodies name
    it in their ``feature_info``; torchvision bodies are the network's children cut before the pooling."""
    body = model[0]
    inner = getattr(body, "model", None)  # fastai's TimmBody wraps the timm network
    if inner is not None and getattr(inner, "feature_info", None) is not None:
        return inner.get_submodule(inner.feature_info[-1]["module"])
    stages = [m for m in body.children() if any(isinstance(c, nn.Conv2d) for c in m.modules())]
    if not stages:
        raise ValueError("no convolutional stage in the model's body")
    return stages[-1]


def heat_map(models: list[ServingModel], image: np.ndarray, grade: int | None = None) -> np.ndarray:
    """Grad-CAM of ``image`` (prepared uint8 RGB, H × W × 3) at the model's input size (H × W, 0..1), averaged over
    ``models`` (the folds). The target is what each fold's head explains for ``grade``."""
    from pytorch_grad_cam import GradCAM


    maps = []
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    for served in models:
        net = served.model.float().eval()
        x = ((pixels - served.mean.float()) / served.std.float()).contiguous()
        target = served.head.explain_target(int(grade or 0))
        with torch.enable_grad(), GradCAM(model=net, target_layers=[last_conv_stage(net)]) as cam:
            maps.append(cam(input_tensor=x, targets=[target])[0])
    mean = np.mean(maps, axis=0)
    span = mean.max() - mean.min()
    return (mean - mean.min()) / span if span > 0 else np.zeros_like(mean)


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The heat map drawn over the image (jet colours), uint8 RGB."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, heat.astype(np.float32), use_rgb=True,
                             image_weight=1 - weight)


def quadrant_mass(heat: np.ndarray) -> np.ndarray:
    """The share of a heat map's mass in each quadrant: top-left, top-right, bottom-left, bottom-right."""
    h, w = heat.shape
    total = heat.sum() or 1.0
    return np.array([heat[:h // 2, :w // 2].sum(), heat[:h // 2, w // 2:].sum(),
                     heat[h // 2:, :w // 2].sum(), heat[h // 2:, w // 2:].sum()]) / total
