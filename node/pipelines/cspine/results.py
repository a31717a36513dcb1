"""Results of the cspine-fracture pipeline: a SEG of the cervical vertebrae and a TID 1500 SR.

Input: `CSpineFindings`, the CT series' datasets in slice order (headers suffice, pixel data is
not read) and the vertebra label volume (uint8 (slices, rows, columns), 1 = C1 … 7 = C7, on the
CT grid). Output: the SEG (`seg`), then the SR (`sr`), each in its own new series (numbers and
descriptions from `sr_templates/cspine-fracture.yaml`), with new SOP Instance UIDs; patient and
study copied from the CT by highdicom. Where each vertebra lies on the CT's slices: `slices`.
Pure: nothing is written or sent here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.pipelines.cspine.findings import VERTEBRAE, CSpineFindings, vertebra_name
from node.pipelines.cspine.seg import build_cspine_segmentation, segment_numbers
from node.pipelines.cspine.slices import place, slice_counts
from node.pipelines.cspine.sr import build_cspine_sr, vertebra_trackings
from node.pipelines.cspine.template import CSpineTemplate, shipped_cspine_template
from node.results import no_name_warnings
from node.results.producer import Producer


def check_inputs(
    findings: CSpineFindings, sources: Sequence[Dataset], labels: np.ndarray, counts: np.ndarray
) -> dict[int, int]:
    """Validate the inputs against each other; returns label value → voxel count of each present one.

    `counts` are `slice_counts(labels)`. Raises ValueError naming the argument and value that
    disagree.
    """
    if not sources:
        raise ValueError(f"study {findings.study_instance_uid}: no source CT datasets")
    for index, ds in enumerate(sources):
        if ds.StudyInstanceUID != findings.study_instance_uid:
            raise ValueError(
                f"sources[{index}] is in study {ds.StudyInstanceUID}, "
                f"findings are for {findings.study_instance_uid}"
            )
        if ds.SeriesInstanceUID != findings.series_instance_uid:
            raise ValueError(
                f"sources[{index}] is in series {ds.SeriesInstanceUID}, "
                f"findings are for series {findings.series_instance_uid}"
            )
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != expected:
        raise ValueError(
            f"labels have shape {labels.shape}; the CT series is {expected} (slices, rows, columns)"
        )
    totals = counts.sum(axis=0)
    present = {label: int(totals[label]) for label in range(1, len(VERTEBRAE) + 1) if totals[label]}
    if not present:
        raise ValueError(f"study {findings.study_instance_uid}: the label volume has no vertebra")
    reported = [v.label for v in findings.vertebrae]
    if reported != sorted(present):
        raise ValueError(
            f"findings report vertebrae {[vertebra_name(v) for v in reported if 1 <= v <= 7]} "
            f"(labels {reported}), the label volume holds "
            f"{[vertebra_name(v) for v in sorted(present)]}: each present vertebra needs exactly one "
            "finding, in label order"
        )
    return present


def build_cspine_results(
    findings: CSpineFindings,
    sources: Sequence[Dataset],
    labels: np.ndarray,
    template: CSpineTemplate | None = None,
) -> list[Dataset]:
    """SEG and SR for one cervical spine CT, the SEG first (the SR references it).

    `sources` are the CT series' datasets in the slice order of `labels` (the order
    `node.imaging.volume.build_volume` returns), headers only or with pixel data.
    """
    with no_name_warnings():
        template = template or shipped_cspine_template()
        if labels.dtype.kind not in "ui":
            raise ValueError(f"labels must be an integer label volume, got dtype {labels.dtype}")
        counts = slice_counts(labels, len(VERTEBRAE))
        present = check_inputs(findings, sources, labels, counts)
        places = {
            v.label: place(sources, labels, counts, v.label, v.centre) for v in findings.vertebrae
        }
        numbers = segment_numbers(list(present))
        trackings = vertebra_trackings(template, list(present))
        seg_producer = Producer(findings.segmentation_algorithm, template)
        sr_producer = Producer(findings.fracture_algorithm, template, findings.thresholds)
        seg = build_cspine_segmentation(
            sources, labels, numbers, seg_producer, trackings, generate_uid()
        )
        report = build_cspine_sr(
            findings, sources, seg, numbers, sr_producer, trackings, places, generate_uid()
        )
        return [seg, report]
