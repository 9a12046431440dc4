"""Grad-CAM of every Step-CoT step on the vision encoder's spatial grid, and the maps upsampled to the image.

This file ships inside checkpoints (remote code) with `pipeline_stepcot.py`: it imports only numpy and torch.
"""

import numpy as np
import torch
import torch.nn.functional as F


def encode_with_grid(model, pixel_values):
    """(pooled embedding, activation, to_grid): the pooled embedding is computed *from* `activation` (the
    backbone's `forward_features`), so gradients of any step score reach it, and `to_grid` (the backbone's
    `feature_grid`) turns the activation (or its gradient) into a (B, C, h, w) grid."""
    encoder = model.vision_encoder
    activation = encoder.forward_features(pixel_values)
    return encoder.forward_head(activation), activation, encoder.feature_grid


def stepwise_grad_cam(model, pixel_values, target_labels=None):
    """Grad-CAM (Selvaraju et al.) of every step on the encoder grid: per step, the channel weights are the spatial
    mean of d(logit of the target answer)/d(grid); the map is ReLU(sum_c weight_c * grid_c), scaled to [0, 1] per
    map (all zeros when nothing is positive).

    Works with frozen encoders: the pixels are marked as requiring grad so that autograd records the encoder.
    Returns (step_logits, maps (B, steps, h, w)); `target_labels` (B, steps) defaults to the predicted answers.
    """
    pixel_values = pixel_values.detach().requires_grad_(True)
    with torch.enable_grad():
        pooled, activation, to_grid = encode_with_grid(model, pixel_values)
        step_logits = model(image_embeds=pooled).step_logits
        grid = to_grid(activation)
        maps = []
        for step, logits in enumerate(step_logits):
            target = logits.argmax(-1) if target_labels is None else target_labels[:, step].to(logits.device)
            score = logits.gather(1, target[:, None]).sum()  # samples are independent in eval mode
            (gradient,) = torch.autograd.grad(score, activation, retain_graph=step < len(step_logits) - 1)
            weights = to_grid(gradient).mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * grid).sum(1)).detach())
    maps = torch.stack(maps, 1).float()  # (B, steps, h, w)
    peak = maps.flatten(2).amax(-1)[..., None, None]
    maps = torch.where(peak > 0, maps / peak.clamp_min(1e-12), torch.zeros_like(maps))
    return tuple(logits.detach() for logits in step_logits), maps


def upsample_maps(maps, size) -> np.ndarray:
    """(steps, h, w) maps -> (steps, H, W) float32 in [0, 1], bilinear. The processor resizes the whole image (no
    crop), so the grid covers the image exactly."""
    height, width = int(size[0]), int(size[1])
    out = np.empty((maps.shape[0], height, width), dtype=np.float32)
    for step in range(maps.shape[0]):  # one step at a time keeps peak memory low for large radiographs
        resized = F.interpolate(maps[step][None, None].float(), size=(height, width), mode="bilinear",
                                align_corners=False)
        out[step] = resized[0, 0].clamp_(0, 1).numpy()
    return out


__all__ = ["encode_with_grid", "stepwise_grad_cam", "upsample_maps"]
