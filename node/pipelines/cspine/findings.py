"""What the cspine-fracture pipeline concludes about a cervical spine CT, before any DICOM is written.

Per vertebra the vertebra model found (C1–C7, label values 1–7 of its label volume) a
`VertebraFinding`: the fracture model's probability, its category at the model's two operating
points, its centre and size; `CSpineFindings` holds them with the patient-level result for the
one CT series analysed. The job record keeps `CSpineFindings` as JSON (node.outcomes); its kind
"CSpineFindings" is what the dashboard looks for to draw the CT preview.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.records import Algorithm, Category, FindingRow

VERTEBRAE = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")  # label value i + 1 is VERTEBRAE[i]


def vertebra_name(label: int) -> str:
    """The vertebra of a label value of the vertebra model (1 = C1 … 7 = C7)."""
    if not 1 <= label <= len(VERTEBRAE):
        raise ValueError(f"vertebra label {label!r} is outside 1..{len(VERTEBRAE)} (C1..C7)")
    return VERTEBRAE[label - 1]


@dataclass(frozen=True)
class VertebraFinding:
    """The fracture model's result for one cervical vertebra the vertebra model found."""

    label: int  # label value in the vertebra label volume: 1 = C1 … 7 = C7
    fracture_probability: float
    category: Category
    centre: tuple[float, float, float]  # (x, y, z) mm in the CT's frame of reference (LPS)
    voxels: int  # voxels of the vertebra in the label volume (on the CT grid)


@dataclass(frozen=True)
class CSpineFindings:
    """What the cspine-fracture pipeline concluded about one CT series of a study.

    The vertebra label volume itself (uint8 (slices, rows, columns) on the CT grid) travels beside
    this record: it is large and only the SEG needs it.
    """

    study_instance_uid: str
    series_instance_uid: str  # the CT series analysed
    frame_of_reference_uid: str
    segmentation_algorithm: Algorithm  # the vertebra model (SEG)
    fracture_algorithm: Algorithm  # the fracture model (SR)
    fracture_probability: float  # patient level
    category: Category
    vertebrae: tuple[VertebraFinding, ...]  # present vertebrae only, in label order
    thresholds: tuple[tuple[str, float], ...] = ()  # ("fracture", 0.6), ("suspicious", 0.2)
    skipped: tuple[tuple[str, str], ...] = ()  # (Series Instance UID, reason) not analysed
    seconds: tuple[tuple[str, float], ...] = ()  # (stage, seconds) of the run, for the job record

    def rows(self) -> tuple[FindingRow, ...]:
        """One row for the study: the patient-level result (the summary names the vertebrae)."""
        return (FindingRow(category=self.category, fracture_probability=self.fracture_probability,
                           regions=len(self.vertebrae)),)


def reasons(skipped: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """"series UID: reason; …" for the job table."""
    return (
        "; ".join(f"series {uid or '(no SeriesInstanceUID)'}: {reason}" for uid, reason in skipped)
        or "no series routed"
    )


def summarize(findings: CSpineFindings) -> str:
    """One line for the job table: the patient-level result, the vertebrae, the top vertebra and
    every series passed over with its reason."""
    names = ", ".join(vertebra_name(v.label) for v in findings.vertebrae)
    top = max(findings.vertebrae, key=lambda v: v.fracture_probability)
    text = (
        f"cervical spine {findings.category} (probability {findings.fracture_probability:.2f});"
        f" vertebrae {names}; highest {vertebra_name(top.label)} {top.fracture_probability:.2f}"
    )
    if findings.skipped:
        text += f"; skipped {reasons(findings.skipped)}"
    return text
