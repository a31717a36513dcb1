"""The cervical-spine models together: vertebrae C1–C7, then a fracture probability per vertebra.

    models = CSpineModels.from_config(config)   # or CSpineModels(vertebra_bundle, fracture_bundle)
    analysis = models.analyze(volume)           # a node.imaging.volume.Volume
    analysis.segmentation.labels                # uint8 (slices, rows, columns), 1 = C1 … 7 = C7
    analysis.segmentation.vertebrae             # VertebraMask: label, name, voxels, box, centre (LPS mm)
    analysis.fracture.vertebrae                 # VertebraProbability per vertebra found
    analysis.fracture.patient_probability
    models.operating_points                     # {"suspicious": …, "fracture": …}, patient level
    models.vertebra_algorithm, models.fracture_algorithm   # node.records.Algorithm for SR/SEG

`analyze` is `segment` then `classify`; a pipeline that stops when no cervical vertebra is found
(`not segmentation.present`) calls the two itself.

Both bundles load once, are checked against their recorded sha256 and stay warm; `device="auto"`
runs them on CUDA in half precision when present, else on the CPU (`node.inference.engine`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from node.imaging.volume import Volume
from node.inference.bundle import Bundle, BundleError
from node.inference.engine import Device
from node.inference.runtime import RuntimeName
from node.inference.vertebra_fracture import FractureModel, FractureResult
from node.inference.vertebrae import VertebraModel, VertebraSegmentation
from node.records import Algorithm

if TYPE_CHECKING:
    from node.config import Config

VERTEBRA_BUNDLE = "cspine_vertebrae"
FRACTURE_BUNDLE = "cspine_fracture"


@dataclass(frozen=True, eq=False)
class CSpineAnalysis:
    segmentation: VertebraSegmentation
    fracture: FractureResult
    seconds: dict[str, float]  # preprocess, sliding_window, postprocess, fracture


class CSpineModels:
    def __init__(
        self,
        vertebra_bundle: Path | str,
        fracture_bundle: Path | str,
        *,
        device: Device = "auto",
        runtime: RuntimeName = "auto",
        vertebra_sha256: str = "",
        fracture_sha256: str = "",
        threads: int | None = None,
        warmup: bool = True,
    ) -> None:
        self.vertebrae = VertebraModel(vertebra_bundle, device=device, runtime=runtime,
                                       weights_sha256=vertebra_sha256, threads=threads, warmup=warmup)
        try:
            self.fracture = FractureModel(fracture_bundle, device=device, runtime=runtime,
                                          weights_sha256=fracture_sha256, threads=threads, warmup=warmup)
        except Exception:
            self.vertebrae.close()
            raise

        self.vertebra_algorithm = _algorithm(self.vertebrae.bundle, self.vertebrae.weights_sha256)
        self.fracture_algorithm = _algorithm(self.fracture.bundle, self.fracture.weights_sha256)

    @classmethod
    def from_config(cls, config: Config, *, runtime: RuntimeName = "auto", warmup: bool = True) -> CSpineModels:
        """Both bundles from the node's models folder (`inference.models_dir`), on `inference.device`.

        Each weights file is checked against the sha256 in its bundle's metadata.json and/or the one
        given in `inference.weights_sha256` (needed for a Model Zoo bundle, which records none).
        """
        settings = config.inference
        roots = {name: settings.bundle(name) for name in (VERTEBRA_BUNDLE, FRACTURE_BUNDLE)}
        for name, root in roots.items():
            if not (root / "configs" / "metadata.json").is_file():
                raise BundleError(
                    f"{root}: no bundle {name!r} there (configs/metadata.json missing); set"
                    " inference.models_dir to the folder holding cspine_vertebrae/ and cspine_fracture/"
                )
        return cls(
            roots[VERTEBRA_BUNDLE], roots[FRACTURE_BUNDLE], device=settings.device, runtime=runtime,
            vertebra_sha256=settings.weights_sha256.get(VERTEBRA_BUNDLE, ""),
            fracture_sha256=settings.weights_sha256.get(FRACTURE_BUNDLE, ""),
            warmup=warmup,
        )

    @property
    def operating_points(self) -> dict[str, float]:
        """Patient-level thresholds: "suspicious" (high sensitivity) and "fracture" (high specificity)."""
        return dict(self.fracture.operating_points)

    def segment(self, volume: Volume) -> VertebraSegmentation:
        return self.vertebrae.segment(volume)

    def classify(self, volume: Volume, segmentation: VertebraSegmentation) -> FractureResult:
        return self.fracture.classify(volume, segmentation)

    def analyze(self, volume: Volume) -> CSpineAnalysis:
        """C1–C7 of the volume, then a fracture probability per vertebra found and for the patient."""
        segmentation = self.vertebrae.segment(volume)
        start = time.perf_counter()
        fracture = self.fracture.classify(volume, segmentation)
        seconds = {**segmentation.seconds, "fracture": time.perf_counter() - start}
        return CSpineAnalysis(segmentation, fracture, seconds)

    def close(self) -> None:
        self.vertebrae.close()
        self.fracture.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _algorithm(bundle: Bundle, weights_sha256: str) -> Algorithm:
    return Algorithm(name=bundle.name, version=bundle.version, weights_sha256=weights_sha256)
