"""Render a phantom study's CT values and vertebra labels slice by slice (see `cspine_anatomy`).

Slices are rendered one at a time into a preallocated int16 volume (HU + 1024, what the DICOM
stores with RescaleIntercept -1024), so a 512×512×600 study needs ~300 MB, not several float
copies. Bone work is confined to a crop around the spine; slices thicker than 1 mm average
sub-slices (partial volume, as a real reconstruction does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.phantom import anatomy as anat
from training.phantom.anatomy import AIR, CSF, DISC, FAT, SOFT, Vertebra

NOISE_BANK = 8


@dataclass(frozen=True)
class Scene:
    """Everything the renderer needs, in patient millimetres (LPS, PS3.3 C.7.6.2.1.1)."""

    size: int
    pixel_spacing: float
    slice_positions: tuple[float, ...]  # patient z of each slice, in slice order
    slice_thickness: float
    origin_xy: tuple[float, float]  # patient x, y of the centre of the top-left pixel
    neck_centre: tuple[float, float]  # patient x, y
    rotation_rad: float  # anatomy turned about the patient's long axis
    anchor_z: float  # patient z of C7's inferior endplate (w = 0)
    region: str  # "neck" | "abdomen"
    vertebrae: tuple[Vertebra, ...]
    neck_axes: tuple[float, float]  # skin ellipse semi-axes (left-right, antero-posterior)
    spine_v: float  # antero-posterior position of the body centres, relative to the neck centre
    lordosis: float  # mm the mid-cervical spine lies anterior of the straight line
    cortical_hu: float
    cancellous_hu: float
    cortex_mm: float
    noise_sd: float


def _local_grid(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of every pixel: patient x/y relative to the neck centre, turned into the anatomy's frame."""
    axis = np.arange(scene.size, dtype=np.float32) * np.float32(scene.pixel_spacing)
    x = axis[None, :] + np.float32(scene.origin_xy[0] - scene.neck_centre[0])
    y = axis[:, None] + np.float32(scene.origin_xy[1] - scene.neck_centre[1])
    c, s = np.float32(math.cos(scene.rotation_rad)), np.float32(math.sin(scene.rotation_rad))
    return (c * x + s * y).astype(np.float32), (-s * x + c * y).astype(np.float32)


def _crop(u: np.ndarray, v: np.ndarray, box: tuple[float, float, float, float]) -> tuple[slice, slice] | None:
    """Rows and columns of the pixels whose (u, v) fall in box = (u0, u1, v0, v1); None if none do."""
    inside = (u >= box[0]) & (u <= box[1]) & (v >= box[2]) & (v <= box[3])
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _blend(target: np.ndarray, depth: np.ndarray, value: np.ndarray | float, pixel: float) -> None:
    """Paint `value` where depth > 0 with a one-pixel soft edge (partial volume at surfaces)."""
    alpha = np.clip(depth / pixel + 0.5, 0.0, 1.0)
    target += alpha * (value - target)


class Renderer:
    """Renders `scene` slice by slice; call `volume()` once."""

    def __init__(self, scene: Scene, rng: np.random.Generator) -> None:
        self.scene = scene
        self.rng = rng
        self.u, self.v = _local_grid(scene)
        reach_u = max(max(v.body_a + 18.0, 40.0 * v.scale) for v in scene.vertebrae)
        reach_v = max(v.body_b + 2 * v.canal_b + v.spinous + 10.0 for v in scene.vertebrae)
        self.spine = _crop(self.u, self.v, (-reach_u, reach_u, scene.spine_v - 55.0, scene.spine_v + reach_v))
        by_bottom = sorted(scene.vertebrae, key=lambda vert: vert.bottom)
        self.vertebrae = tuple(by_bottom)
        self.span = (by_bottom[0].bottom, by_bottom[-1].top)
        cervical = [vert for vert in by_bottom if vert.label]
        self.cervical_span = (cervical[0].bottom, cervical[-1].top) if cervical else self.span
        self._axes_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.clefts: dict[str, int] = {}  # voxels each fracture cleft darkened (central sub-slices)

    # -- tissue outside the spine ---------------------------------------------------------------

    def _outline(self, w: float) -> tuple[float, float, float]:
        """Skin ellipse (a, b, centre v) at height w: neck, widening into shoulders and the head."""
        a, b = self.scene.neck_axes
        if self.scene.region == "abdomen":
            return 165.0, 115.0, 10.0
        low, high = self.cervical_span
        if w < low - 5.0:  # shoulders and upper chest
            t = low - 5.0 - w
            return a + min(110.0, 3.5 * t), b + min(45.0, 1.3 * t), min(10.0, 0.3 * t)
        if w > high + 5.0:  # head
            t = w - high - 5.0
            return a + min(18.0, 1.2 * t), b + min(35.0, 1.8 * t), -min(15.0, 0.8 * t)
        return a, b, 0.0

    def _skin_radius(self, a: float, b: float, cv: float) -> np.ndarray:
        key = (round(a * 2), round(b * 2), round(cv * 2))
        cached = self._axes_cache.get(key)
        if cached is None:
            cached = np.sqrt((self.u / np.float32(a)) ** 2 + ((self.v - np.float32(cv)) / np.float32(b)) ** 2)
            if len(self._axes_cache) > 64:
                self._axes_cache.clear()
            self._axes_cache[key] = cached
        return cached

    def _soft_tissue(self, w: float) -> np.ndarray:
        a, b, cv = self._outline(w)
        r = self._skin_radius(a, b, cv)
        hu = np.where(r < 1.0, np.float32(SOFT), np.float32(AIR)).astype(np.float32)
        hu[(r < 1.0) & (r > 1.0 - 6.0 / b)] = FAT  # subcutaneous fat under the skin
        return hu

    # -- one slice --------------------------------------------------------------------------------

    def spine_centre(self, w: float) -> float:
        """v of the body centres at height w: a lordotic arc over the cervical spine."""
        low, high = self.cervical_span
        t = min(max((w - low) / (high - low), 0.0), 1.0)
        return self.scene.spine_v - self.scene.lordosis * math.sin(math.pi * t)

    def _slice(self, w: float, want_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
        scene = self.scene
        hu = self._soft_tissue(w)
        labels = np.zeros(hu.shape, dtype=np.uint8) if want_labels else None
        if self.spine is None or not self.span[0] - 3.0 <= w <= self.span[1] + 3.0:
            self._extras(hu, w)
            return hu, labels
        rows, cols = self.spine
        sc = self.spine_centre(w)
        u, p = self.u[rows, cols], self.v[rows, cols] - np.float32(sc)
        crop = hu[rows, cols]
        self._airway(crop, u, p, w)
        level = max(
            (vert for vert in self.vertebrae if vert.bottom <= w + 2.5),
            key=lambda vert: vert.bottom,
            default=self.vertebrae[0],
        )
        crop[anat.spinal_canal(level, u, p) & (crop > 0)] = CSF
        for below, above in zip(self.vertebrae, self.vertebrae[1:], strict=False):
            if above.name != "C1":
                _blend(crop, anat.disc_depth(below, above, u, p, w), DISC, scene.pixel_spacing)
        for vert in self.vertebrae:
            lo, hi = vert.extent()
            if not lo <= w <= hi:
                continue
            depth = anat.vertebra_depth(vert, u, p, w)
            if depth.max() <= 0:
                continue
            cancellous = scene.cancellous_hu + (110.0 if vert.fracture and vert.fracture.wedge else 0.0)
            bone = np.where(depth > scene.cortex_mm, np.float32(cancellous), np.float32(scene.cortical_hu))
            if vert.fracture is not None:
                n = vert.fracture.normal
                voxel = scene.pixel_spacing * (abs(n[0]) + abs(n[1])) + scene.slice_thickness * abs(n[2])
                gap = anat.fracture_gap(vert.fracture, vert, u, p, w, 1.05 * voxel) & (depth > 0)
                bone[gap] = 55.0  # haematoma / soft tissue fills the fracture cleft
                if labels is not None:
                    self.clefts[vert.name] = self.clefts.get(vert.name, 0) + int(gap.sum())
            _blend(crop, depth, bone, scene.pixel_spacing)
            if labels is not None and vert.label:
                labels[rows, cols][depth > 0] = vert.label
        self._extras(hu, w)
        return hu, labels

    def _airway(self, crop: np.ndarray, u: np.ndarray, p: np.ndarray, w: float) -> None:
        """Pharynx (flat, right in front of the spine) above C4, trachea (round) below it."""
        if self.scene.region != "neck":
            return
        c4 = next((vert for vert in self.vertebrae if vert.name == "C4"), None)
        c1 = next((vert for vert in self.vertebrae if vert.name == "C1"), None)
        if c4 is None or c1 is None or w > c1.top - 2.0:
            return
        if w > c4.bottom + c4.height / 2:
            air = anat.ellipse(u, p, 0.0, -(c4.body_b + 9.0), 13.0, 5.0)
        else:
            air = anat.ellipse(u, p, 0.0, -(c4.body_b + 22.0), 8.5, 8.0)
            _blend(crop, air + 1.5, 100.0, self.scene.pixel_spacing)  # cartilage rings round the lumen
        _blend(crop, air, AIR, self.scene.pixel_spacing)

    def _extras(self, hu: np.ndarray, w: float) -> None:
        """Unlabelled bone that is not the spine: occipital bone above C1, the mandible in front of C2."""
        scene = self.scene
        if scene.region == "abdomen":
            self._abdomen(hu)
            return
        _low, high = self.cervical_span
        if w > high + 8.0:  # skull base: the occiput behind the foramen magnum
            a, b, cv = self._outline(w)
            skull = anat.ellipse(self.u, self.v, 0.0, cv, a - 4.0, b - 4.0)
            inner = anat.ellipse(self.u, self.v, 0.0, cv, a - 11.0, b - 11.0)
            shell = np.minimum(skull, -inner)
            if w < high + 30.0:
                shell = np.minimum(shell, self.v - np.float32(scene.spine_v + 12.0))  # only behind the canal
            _blend(hu, shell, scene.cortical_hu + 300.0, scene.pixel_spacing)
        c2 = next((vert for vert in self.vertebrae if vert.name == "C2"), None)
        if c2 is not None and c2.bottom - 10.0 <= w <= c2.bottom + 12.0:
            centre = scene.spine_v - 24.0
            ring = np.minimum(
                anat.ellipse(self.u, self.v, 0.0, centre, 44.0, 46.0),
                -anat.ellipse(self.u, self.v, 0.0, centre, 37.0, 39.0),
            )
            ring = np.minimum(ring, np.float32(centre - 12.0) - self.v)  # the U of the jaw opens backwards
            bone = np.where(
                ring > scene.cortex_mm * 1.5,
                np.float32(scene.cancellous_hu),
                np.float32(scene.cortical_hu),
            )
            _blend(hu, ring, bone, scene.pixel_spacing)

    def _abdomen(self, hu: np.ndarray) -> None:
        """Liver (patient right), kidneys beside the spine, aorta in front of it, bowel gas."""
        u, v, px = self.u, self.v, self.scene.pixel_spacing
        sv = self.scene.spine_v
        _blend(hu, anat.ellipse(u, v, -75.0, -5.0, 70.0, 80.0), 60.0, px)
        for side in (-1.0, 1.0):
            _blend(hu, anat.ellipse(u, v, side * 60.0, sv - 5.0, 22.0, 28.0), 30.0, px)
        _blend(hu, anat.ellipse(u, v, 8.0, sv - 32.0, 11.0, 11.0), 40.0, px)
        for cu, cv, r in ((40.0, -60.0, 14.0), (70.0, -20.0, 9.0), (10.0, -85.0, 11.0)):
            _blend(hu, anat.ellipse(u, v, cu, cv, r * 1.4, r), AIR, px)

    # -- the volume -------------------------------------------------------------------------------

    def volume(self) -> tuple[np.ndarray, np.ndarray]:
        """(stored int16 volume (HU + 1024), labels uint8), both (slice, row, column) in slice order."""
        scene = self.scene
        n, size = len(scene.slice_positions), scene.size
        stored = np.empty((n, size, size), dtype=np.int16)
        labels = np.zeros((n, size, size), dtype=np.uint8)
        subs = max(1, min(3, math.ceil(scene.slice_thickness / 1.0)))
        offsets = [(i + 0.5) / subs - 0.5 for i in range(subs)]
        bank = self.rng.standard_normal((NOISE_BANK, size, size), dtype=np.float32) * np.float32(scene.noise_sd)
        picks = self.rng.integers(0, NOISE_BANK * 4, size=n)
        for k, z in enumerate(scene.slice_positions):
            w = z - scene.anchor_z
            total = np.zeros((size, size), dtype=np.float32)
            for j, offset in enumerate(offsets):
                central = j == subs // 2
                hu, lab = self._slice(w + offset * scene.slice_thickness, want_labels=central)
                total += hu
                if lab is not None:
                    labels[k] = lab
            if subs > 1:
                total /= np.float32(subs)
            noise = bank[picks[k] % NOISE_BANK]
            flip = picks[k] // NOISE_BANK
            noise = noise[::-1] if flip & 1 else noise
            noise = noise[:, ::-1] if flip & 2 else noise
            total += noise
            np.clip(total + 1024.0, 0.0, 4095.0, out=total)
            stored[k] = total
        return stored, labels
