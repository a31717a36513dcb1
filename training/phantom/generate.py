"""Synthetic cervical-spine CT studies in the RSNA 2022 Cervical Spine Fracture Detection layout.

`generate_study(seed, spec)` draws one patient (size, position, rotation, bone density, which of
C1–C7 are fractured), renders an axial CT series (`cspine_render`) and returns it as CT Image
Storage datasets (PS3.3 A.3) with the vertebra label volume. `write_rsna_layout` writes::

    out/train.csv                               StudyInstanceUID,patient_overall,C1,…,C7
    out/train_images/<StudyInstanceUID>/<InstanceNumber>.dcm
    out/segmentations/<StudyInstanceUID>.nii    labels 1–7 = C1–C7 on the series' grid

The labels are honest: a vertebra is flagged fractured exactly when a fracture was rendered in
the scanned range. `region="abdomen"` makes an abdomen-like CT without any cervical vertebra.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from training.phantom.anatomy import LABELS, Fracture, Vertebra, build_spine
from training.phantom.dicom import series_datasets
from training.phantom.render import Renderer, Scene

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; UIDs derive from the seed (reproducible)
# where RSNA 2022 fractures cluster (C2, C6, C7 most often): relative weights for C1…C7
FRACTURE_WEIGHTS = (0.09, 0.2, 0.07, 0.09, 0.12, 0.19, 0.24)
KERNELS = (("BONE", 45.0), ("STANDARD", 14.0), ("B70s", 55.0), ("Br64", 40.0), ("FC18", 18.0))


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate; None means "draw it per study" (sizes within the ranges of real C-spine CT).

    `slices` alone picks the thickness that covers the neck (0.625–3 mm); `slice_thickness` alone
    picks the slice count; both fix the scan length. `pixel_spacing` defaults to a 205–400 mm field
    of view over `size` pixels (0.4–0.78 mm at 512). `fractures` (7 flags, C1…C7) overrides
    `fracture_rate`, the probability that a patient has at least one fractured vertebra.
    """

    size: int = 512
    slices: int | None = None
    slice_thickness: float | None = None
    pixel_spacing: float | None = None
    fracture_rate: float = 0.5
    fractures: tuple[bool, ...] | None = None
    region: Literal["neck", "abdomen"] = "neck"
    noise_sd: float | None = None
    rotation_deg: float | None = None  # in-plane turn of the patient; drawn within ±8°
    head_first: bool | None = None  # slice 1 at the top (superior) when True

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size {self.size}: needs at least 32 pixels")
        if self.slices is not None and self.slices < 2:
            raise ValueError(f"slices {self.slices}: a series needs at least 2 slices")
        if self.fractures is not None and len(self.fractures) != 7:
            raise ValueError(f"fractures: 7 flags for C1…C7 expected, got {len(self.fractures)}")
        if not 0.0 <= self.fracture_rate <= 1.0:
            raise ValueError(f"fracture_rate {self.fracture_rate}: must be within [0, 1]")
        if self.region not in ("neck", "abdomen"):
            raise ValueError(f"region {self.region!r}: 'neck' or 'abdomen'")


@dataclass(frozen=True)
class PhantomGeometry:
    """The series' grid: voxel (k, j, i) is at origin + i·row_dir·dx + j·col_dir·dy + k·slice_step."""

    origin: tuple[float, float, float]  # ImagePositionPatient of slice 0
    spacing: tuple[float, float, float]  # (slice step, row spacing, column spacing) mm
    direction: tuple[tuple[float, float, float], ...]  # columns: row dir, column dir, slice step dir
    shape: tuple[int, int, int]  # (slices, rows, columns)


@dataclass(frozen=True, eq=False)
class PhantomStudy:
    study_instance_uid: str
    series_instance_uid: str
    datasets: tuple[Dataset, ...]  # CT Image Storage, in slice order (InstanceNumber 1…n)
    labels: np.ndarray  # uint8 (slice, row, column), 1–7 = C1–C7
    fractures: tuple[bool, ...]  # C1…C7
    geometry: PhantomGeometry
    region: str
    kernel: str
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def patient_overall(self) -> bool:
        return any(self.fractures)


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _fracture(rng: np.random.Generator, vert: Vertebra, w_range: tuple[float, float]) -> Fracture:
    """A cleft through the body (or arch, or C1's ring, or the dens base) whose centre lies in w_range."""
    lo, hi = max(vert.bottom + 2.0, w_range[0]), min(vert.bottom + vert.height - 2.0, w_range[1])
    w = float(rng.uniform(lo, max(lo, hi)))
    phi = float(rng.uniform(0, math.pi))  # vertical-ish planes: the cleft shows on every axial slice
    tilt = float(rng.uniform(-0.35, 0.35))
    normal = np.array([math.cos(phi), math.sin(phi), tilt])
    normal /= np.linalg.norm(normal)
    if vert.name == "C1":
        u, v = float(rng.choice([-1, 1]) * rng.uniform(0, 12)), float(rng.choice([-9.5, 25.0]))
    elif vert.name == "C2" and rng.random() < 0.4:  # dens base (type II odontoid fracture)
        u, v, w = 0.0, 0.0, vert.bottom + vert.height + 2.0
        normal = np.array([0.15, 0.1, 1.0]) / np.linalg.norm([0.15, 0.1, 1.0])
    elif rng.random() < 0.65:
        u, v = float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3))
    else:  # pedicle or lamina
        side = float(rng.choice([-1, 1]))
        u, v = side * (vert.canal_a + 1.0), vert.body_b + 2.0 + vert.canal_b * 1.5
    wedge = float(rng.uniform(0.2, 0.4)) if vert.label >= 3 and rng.random() < 0.3 else 0.0
    return Fracture(
        (u, v, w - vert.bottom),
        (float(normal[0]), float(normal[1]), float(normal[2])),
        float(rng.uniform(1.5, 3.0)),
        radius=float(rng.uniform(12.0, 18.0)),
        wedge=wedge,
    )


def _draw_flags(rng: np.random.Generator, spec: PhantomSpec) -> tuple[bool, ...]:
    if spec.fractures is not None:
        return tuple(bool(f) for f in spec.fractures)
    if spec.region != "neck" or rng.random() >= spec.fracture_rate:
        return (False,) * 7
    count = int(rng.choice([1, 1, 1, 2, 2, 3]))
    weights = np.array(FRACTURE_WEIGHTS) / sum(FRACTURE_WEIGHTS)
    chosen = rng.choice(7, size=count, replace=False, p=weights)
    return tuple(i in chosen for i in range(7))


def _scan_range(rng: np.random.Generator, spec: PhantomSpec, span: tuple[float, float]) -> tuple[int, float, float]:
    """(slices, thickness, w of the lowest slice) covering span = (w low, w high) plus margins."""
    wanted = span[1] - span[0] + float(rng.uniform(20.0, 60.0))
    if spec.slices and spec.slice_thickness:
        slices, thickness = spec.slices, spec.slice_thickness
    elif spec.slices:
        slices, thickness = spec.slices, float(np.clip(round(wanted / spec.slices, 3), 0.625, 3.0))
    else:
        thickness = spec.slice_thickness or float(rng.choice([0.625, 0.625, 1.0, 1.25, 2.0, 3.0]))
        slices = max(2, math.ceil(wanted / thickness))
    length = (slices - 1) * thickness
    centre = (span[0] + span[1]) / 2.0 + float(rng.uniform(-0.15, 0.15)) * max(0.0, length - (span[1] - span[0]))
    return slices, thickness, centre - length / 2.0


def _scene(rng: np.random.Generator, spec: PhantomSpec, flags: tuple[bool, ...]) -> tuple[Scene, dict[str, float]]:
    scale = float(rng.uniform(0.9, 1.1)) * (1.55 if spec.region == "abdomen" else 1.0)
    spine = build_spine(scale, {})
    if spec.region == "abdomen":  # lumbar-sized bodies, no cervical labels
        spine = tuple(replace(v, label=0, name=f"L{i}") for i, v in enumerate(spine))
    cervical = [v for v in spine if v.label] or list(spine)
    slices, thickness, w0 = _scan_range(rng, spec, (cervical[0].bottom - 10.0, cervical[-1].top + 15.0))
    w_range = (w0, w0 + (slices - 1) * thickness)
    fractures: dict[str, Fracture] = {}
    for flagged, name in zip(flags, LABELS, strict=True):
        vert = next(v for v in spine if v.name == name) if spec.region == "neck" else None
        if flagged and vert is not None and vert.bottom + 2.0 < w_range[1] and vert.top - 2.0 > w_range[0]:
            fractures[name] = _fracture(rng, vert, w_range)
    spine = tuple(replace(v, fracture=fractures.get(v.name)) for v in spine)
    if spec.pixel_spacing is not None:
        fov = spec.pixel_spacing * spec.size
    else:  # small matrices (training, tests) get a tighter field of view around the neck
        fov = float(rng.uniform(205.0, 400.0) if spec.size >= 384 else rng.uniform(170.0, 240.0))
    spacing = round(fov / spec.size, 4)
    head_first = bool(rng.random() < 0.7) if spec.head_first is None else spec.head_first
    anchor = float(rng.uniform(-250.0, 50.0))  # table position of C7's endplate
    zs = [anchor + w0 + k * thickness for k in range(slices)]
    neck = (float(rng.uniform(-20, 20)), float(rng.uniform(-40, 40)))
    offset = (float(rng.uniform(-0.08, 0.08)) * fov, float(rng.uniform(-0.08, 0.08)) * fov)
    origin = (
        neck[0] + offset[0] - (spec.size - 1) / 2 * spacing,
        neck[1] + offset[1] - (spec.size - 1) / 2 * spacing,
    )
    kernel, kernel_noise = KERNELS[int(rng.integers(len(KERNELS)))]
    rotation = float(rng.uniform(-8.0, 8.0)) if spec.rotation_deg is None else spec.rotation_deg
    scene = Scene(
        size=spec.size,
        pixel_spacing=spacing,
        slice_positions=tuple(zs[::-1] if head_first else zs),
        slice_thickness=thickness,
        origin_xy=origin,
        neck_centre=neck,
        rotation_rad=math.radians(rotation),
        anchor_z=anchor,
        region=spec.region,
        vertebrae=spine,
        neck_axes=(float(rng.uniform(50.0, 66.0)) * scale, float(rng.uniform(58.0, 68.0)) * scale),
        spine_v=float(rng.uniform(4.0, 10.0)) * scale,
        lordosis=float(rng.uniform(1.0, 7.0)),
        cortical_hu=float(rng.uniform(700.0, 1500.0)),
        cancellous_hu=float(rng.uniform(200.0, 350.0)),
        cortex_mm=float(rng.uniform(0.9, 1.6)),
        noise_sd=spec.noise_sd if spec.noise_sd is not None else kernel_noise * float(rng.uniform(0.7, 1.3)),
    )
    if spec.region == "abdomen":
        scene = replace(scene, neck_axes=(165.0, 115.0), spine_v=55.0, lordosis=0.0)
    return scene, {
        "kernel_index": float(KERNELS.index((kernel, kernel_noise))),
        "rotation_deg": rotation,
    }


def generate_study(seed: int | np.random.Generator, spec: PhantomSpec = PhantomSpec(), index: int = 0) -> PhantomStudy:
    """One synthetic CT study (one axial series). Same seed and spec → same pixels and UIDs."""
    rng = _rng(seed)
    token = str(int(rng.integers(0, 2**62)))
    flags = _draw_flags(rng, spec)
    scene, drawn = _scene(rng, spec, flags)
    renderer = Renderer(scene, rng)
    stored, labels = renderer.volume()
    # honest flags: a vertebra is fractured exactly when its cleft darkened some of its voxels
    rendered = tuple(renderer.clefts.get(name, 0) > 0 for name in LABELS)
    kernel = KERNELS[int(drawn["kernel_index"])][0]
    step = scene.slice_positions[1] - scene.slice_positions[0]
    geometry = PhantomGeometry(
        origin=(scene.origin_xy[0], scene.origin_xy[1], scene.slice_positions[0]),
        spacing=(abs(step), scene.pixel_spacing, scene.pixel_spacing),
        direction=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, math.copysign(1.0, step))),
        shape=labels.shape,
    )

    def uid(what: str) -> str:
        return str(generate_uid(UID_PREFIX, [token, str(index), what]))

    datasets = series_datasets(stored, scene, spec.region, kernel, uid, index)
    parameters = {
        "pixel_spacing": scene.pixel_spacing,
        "slice_thickness": scene.slice_thickness,
        "rotation_deg": drawn["rotation_deg"],
        "noise_sd": scene.noise_sd,
        "cortical_hu": scene.cortical_hu,
        "cancellous_hu": scene.cancellous_hu,
    }
    return PhantomStudy(
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        series_instance_uid=str(datasets[0].SeriesInstanceUID),
        datasets=tuple(datasets),
        labels=labels,
        fractures=rendered,
        geometry=geometry,
        region=spec.region,
        kernel=kernel,
        parameters=parameters,
    )


def label_image(study: PhantomStudy):  # type: ignore[no-untyped-def]
    """The label volume as a SimpleITK image on the series' grid, in the DICOM patient frame.

    Stored like RSNA 2022's NIfTI files (dcm2niix-style): slices from feet to head and rows
    flipped (anterior last), so both geometry-aware readers (SimpleITK, `resample_labels`) and
    the usual array flips onto InstanceNumber order (head first) find the right voxels.
    """
    import SimpleITK as sitk

    g = study.geometry
    labels = study.labels if g.direction[2][2] > 0 else study.labels[::-1]
    z0 = min(g.origin[2], g.origin[2] + g.direction[2][2] * g.spacing[0] * (g.shape[0] - 1))
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels[:, ::-1, :]))
    image.SetOrigin((g.origin[0], g.origin[1] + (g.shape[1] - 1) * g.spacing[1], z0))
    image.SetSpacing((g.spacing[2], g.spacing[1], g.spacing[0]))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def write_rsna_layout(out_dir: Path, studies: Sequence[PhantomStudy], segmentations: bool = True) -> Path:
    """Write (or extend) the RSNA 2022 layout under out_dir; returns the path of train.csv.

    Abdomen studies get their images only: they have no cervical labels for train.csv.
    """
    import SimpleITK as sitk

    out_dir = Path(out_dir)
    (out_dir / "train_images").mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "train.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["StudyInstanceUID", "patient_overall", *LABELS])
        for study in studies:
            folder = out_dir / "train_images" / study.study_instance_uid
            folder.mkdir(parents=True, exist_ok=True)
            for ds in study.datasets:
                ds.save_as(folder / f"{int(ds.InstanceNumber)}.dcm", enforce_file_format=True)
            if study.region != "neck":
                continue
            writer.writerow(
                [
                    study.study_instance_uid,
                    int(study.patient_overall),
                    *(int(f) for f in study.fractures),
                ]
            )
            if segmentations:
                (out_dir / "segmentations").mkdir(exist_ok=True)
                sitk.WriteImage(
                    label_image(study),
                    str(out_dir / "segmentations" / f"{study.study_instance_uid}.nii"),
                )
    return csv_path


def generate_layout(out_dir: Path, studies: int, seed: int = 0, spec: PhantomSpec = PhantomSpec(), log=None) -> Path:  # type: ignore[no-untyped-def]
    """Generate and write `studies` studies one at a time (memory stays at one study)."""
    root = np.random.default_rng(seed)
    for index in range(studies):
        study = generate_study(np.random.default_rng(root.integers(0, 2**63)), spec, index)
        path = write_rsna_layout(out_dir, [study])
        if log:
            log(
                f"{index + 1}/{studies} {study.study_instance_uid} slices={len(study.datasets)}"
                f" fractures={''.join(str(int(f)) for f in study.fractures)}"
            )
    return path
