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
from typing import TYPE_CHECKING, Self, Unpack

from node.imaging.volume import Volume
from node.inference.bundle import BundleError
from node.inference.engine import EngineOptions, configured_bundle
from node.inference.runtime import RuntimeName
from node.pipelines.cspine.vertebra_fracture import FractureModel, FractureResult
from node.pipelines.cspine.vertebrae import VertebraModel, VertebraSegmentation

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
        vertebra_sha256: str = "",
        fracture_sha256: str = "",
        **options: Unpack[EngineOptions],
    ) -> None:
        """Both models with the same engine `options` (device, runtime, threads, warm-up); each
        bundle's weights checked against its metadata's sha256 and/or the one given for it."""
        vertebra: EngineOptions = {**options, "weights_sha256": vertebra_sha256}
        fracture: EngineOptions = {**options, "weights_sha256": fracture_sha256}
        self.vertebrae = VertebraModel(vertebra_bundle, **vertebra)
        try:
            self.fracture = FractureModel(fracture_bundle, **fracture)
        except Exception:
            self.vertebrae.close()
            raise
        self.vertebra_algorithm = self.vertebrae.algorithm
        self.fracture_algorithm = self.fracture.algorithm

    @classmethod
    def from_config(cls, config: Config, *, runtime: RuntimeName = "auto", warmup: bool = True) -> CSpineModels:
        """Both bundles from the node's models folder (`inference.models_dir`), on `inference.device`.

        Each weights file is checked against the sha256 in its bundle's metadata.json and/or the one
        given in `inference.weights_sha256` (needed for a Model Zoo bundle, which records none).
        """
        found = {name: configured_bundle(config, name) for name in (VERTEBRA_BUNDLE, FRACTURE_BUNDLE)}
        for name, (root, _) in found.items():
            if not (root / "configs" / "metadata.json").is_file():
                raise BundleError(
                    f"{root}: no bundle {name!r} there (configs/metadata.json missing); set"
                    " inference.models_dir to the folder holding cspine_vertebrae/ and cspine_fracture/"
                )
        (vertebra_root, vertebra), (fracture_root, fracture) = found[VERTEBRA_BUNDLE], found[FRACTURE_BUNDLE]
        return cls(
            vertebra_root, fracture_root, device=config.inference.device, runtime=runtime, warmup=warmup,
            vertebra_sha256=vertebra.get("weights_sha256", ""), fracture_sha256=fracture.get("weights_sha256", ""),
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
