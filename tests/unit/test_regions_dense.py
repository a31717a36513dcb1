"""Regions on metal: the densest 1 % of a radiograph, where an outline is not a fracture finding on its own."""

from __future__ import annotations

import numpy as np

from node.imaging.regions import extract, on_dense_material, region_mask


def _film() -> np.ndarray:
    """A leg-like film: soft tissue 0.3, a bone band 0.6 with texture, a plate 0.98 on the bone."""
    rng = np.random.default_rng(0)
    image = np.full((200, 120), 0.3, np.float32)
    image[:, 40:80] = 0.6 + rng.normal(0, 0.03, (200, 40)).astype(np.float32)
    image[60:140, 70:74] = 0.98  # the plate: 320 pixels, 1.3 % of the film
    return image


def test_a_region_on_the_plate_is_on_dense_material_and_one_on_bone_is_not() -> None:
    image, area = _film(), np.ones((200, 120), bool)
    probabilities = np.zeros_like(image)
    probabilities[80:100, 70:74] = 0.9  # an outline lying on the plate
    probabilities[20:30, 45:55] = 0.8  # an outline on bone
    on_plate, on_bone = extract(probabilities, 0.5)
    assert on_dense_material(on_plate, image, area) and not on_dense_material(on_bone, image, area)


def test_padding_outside_the_image_area_does_not_count() -> None:
    image = _film()
    padded = np.zeros((200, 200), np.float32)
    padded[:, 40:160] = image
    area = np.zeros((200, 200), bool)
    area[:, 40:160] = True
    probabilities = np.zeros_like(padded)
    probabilities[20:30, 85:95] = 0.8  # on bone
    (region,) = extract(probabilities, 0.5)
    assert not on_dense_material(region, padded, area)


def test_the_region_mask_fills_the_polygon() -> None:
    probabilities = np.zeros((50, 50), np.float32)
    probabilities[10:20, 5:25] = 1.0
    (region,) = extract(probabilities, 0.5)
    mask = region_mask(region, (50, 50))
    assert mask[10:20, 5:25].all() and mask.sum() <= 11 * 21
