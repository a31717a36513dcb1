"""The cspine-fracture pipeline's settings: `pipelines: {cspine-fracture: {...}}` in the YAML file.

They were the top-level `cspine:` section before, which is still read (node.config.model
LEGACY_SECTIONS) with a deprecation message.
"""

from __future__ import annotations

from pydantic import Field

from node.config import Strict


class CSpineSettings(Strict):
    """Which CT series the cervical-spine pipeline may analyse (node.pipelines.cspine.select)."""

    max_slice_thickness_mm: float = Field(3.0, gt=0, le=20, description="thicker series are skipped")
    min_slices: int = Field(30, ge=3, description="series with fewer slices are skipped")
    max_obliquity_deg: float = Field(
        30.0, ge=0, le=90, description="largest angle between the slice normal and the patient's long axis"
    )
