"""The radiograph-fracture bundle as the pipeline uses it: letterboxed input, the bundle's numbers.

`RadiographModel` is a `BundleModel` (node.inference.engine: one warm engine, batched across
concurrent studies) plus what is particular to this model: a radiograph is letterboxed into the
square 2D input and standardized over its image area (unless the bundle's
`preprocessing.standardize` is "none"), and model-space maps go back onto the source image. Its
metadata's `fracnode` section gives the two operating points, the region threshold, the
body-region channels and the intended-use limits that validation set (site confidence,
atypicality limit, dense-material percentile).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Unpack

import numpy as np

from node.imaging.letterbox import Letterbox, fit, standardize
from node.imaging.pixels import Radiograph
from node.inference.engine import BundleModel, EngineOptions, Outputs


class ModelInput(NamedTuple):
    """A radiograph as the model sees it, and how to map model-space maps back onto the image."""

    array: np.ndarray  # float32 (channels, *spatial) as the contract's input
    letterbox: Letterbox


class RadiographModel(BundleModel):
    def __init__(self, bundle_path: Path | str, **options: Unpack[EngineOptions]) -> None:
        super().__init__(bundle_path, **options)
        extras = self.bundle.extras
        preprocessing = self.bundle.config.get("preprocessing") or {}
        self.standardize = preprocessing.get("standardize", "image-area") != "none"
        self.operating_points = {k: float(v) for k, v in extras["operating_points"].items()}
        self.region_threshold = float(extras.get("region_threshold", 0.5))
        self.body_regions = self.bundle.channels("body_region")
        # Set on validation by `fracnode evaluate radiograph --write`; bundles from before 1.0 have none
        # (then the network always names its likeliest region, and refuses nothing).
        self.site_confidence = float(extras.get("site_confidence", 0.0))
        limit = extras.get("atypicality_limit")
        self.atypicality_limit = float(limit) if limit is not None else None
        dense = extras.get("dense_percentile")
        self.dense_percentile = float(dense) if dense is not None else None

    def preprocess(self, radiograph: Radiograph) -> ModelInput:
        """Letterbox to the contract's square input, then standardize over the image area, unless the
        bundle's `preprocessing.standardize` is "none" (a network that normalizes its [0, 1] input)."""
        channels, *spatial = self.contract.input_shape
        if channels != 1 or len(spatial) != 2 or spatial[0] != spatial[1]:
            raise ValueError(
                f"{self.bundle.root.name}: input {self.contract.input_shape} is not one square 2D channel;"
                " radiograph preprocessing does not apply"
            )
        plane, box = fit(radiograph.image, spatial[0])
        if self.standardize:
            plane = standardize(plane, box)
        return ModelInput(plane[np.newaxis], box)

    def postprocess(self, outputs: Outputs, letterbox: Letterbox) -> Outputs:
        """One image's outputs with every model-space map resampled to the source image's size.

        `outputs` is one entry of `infer`'s result; maps shaped (channels, size, size) come back as
        (channels, rows, columns), other outputs unchanged.
        """
        size = (letterbox.size, letterbox.size)
        mapped = {}
        for name, value in outputs.items():
            if value.ndim == 3 and value.shape[1:] == size:
                mapped[name] = np.stack([letterbox.unfit(channel) for channel in value])
            else:
                mapped[name] = value
        return mapped
