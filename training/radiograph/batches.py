"""Training batches of FracAtlas arrays: augmentation a radiograph allows, and the input the bundle's
network expects."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.radiograph import fracatlas


def standardize_over_area(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per image: zero mean, unit variance over the image area; padding 0 (as geometry.standardize)."""
    count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    mean = (images * valid).sum(dim=(1, 2, 3), keepdim=True) / count
    var = (((images - mean) * valid) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
    return (images - mean) / var.sqrt().clamp(min=1e-3) * valid


def batch(
    arrays: fracatlas.Arrays, index: np.ndarray, augment: bool, rng: np.random.Generator, standardize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (channels-last), region masks and image-area masks of `index`; augmented when training:
    flips, rotations (±14°), scaling, shifts, gamma, contrast and brightness."""
    images = torch.from_numpy(arrays.images[index]).float().unsqueeze(1) / 255.0
    masks = torch.from_numpy(arrays.masks[index]).float().unsqueeze(1)
    valid = torch.from_numpy(arrays.valid[index]).float().unsqueeze(1)
    if augment:
        n = len(index)
        angle = torch.from_numpy(rng.uniform(-0.25, 0.25, n)).float()
        scale = torch.from_numpy(rng.uniform(0.85, 1.2, n)).float()
        flip = torch.from_numpy(rng.choice([-1.0, 1.0], n)).float()
        shift = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 2))).float()
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, align_corners=False)
        masks = (F.grid_sample(masks, grid, align_corners=False) > 0.5).float()
        valid = (F.grid_sample(valid, grid, align_corners=False) > 0.5).float()
        gamma = torch.from_numpy(rng.uniform(0.7, 1.4, (n, 1, 1, 1))).float()
        images = images.clamp(0, 1) ** gamma
        # contrast and brightness, as different exposures and processing would give
        contrast = torch.from_numpy(rng.uniform(0.8, 1.25, (n, 1, 1, 1))).float()
        brightness = torch.from_numpy(rng.uniform(-0.08, 0.08, (n, 1, 1, 1))).float()
        images = ((images - 0.5) * contrast + 0.5 + brightness).clamp(0, 1) * valid
    if standardize:
        images = standardize_over_area(images, valid)
    return images.contiguous(memory_format=torch.channels_last), masks, valid
