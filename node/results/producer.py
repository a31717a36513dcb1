"""Who made a derived object: fracnode running one algorithm. One place for equipment and algorithm ids.

Every result object carries the same General Equipment (PS3.3 C.7.5.1) values and the same
algorithm identification: TID 4019 in the SR, the Algorithm Identification Sequence
(PS3.3 C.8.20.2) in the SEG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import highdicom as hd
from pydicom import Dataset

from node import __version__
from node.records import Algorithm

# The pipeline recognises its own results by this value (never analysed again): not configurable.
MANUFACTURER = "fracnode"
_ORIENTATION = re.compile(r"[APLRHF]{1,3}")


class AlgorithmTemplate(Protocol):
    """What a Producer needs of a pipeline's template: the algorithm family code (CID 7162)."""

    @property
    def algorithm_family(self) -> hd.sr.CodedConcept: ...


TemplateT = TypeVar("TemplateT", bound=AlgorithmTemplate)


@dataclass(frozen=True)
class Producer(Generic[TemplateT]):
    """The algorithm, its operating points and the template every builder of one study shares.

    Generic in the template: `Producer[FractureTemplate]` for radiographs, `Producer[CSpineTemplate]`
    for cervical spine CT.
    """

    algorithm: Algorithm
    template: TemplateT
    thresholds: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for field in ("name", "version", "weights_sha256"):
            if not getattr(self.algorithm, field):
                raise ValueError(f"algorithm {field} is empty: results must identify the model")

    @property
    def equipment(self) -> dict[str, object]:
        """Keyword arguments for highdicom SOP classes (General / Enhanced General Equipment)."""
        return {
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.algorithm.name[:64],
            # a list: pydicom warns about tuples for multi-valued elements
            "software_versions": [f"fracnode {__version__}"[:64], self.algorithm.version[:64]],
            # Type 1 in Enhanced General Equipment; the weights digest names this exact model build.
            "device_serial_number": self.algorithm.weights_sha256[:64],
        }

    @property
    def label_threshold(self) -> float | None:
        """The operating point labels compare with: the lowest one (where "possible" starts)."""
        values = [value for _, value in self.thresholds]
        return min(values) if values else None

    @property
    def parameters(self) -> dict[str, str]:
        """Algorithm parameters worth recording: the weights digest and the operating points."""
        values = {"weights_sha256": self.algorithm.weights_sha256}
        values.update({f"threshold_{name}": f"{value:g}" for name, value in self.thresholds})
        return values

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification."""
        return hd.sr.AlgorithmIdentification(
            name=self.algorithm.name,
            version=self.algorithm.version,
            parameters=[f"{key}={value}" for key, value in self.parameters.items()],
            family=self.template.algorithm_family,
            manufacturer=self.algorithm.source or MANUFACTURER,
        )

    def seg_algorithm(self) -> hd.AlgorithmIdentificationSequence:
        """PS3.3 C.8.20.2 Segment Description: Algorithm Identification Sequence."""
        return hd.AlgorithmIdentificationSequence(
            name=self.algorithm.name,
            family=self.template.algorithm_family,
            version=self.algorithm.version,
            source=self.algorithm.source or MANUFACTURER,
            parameters=self.parameters,
        )


def patient_orientation(source: Dataset) -> list[str]:
    """The source's Patient Orientation (PS3.3 C.7.6.1.1.1), or [] when it has none usable.

    Derived 2D images need the attribute (type 2C in General Image). Without a valid value in the
    source it is written empty, which type 2 allows for "unknown": a guessed orientation would
    label the sides of the image wrongly on any viewer that shows it.
    """
    values = [str(v).strip() for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(_ORIENTATION.fullmatch(v) for v in values):
        return values
    return []


def series_laterality(source: Dataset) -> str:
    """General Series Laterality (PS3.3 C.7.3.1) for a derived image series: the source's, or "".

    Type 2C, and dciodvfy requires it of GSPS and secondary captures; empty means unknown,
    which is the truth when the source does not say.
    """
    value = str(source.get("Laterality") or "").strip()
    return value if value in ("R", "L") else ""
