"""Cervical-spine anatomy for the synthetic CT phantom: shapes as signed depth fields, one slice at a time.

Every bony part is an approximate signed distance field ("depth", mm inside the surface, negative
outside) over a slice's in-plane local coordinates (u: patient left +, v: posterior +, mm) at one
height w (mm, superior +, 0 at the bottom endplate of C7). Union is `max`, difference `min(a, -b)`.
Depth gives the cortical shell (0 < depth <= cortex) and the cancellous interior (depth > cortex)
for free, which is what a bone on CT looks like. Pure numpy; `cspine_phantom` builds DICOM from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR, FAT, SOFT, CSF, DISC = -1000.0, -100.0, 45.0, 20.0, 80.0
LABELS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
DENS_HEIGHT = 13.0


def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float) -> np.ndarray:
    """Depth inside an ellipse with semi-axes a (along u) and b (along v); approximate off the axes.

    A degenerate ellipse (a or b not positive, e.g. a body that shrank to nothing) contains nothing."""
    if a <= 0.0 or b <= 0.0:
        return np.full(np.broadcast(u, v).shape, -1.0, dtype=np.result_type(u, v, np.float32))
    r = np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)
    return (1.0 - r) * min(a, b)


def capsule(
    u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], radius: float
) -> np.ndarray:
    """Depth inside the 2D capsule of `radius` around the segment p0–p1 (pedicles, laminae, processes)."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return radius - np.hypot(u - p0[0] - t * du, v - p0[1] - t * dv)


@dataclass(frozen=True)
class Fracture:
    """A simulated fracture: a low-density gap along a plane, optionally with anterior height loss.

    The plane passes through `point` (u, v, w in the vertebra's local frame) with unit `normal`;
    voxels of the vertebra within `gap / 2` of it and `radius` of the point become soft tissue.
    `wedge` is the fraction of anterior body height lost (0: none), with a sclerotic band below it.
    """

    point: tuple[float, float, float]
    normal: tuple[float, float, float]
    gap: float
    radius: float
    wedge: float = 0.0


@dataclass(frozen=True)
class Vertebra:
    """One vertebra's shape parameters; `label` 1–7 for C1–C7, 0 for unlabelled (T1, T2)."""

    name: str
    label: int
    bottom: float  # w of the inferior endplate (mm)
    height: float  # body height (C1: ring height)
    body_a: float  # body semi-axis left-right
    body_b: float  # body semi-axis antero-posterior
    canal_a: float
    canal_b: float
    spinous: float  # spinous process length
    scale: float = 1.0  # the patient's size factor (C1's shape is drawn in unit-scale millimetres)
    fracture: Fracture | None = None

    @property
    def top(self) -> float:
        if self.name == "C2":
            return self.bottom + self.height + DENS_HEIGHT
        return self.bottom + self.height

    def extent(self) -> tuple[float, float]:
        """w range the vertebra's parts can occupy (articular pillars reach past the endplates)."""
        return self.bottom - 3.0, self.top + 3.0


def build_spine(scale: float, fractures: dict[str, Fracture]) -> tuple[Vertebra, ...]:
    """T2 … C1 from the bottom up; sizes grow caudally, discs between bodies (C1/C2 articulate)."""
    specs = [  # name, label, body height, body a, body b, canal a, canal b, spinous length
        ("T2", 0, 17.0, 11.5, 10.5, 8.0, 6.5, 26.0),
        ("T1", 0, 16.0, 10.8, 9.5, 9.0, 7.0, 28.0),
        ("C7", 7, 15.0, 9.9, 8.6, 11.5, 7.0, 27.0),
        ("C6", 6, 14.5, 9.4, 8.2, 12.0, 7.2, 17.0),
        ("C5", 5, 14.0, 8.9, 7.9, 12.0, 7.2, 15.0),
        ("C4", 4, 13.5, 8.4, 7.6, 12.0, 7.2, 14.0),
        ("C3", 3, 13.0, 8.0, 7.4, 12.0, 7.2, 14.0),
        ("C2", 2, 16.0, 8.0, 8.0, 12.5, 8.0, 20.0),
        ("C1", 1, 10.0, 0.0, 0.0, 14.0, 14.5, 6.0),
    ]
    vertebrae: list[Vertebra] = []
    w = -(17.0 + 16.0 + 2 * 5.0) * scale  # C7's inferior endplate at w = 0
    for name, label, height, a, b, ca, cb, spinous in specs:
        if name == "C1":
            w += 1.5 * scale  # the atlanto-axial joint: C1's ring sits on C2 around the dens
        vertebrae.append(
            Vertebra(
                name,
                label,
                w,
                height * scale,
                a * scale,
                b * scale,
                ca * scale,
                cb * scale,
                spinous * scale,
                scale,
                fractures.get(name),
            )
        )
        w += height * scale + (5.0 * scale if name != "C2" else 0.0)
    return tuple(vertebrae)


def _posterior_arch(v: Vertebra, u: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
    """Pedicles, articular pillars, laminae, spinous and transverse processes of C2–T2 at height h."""
    cv = v.body_b + 1.0 + v.canal_b  # canal centre behind the body
    side = v.canal_a + 2.0
    depth = np.full(u.shape, -99.0, dtype=np.float32)
    if -2.5 <= h <= v.height + 2.5:  # articular pillars: facet joints overlap the disc levels
        dw = min(h + 2.5, v.height + 2.5 - h)
        for s in (-1.0, 1.0):
            depth = np.maximum(depth, np.minimum(ellipse(u, p, s * side, cv, 4.5, 6.0), dw))
    if 0.1 * v.height <= h <= 0.9 * v.height:
        dw = min(h - 0.1 * v.height, 0.9 * v.height - h)
        for s in (-1.0, 1.0):
            pedicle = capsule(u, p, (s * v.body_a * 0.6, v.body_b * 0.6), (s * side, cv), 2.8)
            lamina = capsule(u, p, (s * side, cv), (0.0, cv + v.canal_b + 2.0), 2.4)
            trans = capsule(u, p, (s * v.body_a * 0.8, 0.5), (s * (v.body_a + 13.0), 3.0), 3.0)
            foramen = ellipse(u, p, s * (v.body_a + 5.5), 1.5, 2.6, 2.6)
            if v.label == 0:
                foramen = np.full_like(foramen, -99.0)  # thoracic transverse processes have none
            parts = np.maximum(np.maximum(pedicle, lamina), np.minimum(trans, -foramen))
            depth = np.maximum(depth, np.minimum(parts, dw))
    # the spinous process slopes caudally as it runs back (C7's is the long "vertebra prominens")
    root = cv + v.canal_b + 2.0
    centre = 0.55 * v.height - 0.45 * np.clip(p - root, 0.0, None)
    dw_sp = 0.28 * v.height - np.abs(h - centre)
    radius = 3.4 if v.name in ("C7", "T1", "T2", "C2") else 2.6
    tips = (3.5,) if v.name in ("C3", "C4", "C5", "C6", "C2") else (0.0,)  # bifid C2–C6
    for tip in tips:
        for s in (-1.0, 1.0) if tip else (1.0,):
            sp = capsule(u, p, (0.0, root), (s * tip, root + v.spinous), radius)
            depth = np.maximum(depth, np.minimum(sp, dw_sp).astype(np.float32))
    return depth


def _body(v: Vertebra, u: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
    """Vertebral body (elliptic cylinder, flattened back); wedge fractures lower its anterior height."""
    top: np.ndarray | float = v.height
    if v.fracture is not None and v.fracture.wedge > 0:
        anterior = np.clip(0.5 - 0.5 * p / v.body_b, 0.0, 1.0)  # 1 at the front, 0 at the back
        top = v.height * (1.0 - v.fracture.wedge * anterior)
    dw = np.minimum(h, top - h)
    plane = ellipse(u, p, 0.0, 0.0, v.body_a, v.body_b)
    back = v.body_b * 0.75 - p  # the posterior wall is flatter than the front
    return np.minimum(np.minimum(plane, back + 1.0), dw).astype(np.float32)


def _atlas(v: Vertebra, u: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
    """C1: a ring without a body; anterior arch in front of the dens, lateral masses, posterior arch."""
    depth = np.full(u.shape, -99.0, dtype=np.float32)
    height, spinous = v.height / v.scale, v.spinous / v.scale
    if -1.0 <= h <= height + 2.0:
        dw = min(h + 1.0, height + 2.0 - h)
        for s in (-1.0, 1.0):
            mass = ellipse(u, p, s * 16.5, 4.0, 6.5, 9.0)
            depth = np.maximum(depth, np.minimum(mass, dw))
    if 1.5 <= h <= height - 1.0:
        dw = min(h - 1.5, height - 1.0 - h)
        ring = np.minimum(ellipse(u, p, 0.0, 8.0, 21.0, 19.5), -ellipse(u, p, 0.0, 8.0, 16.0, 15.0))
        parts = ring
        for s in (-1.0, 1.0):
            trans = capsule(u, p, (s * 18.0, 5.0), (s * 36.0, 6.0), 3.6)
            foramen = ellipse(u, p, s * 26.0, 5.5, 2.8, 2.8)
            parts = np.maximum(parts, np.minimum(trans, -foramen))
        tubercle = capsule(u, p, (0.0, 27.0), (0.0, 27.0 + spinous), 3.0)
        parts = np.maximum(parts, tubercle)
        depth = np.maximum(depth, np.minimum(parts, dw))
    return depth


def _dens(v: Vertebra, u: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
    """C2's odontoid process, tapering upwards from the body into C1's ring."""
    t = (h - v.height) / DENS_HEIGHT
    if t < -0.2 or t > 1.0:
        return np.full(u.shape, -99.0, dtype=np.float32)
    radius = 5.5 * v.scale * (1.0 - 0.35 * max(t, 0.0))
    return np.minimum(ellipse(u, p, 0.0, 0.0, radius, radius * 0.95), DENS_HEIGHT * (1.0 - t))


def vertebra_depth(v: Vertebra, u: np.ndarray, p: np.ndarray, w: float) -> np.ndarray:
    """Depth field of a whole vertebra at global height w; u, p are relative to the body centre."""
    h = w - v.bottom
    if v.name == "C1":  # drawn at unit scale
        return _atlas(v, u / v.scale, p / v.scale, h / v.scale) * np.float32(v.scale)
    depth = np.maximum(_body(v, u, p, h), _posterior_arch(v, u, p, h))
    if v.name == "C2":
        depth = np.maximum(depth, _dens(v, u, p, h))
    return depth


def fracture_gap(f: Fracture, v: Vertebra, u: np.ndarray, p: np.ndarray, w: float, min_gap: float = 0.0) -> np.ndarray:
    """True where the fracture plane's gap cuts through (within `radius` of its point).

    The gap is at least `min_gap` wide, so that a cleft thinner than a voxel still darkens the
    voxels it crosses (as partial volume would) instead of slipping between sample points.
    """
    h = w - v.bottom
    du, dp, dh = u - f.point[0], p - f.point[1], h - f.point[2]
    distance = du * f.normal[0] + dp * f.normal[1] + dh * f.normal[2]
    near = du * du + dp * dp + dh * dh <= f.radius * f.radius
    return (np.abs(distance) <= max(f.gap, min_gap) / 2.0) & near


def disc_depth(below: Vertebra, above: Vertebra, u: np.ndarray, p: np.ndarray, w: float) -> np.ndarray:
    """The intervertebral disc between two bodies (none between C1 and C2)."""
    lo, hi = below.bottom + below.height, above.bottom
    if not lo - 0.5 <= w <= hi + 0.5:
        return np.full(u.shape, -99.0, dtype=np.float32)
    a, b = (below.body_a + above.body_a) / 2.0, (below.body_b + above.body_b) / 2.0
    return np.minimum(ellipse(u, p, 0.0, 0.0, a * 0.97, b * 0.97), b * 0.75 + 1.0 - p).astype(np.float32)


def spinal_canal(v: Vertebra, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inside of the canal at this vertebra's level (cord and CSF)."""
    if v.name == "C1":
        return ellipse(u, p, 0.0, 15.0 * v.scale, 12.0 * v.scale, 9.0 * v.scale) > 0
    return ellipse(u, p, 0.0, v.body_b + 1.0 + v.canal_b, v.canal_a, v.canal_b) > 0
