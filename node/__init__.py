"""fracnode: a DICOM node that runs MONAI fracture models and returns SR and SEG results."""

__version__ = "0.1.0"

# PS3.7 D.3.3.2: identifies this implementation in associations and in the files it writes
# (derived once with pydicom's generate_uid(entropy_srcs=["fracnode"]) under pydicom's root)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.12692191242711069235748324378108740077"
IMPLEMENTATION_VERSION_NAME = f"FRACNODE_{__version__}"[:16]
