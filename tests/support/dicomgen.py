"""Synthetic DICOM for tests and benchmarks: CT-like multi-series studies and small CRs.

Patient attributes carry recognisable sentinel values so tests can prove they never reach logs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Sentinel^Patientname"
PATIENT_ID = "PID-SENTINEL-4711"
PATIENT_BIRTH_DATE = "19230417"
ACCESSION_NUMBER = "ACC-SNTNL-0815"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def _base(sop_class: str, study_uid: str, series_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "O"
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.StudyDate = "20261124"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "fracnode-tests"
    return ds


def ct_series(
    count: int,
    study_uid: str | None = None,
    series_uid: str | None = None,
    size: int = 64,
    series_number: int = 1,
    description: str = "CT Neck 1.0 Bone",
    body_part: str = "NECK",
    seed: int = 0,
) -> list[Dataset]:
    """`count` axial CT slices of `size`×`size` int16 pixels (HU-like noise)."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    slices = []
    for i in range(count):
        ds = _base(CTImageStorage, study_uid, series_uid, "CT")
        ds.SeriesNumber = series_number
        ds.InstanceNumber = i + 1
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.BodyPartExamined = body_part
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.5, 0.5]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        pixels = rng.integers(-1000, 1500, size=(size, size), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        slices.append(ds)
    return slices


def cr_image(study_uid: str | None = None, size: int = 128, body_part: str = "HAND") -> Dataset:
    ds = _base(CR_IMAGE_STORAGE, study_uid or generate_uid(), generate_uid(), "CR")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = body_part
    ds.SeriesDescription = f"{body_part} PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"


def radiograph(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    sop_class: str = DX_IMAGE_STORAGE,
    **attributes: object,
) -> Dataset:
    """A DX image holding `pixels` as stored values: (rows, columns) grey, (rows, columns, 3) colour,
    or (frames, rows, columns) multi-frame; `attributes` (keyword=value) are set last."""
    pixels = np.asarray(pixels)
    ds = _base(sop_class, generate_uid(), generate_uid(), "DX")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    colour = photometric in ("RGB", "YBR_FULL")
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def sr_document() -> Dataset:
    """A Comprehensive SR header without content: an object with no pixel data."""
    ds = _base(COMPREHENSIVE_SR_STORAGE, generate_uid(), generate_uid(), "SR")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return ds
