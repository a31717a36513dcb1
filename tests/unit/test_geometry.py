"""Letterboxing and region extraction: the geometry between source pixels and the model's input."""

from __future__ import annotations

import numpy as np
import pytest

from node.imaging.letterbox import fit, standardize
from node.imaging.regions import convex_hull, extract


def test_fit_keeps_the_aspect_ratio_and_centres_the_image() -> None:
    image = np.ones((100, 50), np.float32)
    fitted, box = fit(image, 64)
    assert fitted.shape == (64, 64)
    assert (box.scale, box.top, box.left) == (0.64, 0, 16)
    assert fitted[:, :16].max() == 0 and fitted[:, 48:].max() == 0
    assert fitted[:, 16:48].min() == pytest.approx(1.0)


def test_points_map_to_the_model_and_back() -> None:
    _, box = fit(np.zeros((300, 200), np.float32), 320)
    points = np.array([[0.0, 0.0], [199.0, 299.0], [50.5, 120.25]])
    assert np.allclose(box.to_image(box.to_model(points)), points)


def test_unfit_returns_a_plane_of_the_source_size() -> None:
    image = np.zeros((90, 120), np.float32)
    image[30:60, 40:80] = 1.0
    fitted, box = fit(image, 64)
    back = box.unfit(fitted)
    assert back.shape == (90, 120)
    assert back[45, 60] == pytest.approx(1.0, abs=0.05) and back[5, 5] == pytest.approx(0.0, abs=0.05)


def test_standardize_uses_the_image_area_only() -> None:
    rng = np.random.default_rng(0)
    fitted, box = fit(rng.random((100, 40)).astype(np.float32) * 3 + 7, 64)
    out = standardize(fitted, box)
    area = box.crop(out)
    assert abs(area.mean()) < 1e-4 and area.std() == pytest.approx(1.0, abs=1e-3)
    assert out[:, : box.left].max() == 0


def test_extract_finds_each_region_with_its_box_and_outline() -> None:
    plane = np.zeros((40, 40), np.float32)
    plane[5:10, 5:20] = 0.9
    plane[25:35, 30:33] = 0.6
    plane[0, 39] = 0.99  # a single pixel: below min_area
    regions = extract(plane, 0.5, min_area=4)
    assert [r.box for r in regions] == [(5.0, 5.0, 20.0, 10.0), (30.0, 25.0, 33.0, 35.0)]
    assert [r.peak for r in regions] == pytest.approx([0.9, 0.6])
    assert set(regions[0].polygon) == {(5.0, 5.0), (20.0, 5.0), (20.0, 10.0), (5.0, 10.0)}
    assert extract(np.zeros((5, 5)), 0.5) == []


def test_convex_hull_of_a_triangle_with_inner_points() -> None:
    points = np.array([[0, 0], [4, 0], [0, 4], [1, 1], [1, 2]])
    assert {tuple(p) for p in convex_hull(points)} == {(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)}
