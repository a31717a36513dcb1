"""CT Image Storage datasets (PS3.3 A.3) for a rendered phantom series, one per slice.

Modules written: Patient, General Study, Patient Study, General Series, Frame of Reference,
General Equipment, General Image, Image Plane (C.7.6.2), Image Pixel, CT Image (C.8.2.1),
VOI LUT and SOP Common. Patient attributes are synthetic (no real person).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from training.phantom.render import Scene

_DESCRIPTIONS = {
    "neck": ("CSPINE", "C-Spine", ("CT C-SPINE W/O", "CT CERVICAL SPINE", "Trauma HWS")),
    "abdomen": ("ABDOMEN", "Abdomen", ("CT ABDOMEN W/O", "CT ABD/PELVIS")),
}


def series_datasets(
    stored: np.ndarray,
    scene: Scene,
    region: str,
    kernel: str,
    uid: Callable[[str], str],
    index: int,
) -> list[Dataset]:
    """One dataset per slice of `stored` (int16, HU + 1024), InstanceNumber 1…n in slice order."""
    body_part, anatomy, protocols = _DESCRIPTIONS[region]
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    protocol = protocols[index % len(protocols)]
    thickness = scene.slice_thickness
    description = f"{anatomy} {thickness:g}mm {'Bone' if kernel in ('BONE', 'B70s', 'Br64') else 'Std'}"
    patient_id = f"PHANTOM-{study_uid[-8:]}"
    datasets = []
    for k, z in enumerate(scene.slice_positions):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid(f"instance-{k}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20220101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.ContentTime = f"1200{k // 100 % 60:02d}.{k % 100:02d}"
        ds.AccessionNumber = f"PH{index:06d}"
        ds.Modality = "CT"
        ds.Manufacturer = "fracnode phantom"
        ds.ManufacturerModelName = "cspine_phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = protocol
        ds.SeriesDescription = description
        ds.PatientName = f"Phantom^{index:05d}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = body_part
        ds.ProtocolName = protocol
        ds.SliceThickness = f"{thickness:g}"
        ds.KVP = "120"
        ds.ConvolutionKernel = kernel
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = f"{index + 1}"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [
            f"{scene.origin_xy[0]:.4f}",
            f"{scene.origin_xy[1]:.4f}",
            f"{z:.4f}",
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = scene.size
        ds.PixelSpacing = [f"{scene.pixel_spacing:g}", f"{scene.pixel_spacing:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = ["500", "40"]
        ds.WindowWidth = ["2000", "400"]
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        datasets.append(ds)
    return datasets
