"""Letterboxing: fit a 2D image into a square model input and map model coordinates back.

Shared by training (FracAtlas JPEGs) and inference (DICOM pixels), so both see the same geometry.
Pure functions over numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """How an image of (rows, columns) was placed in a size×size square: scaled, then offset."""

    rows: int
    columns: int
    size: int
    scale: float
    top: int
    left: int

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Model-input (x, y) points → source-image (column, row) points, clipped to the image."""
        mapped = (np.asarray(points, dtype=np.float64) - [self.left, self.top]) / self.scale
        return np.clip(mapped, 0, [self.columns - 1, self.rows - 1])

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """Source-image (x, y) points → model-input (x, y) points."""
        return np.asarray(points, dtype=np.float64) * self.scale + [self.left, self.top]

    def crop(self, model_plane: np.ndarray) -> np.ndarray:
        """The part of a size×size model-space plane that covers the image (padding removed)."""
        height = max(1, round(self.rows * self.scale))
        width = max(1, round(self.columns * self.scale))
        return model_plane[self.top : self.top + height, self.left : self.left + width]

    def unfit(self, model_plane: np.ndarray) -> np.ndarray:
        """A size×size float plane (e.g. probabilities) resampled to the source image's rows×columns."""
        cropped = self.crop(model_plane).astype(np.float32)
        resized = Image.fromarray(cropped, mode="F").resize((self.columns, self.rows), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32)


def fit(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Scale a 2D float image so its long side is `size`, pad to size×size with zeros."""
    rows, columns = image.shape
    scale = size / max(rows, columns)
    height, width = max(1, round(rows * scale)), max(1, round(columns * scale))
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    top, left = (size - height) // 2, (size - width) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + height, left : left + width] = np.asarray(resized, dtype=np.float32)
    return out, Letterbox(rows, columns, size, scale, top, left)


def standardize(image: np.ndarray, box: Letterbox) -> np.ndarray:
    """Zero mean, unit variance over the image area (padding excluded); padding stays at the mean."""
    area = box.crop(image)
    mean, std = float(area.mean()), float(area.std()) or 1.0
    out = np.zeros_like(image, dtype=np.float32)
    inner = (area - mean) / std
    out[box.top : box.top + inner.shape[0], box.left : box.left + inner.shape[1]] = inner
    return out
