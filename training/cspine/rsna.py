"""The RSNA 2022 Cervical Spine Fracture Detection layout: labels, DICOM series, segmentations.

    DATA/train.csv                       StudyInstanceUID,patient_overall,C1,…,C7 (0/1)
    DATA/train_images/<StudyInstanceUID>/*.dcm   one axial CT series per study
    DATA/segmentations/<UID>.nii[.gz]    labels 1–7 = C1–C7, some studies only; <UID> is the
                                         series' SeriesInstanceUID (or its StudyInstanceUID)

Dataset: Lin H.M. et al., "The RSNA Cervical Spine Fracture CT Dataset", Radiology: AI 2023,
https://doi.org/10.1148/ryai.230034. The competition's NIfTI files are known to be stored flipped
against the DICOM slice order when read as plain arrays; here a segmentation is never indexed as an
array but resampled onto the series' grid through both images' geometry (SimpleITK reads the
NIfTI's qform/sform into the DICOM patient frame), and a segmentation that lands outside the
series is refused.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from node.imaging.volume import Volume, VolumeRefused, build_volume, resample_labels
from node.pipelines.cspine.findings import VERTEBRAE

COLUMNS = ("StudyInstanceUID", "patient_overall", *VERTEBRAE)


class DataError(ValueError):
    """The dataset folder does not have the RSNA 2022 layout; says what is missing."""


@dataclass(frozen=True)
class StudyLabels:
    study_instance_uid: str
    patient_overall: bool
    vertebrae: tuple[bool, ...]  # C1 … C7


@dataclass(frozen=True)
class RsnaStudy:
    labels: StudyLabels
    files: tuple[Path, ...]
    series_instance_uid: str
    segmentation: Path | None

    @property
    def uid(self) -> str:
        return self.labels.study_instance_uid


def read_labels(data: Path) -> list[StudyLabels]:
    path = data / "train.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: the RSNA 2022 layout has train.csv with {', '.join(COLUMNS)}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: columns {', '.join(missing)} are missing (has {reader.fieldnames})")
        rows = []
        for number, row in enumerate(reader, start=2):
            try:
                flags = tuple(_flag(row[c]) for c in VERTEBRAE)
                rows.append(StudyLabels(row["StudyInstanceUID"].strip(), _flag(row["patient_overall"]), flags))
            except ValueError as exc:
                raise DataError(f"{path}:{number}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} has no studies")
    return rows


def _flag(value: str) -> bool:
    if value.strip() not in ("0", "1"):
        raise ValueError(f"label {value!r} is not 0 or 1")
    return value.strip() == "1"


def find_studies(data: Path) -> list[RsnaStudy]:
    """Every labelled study with its series files and, where there is one, its segmentation."""
    data = Path(data)
    images = data / "train_images"
    if not images.is_dir():
        raise DataError(f"{images} is missing: DICOM series go under train_images/<StudyInstanceUID>/")
    segmentations = data / "segmentations"
    studies = []
    for labels in read_labels(data):
        folder = images / labels.study_instance_uid
        files = tuple(sorted(p for p in folder.rglob("*.dcm"))) if folder.is_dir() else ()
        if not files:
            raise DataError(f"{folder}: no .dcm files for study {labels.study_instance_uid} of train.csv")
        try:
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
        except Exception as exc:
            raise DataError(f"{files[0]}: not a readable DICOM file ({exc})") from exc
        series = str(header.get("SeriesInstanceUID", "") or "")
        segmentation = None
        for uid in (series, labels.study_instance_uid):
            for suffix in (".nii", ".nii.gz"):
                candidate = segmentations / f"{uid}{suffix}"
                if uid and candidate.is_file():
                    segmentation = segmentation or candidate
        studies.append(RsnaStudy(labels, files, series, segmentation))
    return studies


def split(studies: list[RsnaStudy], seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, list[RsnaStudy]]:
    """train / val / test by study, reproducible: order by a seeded hash of the UID, then cut.

    A study keeps its side when others are added or removed (its hash does not change).
    """
    by_uid = {study.uid: study for study in studies}
    parts = split_by_uid(list(by_uid), seed, fractions)
    return {name: [by_uid[uid] for uid in uids] for name, uids in parts.items()}


@dataclass(frozen=True)
class NegativeSeries:
    """A CT series known to hold no cervical vertebra (an abdomen CT, say): all background."""

    uid: str  # the folder's name
    files: tuple[Path, ...]


def find_negatives(folder: Path) -> list[NegativeSeries]:
    """Every folder under `folder` (or its `train_images/`) that holds .dcm files: one series each.

    `fracnode phantom cspine --no-neck --out DIR` writes such a folder (DIR/train_images/<uid>/).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: --negatives names a folder of CT series without a cervical spine")
    base = folder / "train_images" if (folder / "train_images").is_dir() else folder
    found = []
    for child in sorted(p for p in base.iterdir() if p.is_dir()):
        files = tuple(sorted(child.rglob("*.dcm")))
        if files:
            found.append(NegativeSeries(child.name, files))
    if not found:
        raise DataError(f"{base}: no sub-folder with .dcm files (one folder per series is expected)")
    return found


def split_by_uid(uids: list[str], seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, list[str]]:
    """The same seeded-hash split as `split`, for anything named by a UID."""
    def key(uid: str) -> str:
        return hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest()

    ordered = sorted(uids, key=key)
    n = len(ordered)
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    if n >= 3:
        n_train, n_val = max(1, min(n_train, n - 2)), max(1, n_val)
        n_val = min(n_val, n - n_train - 1)
    return {"train": ordered[:n_train], "val": ordered[n_train:n_train + n_val], "test": ordered[n_train + n_val:]}


def load_volume(study: RsnaStudy | NegativeSeries) -> Volume:
    try:
        return build_volume(study.files)
    except VolumeRefused as exc:
        raise DataError(f"study {study.uid}: {exc.reason}") from exc


def load_segmentation(study: RsnaStudy, volume: Volume) -> np.ndarray | None:
    """The study's segmentation on the series' grid (uint8, 1..7 = C1..C7), or None without one."""
    if study.segmentation is None:
        return None
    image = sitk.ReadImage(str(study.segmentation))
    if image.GetDimension() != 3:
        raise DataError(f"{study.segmentation}: a 3D label image is expected, got {image.GetDimension()}D")
    labels = resample_labels(volume, sitk.Cast(image, sitk.sitkUInt8))
    labels[labels > len(VERTEBRAE)] = 0  # RSNA files label C1–C7 only; anything else is not ours
    source = sitk.GetArrayViewFromImage(image)
    if source.any() and not labels.any():
        raise DataError(
            f"{study.segmentation}: the labels fall outside series {study.series_instance_uid}"
            " once placed by the NIfTI's geometry; check that it belongs to this series"
        )
    return labels
