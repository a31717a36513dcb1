"""fracnode: a DICOM node that runs MONAI fracture models and returns SR and SEG results."""

__version__ = "0.1.0"
