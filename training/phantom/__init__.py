"""Synthetic cervical spine CT studies (anatomy, rendering, DICOM) for tests and demo weights."""
